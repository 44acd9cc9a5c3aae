import asyncio
import collections
import contextvars
import io
import logging
import sys
import types

import pytest
from _support import Yield
from awaitlet import async_def, awaitlet

try:
    import uvloop
except Exception:
    uvloop = None

requires_eager_tasks = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="asyncio.eager_task_factory is new in 3.12"
)

variable = contextvars.ContextVar("variable", default="default")


def run_with_asyncio(coroutine):
    return asyncio.run(coroutine)


def run_with_uvloop(coroutine):
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


@pytest.fixture(
    params=[
        "asyncio",
        pytest.param(
            "uvloop",
            marks=pytest.mark.skipif(uvloop is None, reason="uvloop is not importable"),
        ),
    ]
)
def run_loop(request):
    if request.param == "asyncio":
        return run_with_asyncio
    return run_with_uvloop


async def sleep_then_return(value):
    await asyncio.sleep(0.001)
    return value


def sync_sum(count):
    return sum(awaitlet(sleep_then_return(index)) for index in range(count))


def test_round_trip(run_loop):
    async def main():
        return await async_def(sync_sum, 10)

    assert run_loop(main()) == 45


def test_many_concurrent_tasks(run_loop):
    async def main():
        return await asyncio.gather(*(async_def(sync_sum, index) for index in range(300)))

    assert run_loop(main()) == [sum(range(index)) for index in range(300)]


def test_loop_future_and_call_later(run_loop):
    def fn():
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_later(0.001, future.set_result, "from call_later")
        return awaitlet(future)

    async def main():
        return await async_def(fn)

    assert run_loop(main()) == "from call_later"


def test_exception_propagation(run_loop):
    error = LookupError("failed")

    async def failing():
        await asyncio.sleep(0)
        raise error

    def fn():
        awaitlet(sleep_then_return(None))
        awaitlet(failing())

    async def main():
        try:
            await async_def(fn)
        except LookupError as caught:
            return caught
        return None

    assert run_loop(main()) is error


def test_cancellation_runs_sync_finally(run_loop):
    events = []

    def fn():
        try:
            events.append("suspending")
            awaitlet(asyncio.sleep(10))
        finally:
            events.append("finally")

    async def main():
        task = asyncio.ensure_future(async_def(fn))
        while not events:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run_loop(main()) is True
    assert events == ["suspending", "finally"]


def test_contextvars(run_loop):
    def fn():
        awaitlet(sleep_then_return(None))
        before = variable.get()
        variable.set("set by sync code")
        return before

    async def main():
        variable.set("task value")
        before = await async_def(fn)
        return before, variable.get()

    assert run_loop(main()) == ("task value", "set by sync code")


def test_nested_async_def(run_loop):
    async def inner_coroutine():
        return await async_def(sync_sum, 3)

    def fn():
        return awaitlet(inner_coroutine()) + awaitlet(sleep_then_return(10))

    async def main():
        return await async_def(fn)

    assert run_loop(main()) == 13


