"""Green :mod:`selectors`: selectors whose ``select()`` waits on the event loop when on a fiber.

Everything the standard :mod:`selectors` module has is here under the same name.  Each selector
class (``SelectSelector``, ``PollSelector``, ``EpollSelector``, ``DevpollSelector``,
``KqueueSelector``, where the platform has it) is a subclass of the standard one, and
``DefaultSelector`` is the green subclass of the standard ``DefaultSelector``.  On a fiber with
an event loop running in this thread, ``select(timeout)`` asks the standard selector with a
zero timeout; if nothing is ready, the fiber is suspended until the loop sees a registered
file object ready for one of its events (or the timeout passes), and the selector is asked
again, so the result is always the standard selector's own.  Anywhere else it is the standard
call.
"""

from __future__ import annotations

import selectors as _std

# The drop-in module has every name of the standard one (type checkers see them here).
from selectors import *  # noqa: F403  # pyright: ignore[reportWildcardImportFromLibrary]
from typing import Any, cast

from ._loop import copy_standard_names, green_loop, wait_fds


class _GreenSelect:
    """Mixed into each standard selector class: its ``select`` waits on the loop on a fiber."""

    def select(self, timeout: float | None = None) -> list[tuple[_std.SelectorKey, int]]:
        """The ``(key, events)`` ready, waiting up to ``timeout`` seconds (None: no limit)."""
        selector: Any = super()
        loop = green_loop()
        if loop is None or (timeout is not None and timeout <= 0):
            return selector.select(timeout)  # type: ignore[no-any-return]
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            ready = selector.select(0)
            if ready:
                return ready  # type: ignore[no-any-return]
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return ready  # type: ignore[no-any-return]
            keys = cast(_std.BaseSelector, self).get_map().values()
            readers = [key.fd for key in keys if key.events & _std.EVENT_READ]
            writers = [key.fd for key in keys if key.events & _std.EVENT_WRITE]
            wait_fds(loop, readers, writers, remaining)


# A green subclass of each standard selector class this platform has, under the same name.
for _name in (
    "SelectSelector",
    "PollSelector",
    "EpollSelector",
    "DevpollSelector",
    "KqueueSelector",
):
    _base = getattr(_std, _name, None)
    if _base is not None:
        globals()[_name] = type(
            _name,
            (_GreenSelect, _base),
            {"__module__": __name__, "__doc__": f"The standard ``{_name}``; waits on the loop."},
        )
del _name, _base

#: The green counterpart of the platform's best selector (the standard ``DefaultSelector``).
DefaultSelector = globals()[_std.DefaultSelector.__name__]  # type: ignore[misc]

copy_standard_names(_std, globals())
