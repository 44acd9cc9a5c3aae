"""The event loop of a thread's own on which ``await_()`` runs awaitables when none runs.

Private to :mod:`awaitlet.decorators`.

Each thread gets one asyncio loop, made on first use, and on it one long-lived *bridge task*.
An awaitable handed over runs as the bridge task would run it, in a copy of the caller's
:mod:`contextvars` context:

- its first step runs at once, on the caller's stack, with the loop set as the running loop
  and the bridge task entered as the current task (what ``Task.__step`` does around a step).
  An awaitable that completes without waiting (a cache hit, a buffered read, a finished
  future) costs that step and nothing more: no task is created and the loop does not turn;
- if it waits instead (it yields a future, or yields to let other tasks run), the bridge task
  takes it over from there and the loop runs until it completes, so ``current_task()`` and
  ``asyncio.timeout()`` see the same task from its first step to its last.

Between calls the loop is not running: the caller sees no running loop and may use
``asyncio.run()`` or a loop of its own.

The common case, a coroutine handed to an idle bridge task, runs natively in
``_awaitlet._wait_for`` (``await_()`` itself), which finds the thread's bridge through
``_set_thread_bridge()`` and reads its ``_BridgeState`` base; :func:`run_on_thread_loop`
does the rest (the first call of a thread, awaitables that are not coroutines).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import types
from collections.abc import Awaitable, Coroutine, Generator, Sized
from typing import Any, TypeVar, cast

from ._awaitlet import _BridgeState, _set_thread_bridge
from ._awaitlet import _first_step as first_step

_T = TypeVar("_T")


async def _awaiting(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


class _Steps:
    """Awaitable that goes on running ``coroutine`` from the point where it yielded.

    Awaited by the bridge task: what the coroutine yields goes to the task, what the task
    sends or throws goes to the coroutine, each step in ``context``.  ``cancel`` (an
    exception) is thrown into the coroutine first instead of waiting for what it yielded:
    the bridge task was cancelled before it took the coroutine over.
    """

    __slots__ = ("cancel", "context", "coroutine", "yielded")

    def __init__(
        self,
        coroutine: Coroutine[Any, Any, Any],
        yielded: Any,
        context: contextvars.Context,
        cancel: BaseException | None,
    ) -> None:
        self.coroutine = coroutine
        self.yielded = yielded
        self.context = context
        self.cancel = cancel

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, context = self.coroutine, self.context
        yielded = self.yielded
        try:
            if self.cancel is not None:
                if isinstance(yielded, asyncio.Future):
                    yielded.cancel()  # as a cancelled task cancels what it waits for
                yielded = context.run(coroutine.throw, self.cancel)
            while True:
                try:
                    sent = yield yielded
                except GeneratorExit:
                    raise
                except BaseException as thrown:  # the task's cancellation (or "bad yield")
                    yielded = context.run(coroutine.throw, thrown)
                else:
                    yielded = context.run(coroutine.send, sent)
        except StopIteration as stop:
            return stop.value
        finally:
            # Closed (the bridge task's coroutine is being closed) or done: close it too.
            context.run(coroutine.close)


class _Bridge(_BridgeState):
    """The bridge task of a thread's loop, and what it is handed.

    Its base class holds what ``_awaitlet._wait_for`` reads to run a first step natively:
    ``loop``, ``task``, ``ready`` and ``idle``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wake: asyncio.Future[None] = loop.create_future()
        # What it is handed: the coroutine, what its first step yielded, its context, and the
        # future its caller waits for.
        self.handover: (
            tuple[Coroutine[Any, Any, Any], Any, contextvars.Context, asyncio.Future[Any]] | None
        ) = None
        # The loop's queue of callbacks ready to run, where it has one we know.
        ready: Sized | None = getattr(loop, "_ready", None)
        self.ready = ready
        #: Whether it waits for work (it can be handed an awaitable).
        self.idle = False
        #: Whether it ends once the awaitable it has is done (its caller stopped waiting).
        self.retired = False
        self.task = loop.create_task(self._serve())
        # Pending whenever it is idle, for as long as the loop lives: nothing to report.
        self.task._log_destroy_pending = False  # type: ignore[attr-defined]
        # Start it (it then waits for work), so that its coroutine is never left unstarted.
        loop.run_until_complete(asyncio.sleep(0))

    async def _serve(self) -> None:
        while True:
            cancel: BaseException | None = None
            self.idle = self.handover is None
            try:
                await self.wake
            except asyncio.CancelledError as cancelled:
                if self.handover is None:
                    self.idle = False
                    return  # cancelled while idle: the loop is closing
                # Cancelled by the coroutine's own first step: it gets the cancellation.
                cancel = cancelled
            if self.handover is None:
                continue
            coroutine, yielded, context, outcome = self.handover
            result: Any = None
            error: BaseException | None = None
            try:
                result = await _Steps(coroutine, yielded, context, cancel)
            except GeneratorExit:
                raise  # this coroutine is being closed (its task is garbage)
            except BaseException as exc:  # it goes to the caller, who waits for `outcome`
                error = exc
            self.handover = None
            self.wake = self.loop.create_future()
            if not outcome.done():
                if error is None:
                    outcome.set_result(result)
                else:
                    outcome.set_exception(error)
                del error
            if cancel is not None or self.retired:
                self.idle = False
                return  # the next call makes a new task

    def finish(
        self, coroutine: Coroutine[Any, Any, _T], yielded: Any, context: contextvars.Context
    ) -> _T:
        """Take over ``coroutine``, which yielded ``yielded``, and run the loop until it is
        done; this task must be idle."""
        loop = self.loop
        outcome: asyncio.Future[_T] = loop.create_future()
        self.handover = (coroutine, yielded, context, outcome)
        self.idle = False
        try:
            if not self.wake.done():
                self.wake.set_result(None)
            return loop.run_until_complete(outcome)
        except BaseException:
            if not outcome.done() and not loop.is_closed():
                # Interrupted (by KeyboardInterrupt, say) while it waits: it stays a pending
                # task of the loop, as after an interrupted run_until_complete(), and goes on
                # when the loop next runs; this task ends with it, no longer answering.
                outcome.cancel()
                self.retired = True
            raise

    def turn_for_scheduled_callbacks(self) -> None:
        """Run one turn of the loop, for the callbacks a first step that finished scheduled
        (tasks it created, ...): ``loop.run_until_complete()`` gives them that turn before it
        returns."""
        loop = self.loop
        if loop.is_closed():
            self.idle = False  # closed by someone else: the next call makes a new loop
            return
        loop.call_soon(loop.stop)
        loop.run_forever()


