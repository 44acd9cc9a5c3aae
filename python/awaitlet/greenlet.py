"""A greenlet-compatible facade on awaitlet's fibers.

When the real ``greenlet`` package is not installed, ``import greenlet`` gives this module
(see :func:`awaitlet.install_greenlet_shim`), so that SQLAlchemy's asyncio extension and
other code written against greenlet run on awaitlet's Rust stacks.

It implements greenlet's Python API: ``getcurrent()``, a subclassable :class:`greenlet`
(``run``, ``parent``, ``switch``, ``throw``, ``dead``, ``gr_context``, ``gr_frame``) whose
instances switch to any greenlet of their thread, a main greenlet per thread,
:class:`GreenletExit`, :class:`error`, ``settrace()``/``gettrace()`` and the module's
constants, all in native code.

Code running under :func:`awaitlet.async_def` is a greenlet here too: ``getcurrent()`` there
returns a greenlet that declares ``__sqlalchemy_greenlet_provider__``, so SQLAlchemy's
``await_only()`` works inside ``async_def`` and ``awaitlet()`` inside SQLAlchemy's greenlets.
"""

from __future__ import annotations

from typing import Any

from ._awaitlet import GreenletError as error
from ._awaitlet import (
    GreenletExit,
    _greenlet_set_thread_local,  # pyright: ignore[reportPrivateUsage]
    _greenlet_total_main_greenlets,  # pyright: ignore[reportPrivateUsage]
    getcurrent,
    gettrace,
    greenlet,
    settrace,
)

__all__ = ["GreenletExit", "error", "getcurrent", "gettrace", "greenlet", "settrace"]

#: Marks this module as awaitlet's facade rather than the greenlet package.
__awaitlet_facade__ = True
#: The greenlet API level this facade follows.
__version__ = "3.0.0+awaitlet"


#: Each greenlet has its own ``contextvars`` context (``gr_context``).
GREENLET_USE_CONTEXT_VARS = True
#: Greenlets take part in the cycle collector.
GREENLET_USE_GC = True
#: ``settrace()`` is supported.
GREENLET_USE_TRACING = True
#: Main greenlets go away with their thread.
GREENLET_USE_STANDARD_THREADING = True
#: The unit of :func:`get_clocks_used_doing_optional_cleanup`.
CLOCKS_PER_SEC = 1_000_000


def get_total_main_greenlets() -> int:
    """How many main greenlets exist: one per thread that used greenlets and still exists
    (or whose main greenlet is still referenced)."""
    return int(_greenlet_total_main_greenlets())


def get_pending_cleanup_count() -> int:
    """Greenlets of exited threads waiting to be cleaned up: none here (a fiber dropped on
    another thread is finished by its own thread state, or retired with it)."""
    return 0


def get_clocks_used_doing_optional_cleanup() -> None:
    """greenlet's optional cleanup after switches does not exist here: None."""
    return None


def enable_optional_cleanup(enabled: bool) -> None:
    """greenlet's optional cleanup after switches does not exist here: nothing to enable."""
    return None


def set_thread_local(key: Any, value: Any) -> None:
    """Sets ``key`` in the calling thread state's dict (greenlet's test helper)."""
    _greenlet_set_thread_local(key, value)
