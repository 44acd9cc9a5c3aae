"""A greenlet-compatible facade on awaitlet's fibers.

When the real ``greenlet`` package is not installed, ``import greenlet`` gives this module
(see :func:`awaitlet.install_greenlet_shim`), so that SQLAlchemy's asyncio extension and
other code written against greenlet run on awaitlet's Rust stacks.

It implements the part of greenlet that switches between a greenlet and its parent, which is
all SQLAlchemy and awaitlet use: ``getcurrent()``, subclassable :class:`greenlet` (``run``,
``parent``, ``switch``, ``throw``, ``dead``, ``gr_context``, ``gr_frame``), a main greenlet
per thread, :class:`GreenletExit` and :class:`error`.  Switching anywhere else (to a sibling,
to a greenlet of another family) raises :class:`error` naming what is not supported.

Code running under :func:`awaitlet.async_def` is a greenlet here too: ``getcurrent()`` there
returns a greenlet that declares ``__sqlalchemy_greenlet_provider__``, so SQLAlchemy's
``await_only()`` works inside ``async_def`` and ``awaitlet()`` inside SQLAlchemy's greenlets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from . import _awaitlet

__all__ = ["GreenletExit", "error", "getcurrent", "gettrace", "greenlet", "settrace"]

#: Marks this module as awaitlet's facade rather than the greenlet package.
__awaitlet_facade__ = True
#: The greenlet API level this facade follows.
__version__ = "3.0.0+awaitlet"

error = _awaitlet.GreenletError
GreenletExit = _awaitlet.GreenletExit

_MISSING: Any = object()
_per_thread = threading.local()


def _pack(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What a switch delivers: greenlet's convention for switch() arguments."""
    if kwargs:
        return (args, kwargs)
    if len(args) == 1:
        return args[0]
    return args


def _exception(typ: Any, val: Any, tb: TracebackType | None) -> BaseException:
    """The exception ``throw(typ, val, tb)`` raises, with greenlet's argument rules."""
    if isinstance(typ, BaseException):
        if val is not None:
            raise TypeError("instance exception may not have a separate value")
        exc = typ
    elif isinstance(typ, type) and issubclass(typ, BaseException):
        if isinstance(val, typ):
            exc = val
        elif val is None:
            exc = typ()
        elif isinstance(val, tuple):
            exc = typ(*val)
        else:
            exc = typ(val)
    else:
        raise TypeError(f"exceptions must be classes, or instances, not {type(typ).__name__}")
    if tb is not None:
        exc = exc.with_traceback(tb)
    return exc


class greenlet(_awaitlet.fiber):  # noqa: N801 - greenlet's own name
    """A function running on its own stack that switches with its parent."""

    _parent: greenlet | None

    def __init__(
        self, run: Callable[..., Any] | None = None, parent: greenlet | None = None
    ) -> None:
        if run is not None:
            self.run = run
        self._parent = parent if parent is not None else getcurrent()
        self._initial_context: Any = None
        self._is_main = False

    # -- relations ---------------------------------------------------------------------

    @property
    def parent(self) -> greenlet | None:
        """The greenlet this one switches back to (None for a main greenlet)."""
        return self._parent

    @parent.setter
    def parent(self, parent: greenlet) -> None:
        if not isinstance(parent, greenlet):
            raise TypeError("parent must be a greenlet")
        if self._started:
            raise error("awaitlet's greenlet cannot change the parent of a started greenlet")
        self._parent = parent

    @property
    def dead(self) -> bool:
        """True once the greenlet's ``run`` has finished (or it was killed)."""
        return self._dead

    def __bool__(self) -> bool:
        # Active: started and not dead; a main greenlet always is.
        return self._is_main or (self._started and not self._dead)

    @property
    def gr_frame(self) -> FrameType | None:
        """The innermost frame of a suspended greenlet."""
        return self._frame

    @property
    def gr_context(self) -> Any:
        """The ``contextvars.Context`` the greenlet runs in."""
        if self is getcurrent():
            return _awaitlet._current_context()
        if self._is_main:
            raise error(
                "awaitlet's greenlet cannot read gr_context of a main greenlet that is not running"
            )
        if not self._started:
            return self._initial_context
        return self._context

    @gr_context.setter
    def gr_context(self, context: Any) -> None:
        if self is getcurrent():
            _awaitlet._set_current_context(context)
        elif self._is_main:
            raise error(
                "awaitlet's greenlet cannot set gr_context of a main greenlet that is not running"
            )
        elif not self._started:
            self._initial_context = context
        else:
            self._context = context

    # -- switching ---------------------------------------------------------------------

    def switch(self, *args: Any, **kwargs: Any) -> Any:
        """Switch to this greenlet, handing it ``args``/``kwargs``; return what comes back."""
        current = getcurrent()
        if self is current:
            return _pack(args, kwargs)
        if current.parent is self:
            # The suspended stack must not keep its own greenlet alive, or dropping that
            # greenlet could never kill it.
            del current
            return _awaitlet._switch_to_parent(_pack(args, kwargs))
        if self._parent is current:
            if self._dead:
                return _pack(args, kwargs)
            try:
                if not self._started:
                    return self._start(
                        self._take_run(), args, kwargs or None, self._initial_context
                    )
                return self._send(_pack(args, kwargs))
            except GreenletExit as exit_:
                if self._dead:
                    return exit_
                raise
        raise error(
            "awaitlet's greenlet only switches between a greenlet and its parent; "
            f"cannot switch from {current!r} to {self!r}"
        )

    def throw(
        self, typ: Any = GreenletExit, val: Any = None, tb: TracebackType | None = None
    ) -> Any:
        """Raise an exception in this greenlet at the point where it switched away."""
        exc = _exception(typ, val, tb)
        current = getcurrent()
        if self is current:
            raise exc
        if self._parent is not current:
            raise error(
                "awaitlet's greenlet only throws into a child greenlet from its parent; "
                f"cannot throw from {current!r} into {self!r}"
            )
        if not self._started or self._dead:
            self._kill_unstarted()
            if isinstance(exc, GreenletExit):
                return exc
            raise exc
        try:
            return self._throw(exc)
        except GreenletExit as exit_:
            if self._dead:
                return exit_
            raise

    def _take_run(self) -> Callable[..., Any]:
        run: Callable[..., Any] = self.__dict__.pop("run", _MISSING)
        if run is _MISSING:
            run = getattr(self, "run", _MISSING)
        if run is _MISSING:
            raise AttributeError("run")
        return run

    def __repr__(self) -> str:
        if self._is_main:
            state = "main"
        elif self._dead:
            state = "dead"
        elif self._started:
            state = "suspended" if self._suspended else "current active"
        else:
            state = "pending"
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} object at {id(self):#x} ({state})>"
        )

    getcurrent: Callable[[], greenlet]  # set below as a static method


