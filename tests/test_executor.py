"""awaitlet.executor: aiofutures' AsyncExecutor model, with sync code on the loop's fibers.

The first group ports what aiofutures' tests check (submit, map, sync_to_async, the
shortcuts, submit after shutdown); the rest covers exceptions and their tracebacks,
cancellation, shutdown, thread safety, event loops and contexts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import selectors
import subprocess
import sys
import threading
import time
import traceback

import awaitlet
import pytest
from awaitlet.executor import (
    UVLOOP_ENVIRONMENT_VARIABLE,
    AsyncExecutor,
    default_executor,
    run_async,
    sync_to_async,
)

SENTINEL = object()


async def returns(value):
    return value


async def sleeps_then_returns(delay, value):
    await asyncio.sleep(delay)
    return value


@pytest.fixture
def shuts_down_the_default_executor():
    """For tests of the global executor: no loop thread left behind for later tests."""
    yield
    default_executor().shutdown(wait=True)


@pytest.fixture
def executor():
    with AsyncExecutor() as executor:
        yield executor
    assert not executor.thread.is_alive()


# -- aiofutures' tests ----------------------------------------------------------------------


def test_submit(executor):
    assert executor.submit(returns, SENTINEL).result() is SENTINEL


def test_submit_passes_keyword_arguments(executor):
    async def pair(a, *, b):
        return a, b

    assert executor.submit(pair, 1, b=2).result() == (1, 2)


@pytest.mark.usefixtures("shuts_down_the_default_executor")
def test_run_async_shortcut():
    assert run_async(returns, SENTINEL).result() is SENTINEL


def test_map(executor):
    assert list(executor.map(returns, [SENTINEL, SENTINEL])) == [SENTINEL, SENTINEL]


def test_map_keeps_the_order_of_its_inputs(executor):
    delays = [0.03, 0.01, 0.02]
    assert list(executor.map(sleeps_then_returns, delays, "abc")) == ["a", "b", "c"]


def test_sync_to_async(executor):
    async def through_sync(value):
        return await executor.sync_to_async(lambda x: x, value)

    assert executor.submit(through_sync, SENTINEL).result() is SENTINEL


@pytest.mark.usefixtures("shuts_down_the_default_executor")
def test_sync_to_async_shortcut():
    async def through_sync(value):
        return await sync_to_async(lambda x: x, value)

    assert run_async(through_sync, SENTINEL).result() is SENTINEL


@pytest.mark.parametrize("wait", [False, True])
@pytest.mark.parametrize("cancel_futures", [False, True])
def test_submit_after_shutdown_raises(wait, cancel_futures):
    executor = AsyncExecutor()
    executor.shutdown(wait, cancel_futures=cancel_futures)
    assert executor.is_shutdown
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(returns, 1)
    executor.shutdown()
    assert not executor.thread.is_alive()


# -- results, exceptions, tracebacks ------------------------------------------------------


def test_tasks_run_on_the_executors_loop_and_thread(executor):
    async def where():
        return asyncio.get_running_loop(), threading.current_thread()

    assert executor.submit(where).result() == (executor.loop, executor.thread)
    assert executor.thread.daemon


def test_exceptions_keep_their_traceback(executor):
    async def inner():
        await asyncio.sleep(0)
        raise KeyError("from the coroutine")

    async def outer():
        await inner()

    future = executor.submit(outer)
    with pytest.raises(KeyError, match="from the coroutine") as caught:
        future.result()
    names = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert names.index("outer") < names.index("inner")
    assert future.exception() is caught.value


def test_exception_raised_without_suspending_keeps_its_traceback(executor):
    async def fails_at_once():
        raise ValueError("at once")

    with pytest.raises(ValueError, match="at once") as caught:
        executor.submit(fails_at_once).result()
    names = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert "fails_at_once" in names


def test_result_timeout(executor):
    future = executor.submit(sleeps_then_returns, 0.2, "late")
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.01)
    assert future.result() == "late"


def test_submit_of_a_coroutine_object_is_refused_without_a_warning(executor):
    coroutine = returns(1)
    with pytest.raises(TypeError, match="coroutine function"):
        executor.submit(coroutine)
    # Closed, so no "never awaited" warning (pytest turns warnings into errors).
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        coroutine.send(None)


def test_submit_of_a_function_returning_no_awaitable(executor):
    with pytest.raises(TypeError, match="not awaitable"):
        executor.submit(lambda: 42)


def test_submit_of_a_function_returning_another_awaitable(executor):
    class Ready:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    assert executor.submit(Ready).result() == "awaited"


def test_the_task_sees_the_submitting_threads_context(executor):
    request_id = contextvars.ContextVar("request_id", default=None)

    async def read_and_write():
        seen = request_id.get()
        request_id.set("changed in the task")
        return seen

    request_id.set("from the caller")
    assert executor.submit(read_and_write).result() == "from the caller"
    assert request_id.get() == "from the caller"  # the task ran in a copy


# -- cancellation ----------------------------------------------------------------------------


def test_cancelling_the_future_cancels_the_running_task(executor):
    started = threading.Event()
    outcome = concurrent.futures.Future()

    async def waits():
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            outcome.set_result("cancelled inside")
            raise

    future = executor.submit(waits)
    assert started.wait(5)
    assert future.cancel()
    assert outcome.result(5) == "cancelled inside"
    with pytest.raises(concurrent.futures.CancelledError):
        future.result()


def test_a_task_cancelled_on_the_loop_cancels_its_future(executor):
    async def cancels_itself():
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    future = executor.submit(cancels_itself)
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(5)
    assert future.cancelled()


def test_cancelling_reaches_sync_code_at_its_awaitlet(executor):
    started = threading.Event()
    outcome = concurrent.futures.Future()

    def sync_code():
        started.set()
        try:
            awaitlet.awaitlet(asyncio.sleep(60))
        except asyncio.CancelledError:
            outcome.set_result("cancelled at awaitlet()")
            raise

    async def runs_sync_code():
        return await executor.sync_to_async(sync_code)

    future = executor.submit(runs_sync_code)
    assert started.wait(5)
    future.cancel()
    assert outcome.result(5) == "cancelled at awaitlet()"


# -- shutdown --------------------------------------------------------------------------------


def test_shutdown_waits_for_running_tasks():
    executor = AsyncExecutor()
    future = executor.submit(sleeps_then_returns, 0.05, "finished")
    executor.shutdown(wait=True)
    assert future.done()
    assert future.result() == "finished"
    assert not executor.thread.is_alive()
    assert executor.loop.is_closed()


def test_shutdown_also_waits_for_tasks_the_tasks_started():
    executor = AsyncExecutor()
    done = []

    async def starts_a_child():
        async def child():
            await asyncio.sleep(0.05)
            done.append("child")

        asyncio.get_running_loop().create_task(child())

    executor.submit(starts_a_child).result()
    executor.shutdown(wait=True)
    assert done == ["child"]


def test_shutdown_without_wait_returns_at_once_and_the_tasks_still_finish():
    executor = AsyncExecutor()
    gate: concurrent.futures.Future[str] = concurrent.futures.Future()

    async def waits_for_the_gate():
        return await asyncio.wrap_future(gate)

    future = executor.submit(waits_for_the_gate)
    executor.shutdown(wait=False)
    assert not future.done()
    assert executor.thread.is_alive()
    gate.set_result("finished later")
    assert future.result(5) == "finished later"
    executor.thread.join(5)
    assert not executor.thread.is_alive()


def test_shutdown_with_cancel_futures_cancels_running_tasks_and_sync_code():
    executor = AsyncExecutor()
    coroutine_waiting = threading.Event()
    sync_code_waiting = threading.Event()
    seen = []

    async def coroutine():
        try:
            coroutine_waiting.set()
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("coroutine")
            raise

    def sync_code():
        try:
            sync_code_waiting.set()
            awaitlet.awaitlet(asyncio.sleep(60))
        except asyncio.CancelledError:
            seen.append("sync code")
            raise

    async def runs_sync_code():
        return await executor.sync_to_async(sync_code)

    futures = [executor.submit(coroutine), executor.submit(runs_sync_code)]
    assert coroutine_waiting.wait(5)
    assert sync_code_waiting.wait(5)
    executor.shutdown(wait=True, cancel_futures=True)
    assert sorted(seen) == ["coroutine", "sync code"]
    assert all(future.cancelled() for future in futures)


def test_cancel_futures_cancels_submissions_that_have_not_started():
    executor = AsyncExecutor()
    gate = threading.Event()
    blocking = threading.Event()
    started = []

    async def blocks_the_loop():
        blocking.set()
        gate.wait(5)  # holds the loop's thread: later submissions stay queued
        return "first"

    async def never_starts():
        started.append(True)

    first = executor.submit(blocks_the_loop)
    assert blocking.wait(5)
    queued = [executor.submit(never_starts) for _ in range(3)]
    executor.shutdown(wait=False, cancel_futures=True)
    gate.set()
    executor.thread.join(5)
    assert first.result() == "first"
    assert all(future.cancelled() for future in queued)
    assert started == []


def test_context_manager_shuts_down():
    with AsyncExecutor() as executor:
        future = executor.submit(sleeps_then_returns, 0.02, "done")
    assert future.result() == "done"
    assert executor.is_shutdown
    assert not executor.thread.is_alive()


def test_shutdown_with_wait_from_the_executors_own_thread_raises(executor):
    async def shuts_down_its_own_executor():
        executor.shutdown(wait=True)

    with pytest.raises(RuntimeError, match="own thread"):
        executor.submit(shuts_down_its_own_executor).result(5)


@pytest.mark.usefixtures("shuts_down_the_default_executor")
def test_the_default_executor_is_made_again_after_a_shutdown():
    first = default_executor()
    assert default_executor() is first
    first.shutdown()
    second = default_executor()
    assert second is not first
    assert run_async(returns, 5).result() == 5


def test_interpreter_exit_cancels_the_default_executors_tasks(tmp_path):
    marker = tmp_path / "cancelled"
    script = f"""
