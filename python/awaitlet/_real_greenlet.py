"""``async_def`` on the real greenlet package, for processes that use it.

When the ``greenlet`` package itself is imported (SQLAlchemy imports it when it is
installed), SQLAlchemy's ``await_only()`` only works inside greenlets of that package. So
that sync code run by :func:`awaitlet.async_def` can use SQLAlchemy's sync API there too,
``async_def`` then runs it in such a greenlet instead of on awaitlet's own fibers, and
:func:`awaitlet.awaitlet` switches to that greenlet's parent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from greenlet import getcurrent, greenlet

from ._awaitlet import NoAwaitOccurred


class _SyncCodeGreenlet(greenlet):
    """Runs the sync code; its parent, the awaiting task, awaits on its behalf."""

    __sqlalchemy_greenlet_provider__ = True

    def __init__(self, fn: Callable[..., Any], driver: greenlet) -> None:
        greenlet.__init__(self, fn, driver)
        self.gr_context = driver.gr_context


async def async_def_on_greenlet(
    fn: Callable[..., Any], /, *args: Any, assert_await_occurs: bool = False, **kwargs: Any
) -> Any:
    """Run ``fn(*args, **kwargs)`` in a greenlet; await what it hands over; return its result."""
    sync_code = _SyncCodeGreenlet(fn, getcurrent())
    handed_over = sync_code.switch(*args, **kwargs)
    awaited = False
    while not sync_code.dead:
        awaited = True
        try:
            value = await handed_over
        except BaseException as exc:
            handed_over = sync_code.throw(type(exc), exc, exc.__traceback__)
        else:
            handed_over = sync_code.switch(value)
    if assert_await_occurs and not awaited:
        raise NoAwaitOccurred("Function was run but no await was called.")
    return handed_over