class _OwnedLoop:
    """A thread's own event loop; closed when the thread ends."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        loop = self.loop
        if loop.is_closed():
            return
        try:
            # As asyncio.run() ends: cancel what is left (the idle bridge task, tasks the
            # awaitables started, one abandoned by an interrupted call), let it finish.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def __del__(self) -> None:
        # The thread ended (its thread-local data is being cleared): close the loop, so
        # that it does not warn that it was left unclosed.
        if not self.loop.is_closed():
            self.loop.close()


class _ThreadLoop(threading.local):
    """Each thread's own loop, made on first use, and its bridge task."""

    owned: _OwnedLoop | None = None
    #: The bridge task to hand awaitables to, if it is idle.
    bridge: _Bridge | None = None

    def set_bridge(self, bridge: _Bridge | None) -> None:
        """Make ``bridge`` the thread's bridge, here and for ``_awaitlet._wait_for``."""
        self.bridge = bridge
        _set_thread_bridge(bridge)

    def new_bridge(self) -> _Bridge:
        owned = self.owned
        if owned is None or owned.loop.is_closed():
            owned = self.owned = _OwnedLoop()
        bridge = _Bridge(owned.loop)
        self.set_bridge(bridge)
        return bridge

    def close(self) -> None:
        owned, self.owned = self.owned, None
        self.set_bridge(None)
        if owned is not None:
            owned.close()


_thread_loop = _ThreadLoop()


def _leave_the_parents_loop_alone() -> None:
    """In a child just forked: this thread's loop is the parent's, sharing its epoll instance
    and its wake-up pipe with the parent. The child makes a loop of its own; the parent's is
    left unused and marked closed, so that nothing here closes it for real: closing would
    unregister its descriptors from the epoll instance the parent still waits on (the
    parent's loop would no longer be woken by other threads)."""
    owned = _thread_loop.owned
    _thread_loop.owned = None
    _thread_loop.set_bridge(None)
    if owned is None:
        return
    if isinstance(owned.loop, asyncio.BaseEventLoop):
        owned.loop._closed = True  # type: ignore[attr-defined]
    else:
        _inherited.append(owned)  # another kind of loop: at least never closed from here


# In a forked child, the parent's loops of kinds that cannot be marked closed (see above).
_inherited: list[_OwnedLoop] = []

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_leave_the_parents_loop_alone)


def run_on_thread_loop(awaitable: Awaitable[_T]) -> _T:
    """Run ``awaitable`` to completion on this thread's own loop; no loop may be running."""
    bridge = _thread_loop.bridge
    if bridge is None or not bridge.idle:
        # None yet, or its task ended, or a call interrupted while it waited (by
        # KeyboardInterrupt, say) left it busy with that awaitable: a new one.
        bridge = _thread_loop.new_bridge()
    coroutine: Coroutine[Any, Any, _T]
    if type(awaitable) is types.CoroutineType:
        coroutine = cast("Coroutine[Any, Any, _T]", awaitable)
    else:
        coroutine = _awaiting(awaitable)
    context: contextvars.Context | None = None
    try:
        value, context = first_step(bridge.loop, bridge.task, coroutine)
    finally:
        if context is None:  # the first step finished it, returning or raising
            ready = bridge.ready
            if ready is None or ready:  # it scheduled callbacks (or the loop's kind is unknown)
                bridge.turn_for_scheduled_callbacks()
    if context is None:
        return value  # type: ignore[no-any-return]
    finished: _T = bridge.finish(coroutine, value, context)
    return finished


def close_thread_loop() -> None:
    """Close this thread's own loop, if it has one."""
    _thread_loop.close()
