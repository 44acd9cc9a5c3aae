import asyncio
import sys

import pytest
from awaitlet import async_def, awaitlet

requires_asyncio_timeout = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="asyncio.timeout() is new in 3.11"
)
requires_task_group = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="asyncio.TaskGroup is new in 3.11"
)


def run(coroutine_function, *args):
    return asyncio.run(coroutine_function(*args))


def sleeps_long(events):
    """Sync code that records how its long awaitlet() ended."""
    try:
        events.append("suspending")
        awaitlet(asyncio.sleep(10))
        events.append("sleep finished")
    except asyncio.CancelledError as cancelled:
        events.append(("cancelled at awaitlet", cancelled.args))
        raise
    finally:
        events.append("finally")


async def wait_for_event(events, event):
    while event not in events:
        await asyncio.sleep(0)


async def awaiting_wrapper(events):
    try:
        await async_def(sleeps_long, events)
    finally:
        events.append("wrapper finally")


def test_task_cancel_raises_cancelled_error_at_the_awaitlet_call():
    events = []

    async def main():
        task = asyncio.create_task(async_def(sleeps_long, events))
        await wait_for_event(events, "suspending")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(main) is True
    assert events == ["suspending", ("cancelled at awaitlet", ()), "finally"]


def test_task_cancel_propagates_through_an_awaiting_coroutine():
    events = []

    async def main():
        task = asyncio.create_task(awaiting_wrapper(events))
        await wait_for_event(events, "suspending")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(main) is True
    assert events == ["suspending", ("cancelled at awaitlet", ()), "finally", "wrapper finally"]


def test_cancel_message_reaches_the_sync_code():
    events = []

    async def main():
        task = asyncio.create_task(async_def(sleeps_long, events))
        await wait_for_event(events, "suspending")
        task.cancel("stop now")
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main)
    assert ("cancelled at awaitlet", ("stop now",)) in events


def test_cancel_before_the_task_started_never_runs_fn():
    events = []

    async def main():
        task = asyncio.create_task(async_def(sleeps_long, events))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(main) is True
    assert events == []


@requires_asyncio_timeout
def test_asyncio_timeout_raises_timeout_error_and_runs_sync_finally():
    events = []

    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await async_def(sleeps_long, events)

    run(main)
    assert events[0] == "suspending"
    assert events[1][0] == "cancelled at awaitlet"
    assert events[2:] == ["finally"]


def test_wait_for_raises_timeout_error_and_runs_sync_finally():
    events = []

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(async_def(sleeps_long, events), 0.02)

    run(main)
    assert events[0] == "suspending"
    assert events[1][0] == "cancelled at awaitlet"
    assert events[2:] == ["finally"]


def test_wait_for_returns_the_result_when_fast_enough():
    def fn():
        return awaitlet(asyncio.sleep(0.001, result="in time"))

    async def main():
        return await asyncio.wait_for(async_def(fn), 10)

    assert run(main) == "in time"


def test_sync_code_can_suppress_cancellation_and_keep_awaiting():
    events = []

    def fn():
        try:
            events.append("suspending")
            awaitlet(asyncio.sleep(10))
        except asyncio.CancelledError:
            events.append("suppressed")
        return awaitlet(asyncio.sleep(0.001, result="completed after cancel"))

    async def main():
        task = asyncio.create_task(async_def(fn))
        await wait_for_event(events, "suspending")
        task.cancel()
        result = await task
        return result, task.cancelled()

    assert run(main) == ("completed after cancel", False)
    assert events == ["suspending", "suppressed"]


def test_second_cancel_after_suppression_cancels_the_task():
    events = []

    def fn():
        try:
            events.append("suspending")
            awaitlet(asyncio.sleep(10))
        except asyncio.CancelledError:
            events.append("suppressed once")
        try:
            events.append("suspending again")
            awaitlet(asyncio.sleep(10))
        finally:
            events.append("finally")

    async def main():
        task = asyncio.create_task(async_def(fn))
        await wait_for_event(events, "suspending")
        task.cancel()
        await wait_for_event(events, "suspending again")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(main) is True
    assert events == ["suspending", "suppressed once", "suspending again", "finally"]


def test_cancel_reaches_the_innermost_of_nested_sync_stacks():
    events = []

    async def nested_coroutine():
        try:
            await async_def(sleeps_long, events)
        finally:
            events.append("nested coroutine finally")

    def outer_sync():
        try:
            awaitlet(nested_coroutine())
        except asyncio.CancelledError:
            events.append("outer sync cancelled")
            raise
        finally:
            events.append("outer sync finally")

    async def main():
        task = asyncio.create_task(async_def(outer_sync))
        await wait_for_event(events, "suspending")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(main) is True
    assert events == [
        "suspending",
        ("cancelled at awaitlet", ()),
        "finally",
        "nested coroutine finally",
        "outer sync cancelled",
        "outer sync finally",
    ]


def test_cancelling_the_outer_task_leaves_a_shielded_awaitable_running():
    events = []

    async def protected():
        await asyncio.sleep(0.02)
        events.append("protected finished")
        return "protected result"

    async def main():
        inner = asyncio.ensure_future(protected())
        task = asyncio.create_task(async_def(sleeps_long_on, events, asyncio.shield(inner)))
        await wait_for_event(events, "suspending")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await inner

    assert run(main) == "protected result"
    assert events[-1] == "protected finished"
    assert "finally" in events


def sleeps_long_on(events, awaitable):
    try:
        events.append("suspending")
        return awaitlet(awaitable)
    finally:
        events.append("finally")


@requires_task_group
def test_task_group_cancels_sibling_sync_stacks_when_one_fails():
    sibling_events = [[] for _ in range(5)]

    def failing():
        awaitlet(asyncio.sleep(0.01))
        raise LookupError("failed")

    async def main():
        with pytest.raises(ExceptionGroup) as raised:  # noqa: F821
            async with asyncio.TaskGroup() as group:
                for events in sibling_events:
                    group.create_task(async_def(sleeps_long, events))
                group.create_task(async_def(failing))
        return raised.value.exceptions

    exceptions = run(main)
    assert [type(exception) for exception in exceptions] == [LookupError]
    for events in sibling_events:
        assert events == ["suspending", ("cancelled at awaitlet", ()), "finally"]


def test_many_tasks_cancelled_while_suspended_all_run_finally():
    all_events = [[] for _ in range(200)]

    async def main():
        tasks = [asyncio.create_task(async_def(sleeps_long, events)) for events in all_events]
        for events in all_events:
            await wait_for_event(events, "suspending")
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [type(result) for result in results]

    assert run(main) == [asyncio.CancelledError] * 200
    for events in all_events:
        assert events == ["suspending", ("cancelled at awaitlet", ()), "finally"]