import asyncio, pathlib
from awaitlet import awaitlet
from awaitlet.executor import run_async, sync_to_async

def sync_code():
    try:
        awaitlet(asyncio.sleep(60))
    finally:
        pathlib.Path({str(marker)!r}).write_text("sync code cleaned up")

async def main():
    await sync_to_async(sync_code)

run_async(main)
import time; time.sleep(0.1)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "sync code cleaned up"


def test_interpreter_exit_with_an_executor_never_shut_down():
    # Its loop's thread is a daemon: the interpreter exits while sync code on one of its
    # fibers keeps going through the loop, so the thread wants the GIL back during
    # finalization with a fiber's stack in use.
    script = """
import asyncio, threading
from awaitlet import awaitlet
from awaitlet.executor import AsyncExecutor

executor = AsyncExecutor()
waiting = threading.Event()

def sync_code():
    waiting.set()
    while True:
        awaitlet(asyncio.sleep(0))

async def main():
    await executor.sync_to_async(sync_code)

executor.submit(main)
assert waiting.wait(10)
print("exiting")
"""
    result = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "exiting\n"
    assert "Fatal Python error" not in result.stderr


# -- sync_to_async -----------------------------------------------------------------------------


def test_sync_to_async_runs_sync_code_on_a_fiber_of_the_loop(executor):
    order = []

    def sync_code(name):
        order.append(f"{name} start")
        awaitlet.awaitlet(asyncio.sleep(0.01))
        order.append(f"{name} end")
        return threading.current_thread()

    async def two_at_once():
        return await asyncio.gather(
            executor.sync_to_async(sync_code, "a"), executor.sync_to_async(sync_code, "b")
        )

    assert executor.submit(two_at_once).result() == [executor.thread, executor.thread]
    # Both started before either ended: the first one's awaitlet() let the loop go on.
    assert order[:2] == ["a start", "b start"]
    assert sorted(order[2:]) == ["a end", "b end"]


