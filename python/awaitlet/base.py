"""The module the original ``awaitlet`` package defined its API in, kept so that imports of
it keep working: ``from awaitlet.base import async_def, awaitlet`` and the rest."""

import asyncio

from ._awaitlet import NoAwaitletContext, NoAwaitOccurred, async_def, awaitlet

__all__ = ["NoAwaitOccurred", "NoAwaitletContext", "async_def", "awaitlet", "is_exit_exception"]


def is_exit_exception(e: BaseException) -> bool:
    """Whether ``e`` ends the work rather than reporting a failure of it: not an
    ``Exception``, or a timeout or cancellation."""
    return not isinstance(e, Exception) or isinstance(
        e, (asyncio.TimeoutError, asyncio.CancelledError)
    )
