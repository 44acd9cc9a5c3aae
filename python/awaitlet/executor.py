"""aiofutures' executor on awaitlet: run coroutines from sync code, on a loop in its own thread.

:class:`AsyncExecutor` is a :class:`concurrent.futures.Executor` whose ``submit(coro_fn,
*args)`` runs ``coro_fn(*args)`` as a task of an asyncio event loop that runs in the
executor's own daemon thread, and returns a :class:`concurrent.futures.Future` for its
result: sync code gets the concurrency of asyncio without threads per call.  From a task of
that loop, :meth:`AsyncExecutor.sync_to_async` runs sync code without blocking the loop: on
a fiber of the loop (:func:`awaitlet.async_def`, so the code can call
:func:`awaitlet.awaitlet`), or in a thread pool for truly blocking work.

:func:`run_async` and :func:`sync_to_async` do the same on a global executor, made on first
use (:func:`default_executor`).  ``AWAITLET_EXECUTOR_UVLOOP=1`` in the environment makes
executors that are not told otherwise run uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import functools
import importlib
import inspect
import itertools
import os
import sys
import threading
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, ParamSpec, TypeVar

from ._awaitlet import _call_on_fiber

__all__ = [
    "UVLOOP_ENVIRONMENT_VARIABLE",
    "AsyncExecutor",
    "default_executor",
    "run_async",
    "sync_to_async",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")

UVLOOP_ENVIRONMENT_VARIABLE = "AWAITLET_EXECUTOR_UVLOOP"
"""Environment variable: ``1`` (or ``true``, ``yes``) makes executors created without
``use_uvloop``/``loop_factory`` run uvloop if it is installed (the standard loop if not)."""

_executor_numbers = itertools.count()


def _uvloop_requested() -> bool:
    value = os.environ.get(UVLOOP_ENVIRONMENT_VARIABLE, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    # Imported by name: uvloop is optional, and type checkers need not have it.
    factory: Callable[[], asyncio.AbstractEventLoop] = importlib.import_module(
        "uvloop"
    ).new_event_loop
    return factory


def _choose_loop_factory(
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None, use_uvloop: bool | None
) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop_factory is not None:
        if use_uvloop:
            raise ValueError("pass loop_factory or use_uvloop=True, not both")
        return loop_factory
    if use_uvloop:
        return _uvloop_factory()  # asked for explicitly: its absence is an error
    if use_uvloop is None and _uvloop_requested():
        try:
            return _uvloop_factory()
        except ImportError:
            # The variable states a preference for every environment; where uvloop is not
            # installed (Windows, say), the standard loop serves.
            pass
    # Like aiofutures: the event loop policy decides (uvloop.install() is honoured).
    return asyncio.new_event_loop


async def _await_any(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


@types.coroutine
def _resumed_by_the_task() -> Generator[None, None, None]:
    """Suspend once, handing ``None`` to whoever drives the coroutine."""
    yield


class _Submission:
    """A coroutine waiting to start on the loop, with its future and its context."""

    __slots__ = ("coroutine", "future", "context")

    def __init__(
        self,
        coroutine: Coroutine[Any, Any, Any],
        future: concurrent.futures.Future[Any],
        context: contextvars.Context,
    ) -> None:
        self.coroutine = coroutine
        self.future = future
        self.context = context


class AsyncExecutor(concurrent.futures.Executor):
    """An executor that runs coroutine functions on an event loop in its own daemon thread.

    ``submit(coro_fn, *args, **kwargs)`` calls ``coro_fn(*args, **kwargs)`` in the calling
    thread and runs the coroutine it returns as a task of the executor's loop; the
    :class:`concurrent.futures.Future` it returns gets the task's result or exception (with
    its traceback).  Cancelling that future cancels the task.  The task runs in a copy of
    the submitting thread's :mod:`contextvars` context.  ``map`` and use as a context
    manager come from :class:`concurrent.futures.Executor`.

    Args:
        loop_factory: makes the event loop (called in the executor's thread).
        use_uvloop: run uvloop (``ImportError`` if it is not installed); ``False`` never
            does; ``None`` (the default) follows the environment variable
            :data:`UVLOOP_ENVIRONMENT_VARIABLE`, else the event loop policy.
        thread_pool: the executor :meth:`sync_to_async` uses with ``blocking=True``; by
            default the loop's default executor.  The caller keeps ownership: shutdown does
            not shut it down.
        name: the name of the executor's thread (default ``AsyncExecutor-<n>``).

    Calling ``result()`` of one of its futures from a task of the executor's own loop
    would block that loop forever; await the coroutine there instead.
    """

    def __init__(
        self,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        use_uvloop: bool | None = None,
        thread_pool: concurrent.futures.Executor | None = None,
        name: str | None = None,
    ) -> None:
        factory = _choose_loop_factory(loop_factory, use_uvloop)
        self._thread_pool = thread_pool
        self._lock = threading.Lock()
        self._queue: list[_Submission] = []
        self._drain_scheduled = False
        self._shutdown = False
        self._cancel_queued = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_requested: asyncio.Event | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._startup_errors: list[BaseException] = []
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop,
            args=(factory, ready),
            name=name or f"AsyncExecutor-{next(_executor_numbers)}",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        if self._startup_errors:
            self._thread.join()
            raise self._startup_errors[0]
        self._loop: asyncio.AbstractEventLoop = self._started_loop

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "running"
        return f"<{type(self).__name__} {self._thread.name} {state}>"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The executor's event loop (running in :attr:`thread` until shut down)."""
        return self._loop

    @property
    def is_shutdown(self) -> bool:
        """Whether :meth:`shutdown` was called (``submit()`` then raises)."""
        return self._shutdown

    @property
    def thread(self) -> threading.Thread:
        """The daemon thread that runs the event loop."""
        return self._thread

    # -- the loop's thread --------------------------------------------------------------

    def _run_loop(
        self, factory: Callable[[], asyncio.AbstractEventLoop], ready: threading.Event
    ) -> None:
        try:
            loop = factory()
            asyncio.set_event_loop(loop)
        except BaseException as error:  # reported by the constructor
            self._startup_errors.append(error)
            ready.set()
            return
        self._started_loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stop_requested = asyncio.Event()
        self._serve_task = asyncio.current_task()
        ready.set()
        await self._stop_requested.wait()
        # As aiofutures does: the loop stops once every task on it is done, those submitted
        # and those they started.
        current = asyncio.current_task()
        while True:
            others = [task for task in asyncio.all_tasks() if task is not current]
            if not others:
                return
            await asyncio.wait(others)

    def _drain(self) -> None:
        """Start the submitted coroutines (on the loop's thread)."""
        with self._lock:
            queue, self._queue = self._queue, []
            self._drain_scheduled = False
            cancel = self._cancel_queued
        loop = self._loop
        for submission in queue:
            future = submission.future
            if cancel or future.cancelled():
                submission.coroutine.close()
                future.cancel()
                continue
            runner = self._run_submission(submission.coroutine, future)
            # Up to the point inside its try block where it waits to be resumed: from
            # there on, whatever happens to the task (even a cancellation before its first
            # step) settles the future.
            runner.send(None)
            task: asyncio.Task[None]
            if sys.version_info >= (3, 12):
                # The task runs its next step now, inside this callback, rather than on the
                # next turn of the loop; a coroutine that finishes without suspending then
                # needs no further turn at all.
                task = asyncio.Task(runner, loop=loop, context=submission.context, eager_start=True)
            else:
                task = submission.context.run(loop.create_task, runner)
            if not task.done():
                self._tasks.add(task)  # the loop itself only holds tasks weakly
                future.add_done_callback(functools.partial(self._cancel_task, task))

    async def _run_submission(
        self, coroutine: Coroutine[Any, Any, Any], future: concurrent.futures.Future[Any]
    ) -> None:
        """Run ``coroutine`` and settle ``future`` with its outcome, from inside the task.

        Settling here rather than in a done callback of the task spares a turn of the loop
        (asyncio runs done callbacks on the next turn) before the waiting thread wakes up.
        """
        try:
            await _resumed_by_the_task()
            result = await coroutine
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as error:
            # set_running_or_notify_cancel() moves the future to RUNNING unless it was
            # cancelled meanwhile; from then on a cancel() from another thread cannot race
            # with setting the outcome.
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
            if not isinstance(error, Exception):
                raise  # KeyboardInterrupt, SystemExit: asyncio stops the loop for these
        else:
            if future.set_running_or_notify_cancel():
                future.set_result(result)
        finally:
            coroutine.close()  # if it never started: no "never awaited" warning
            task = asyncio.current_task(self._loop)
            if task is not None:
                self._tasks.discard(task)

    def _cancel_task(self, task: asyncio.Task[Any], future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled() and not task.done():
            try:
                self._loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: the task is long gone
                pass

    def _begin_shutdown(self, cancel_futures: bool) -> None:
        self._drain()  # what was queued before shutdown starts (or is cancelled) first
        if cancel_futures:
            for task in asyncio.all_tasks(self._loop):
                if task is not self._serve_task:
                    task.cancel()
        assert self._stop_requested is not None
        self._stop_requested.set()

    # -- any thread -----------------------------------------------------------------------

    def submit(  # type: ignore[override]  # takes coroutine functions, not any callable
        self,
        fn: Callable[_P, Awaitable[_T]],
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> concurrent.futures.Future[_T]:
        """Run ``fn(*args, **kwargs)`` (a coroutine function) on the executor's loop.

        ``fn`` is called in the calling thread; what it returns (a coroutine, or any
        awaitable) runs as a task of the executor's loop.

        Returns:
            A :class:`concurrent.futures.Future` with the task's result or exception.
            Its ``cancel()`` cancels the task.

        Raises:
            RuntimeError: the executor was shut down.
            TypeError: ``fn`` is a coroutine object, or returned something not awaitable.
        """
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        given: object = fn
        if inspect.iscoroutine(given):
            given.close()
            raise TypeError(
                "submit() takes a coroutine function and its arguments, not a coroutine"
                " object: write submit(fn, *args) rather than submit(fn(*args))"
            )
        awaitable = fn(*args, **kwargs)
        coroutine: Coroutine[Any, Any, _T]
        if inspect.iscoroutine(awaitable):
            coroutine = awaitable
        elif inspect.isawaitable(awaitable):
            coroutine = _await_any(awaitable)
        else:
            raise TypeError(
                f"submit() needs a coroutine function; {fn!r} returned"
                f" {type(awaitable).__name__}, which is not awaitable"
            )
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        submission = _Submission(coroutine, future, contextvars.copy_context())
        with self._lock:
            if self.is_shutdown:  # again: shutdown() may have run meanwhile
                coroutine.close()
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append(submission)
            wake = not self._drain_scheduled
            self._drain_scheduled = True
        if wake:
            # One wake-up of the loop serves every submission queued until it drains.
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                # The loop closed since the check above: a shutdown ran all the way, and
                # the drain it starts with took this submission.
                pass
        return future

    def sync_to_async(
        self, fn: Callable[..., _T], /, *args: Any, blocking: bool = False, **kwargs: Any
    ) -> asyncio.Future[_T]:
        """Start the sync ``fn(*args, **kwargs)`` from a task of this executor; await it.

        Call it from code running on the executor's loop (a submitted coroutine).  By
        default ``fn`` runs on a fiber of the loop (:func:`awaitlet.async_def`): it may call
        :func:`awaitlet.awaitlet`, and while it does not, it holds the loop.  With
        ``blocking=True`` it runs in the thread pool (``thread_pool``, else the loop's
        default executor), in a copy of the current :mod:`contextvars` context, for work
        that blocks.  Either way it starts now; the returned future gives its result.

        Raises:
            RuntimeError: not called from the executor's loop, or it was shut down.
        """
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            raise RuntimeError(
                "sync_to_async() must be called from a task running on this executor's loop"
                " (a coroutine given to submit())"
            )
        if blocking:
            call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
            return self._loop.run_in_executor(self._thread_pool, call)
        return self._loop.create_task(_call_on_fiber(fn, args, kwargs))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; stop the loop once every task on it is done.

        Args:
            wait: block until the loop's thread has finished.
            cancel_futures: cancel what is submitted but not started, and every task
                still running on the loop (each sees :class:`asyncio.CancelledError` at its
                pending ``await``, or its sync code at its pending ``awaitlet()``).

        Further ``submit()`` calls raise :class:`RuntimeError`.  Calling it again is
        harmless (and may add ``cancel_futures``).

        Raises:
            RuntimeError: ``wait`` was true in the executor's own thread (it would wait for
                itself).
        """
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            if cancel_futures:
                self._cancel_queued = True
        if first or cancel_futures:
            try:
                self._loop.call_soon_threadsafe(self._begin_shutdown, cancel_futures)
            except RuntimeError:  # closed: an earlier shutdown already finished
                pass
        if wait:
            if threading.current_thread() is self._thread:
                raise RuntimeError("shutdown(wait=True) called from the executor's own thread")
            self._thread.join()


_default_executor: AsyncExecutor | None = None
_default_executor_lock = threading.Lock()


def _shut_down_default_executor() -> None:
    executor = _default_executor
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)


def default_executor() -> AsyncExecutor:
    """The global executor of :func:`run_async` and :func:`sync_to_async`.

    It is made on first use (aiofutures makes its own at import, and only when the
    environment variable ``AIOFUTURES_INIT`` is set), and made anew if it was shut down.
    At interpreter exit it is shut down with ``cancel_futures=True``.
    """
    global _default_executor
    executor = _default_executor
    if executor is not None and not executor.is_shutdown:
        return executor
    with _default_executor_lock:
        executor = _default_executor
        if executor is None or executor.is_shutdown:
            if _default_executor is None:
                atexit.register(_shut_down_default_executor)
            executor = _default_executor = AsyncExecutor(name="AsyncExecutor-default")
        return executor


def run_async(
    fn: Callable[_P, Awaitable[_T]], /, *args: _P.args, **kwargs: _P.kwargs
) -> concurrent.futures.Future[_T]:
    """``default_executor().submit(fn, *args, **kwargs)``: run a coroutine function on the
    global executor's loop; see :meth:`AsyncExecutor.submit`."""
    return default_executor().submit(fn, *args, **kwargs)


def sync_to_async(
    fn: Callable[..., _T], /, *args: Any, blocking: bool = False, **kwargs: Any
) -> asyncio.Future[_T]:
    """``default_executor().sync_to_async(...)``, from a task of the global executor (one
    started by :func:`run_async`); see :meth:`AsyncExecutor.sync_to_async`."""
    return default_executor().sync_to_async(fn, *args, blocking=blocking, **kwargs)
