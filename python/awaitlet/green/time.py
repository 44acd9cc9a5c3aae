"""Green :mod:`time`: ``sleep`` suspends the fiber on the event loop instead of blocking it.

Everything the standard :mod:`time` module has is here under the same name; only
:func:`sleep` differs, and only on a fiber with an event loop running in this thread.
"""

from __future__ import annotations

import math as _math
import time as _std
from time import *  # noqa: F403  (the drop-in module has every public name)

from . import _copy_public_and_private, _green_loop, _sleep_on_loop


def _green_sleep(secs: float, /) -> None:
    """Suspend for ``secs`` seconds: on a fiber, the loop runs other tasks meanwhile.

    Anywhere else it is :func:`time.sleep`.  The argument is checked as the standard
    function checks it (:class:`TypeError`, :class:`ValueError` for a negative or NaN value).
    """
    if _green_loop() is None:
        return _std.sleep(secs)
    if not isinstance(secs, (int, float)):
        raise TypeError(f"'{type(secs).__name__}' object cannot be interpreted as an integer")
    if _math.isnan(secs):
        raise ValueError("Invalid value NaN (not a number)")
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    _sleep_on_loop(float(secs))
    return None


_green_sleep.__name__ = _green_sleep.__qualname__ = "sleep"
sleep = _green_sleep  # type: ignore[assignment]

_copy_public_and_private(_std, globals())
