"""Type stubs for the native module ``awaitlet._awaitlet``."""

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextvars import Context
from types import CodeType, FrameType, TracebackType
from typing import Any, NoReturn, ParamSpec, TypeVar, final, overload

from typing_extensions import Self, disjoint_base

__all__ = [
    "__version__",
    "async_def_coroutine",
    "async_def_function",
    "async_def",
    "awaitlet",
    "in_async_def",
    "NoAwaitletContext",
    "NoAwaitOccurred",
    "greenlet",
    "getcurrent",
    "settrace",
    "gettrace",
    "_greenlet_total_main_greenlets",
    "_greenlet_set_thread_local",
    "GreenletExit",
    "GreenletError",
    "_PortalHandoff",
    "_portal_drive",
    "_TaskCoroField",
    "_first_step",
    "_wait_for",
    "_call_on_fiber",
    "await_",
    "_set_thread_bridge",
    "_BridgeState",
]

_T = TypeVar("_T")
_P = ParamSpec("_P")

__version__: str

class NoAwaitletContext(Exception):
    """Raised by ``awaitlet()`` when it is called outside a call stack that ``async_def()``
    (or a greenlet providing for SQLAlchemy's ``await_only()``) started."""

class NoAwaitOccurred(Exception):
    """Raised by ``async_def(fn, ..., assert_await_occurs=True)`` when ``fn`` returned
    without calling ``awaitlet()``."""

def in_async_def() -> bool:
    """Whether ``awaitlet()`` called here would suspend rather than raise
    :class:`NoAwaitletContext`: the caller runs below ``async_def()`` (or in a greenlet that
    awaits on behalf of its code, as SQLAlchemy's does)."""

def _call_on_fiber(
    fn: Callable[..., _T], args: tuple[Any, ...], kwargs: dict[str, Any] | None = None, /
) -> async_def_coroutine[_T]:
    """``async_def(fn, *args, **kwargs)``, with the arguments given as a tuple and a dict;
    every item of ``kwargs`` goes to ``fn`` (none is reserved for ``async_def``)."""

def _first_step(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any],
    coroutine: Coroutine[Any, Any, _T],
    /,
) -> tuple[Any, Context | None]:
    """Run the first step of ``coroutine`` as ``task`` on ``loop`` (no loop may be running),
    in a copy of the caller's context: ``(value, None)`` if it returned ``value``,
    ``(yielded, context)`` if it yielded (the loop must finish it, in ``context``)."""

@overload
def await_(awaitable_or_fn: Awaitable[_T], /) -> _T:
    """``awaitlet.decorators.await_`` (documented there): a coroutine goes to
    ``_wait_for()``, anything else to ``awaitlet.decorators._await_other()``."""

@overload
def await_(awaitable_or_fn: Callable[_P, Awaitable[_T]], /) -> Callable[_P, _T]: ...
def _wait_for(awaitable: Awaitable[_T], /) -> _T:
    """What ``awaitlet.decorators.await_(awaitable)`` does: below ``async_def()``, waits with
    ``awaitlet()``; with no event loop running, runs ``awaitable`` on the thread's own loop (a
    coroutine's first step natively, when the thread's bridge task is idle); otherwise
    raises ``AwaitInEventLoopError`` (through ``awaitlet.decorators``)."""

def _set_thread_bridge(bridge: _BridgeState | None, /) -> None:
    """Make ``bridge`` the thread's bridge task for ``_wait_for()`` (a weak reference)."""

@disjoint_base
class _BridgeState:
    """What ``_wait_for()`` reads of a thread's bridge task (the base of
    ``awaitlet._thread_loop._Bridge``)."""

    # None until the subclass sets them.
    loop: asyncio.AbstractEventLoop
    task: asyncio.Task[None]
    ready: Any
    idle: bool
    def __new__(cls, *args: Any, **kwargs: Any) -> Self: ...

@final
class async_def_coroutine(Coroutine[Any, Any, _T]):
    """The coroutine ``async_def()`` returns: awaiting it runs the sync function on its own
    fiber stack and gives its result."""

    __name__: str
    __qualname__: str
    def __new__(cls, *args: Any, **kwargs: Any) -> NoReturn: ...
    @property
    def cr_running(self) -> bool: ...
    @property
    def cr_suspended(self) -> bool: ...
    @property
    def cr_state(self) -> str: ...
    @property
    def cr_await(self) -> Any | None: ...
    @property
    def cr_frame(self) -> FrameType | None: ...
    @property
    def cr_code(self) -> CodeType | None: ...
    @property
    def cr_origin(self) -> tuple[tuple[str, int, str], ...] | None: ...
    def send(self, value: Any, /) -> Any: ...
    @overload
    def throw(
        self,
        typ: type[BaseException],
        val: BaseException | object = None,
        tb: TracebackType | None = None,
        /,
    ) -> Any: ...
    @overload
    def throw(
        self, typ: BaseException, val: None = None, tb: TracebackType | None = None, /
    ) -> Any: ...
    def close(self) -> Any: ...
    def __await__(self) -> Generator[Any, None, _T]: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> Any: ...