def test_sync_to_async_blocking_runs_in_a_thread_and_keeps_the_loop_free(executor):
    ticks = []
    blocking_ended = []

    def blocking(seconds):
        time.sleep(seconds)
        blocking_ended.append(time.monotonic())
        return threading.current_thread()

    async def ticker():
        for _ in range(3):
            await asyncio.sleep(0.005)
            ticks.append(time.monotonic())

    async def main():
        return await asyncio.gather(executor.sync_to_async(blocking, 0.3, blocking=True), ticker())

    worker, _ = executor.submit(main).result()
    assert worker is not executor.thread
    # The loop ticked while the thread slept.
    assert len(ticks) == 3
    assert ticks[-1] < blocking_ended[0]


def test_sync_to_async_blocking_uses_the_given_thread_pool():
    with concurrent.futures.ThreadPoolExecutor(thread_name_prefix="given-pool") as pool:
        with AsyncExecutor(thread_pool=pool) as executor:

            async def main():
                return await executor.sync_to_async(
                    lambda: threading.current_thread().name, blocking=True
                )

            assert executor.submit(main).result().startswith("given-pool")
        # The executor does not shut down a pool it was given.
        assert pool.submit(lambda: "still usable").result() == "still usable"


def test_sync_to_async_exceptions_keep_their_traceback(executor):
    def failing_sync_code():
        awaitlet.awaitlet(asyncio.sleep(0))
        raise LookupError("from sync code")

    async def main():
        await executor.sync_to_async(failing_sync_code)

    with pytest.raises(LookupError) as caught:
        executor.submit(main).result()
    names = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert names.index("main") < names.index("failing_sync_code")