class _AsyncDefGreenlet(greenlet):
    """Stands for code running under :func:`awaitlet.async_def` in this facade.

    Its parent is whatever resumed that code; switching to the parent is ``awaitlet()``.
    """

    __sqlalchemy_greenlet_provider__ = True

    def __init__(self) -> None:  # noqa: D107 - created by getcurrent() only
        self._parent = None
        self._initial_context = None
        self._is_main = False

    @property
    def parent(self) -> greenlet | None:
        """The greenlet that resumed this ``async_def`` code, while it runs."""
        if self is getcurrent():
            self._parent = _greenlet_at(1)
        return self._parent

    @parent.setter
    def parent(self, parent: greenlet) -> None:
        raise error("awaitlet's greenlet cannot change the parent of async_def() code")

    @property
    def dead(self) -> bool:
        """False while the ``async_def`` code this stands for can run."""
        return False

    def __bool__(self) -> bool:
        return True

    def switch(self, *args: Any, **kwargs: Any) -> Any:
        """Only the running ``async_def`` code can switch to itself."""
        if self is getcurrent():
            return _pack(args, kwargs)
        raise error("awaitlet's greenlet cannot switch into async_def() code; await it instead")

    def throw(
        self, typ: Any = GreenletExit, val: Any = None, tb: TracebackType | None = None
    ) -> Any:
        """Throwing into ``async_def`` code is done with its coroutine's ``throw()``."""
        if self is getcurrent():
            raise _exception(typ, val, tb)
        raise error("awaitlet's greenlet cannot throw into async_def() code; use its coroutine")

    def __repr__(self) -> str:
        return f"<awaitlet.greenlet async_def greenlet object at {id(self):#x}>"


def _main_greenlet() -> greenlet:
    main = getattr(_per_thread, "main", None)
    if main is None:
        main = greenlet.__new__(greenlet)
        main._parent = None
        main._initial_context = None
        main._is_main = True
        _per_thread.main = main
    return main


def _greenlet_at(level: int) -> greenlet:
    found = _awaitlet._fiber_greenlet(level)
    if found is False:
        return _main_greenlet()
    if found is None:
        found = _AsyncDefGreenlet()
        _awaitlet._adopt_greenlet(level, found)
    return found


def getcurrent() -> greenlet:
    """The greenlet that is running (the thread's main greenlet outside any fiber)."""
    found = _awaitlet._fiber_greenlet(0)
    if found is False:
        return _main_greenlet()
    return found if found is not None else _greenlet_at(0)


greenlet.getcurrent = staticmethod(getcurrent)


def gettrace() -> None:
    """No greenlet switch tracing is installed (the facade does not support it)."""
    return None


def settrace(callback: Any) -> None:
    """Greenlet switch tracing is not supported by awaitlet's greenlet facade."""
    raise error("awaitlet's greenlet does not support settrace()")