@final
class async_def_function:
    """The type of ``async_def``: a coroutine function implemented natively."""

    # Set on the one instance, async_def, by the package: what inspect reads of a function.
    __name__: str
    __qualname__: str
    __code__: CodeType
    __defaults__: tuple[Any, ...] | None
    __kwdefaults__: dict[str, Any] | None
    __annotations__: dict[str, Any]
    __text_signature__: str | None
    def __new__(cls, *args: Any, **kwargs: Any) -> NoReturn: ...
    def __call__(
        self,
        fn: Callable[..., _T],
        /,
        *args: Any,
        assert_await_occurs: bool = False,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, _T]: ...
    def __get__(self, instance: object, owner: type | None = None, /) -> Self: ...

async_def: async_def_function

def awaitlet(awaitable: Awaitable[_T]) -> _T:
    """Wait for ``awaitable`` from sync code running under ``async_def()``; return its result.

    Raises what the awaitable raises, and :class:`NoAwaitletContext` if not called under
    ``async_def()`` (nor in a greenlet that provides for SQLAlchemy's ``await_only()``).
    """

# The greenlet facade (awaitlet.greenlet).

class GreenletExit(BaseException):
    """Raised in a greenlet to kill it; a greenlet that does not catch it dies quietly."""

class GreenletError(Exception):
    """A greenlet operation awaitlet's greenlet facade cannot perform."""

_TraceCallback = Callable[[str, tuple["greenlet", "greenlet"]], object]

@disjoint_base
class greenlet:
    """A function running on its own stack, switching with any greenlet of its thread."""

    GreenletExit: type[GreenletExit]
    error: type[GreenletError]
    run: Callable[..., Any]
    def __new__(cls, *args: Any, **kwargs: Any) -> Self: ...
    def __init__(
        self, run: Callable[..., Any] | None = None, parent: greenlet | None = None
    ) -> None: ...
    @staticmethod
    def getcurrent() -> greenlet: ...
    @staticmethod
    def settrace(callback: _TraceCallback | None) -> _TraceCallback | None: ...
    @staticmethod
    def gettrace() -> _TraceCallback | None: ...
    @property
    def parent(self) -> greenlet | None: ...
    @parent.setter
    def parent(self, parent: greenlet) -> None: ...
    @property
    def dead(self) -> bool: ...
    @property
    def gr_frame(self) -> FrameType | None: ...
    @property
    def gr_context(self) -> Context | None: ...
    @gr_context.setter
    def gr_context(self, context: Context | None) -> None: ...
    def switch(self, *args: Any, **kwargs: Any) -> Any: ...
    @overload
    def throw(
        self,
        typ: type[BaseException] | None = None,
        val: BaseException | object = None,
        tb: TracebackType | None = None,
    ) -> Any: ...
    @overload
    def throw(
        self, typ: BaseException, val: None = None, tb: TracebackType | None = None
    ) -> Any: ...
    def __bool__(self) -> bool: ...
    def __del__(self) -> None: ...

def getcurrent() -> greenlet:
    """The running greenlet (the thread's main greenlet outside any fiber)."""

def settrace(callback: _TraceCallback | None) -> _TraceCallback | None:
    """Sets the calling thread's switch trace callback (None removes it); returns the
    previous one."""

def gettrace() -> _TraceCallback | None:
    """The calling thread's switch trace callback, or None."""

def _greenlet_total_main_greenlets() -> int: ...
def _greenlet_set_thread_local(key: Any, value: Any) -> None: ...

# awaitlet.portal's step loop (private; see python/awaitlet/portal.py).

@final
class _PortalHandoff:
    """Yields one value to the task once, then returns what the task sends back."""

    def __await__(self) -> Self: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any) -> Any: ...

@final
class _TaskCoroField:
    """Where asyncio's C ``Task`` keeps its coroutine, found in ``task`` (created with
    ``coro``, not run) as the one word of the object that points to ``coro``; raises
    ``RuntimeError`` if there is not exactly one."""

    def __new__(cls, task: asyncio.Task[Any], coro: Coroutine[Any, Any, Any], /) -> Self: ...
    @property
    def offset(self) -> int: ...
    def replace(self, task: asyncio.Task[Any], old: object, new: object, /) -> None:
        """Make ``task`` hold ``new`` as its coroutine instead of ``old``, which it must hold."""

def _portal_drive(
    coro: Coroutine[Any, Any, _T],
    value: Any,
    exception: BaseException | None,
    detach: type[BaseException],
) -> _T:
    """Run ``coro`` to its end from an ``async_def()`` fiber, handing what it yields to the
    task that awaits that fiber's coroutine."""
