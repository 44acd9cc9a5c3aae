"""awaitlet.decorators: greenletio's async_/await_ model on awaitlet's fibers.

The first group ports what greenletio 0.11.0's tests/test_core.py checks; the rest covers
what our version promises beyond it (context sharing, tracebacks, cancellation, the
per-thread loop, one code path for sync and async callers over real sockets, spawn).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import threading
import traceback

import awaitlet
import pytest
from _support import UpperCaseServer
from awaitlet.decorators import (
    AwaitInEventLoopError,
    async_,
    await_,
    close_thread_loop,
    spawn,
)


@pytest.fixture(autouse=True)
def _fresh_thread_loop():
    yield
    close_thread_loop()


def _running_loop_or_none():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# -- greenletio's tests/test_core.py, against our API -------------------------------------


def test_await_with_no_loop_running_runs_the_coroutine_and_leaves_no_loop_running():
    seen = []

    async def record(arg):
        seen.append(arg)
        return arg

    assert await_(record(42)) == 42
    assert seen == [42]
    # greenletio leaves its loop marked running until bridge.stop(); ours runs only during
    # the call.
    assert _running_loop_or_none() is None
    assert asyncio.run(record(43)) == 43


def test_await_decorator_with_no_loop_running():
    seen = []

    @await_
    async def record(arg):
        seen.append(arg)
        return arg

    assert record(42) == 42
    assert seen == [42]
    assert record.__name__ == "record"
    assert _running_loop_or_none() is None


def test_async_and_await_with_a_running_loop():
    seen = []

    async def record(arg):
        await asyncio.sleep(0)
        seen.append(arg)
        return arg

    @async_
    def through_await(arg):
        return await_(record(arg))

    @async_()
    def identity(arg):
        return arg

    async def main(arg):
        assert await identity(arg) == arg
        return await through_await(arg)

    assert inspect.iscoroutinefunction(through_await)
    assert inspect.iscoroutinefunction(identity)
    assert asyncio.run(main(42)) == 42
    assert seen == [42]


def test_with_context_sync_code_changes_reach_the_caller():
    var = contextvars.ContextVar("var", default=1)

    @async_(with_context=True)
    def bump():
        old = var.get()
        var.set(old + 1)
        return old

    async def main():
        assert var.get() == 1
        assert await bump() == 1
        assert var.get() == 2
        assert await bump() == 2
        assert var.get() == 3
        var.set(42)
        assert await bump() == 42
        assert var.get() == 43

    asyncio.run(main())


def test_exception_from_the_sync_function_propagates():
    @async_
    def fail(arg):
        raise RuntimeError(arg)

    async def main():
        with pytest.raises(RuntimeError, match="^42$"):
            await fail(42)

    asyncio.run(main())


def test_exception_from_the_awaitable_is_raised_at_await_():
    async def fail(arg):
        raise RuntimeError(arg)

    @async_
    def catch(arg):
        with pytest.raises(RuntimeError, match="^42$"):
            await_(fail(arg))
        return "caught"

    assert asyncio.run(catch(42)) == "caught"


def test_with_context_changes_reach_the_caller_even_when_the_function_raises():
    var = contextvars.ContextVar("var", default=1)

    @async_(with_context=True)
    def bump_then_fail():
        var.set(var.get() + 1)
        raise RuntimeError("foo")

    async def main():
        with pytest.raises(RuntimeError, match="foo"):
            await bump_then_fail()
        assert var.get() == 2

    asyncio.run(main())


def test_gathered_sync_functions_interleave():
    order = []

    @async_
    def worker(name, delay):
        order.append(f"{name} start")
        await_(asyncio.sleep(delay))
        order.append(f"{name} end")
        return name

    async def main():
        return await asyncio.gather(worker("a", 0.02), worker("b", 0.01))

    assert asyncio.run(main()) == ["a", "b"]
    assert order == ["a start", "b start", "b end", "a end"]


def test_await_with_no_loop_raises_what_the_coroutine_raises():
    async def fail():
        raise RuntimeError("foo")

    with pytest.raises(RuntimeError, match="foo"):
        await_(fail())
    # The thread's loop survives the failure.
    assert await_(asyncio.sleep(0, result=7)) == 7


def test_await_after_a_caught_exception():
    async def fail():
        raise RuntimeError("foo")

    async def value():
        return 42

    @async_
    def both():
        with pytest.raises(RuntimeError, match="foo"):
            await_(fail())
        return await_(value())

    assert asyncio.run(both()) == 42


def test_await_in_sync_code_called_directly_from_a_coroutine_raises():
    @async_
    def fine():
        await_(asyncio.sleep(0))

    def called_from_the_task():
        coroutine = asyncio.sleep(0)
        with pytest.raises(AwaitInEventLoopError, match="asyncio event loop") as caught:
            await_(coroutine)
        # Closed, so no "never awaited" warning (pytest turns warnings into errors).
        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
        return caught.value

    async def main():
        await fine()
        return called_from_the_task()

    error = asyncio.run(main())
    assert isinstance(error, RuntimeError)  # what greenletio raises
    assert isinstance(error, awaitlet.NoAwaitletContext)


def test_await_in_a_coroutine_run_by_await_itself_raises():
    # greenletio's bad_await_with_internal_loop (a test it never runs).
    async def inner_misuse():
        with pytest.raises(AwaitInEventLoopError):
            await_(asyncio.sleep(0))
        return "raised"

    assert await_(inner_misuse()) == "raised"


# -- beyond greenletio ---------------------------------------------------------------------


def test_without_with_context_the_sync_code_shares_the_callers_context():
    var = contextvars.ContextVar("var", default="default")

    @async_
    def read_then_write():
        seen = var.get()
        var.set("from sync")
        return seen

    async def main():
        var.set("from caller")
        # greenletio would see "default": its greenlet starts in an empty context.
        assert await read_then_write() == "from caller"
        assert var.get() == "from sync"

    asyncio.run(main())


def test_with_context_isolates_the_sync_code_until_it_returns():
    var = contextvars.ContextVar("var", default="default")

    async def read():
        return var.get()

    @async_(with_context=True)
    def write_then_read_from_the_task():
        var.set("from sync")
        # The awaited coroutine runs in the task's context, which sees the change only
        # once the call returns (as in greenletio).
        return await_(read())

    async def main():
        assert await write_then_read_from_the_task() == "default"
        assert var.get() == "from sync"

    asyncio.run(main())


def test_tracebacks_keep_every_frame():
    async def deepest():
        await asyncio.sleep(0)
        raise ValueError("from the coroutine")

    @async_
    def sync_layer():
        return await_(deepest())

    async def main():
        await sync_layer()

    with pytest.raises(ValueError) as caught:
        asyncio.run(main())
    names = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    for name in ("main", "sync_layer", "deepest"):
        assert name in names
    assert names.index("main") < names.index("sync_layer") < names.index("deepest")


def test_cancelling_the_task_raises_cancelled_error_at_await_():
    events = []

    @async_
    def waits_forever():
        try:
            await_(asyncio.sleep(60))
        except asyncio.CancelledError:
            events.append("cancelled at await_")
            raise
        finally:
            events.append("finally ran")

    async def main():
        task = asyncio.create_task(waits_forever())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())
    assert events == ["cancelled at await_", "finally ran"]


def test_cancellation_by_timeout_reaches_sync_code():
    caught = []

    @async_
    def slow():
        try:
            await_(asyncio.sleep(60))
        except asyncio.CancelledError:
            caught.append(True)
            raise

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow(), 0.01)

    asyncio.run(main())
    assert caught == [True]


def test_the_no_loop_mode_reuses_one_loop_per_thread():
    async def current_loop():
        return asyncio.get_running_loop()

    first = await_(current_loop())
    assert await_(current_loop()) is first
    assert not first.is_running()

    from_thread = []
    thread = threading.Thread(target=lambda: from_thread.append(await_(current_loop())))
    thread.start()
    thread.join()
    assert from_thread[0] is not first
    gc.collect()
    # A thread's loop is closed once the thread is gone.
    assert from_thread[0].is_closed()

    close_thread_loop()
    assert first.is_closed()
    assert await_(current_loop()) is not first


def test_threads_use_await_concurrently():
    async def work(n):
        await asyncio.sleep(0.01)
        return n * n

    results = {}

    def run(n):
        results[n] = [await_(work(n)) for _ in range(3)]

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: [n * n] * 3 for n in range(8)}


def shout(port, words):
    """A library function written once, as sync code, doing its I/O with asyncio streams."""
    reader, writer = await_(asyncio.open_connection("127.0.0.1", port))
    try:
        replies = []
        for word in words:
            writer.write(word.encode() + b"\n")
            await_(writer.drain())
            replies.append(await_(reader.readline()).decode().strip())
        return replies
    finally:
        writer.close()
        await_(writer.wait_closed())


def test_one_code_path_serves_sync_and_async_callers_over_real_sockets():
    server = UpperCaseServer()
    try:
        # A sync caller with no loop: the thread's own loop does the I/O, and stays the
        # same loop across the function's several await_() calls.
        assert shout(server.port, ["hello", "world"]) == ["HELLO", "WORLD"]

        # Async callers: the same function on fibers, several at once on one loop.
        async def main():
            return await asyncio.gather(
                *(async_(shout)(server.port, [f"client {n}", "bye"]) for n in range(5))
            )

        assert asyncio.run(main()) == [[f"CLIENT {n}", "BYE"] for n in range(5)]
    finally:
        server.close()


def test_await_decorator_inside_async_suspends_the_fiber():
    @await_
    async def sleep_and_return(value):
        await asyncio.sleep(0.01)
        return value

    ticks = []

    async def ticker():
        for _ in range(3):
            ticks.append("tick")
            await asyncio.sleep(0)

    @async_
    def sync_caller():
        return sleep_and_return("done")

    async def main():
        return await asyncio.gather(sync_caller(), ticker())

    assert asyncio.run(main()) == ["done", None]
    assert ticks == ["tick"] * 3


def test_nested_async_inside_an_awaited_coroutine():
    @async_
    def inner(n):
        return await_(asyncio.sleep(0, result=n + 1))

    async def middle(n):
        return await inner(n) * 10

    @async_
    def outer(n):
        return await_(middle(n))

    assert asyncio.run(outer(1)) == 20


def test_async_passes_assert_await_occurs_through_to_the_function():
    @async_
    def takes_the_reserved_name(*, assert_await_occurs):
        return assert_await_occurs

    assert asyncio.run(takes_the_reserved_name(assert_await_occurs="mine")) == "mine"


def test_wrappers_keep_the_wrapped_functions_metadata():
    def documented(x):
        """Doc."""
        return x

    wrapped = async_(documented)
    assert wrapped.__name__ == "documented"
    assert wrapped.__doc__ == "Doc."
    assert wrapped.__wrapped__ is documented


def test_arguments_that_are_neither_awaitable_nor_callable_are_refused():
    with pytest.raises(TypeError, match="awaitable or an async function"):
        await_(42)
    with pytest.raises(TypeError, match="callable"):
        async_(42)


def test_spawn_runs_sync_code_as_a_task():
    order = []

    def background(n):
        order.append("background start")
        await_(asyncio.sleep(0.01))
        order.append("background end")
        return n * 2

    async def main():
        task = spawn(background, 21)
        assert isinstance(task, asyncio.Task)
        assert task.get_name().endswith("background")
        order.append("main continues")
        return await task

    assert asyncio.run(main()) == 42
    assert order == ["main continues", "background start", "background end"]


def test_spawn_from_sync_code_and_its_exceptions():
    def failing():
        await_(asyncio.sleep(0))
        raise LookupError("from spawned code")

    @async_
    def parent():
        task = spawn(failing)
        with pytest.raises(LookupError, match="spawned"):
            await_(task)
        return "handled"

    assert asyncio.run(parent()) == "handled"


def test_spawn_needs_a_running_loop():
    with pytest.raises(RuntimeError, match="running asyncio event loop"):
        spawn(print)
