"""Green :mod:`select`: ``select()`` and ``poll()`` wait on the event loop when on a fiber.

Everything the standard :mod:`select` module has is here under the same name.  On a fiber with
an event loop running in this thread, :func:`select` and the objects :func:`poll` returns ask
the standard call with a zero timeout whether anything is ready; if nothing is, the fiber is
suspended until the loop sees one of the descriptors readable or writable (or the timeout
passes), and the standard call is asked again, so the result is always the standard call's own.
Exceptional conditions (``select``'s third list, ``POLLPRI``) are noticed when such a
wake-up or the timeout comes, not on their own.  ``epoll``, ``kqueue`` and ``devpoll`` are the
standard ones: their waits block.  Anywhere else everything is the standard call.
"""

from __future__ import annotations

import math as _math
import select as _std
from collections.abc import Iterable

# The drop-in module has every name of the standard one (type checkers see them here).
from select import *  # noqa: F403  # pyright: ignore[reportWildcardImportFromLibrary]
from typing import Any, cast

from ._loop import copy_standard_names, green_loop, wait_fds


def _fileno(obj: Any) -> int:
    if isinstance(obj, int):
        return obj
    fd = obj.fileno()
    if not isinstance(fd, int):
        raise TypeError("fileno() returned a non-integer")
    return fd


def _checked_timeout(timeout: float | None) -> float | None:
    value = cast(object, timeout)
    if value is None:
        return None
    if not isinstance(value, (int, float)):
        raise TypeError("timeout must be a float or None")
    if _math.isnan(value):
        raise ValueError("Invalid value NaN (not a number)")
    if value < 0:
        raise ValueError("timeout must be non-negative")
    return float(value)


def _green_select(
    rlist: Iterable[Any],
    wlist: Iterable[Any],
    xlist: Iterable[Any],
    timeout: float | None = None,
    /,
) -> tuple[list[Any], list[Any], list[Any]]:
    """Wait until some of the objects are ready, as :func:`select.select`.

    On a fiber the loop does the waiting (see the module's description).
    """
    loop = green_loop()
    if loop is None:
        return _std.select(rlist, wlist, xlist, timeout)
    rlist, wlist, xlist = list(rlist), list(wlist), list(xlist)
    remaining = _checked_timeout(timeout)
    deadline = None if remaining is None else loop.time() + remaining
    read_fds = [_fileno(obj) for obj in rlist]
    write_fds = [_fileno(obj) for obj in wlist]
    while True:
        ready = _std.select(rlist, wlist, xlist, 0)
        if ready[0] or ready[1] or ready[2]:
            return ready
        if deadline is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return ready
        wait_fds(loop, read_fds, write_fds, remaining)


_green_select.__name__ = _green_select.__qualname__ = "select"
select = _green_select

# poll() events that the loop's reader or writer callbacks stand for.
_READ_EVENTS = getattr(_std, "POLLIN", 1) | getattr(_std, "POLLPRI", 2)
_WRITE_EVENTS = getattr(_std, "POLLOUT", 4)


class _GreenPoll:
    """What :func:`poll` returns: the standard poll object, whose ``poll`` waits on the loop."""

    __slots__ = ("_events", "_poll")

    def __init__(self) -> None:
        self._poll = _std.poll()
        self._events: dict[int, int] = {}

    def register(self, fd: Any, eventmask: int = _READ_EVENTS | _WRITE_EVENTS, /) -> None:
        """Watch ``fd`` for ``eventmask``, as ``select.poll().register``."""
        self._poll.register(fd, eventmask)
        self._events[_fileno(fd)] = eventmask

    def modify(self, fd: Any, eventmask: int, /) -> None:
        """Change the events watched for ``fd``, as ``select.poll().modify``."""
        self._poll.modify(fd, eventmask)
        self._events[_fileno(fd)] = eventmask

    def unregister(self, fd: Any, /) -> None:
        """Stop watching ``fd``, as ``select.poll().unregister``."""
        self._poll.unregister(fd)
        del self._events[_fileno(fd)]

    def poll(self, timeout: float | None = None, /) -> list[tuple[int, int]]:
        """The ``(fd, events)`` ready, waiting up to ``timeout`` milliseconds (None: no limit)."""
        loop = green_loop()
        if loop is None:
            return self._poll.poll(timeout)
        value = cast(object, timeout)
        seconds: float | None = None
        if value is not None:
            if not isinstance(value, (int, float)):
                raise TypeError("timeout must be an integer or None")
            seconds = None if value < 0 else value / 1000.0
        deadline = None if seconds is None else loop.time() + seconds
        while True:
            ready = self._poll.poll(0)
            if ready:
                return ready
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return ready
            readers = [fd for fd, mask in self._events.items() if mask & _READ_EVENTS]
            writers = [fd for fd, mask in self._events.items() if mask & _WRITE_EVENTS]
            wait_fds(loop, readers, writers, remaining)


if hasattr(_std, "poll"):

    def _green_poll() -> _GreenPoll:
        """A polling object, as :func:`select.poll`, whose ``poll`` waits on the loop on a fiber."""
        return _GreenPoll()

    _green_poll.__name__ = _green_poll.__qualname__ = "poll"
    poll = _green_poll  # type: ignore[misc, assignment]


copy_standard_names(_std, globals())