def test_debug_mode_reports_nothing(run_loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")

    def fn(index):
        awaitlet(asyncio.sleep(0))
        try:
            awaitlet(asyncio.wait_for(asyncio.sleep(10), 0.001))
        except asyncio.TimeoutError:
            pass
        return awaitlet(sleep_then_return(index))

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = 60
        return await asyncio.gather(*(async_def(fn, index) for index in range(20)))

    assert run_loop(main()) == list(range(20))
    reported = [record.getMessage() for record in caplog.records if record.levelno >= logging.INFO]
    assert reported == []


def test_asyncio_run_debug_flag_reports_nothing(caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")

    def fn():
        awaitlet(asyncio.sleep(0))
        return awaitlet(sleep_then_return("debug"))

    async def main():
        asyncio.get_running_loop().slow_callback_duration = 60
        return await async_def(fn)

    assert asyncio.run(main(), debug=True) == "debug"
    reported = [record.getMessage() for record in caplog.records if record.levelno >= logging.INFO]
    assert reported == []


def test_hand_written_trampoline_drives_coroutines_round_robin():
    class Double:
        def __init__(self, value):
            self.value = value

        def __await__(self):
            return (yield ("double", self.value))

    def fn(start):
        value = start
        for _ in range(3):
            value = awaitlet(Double(value))
        return value

    ready = collections.deque((async_def(fn, start), None) for start in range(1, 6))
    results = []
    while ready:
        coro, value = ready.popleft()
        try:
            request = coro.send(value)
        except StopIteration as stop:
            results.append(stop.value)
            continue
        operation, operand = request
        assert operation == "double"
        ready.append((coro, operand * 2))

    assert sorted(results) == [8, 16, 24, 32, 40]


def test_hand_written_trampoline_can_throw_into_sync_code():
    class Request:
        def __init__(self, payload):
            self.payload = payload

        def __await__(self):
            return (yield self.payload)

    def fn():
        outcomes = []
        for payload in ["ok", "fail", "ok"]:
            try:
                outcomes.append(awaitlet(Request(payload)))
            except LookupError as error:
                outcomes.append(("failed", error.args[0]))
        return outcomes

    coro = async_def(fn)
    request = coro.send(None)
    while True:
        try:
            if request == "fail":
                request = coro.throw(LookupError("refused"))
            else:
                request = coro.send(f"served {request}")
        except StopIteration as stop:
            result = stop.value
            break

    assert result == ["served ok", ("failed", "refused"), "served ok"]


def test_await_iterator_can_be_driven_by_a_generator():
    def fn():
        return awaitlet(Yield("from sync code")) + "!"

    def generator_driver():
        result = yield from async_def(fn).__await__()
        return result

    driver = generator_driver()
    assert next(driver) == "from sync code"
    with pytest.raises(StopIteration) as stop:
        driver.send("answer")
    assert stop.value.value == "answer!"


def test_types_coroutine_generator_can_await_it():
    def fn():
        return awaitlet(sleep_then_return("legacy"))

    @types.coroutine
    def legacy_coroutine():
        return (yield from async_def(fn).__await__())

    async def main():
        return await legacy_coroutine()

    assert asyncio.run(main()) == "legacy"


def test_task_repr_while_suspended_in_sync_code_names_the_function():
    observed = []

    def sync_entry_point():
        awaitlet(asyncio.sleep(0))
        awaitlet(asyncio.sleep(0.01))

    async def main():
        task = asyncio.create_task(async_def(sync_entry_point))
        await asyncio.sleep(0.001)
        observed.append(repr(task))
        await task
        observed.append(repr(task))

    asyncio.run(main())
    assert all(isinstance(text, str) for text in observed)
    assert "sync_entry_point" in observed[0]


def test_task_get_stack_while_suspended_in_sync_code_returns_the_sync_frames():
    observed = {}

    def helper_function():
        awaitlet(asyncio.sleep(0))
        awaitlet(asyncio.sleep(10))

    def sync_entry_point():
        helper_function()

    async def main():
        task = asyncio.create_task(async_def(sync_entry_point))
        await asyncio.sleep(0.01)
        frames = task.get_stack()
        observed["types"] = {type(frame) for frame in frames}
        observed["names"] = [frame.f_code.co_name for frame in frames]
        printed = io.StringIO()
        task.print_stack(file=printed)
        observed["printed"] = printed.getvalue()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert observed["types"] == {types.FrameType}
    assert "sync_entry_point" in observed["names"]
    assert "sync_entry_point" in observed["printed"]


def test_task_get_stack_of_a_wrapping_coroutine_does_not_crash():
    observed = {}

    def sync_entry_point():
        awaitlet(asyncio.sleep(10))

    async def wrapping_coroutine():
        await async_def(sync_entry_point)

    async def main():
        task = asyncio.create_task(wrapping_coroutine())
        await asyncio.sleep(0.01)
        observed["names"] = [frame.f_code.co_name for frame in task.get_stack()]
        task.print_stack(file=io.StringIO())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert "wrapping_coroutine" in observed["names"]


def test_all_tasks_reprs_while_many_are_suspended_in_sync_code():
    def sync_entry_point():
        awaitlet(asyncio.sleep(0.01))

    async def main():
        tasks = [asyncio.create_task(async_def(sync_entry_point)) for _ in range(20)]
        await asyncio.sleep(0)
        texts = [repr(task) for task in asyncio.all_tasks()]
        stacks = [task.get_stack() for task in tasks]
        await asyncio.gather(*tasks)
        return texts, stacks

    texts, stacks = asyncio.run(main())
    assert len(texts) == 21
    assert len(stacks) == 20


@requires_eager_tasks
def test_eager_task_factory_starts_sync_code_inside_create_task():
    events = []

    def fn():
        events.append("sync code started")
        awaitlet(asyncio.sleep(0.001))
        events.append("sync code resumed")
        return "eager result"

    async def main():
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        task = asyncio.create_task(async_def(fn))
        events.append("create_task returned")
        return await task

    assert asyncio.run(main()) == "eager result"
    assert events == ["sync code started", "create_task returned", "sync code resumed"]


@requires_eager_tasks
def test_eager_task_created_from_sync_code_resumes_correctly():
    events = []

    def background(index):
        events.append(("background started", index))
        awaitlet(asyncio.sleep(0.001))
        events.append(("background resumed", index))
        return index

    def fn():
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(async_def(background, index)) for index in range(3)]
        events.append("tasks created")
        awaitlet(asyncio.sleep(0.01))
        events.append("foreground resumed")
        return awaitlet(asyncio.gather(*tasks))

    async def main():
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        return await async_def(fn)

    assert asyncio.run(main()) == [0, 1, 2]
    assert events[:4] == [
        ("background started", 0),
        ("background started", 1),
        ("background started", 2),
        "tasks created",
    ]
    assert sorted(events[4:7], key=repr) == [("background resumed", index) for index in range(3)]
    assert events[7] == "foreground resumed"


def test_task_created_from_sync_code_runs_on_its_own_stack():
    events = []

    def background(index):
        awaitlet(asyncio.sleep(0.001))
        events.append(("background", index))
        return index * 10

    def fn():
        tasks = [asyncio.ensure_future(async_def(background, index)) for index in range(5)]
        awaitlet(asyncio.sleep(0))
        return awaitlet(asyncio.gather(*tasks))

    async def main():
        return await async_def(fn)

    assert asyncio.run(main()) == [0, 10, 20, 30, 40]
    assert sorted(events) == [("background", index) for index in range(5)]
