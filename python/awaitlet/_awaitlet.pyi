"""Type stubs for the native module ``awaitlet._awaitlet``."""

from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextvars import Context
from types import CodeType, FrameType, TracebackType
from typing import Any, Self, TypeVar, final, overload

_T = TypeVar("_T")

__version__: str

class NoAwaitletContext(Exception):
    """awaitlet() was called outside a call stack started by async_def()."""

class NoAwaitOccurred(Exception):
    """async_def(..., assert_await_occurs=True) ran a function that never called awaitlet()."""

@final
class async_def_coroutine(Coroutine[Any, Any, _T]):
    """The coroutine returned by ``async_def()``."""

    @property
    def __name__(self) -> str: ...
    @property
    def __qualname__(self) -> str: ...
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
    def cr_origin(self) -> None: ...
    def send(self, value: Any, /) -> Any: ...
    @overload
    def throw(
        self, typ: type[BaseException], val: object = ..., tb: TracebackType | None = ..., /
    ) -> Any: ...
    @overload
    def throw(
        self, typ: BaseException, val: None = ..., tb: TracebackType | None = ..., /
    ) -> Any: ...
    def close(self) -> Any: ...
    def __await__(self) -> Generator[Any, None, _T]: ...
    def __next__(self) -> Any: ...

@final
class async_def_function:
    """The type of ``async_def``."""

    def __call__(
        self,
        fn: Callable[..., _T],
        /,
        *args: Any,
        assert_await_occurs: bool = False,
        **kwargs: Any,
    ) -> async_def_coroutine[_T]: ...

def async_def(
    fn: Callable[..., _T], /, *args: Any, assert_await_occurs: bool = False, **kwargs: Any
) -> Coroutine[Any, Any, _T]:
    """Run the sync callable ``fn(*args, **kwargs)`` so that it can call ``awaitlet()``."""

def awaitlet(awaitable: Awaitable[_T], /) -> _T:
    """From sync code running under ``async_def``, wait for ``awaitable`` and return its result."""

# The greenlet facade (awaitlet.greenlet).

class GreenletExit(BaseException):
    """Raised in a greenlet to kill it; a greenlet that does not catch it dies quietly."""

class GreenletError(Exception):
    """A greenlet operation awaitlet's greenlet facade cannot perform."""

class greenlet:
    """A function running on its own stack that switches with its parent."""

    run: Callable[..., Any]
    def __new__(cls, *args: Any, **kwargs: Any) -> Self: ...
    def __init__(
        self, run: Callable[..., Any] | None = None, parent: greenlet | None = None
    ) -> None: ...
    @staticmethod
    def getcurrent() -> greenlet: ...
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
    def throw(self, typ: Any = ..., val: Any = None, tb: TracebackType | None = None) -> Any: ...
    def __bool__(self) -> bool: ...

def getcurrent() -> greenlet:
    """The running greenlet (the thread's main greenlet outside any fiber)."""
