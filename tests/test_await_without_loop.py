"""awaitlet.decorators.await_() with no event loop running: the thread's own loop.

An awaitable handed over runs as one task of that loop would run it: its first step on the
caller's stack, the rest (if it waits) with the loop running, all as the same task, in a copy
of the caller's context. Between calls no loop runs in the thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import sys
import threading
import traceback
import weakref

import pytest
from awaitlet.decorators import await_, close_thread_loop


@pytest.fixture(autouse=True)
def _fresh_thread_loop():
    yield
    close_thread_loop()


def _no_loop_running():
    return asyncio.events._get_running_loop() is None


async def _completes_at_once(value):
    return value


async def _waits_then_returns(value):
    await asyncio.sleep(0.001)
    return value


@pytest.mark.parametrize("awaited", [_completes_at_once, _waits_then_returns])
def test_no_loop_is_left_running_and_asyncio_run_works_after(awaited):
    assert await_(awaited(1)) == 1
    assert _no_loop_running()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    with pytest.raises(RuntimeError):
        asyncio.current_task()
    assert asyncio.run(awaited(2)) == 2
    assert await_(awaited(3)) == 3


def test_the_running_loop_and_task_are_set_during_the_first_step():
    async def where():
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        return loop, task, loop.is_running()

    loop, task, running = await_(where())
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    # The first step ran without the loop turning: it is not "running" in run_forever's sense.
    assert running is False
    # Later calls run as the same task, on the same loop.
    assert await_(where())[:2] == (loop, task)


def test_one_task_from_first_step_to_last():
    async def tasks_seen():
        first = asyncio.current_task()
        await asyncio.sleep(0)
        second = asyncio.current_task()
        await asyncio.sleep(0.001)
        return first, second, asyncio.current_task()

    first, second, third = await_(tasks_seen())
    assert first is second is third


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is new in 3.11")
def test_a_timeout_entered_in_the_first_step_cancels_the_wait():
    async def slow():
        async with asyncio.timeout(0.01):
            await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await_(slow())
    assert await_(_completes_at_once("after")) == "after"


def test_wait_for_timeout_and_cancellation_of_inner_tasks():
    cleaned = []

    async def sleeper():
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(True)

    with pytest.raises(asyncio.TimeoutError):
        await_(asyncio.wait_for(sleeper(), 0.01))
    assert cleaned == [True]


def test_tasks_the_first_step_creates_get_their_turn_before_the_call_returns():
    ran = []

    async def start_one():
        asyncio.get_running_loop().create_task(_record(ran, "task"))
        asyncio.get_running_loop().call_soon(ran.append, "callback")
        return "done"

    assert await_(start_one()) == "done"
    assert ran == ["task", "callback"]


async def _record(into, value):
    into.append(value)


def test_the_awaitable_runs_in_a_copy_of_the_callers_context():
    variable = contextvars.ContextVar("variable", default="unset")
    variable.set("caller")

    async def read_and_set(wait):
        seen = variable.get()
        variable.set("awaited")
        if wait:
            await asyncio.sleep(0)
        return seen, variable.get()

    assert await_(read_and_set(False)) == ("caller", "awaited")
    assert await_(read_and_set(True)) == ("caller", "awaited")
    # As a task would: what the awaitable sets stays in its copy.
    assert variable.get() == "caller"


def test_the_callers_own_entered_context_is_fine():
    variable = contextvars.ContextVar("variable")

    def in_context():
        variable.set("inside")
        return await_(_reads(variable)), await_(_reads_after_wait(variable))

    assert contextvars.copy_context().run(in_context) == ("inside", "inside")


async def _reads(variable):
    return variable.get()


async def _reads_after_wait(variable):
    await asyncio.sleep(0)
    return variable.get()


class _Boom(Exception):
    pass


async def _raises_at_once():
    raise _Boom("at once")


async def _raises_after_wait():
    await asyncio.sleep(0)
    raise _Boom("after a wait")


@pytest.mark.parametrize("awaited", [_raises_at_once, _raises_after_wait])
def test_exceptions_propagate_with_the_coroutines_frames(awaited):
    with pytest.raises(_Boom) as caught:
        await_(awaited())
    names = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert names[0] == "test_exceptions_propagate_with_the_coroutines_frames"
    assert names[-1] == awaited.__name__
    assert _no_loop_running()
    assert await_(_completes_at_once("next")) == "next"


def test_an_awaitable_that_cancels_its_own_task_gets_the_cancellation():
    reached = []

    async def cancel_self_then_wait():
        asyncio.current_task().cancel()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            reached.append("cancelled")
            raise

    with pytest.raises(asyncio.CancelledError):
        await_(cancel_self_then_wait())
    assert reached == ["cancelled"]
    # The next call runs as a new task, not cancelled.
    assert await_(_waits_then_returns("fine")) == "fine"


def test_an_awaitable_that_cancels_its_own_task_and_returns():
    async def cancel_self():
        asyncio.current_task().cancel()
        return "returned"

    assert await_(cancel_self()) == "returned"
    assert await_(_waits_then_returns("fine")) == "fine"


class _ReadyAwaitable:
    """Not a coroutine: its __await__ is a plain generator."""

    def __init__(self, value, waits):
        self.value = value
        self.waits = waits

    def __await__(self):
        if self.waits:
            yield from asyncio.sleep(0).__await__()
        return self.value


@pytest.mark.parametrize("waits", [False, True])
def test_awaitables_that_are_not_coroutines(waits):
    assert await_(_ReadyAwaitable("value", waits)) == "value"


def test_a_future_of_another_loop_is_refused_as_a_task_refuses_it():
    other = asyncio.new_event_loop()
    try:
        future = other.create_future()
        with pytest.raises(RuntimeError, match="attached to a different loop"):
            await_(future)
    finally:
        other.close()
    assert await_(_completes_at_once(1)) == 1


def test_an_interrupted_wait_leaves_the_next_call_working_and_closing_cancels_it():
    cleaned = []

    async def interrupted():
        asyncio.get_running_loop().call_later(0.001, _raise_keyboard_interrupt)
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(True)

    with pytest.raises(KeyboardInterrupt):
        await_(interrupted())
    assert _no_loop_running()
    assert await_(_waits_then_returns("next")) == "next"
    assert cleaned == []
    close_thread_loop()
    assert cleaned == [True]


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


def test_closing_reports_nothing_and_a_new_loop_follows(caplog):
    async def loop_of():
        return asyncio.get_running_loop()

    first = await_(loop_of())
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        close_thread_loop()
        gc.collect()
    assert first.is_closed()
    assert caplog.records == []
    assert await_(loop_of()) is not first


def test_a_threads_loop_and_task_go_with_the_thread(caplog):
    seen = []

    def in_thread():
        seen.append(await_(_task_of()))

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
        task = weakref.ref(seen.pop())
        gc.collect()
    assert task() is None
    assert caplog.records == []


async def _task_of():
    return asyncio.current_task()


def test_threads_each_run_their_own_loop_at_once():
    barrier = threading.Barrier(4)
    results = {}

    async def meet(n):
        await asyncio.sleep(0.001)
        return n, asyncio.get_running_loop()

    def run(n):
        barrier.wait()
        results[n] = [await_(meet(n)) for _ in range(20)]

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    loops = {id(loop) for values in results.values() for _, loop in values}
    assert len(loops) == 4
    assert all([n for n, _ in values] == [n] * 20 for n, values in results.items())


@pytest.mark.parametrize("where", ["main thread", "new thread"])
def test_the_running_loop_and_task_are_seen_in_every_first_step(where):
    # The first call of a thread goes through the Python path (it makes the bridge task);
    # later ones run the first step natively: each sees the same loop and task.
    async def seen():
        return asyncio.get_running_loop(), asyncio.current_task(), asyncio.current_task()

    results = []

    def calls():
        results.extend(await_(seen()) for _ in range(3))
        results.append(asyncio.events._get_running_loop())

    if where == "main thread":
        calls()
    else:
        thread = threading.Thread(target=calls)
        thread.start()
        thread.join()
    *steps, after = results
    assert after is None
    loop, task, _ = steps[0]
    assert isinstance(task, asyncio.Task) and task.get_loop() is loop
    assert all(step == (loop, task, task) for step in steps)


@pytest.mark.skipif(
    sys.version_info >= (3, 14),
    reason="3.14's _leave_task() refuses a loop that is no longer the running loop, after a"
    " task's step as after a first step, and leaves the task current",
)
def test_a_first_step_that_sets_a_running_loop_of_its_own():
    other = asyncio.new_event_loop()

    async def replaces_the_running_loop():
        asyncio.events._set_running_loop(other)
        return asyncio.events._get_running_loop()

    try:
        assert await_(replaces_the_running_loop()) is other
        # As after a task's step: no loop is left running.
        assert _no_loop_running()
        assert await_(_task_of()) is not None
        assert _no_loop_running()
    finally:
        other.close()


def test_await_is_a_function_of_one_positional_argument():
    import inspect

    assert await_.__module__ == "awaitlet.decorators"
    assert await_.__name__ == "await_"
    assert "Wait for an awaitable from sync code" in await_.__doc__
    (parameter,) = inspect.signature(await_).parameters.values()
    assert parameter.name == "awaitable_or_fn"
    assert parameter.kind is inspect.Parameter.POSITIONAL_ONLY
    coroutine = _completes_at_once(1)
    with pytest.raises(TypeError):
        await_(awaitable_or_fn=coroutine)
    with pytest.raises(TypeError):
        await_(coroutine, coroutine)
    assert await_(coroutine) == 1
