"""Green :mod:`time`: ``sleep`` suspends the fiber on the event loop instead of blocking it.

Everything the standard :mod:`time` module has is here under the same name; only
:func:`sleep` differs, and only on a fiber with an event loop running in this thread, where
it is ``asyncio.sleep`` (``trio.sleep`` under Trio).
"""

from __future__ import annotations

import math as _math
import time as _std

# The drop-in module has every name of the standard one (type checkers see them here).
from time import *  # noqa: F403  # pyright: ignore[reportWildcardImportFromLibrary]
from typing import cast

from ._loop import copy_standard_names, green_loop, sleep_on_loop


def _green_sleep(secs: float, /) -> None:
    """Suspend for ``secs`` seconds: on a fiber, the loop runs other tasks meanwhile.

    Anywhere else it is :func:`time.sleep`.  The argument is checked as the standard
    function checks it (:class:`TypeError`, :class:`ValueError` for a negative or NaN value).
    """
    loop = green_loop()
    if loop is None:
        return _std.sleep(secs)
    value = cast(object, secs)
    if not isinstance(value, (int, float)):
        raise TypeError(f"'{type(secs).__name__}' object cannot be interpreted as an integer")
    if _math.isnan(value):
        raise ValueError("Invalid value NaN (not a number)")
    if value < 0:
        raise ValueError("sleep length must be non-negative")
    sleep_on_loop(loop, float(value))
    return None


_green_sleep.__name__ = _green_sleep.__qualname__ = "sleep"
sleep = _green_sleep  # type: ignore[assignment]

copy_standard_names(_std, globals())