def test_sync_to_async_outside_the_executors_loop_raises(executor):
    with pytest.raises(RuntimeError, match="this executor's loop"):
        executor.sync_to_async(print)

    async def on_another_loop():
        executor.sync_to_async(print)

    with pytest.raises(RuntimeError, match="this executor's loop"):
        asyncio.run(on_another_loop())


def test_sync_to_async_passes_keyword_arguments(executor):
    def takes(*, assert_await_occurs, other):
        return assert_await_occurs, other

    async def main():
        return await executor.sync_to_async(takes, assert_await_occurs="mine", other=2)

    assert executor.submit(main).result() == ("mine", 2)


# -- threads ---------------------------------------------------------------------------------


def test_submit_from_many_threads(executor):
    per_thread = 200
    results = {}

    async def square(n):
        if n % 3 == 0:
            await asyncio.sleep(0)
        return n * n

    def submitter(offset):
        futures = [executor.submit(square, offset + i) for i in range(per_thread)]
        results[offset] = [future.result(10) for future in futures]

    threads = [threading.Thread(target=submitter, args=(t * per_thread,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for offset, values in results.items():
        assert values == [(offset + i) ** 2 for i in range(per_thread)]
    assert len(results) == 8


def test_submit_racing_shutdown_never_loses_a_future():
    executor = AsyncExecutor()
    accepted = []
    refused = []
    go = threading.Barrier(5)

    def submitter():
        go.wait()
        for i in range(300):
            try:
                accepted.append(executor.submit(returns, i))
            except RuntimeError:
                refused.append(i)

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for thread in threads:
        thread.start()
    go.wait()
    time.sleep(0.002)
    executor.shutdown(wait=True)
    for thread in threads:
        thread.join()
    # Every accepted submission ran (shutdown without cancel_futures lets them finish).
    assert all(future.done() and not future.cancelled() for future in accepted)
    assert len(accepted) + len(refused) == 4 * 300


# -- event loops -----------------------------------------------------------------------------


def test_loop_factory():
    def selector_loop():
        return asyncio.SelectorEventLoop(selectors.SelectSelector())

    with AsyncExecutor(loop_factory=selector_loop) as executor:
        assert isinstance(executor.loop, asyncio.SelectorEventLoop)
        assert executor.submit(sleeps_then_returns, 0, 3).result() == 3


def test_an_error_making_the_loop_is_raised_by_the_constructor():
    def broken_factory():
        raise OSError("no loop today")

    with pytest.raises(OSError, match="no loop today"):
        AsyncExecutor(loop_factory=broken_factory)


def test_loop_factory_and_use_uvloop_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        AsyncExecutor(loop_factory=asyncio.new_event_loop, use_uvloop=True)


def _check_executor_works(executor):
    def sync_code():
        return awaitlet.awaitlet(sleeps_then_returns(0.001, "fiber"))

    async def main():
        return await executor.sync_to_async(sync_code)

    assert executor.submit(main).result() == "fiber"
    assert executor.submit(returns, 1).result() == 1


def test_use_uvloop():
    uvloop = pytest.importorskip("uvloop")
    with AsyncExecutor(use_uvloop=True) as executor:
        assert isinstance(executor.loop, uvloop.Loop)
        _check_executor_works(executor)


def test_uvloop_by_environment_variable(monkeypatch):
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.setenv(UVLOOP_ENVIRONMENT_VARIABLE, "1")
    with AsyncExecutor() as executor:
        assert isinstance(executor.loop, uvloop.Loop)
        _check_executor_works(executor)
    with AsyncExecutor(use_uvloop=False) as executor:
        assert not isinstance(executor.loop, uvloop.Loop)


def test_without_uvloop_asked_for_the_standard_loop_runs(monkeypatch):
    monkeypatch.delenv(UVLOOP_ENVIRONMENT_VARIABLE, raising=False)
    with AsyncExecutor() as executor:
        assert type(executor.loop).__module__.startswith("asyncio")
        _check_executor_works(executor)


@pytest.mark.skipif(sys.platform == "win32", reason="uses the environment of a child process")
def test_uvloop_variable_without_uvloop_installed_falls_back(tmp_path):
    # A module named uvloop that cannot be imported stands for an environment without it.
    (tmp_path / "uvloop.py").write_text("raise ImportError('not installed here')\n")
    script = (
        "from awaitlet.executor import AsyncExecutor\n"
        "with AsyncExecutor() as executor: print(type(executor.loop).__module__)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path), **{UVLOOP_ENVIRONMENT_VARIABLE: "1"})
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("asyncio")
