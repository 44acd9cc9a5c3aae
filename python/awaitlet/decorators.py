"""greenletio's decorators on awaitlet's fibers: ``async_``, ``await_`` and ``spawn``.

``async_(fn)`` makes a sync function awaitable: ``await async_(fn)(*args)`` runs it on a
fiber with :func:`awaitlet.async_def`.  ``await_(awaitable)``, called from sync code, waits
for the awaitable and returns its result:

- below ``async_`` (or any ``async_def``), it suspends the fiber with :func:`awaitlet.awaitlet`
  while the event loop keeps running other tasks;
- with no event loop running in the thread at all, it runs the awaitable to completion on an
  asyncio event loop of the thread's own, created on first use and reused by later calls
  (:func:`close_thread_loop` closes it).

So one sync code path serves both sync callers and async callers (through ``async_``).
Called from sync code that runs directly in a running event loop (a callback, or a
coroutine that called a plain function), ``await_()`` cannot do either without blocking
that loop: it raises :class:`AwaitInEventLoopError`.

``@await_`` on an async function makes it a sync function that does ``await_(fn(...))``.
``spawn(fn, *args)`` starts ``async_(fn)(*args)`` as an asyncio task.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from ._awaitlet import NoAwaitletContext, _call_on_fiber, _wait_for, async_def, awaitlet
from ._awaitlet import await_ as _native_await_
from ._thread_loop import close_thread_loop as _close_thread_loop
from ._thread_loop import run_on_thread_loop

__all__ = [
    "AwaitInEventLoopError",
    "async_",
    "await_",
    "close_thread_loop",
    "spawn",
]

_get_running_loop = asyncio.events._get_running_loop

_P = ParamSpec("_P")
_T = TypeVar("_T")


class AwaitInEventLoopError(NoAwaitletContext, RuntimeError):
    """``await_()`` was called from sync code running directly in a running event loop.

    The code is neither below :func:`async_` / :func:`awaitlet.async_def` (so it has no
    fiber to suspend) nor free to start an event loop of its own (one is already running in
    the thread, and blocking it would deadlock).  Run the sync code with ``async_`` instead.
    A :class:`RuntimeError`, as greenletio raises, and a :class:`awaitlet.NoAwaitletContext`.
    """


def _write_back(context: contextvars.Context) -> None:
    """Set, in the current context, every variable whose value differs in ``context``."""
    missing = object()
    current = contextvars.copy_context()
    for variable, value in context.items():
        if current.get(variable, missing) is not value:
            variable.set(value)


def _is_callable(candidate: object) -> bool:
    # Not callable() inline: narrowing an `object` with it gives mypy a synthetic type that
    # stubtest reports as a module attribute.
    return callable(candidate)


def _make_async(fn: Callable[_P, _T], with_context: bool) -> Callable[_P, Coroutine[Any, Any, _T]]:
    if not callable(fn):
        raise TypeError(f"async_() needs a callable, not {type(fn).__name__}")
    if with_context:

        @functools.wraps(fn)
        async def call_in_copied_context(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            context = contextvars.copy_context()

            def run_in_copied_context() -> _T:
                return context.run(fn, *args, **kwargs)

            try:
                return await async_def(run_in_copied_context)
            finally:
                # As greenletio does: what the sync code set is seen by the caller, even
                # when it raised.
                _write_back(context)

        return call_in_copied_context

    @functools.wraps(fn)
    async def call_on_fiber(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await _call_on_fiber(fn, args, kwargs)

    return call_on_fiber


@overload
def async_(
    fn: Callable[_P, _T], /, *, with_context: bool = False
) -> Callable[_P, Coroutine[Any, Any, _T]]: ...


@overload
def async_(
    fn: None = None, /, *, with_context: bool = False
) -> Callable[[Callable[_P, _T]], Callable[_P, Coroutine[Any, Any, _T]]]: ...


def async_(
    fn: Callable[_P, _T] | None = None, /, *, with_context: bool = False
) -> (
    Callable[_P, Coroutine[Any, Any, _T]]
    | Callable[[Callable[_P, _T]], Callable[_P, Coroutine[Any, Any, _T]]]
):
    """Make the sync function ``fn`` awaitable: ``await async_(fn)(*args, **kwargs)``.

    The returned coroutine function runs ``fn(*args, **kwargs)`` on a fiber of its own
    (:func:`awaitlet.async_def`), so ``fn`` and anything it calls can use :func:`await_`
    without blocking the event loop.  Usable as ``@async_``, ``@async_()`` and
    ``@async_(with_context=True)``.

    Args:
        fn: the sync function; omit it to get a decorator.
        with_context: run ``fn`` in a copy of the caller's :mod:`contextvars` context, and
            afterwards (also when ``fn`` raised) set in the caller's context every variable
            ``fn`` changed.  Without it, ``fn`` runs in the caller's own context, so its
            changes are seen at once (greenletio runs it in an empty context instead).

    Exceptions from ``fn`` propagate from the ``await`` with their traceback; cancelling
    the awaiting task raises :class:`asyncio.CancelledError` in ``fn`` at its pending
    ``await_()``.
    """
    if fn is None:
        return functools.partial(_make_async, with_context=with_context)
    return _make_async(fn, with_context)


def close_thread_loop() -> None:
    """Close the event loop that :func:`await_` made for this thread, if it made one.

    The next ``await_()`` with no loop running makes a new one.  A thread's loop is also
    closed when the thread ends, and the main thread's when the interpreter exits.
    """
    _close_thread_loop()


def _running_event_loop_name() -> str | None:
    """The kind of event loop running in this thread (if any)."""
    if _get_running_loop() is not None:
        return "an asyncio event loop"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_root_task()
        except RuntimeError:
            pass
        else:
            return "Trio"
    return None


# await_() is native (`_awaitlet.await_`, see below): given a coroutine, it does
# `_awaitlet._wait_for(coroutine)`, anything else goes to _await_other().
# _wait_for(awaitable): below async_def (where awaitlet() suspends), _on_fiber(awaitable);
# with no loop running, it runs a coroutine's first step itself (the common case) or calls
# _off_fiber(awaitable), as it does in every other case.


def _on_fiber(awaitable: Awaitable[_T]) -> _T:  # pyright: ignore[reportUnusedFunction] - called by _awaitlet
    # Called from a Python frame: awaitlet() shows the collector its caller's frame while the
    # sync code is suspended.
    return awaitlet(awaitable)


def _off_fiber(awaitable: Awaitable[_T]) -> _T:  # pyright: ignore[reportUnusedFunction] - called by _awaitlet
    if _get_running_loop() is None and "trio" not in sys.modules:
        return run_on_thread_loop(awaitable)
    running = _running_event_loop_name()
    if running is not None:
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # it will never run: no "never awaited" warning
        raise AwaitInEventLoopError(
            f"await_() called from sync code running directly in {running}: it has no fiber"
            " to suspend, and waiting would block the loop. Run the sync code with"
            " awaitlet.decorators.async_() (or awaitlet.async_def()) instead."
        )
    return run_on_thread_loop(awaitable)


def _await_other(awaitable_or_fn: object) -> Any:  # pyright: ignore[reportUnusedFunction] - called by _awaitlet
    """``await_()`` of anything but a coroutine (``await_`` takes coroutines itself)."""
    if inspect.isawaitable(awaitable_or_fn):
        return _wait_for(awaitable_or_fn)
    return _calling_and_waiting(awaitable_or_fn)


def _calling_and_waiting(async_fn: object) -> Callable[..., Any]:
    """``@await_`` on an async function: a sync function that calls it and waits."""
    # Annotations do not stop a caller passing anything.
    if not _is_callable(async_fn):
        kind = type(async_fn).__name__
        raise TypeError(f"await_() needs an awaitable or an async function, not {kind}")
    function = cast("Callable[..., Awaitable[Any]]", async_fn)

    @functools.wraps(function)
    def call_and_wait(*args: Any, **kwargs: Any) -> Any:
        return _wait_for(function(*args, **kwargs))

    return call_and_wait


if TYPE_CHECKING:
    # What type checkers and the documentation see; at run time await_ is
    # _awaitlet.await_, native so that a coroutine costs no Python frame (it does
    # _wait_for(coroutine); anything else goes to _await_other()).

    @overload
    def await_(awaitable_or_fn: Awaitable[_T], /) -> _T: ...

    @overload
    def await_(awaitable_or_fn: Callable[_P, Awaitable[_T]], /) -> Callable[_P, _T]: ...

    def await_(
        awaitable_or_fn: Awaitable[_T] | Callable[_P, Awaitable[_T]], /
    ) -> _T | Callable[_P, _T]:
        """Wait for an awaitable from sync code and return its result, or decorate an async
        function to be called from sync code.

        ``await_(awaitable)`` suspends the fiber of the surrounding :func:`async_` (or
        :func:`awaitlet.async_def`) while the event loop awaits the awaitable.  With no event
        loop running in the thread, it runs the awaitable on an event loop of the thread's own
        (made on first use, reused after; see :func:`close_thread_loop`).

        ``@await_`` on an async function gives a sync function that calls it and waits, the
        same way, for what it returns.

        Raises:
            AwaitInEventLoopError: called from sync code running directly in a running event
                loop (neither below ``async_`` nor free to start a loop).
            TypeError: the argument is neither awaitable nor callable.

        Whatever the awaitable raises is raised here, with its traceback.
        """
        return _native_await_(awaitable_or_fn)

else:
    await_ = _native_await_


def spawn(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> asyncio.Task[_T]:
    """Start ``fn(*args, **kwargs)`` on a fiber, as a task of the running asyncio loop.

    ``fn`` is a sync function; it runs as ``async_(fn)(*args, **kwargs)`` does, so it can
    call :func:`await_`.  Call ``spawn`` from a coroutine or from sync code below ``async_``.
    The task runs in a copy of the current :mod:`contextvars` context, as any task does.

    Raises:
        RuntimeError: no asyncio event loop is running in this thread.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "spawn() needs a running asyncio event loop: call it from a coroutine or from"
            " sync code run by async_()"
        ) from None
    name = getattr(fn, "__qualname__", None)
    return loop.create_task(_call_on_fiber(fn, args, kwargs), name=name)
