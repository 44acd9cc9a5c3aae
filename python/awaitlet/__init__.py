"""Call awaitables from plain synchronous functions running inside asyncio.

``await async_def(fn, *args, **kwargs)`` runs the ordinary function ``fn`` on its
own fiber stack; anywhere below it, ``awaitlet(awaitable)`` suspends that stack,
lets the awaiting task ``await`` the awaitable, and returns its result (or
raises its exception) at the call site.  A drop-in replacement for the
``awaitlet`` package that needs no ``greenlet``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from ._awaitlet import NoAwaitletContext, NoAwaitOccurred, __version__, async_def, awaitlet

__all__ = [
    "NoAwaitOccurred",
    "NoAwaitletContext",
    "__version__",
    "async_def",
    "awaitlet",
    "install_greenlet_shim",
]

_T = TypeVar("_T")


def install_greenlet_shim() -> None:
    """Make ``import greenlet`` give :mod:`awaitlet.greenlet` when greenlet is not installed.

    An installed awaitlet already does this at interpreter start (unless the environment
    variable ``AWAITLET_GREENLET_SHIM`` is ``0``); this is for code that turned that off or
    wants to be explicit.  If the real greenlet is installed, it is still the one imported.
    Call it before the first ``import greenlet`` (SQLAlchemy imports it when its asyncio
    extension is imported).
    """
    import _awaitlet_greenlet_shim

    _awaitlet_greenlet_shim.install()


async def _async_def_signature(
    fn: Callable[..., _T], /, *args: Any, assert_await_occurs: bool = False, **kwargs: Any
) -> _T:
    """Run the sync callable ``fn(*args, **kwargs)`` so that it can call :func:`awaitlet`.

    ``async_def`` is a coroutine function: ``await async_def(fn, *args, **kwargs)`` calls
    ``fn(*args, **kwargs)`` on a stack of its own and gives what ``fn`` returns (or raises
    what it raises).  ``fn`` is ordinary synchronous code; anywhere below it,
    ``awaitlet(awaitable)`` suspends that stack while the awaiting task awaits the awaitable,
    so the event loop keeps running other tasks.

    Args:
        fn: the synchronous callable to run; it is called with ``*args`` and ``**kwargs``.
        assert_await_occurs: if true, raise :class:`NoAwaitOccurred` when ``fn`` returned
            without calling :func:`awaitlet` even once.

    Raises:
        TypeError: ``fn`` is not callable (raised by the call, before anything runs).
        NoAwaitOccurred: ``assert_await_occurs`` was true and ``fn`` never awaited.

    Anything ``fn`` raises, or an awaitable it waited for raised and it did not catch,
    propagates from the ``await``.  Cancelling the awaiting task raises
    :class:`asyncio.CancelledError` inside ``fn`` at its pending ``awaitlet()`` call.
    """
    raise NotImplementedError  # only its signature and docstring are used


def _describe_async_def() -> None:
    # async_def is a native callable; these attributes make inspect and asyncio see the
    # coroutine function it is (inspect.iscoroutinefunction, inspect.signature, help()).
    import inspect

    for attribute in ("__code__", "__defaults__", "__kwdefaults__", "__doc__"):
        setattr(async_def, attribute, getattr(_async_def_signature, attribute))
    # The annotations as objects, not the strings of `from __future__ import annotations`.
    async_def.__annotations__ = inspect.get_annotations(_async_def_signature, eval_str=True)
    async_def.__name__ = async_def.__qualname__ = "async_def"
    async_def.__module__ = __name__
    async_def.__text_signature__ = "(fn, /, *args, assert_await_occurs=False, **kwargs)"
    if sys.version_info >= (3, 12):
        inspect.markcoroutinefunction(async_def)


_describe_async_def()
del _describe_async_def


def _warn_if_original_installed() -> None:
    # One stat, of a file that only the original awaitlet distribution installs: if it is in
    # this package, both distributions wrote into it (see _awaitlet_greenlet_shim).
    from os import path

    package = path.dirname(__file__)
    if path.exists(path.join(package, "util", "typing.py")):
        import _awaitlet_greenlet_shim

        _awaitlet_greenlet_shim.warn_original_awaitlet(path.dirname(package))


_warn_if_original_installed()
del _warn_if_original_installed
