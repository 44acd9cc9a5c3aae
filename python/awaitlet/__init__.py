"""Call awaitables from plain synchronous functions running inside asyncio.

``await async_def(fn, *args, **kwargs)`` runs the ordinary function ``fn`` on its
own fiber stack; anywhere below it, ``awaitlet(awaitable)`` suspends that stack,
lets the awaiting task ``await`` the awaitable, and returns its result (or
raises its exception) at the call site.  A drop-in replacement for the
``awaitlet`` package that needs no ``greenlet``.
"""

from __future__ import annotations

from ._awaitlet import NoAwaitletContext, NoAwaitOccurred, async_def, awaitlet

__version__ = "0.1.0"

__all__ = [
    "NoAwaitOccurred",
    "NoAwaitletContext",
    "__version__",
    "async_def",
    "awaitlet",
]
