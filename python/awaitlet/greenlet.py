"""A greenlet-compatible facade on awaitlet's fibers.

When the real ``greenlet`` package is not installed, ``import greenlet`` gives this module
(see :func:`awaitlet.install_greenlet_shim`), so that SQLAlchemy's asyncio extension and
other code written against greenlet run on awaitlet's Rust stacks.

It implements the part of greenlet that switches between a greenlet and its parent, which is
all SQLAlchemy and awaitlet use: ``getcurrent()``, subclassable :class:`greenlet` (``run``,
``parent``, ``switch``, ``throw``, ``dead``, ``gr_context``, ``gr_frame``), a main greenlet
per thread, :class:`GreenletExit` and :class:`error`, all in native code.  Switching anywhere
else (to a sibling, to a greenlet of another family) raises :class:`error` naming what is not
supported.

Code running under :func:`awaitlet.async_def` is a greenlet here too: ``getcurrent()`` there
returns a greenlet that declares ``__sqlalchemy_greenlet_provider__``, so SQLAlchemy's
``await_only()`` works inside ``async_def`` and ``awaitlet()`` inside SQLAlchemy's greenlets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from ._awaitlet import GreenletError as error
from ._awaitlet import GreenletExit, getcurrent, greenlet

__all__ = ["GreenletExit", "error", "getcurrent", "gettrace", "greenlet", "settrace"]

#: Marks this module as awaitlet's facade rather than the greenlet package.
__awaitlet_facade__ = True
#: The greenlet API level this facade follows.
__version__ = "3.0.0+awaitlet"


def gettrace() -> None:
    """The switch tracing callback: always None, as the facade does not support tracing."""
    return None


def settrace(callback: Callable[[str, tuple[greenlet, greenlet]], object] | None) -> NoReturn:
    """Greenlet switch tracing is not supported by awaitlet's greenlet facade.

    Raises:
        error: always.
    """
    raise error("awaitlet's greenlet does not support settrace()")
