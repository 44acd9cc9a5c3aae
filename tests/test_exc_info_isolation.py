import asyncio
import sys

import pytest
from awaitlet import async_def, awaitlet


def run(coroutine_function, *args):
    return asyncio.run(coroutine_function(*args))


def current_exception():
    return sys.exc_info()[1]


async def handles_its_own_exception():
    try:
        raise LookupError("awaited coroutine's own")
    except LookupError:
        await asyncio.sleep(0.001)
        return current_exception()


async def report_exception_after_sleep():
    await asyncio.sleep(0.001)
    return current_exception()


def test_sync_code_sees_its_handled_exception_before_and_after_a_switch():
    def fn():
        try:
            raise KeyError("sync")
        except KeyError as handled:
            before = current_exception()
            awaitlet(asyncio.sleep(0.001))
            after = current_exception()
            return handled, before, after

    async def main():
        return await async_def(fn)

    handled, before, after = run(main)
    assert before is handled
    assert after is handled


def test_sync_handled_exception_survives_an_awaited_coroutine_that_handles_its_own():
    def fn():
        try:
            raise KeyError("sync")
        except KeyError as handled:
            seen_by_coroutine = awaitlet(handles_its_own_exception())
            return handled, seen_by_coroutine, current_exception()

    async def main():
        return await async_def(fn)

    handled, seen_by_coroutine, after = run(main)
    assert isinstance(seen_by_coroutine, LookupError)
    assert after is handled


def test_sync_handled_exception_survives_an_exception_raised_by_the_awaitable():
    async def failing():
        await asyncio.sleep(0)
        raise ValueError("from awaitable")

    def fn():
        try:
            raise KeyError("sync")
        except KeyError as handled:
            try:
                awaitlet(failing())
            except ValueError as caught:
                from_awaitable = caught
                inner_seen = current_exception()
            return handled, from_awaitable, inner_seen, current_exception()

    async def main():
        return await async_def(fn)

    handled, from_awaitable, inner_seen, after = run(main)
    assert inner_seen is from_awaitable
    assert from_awaitable.__context__ in (None, handled)
    assert after is handled


@pytest.mark.skipif(sys.version_info < (3, 11), reason="sys.exception() is new in 3.11")
def test_sys_exception_matches_in_sync_code_across_a_switch():
    def fn():
        try:
            raise KeyError("sync")
        except KeyError as handled:
            awaitlet(asyncio.sleep(0.001))
            return handled, sys.exception()

    async def main():
        return await async_def(fn)

    handled, seen = run(main)
    assert seen is handled


def test_bare_raise_after_a_switch_reraises_the_sync_exception():
    error = KeyError("sync")

    def fn():
        try:
            raise error
        except KeyError:
            awaitlet(asyncio.sleep(0.001))
            awaitlet(handles_its_own_exception())
            raise

    async def main():
        try:
            await async_def(fn)
        except KeyError as caught:
            return caught
        return None

    assert run(main) is error


def test_task_sees_its_own_handled_exception_after_async_def_returns():
    def fn():
        try:
            raise KeyError("sync")
        except KeyError:
            awaitlet(asyncio.sleep(0.001))
            return current_exception()

    async def main():
        try:
            raise ValueError("task")
        except ValueError as task_exception:
            sync_seen = await async_def(fn)
            return task_exception, sync_seen, current_exception()

    task_exception, sync_seen, after = run(main)
    assert isinstance(sync_seen, KeyError)
    assert after is task_exception


def test_task_sees_no_exception_after_async_def_returns_outside_an_except_block():
    def fn():
        try:
            raise KeyError("sync")
        except KeyError:
            awaitlet(asyncio.sleep(0.001))
            awaitlet(asyncio.sleep(0))

    async def main():
        await async_def(fn)
        return sys.exc_info()

    assert run(main) == (None, None, None)


def test_task_sees_no_exception_after_sync_code_left_its_except_block_suspended():
    def fn():
        try:
            raise KeyError("sync")
        except KeyError:
            awaitlet(asyncio.sleep(0.001))
        awaitlet(asyncio.sleep(0.001))

    async def main():
        await async_def(fn)
        return sys.exc_info()

    assert run(main) == (None, None, None)


def test_sync_code_outside_except_sees_no_exception_when_the_task_has_none():
    def fn():
        try:
            raise KeyError("sync")
        except KeyError:
            awaitlet(asyncio.sleep(0.001))
        awaitlet(asyncio.sleep(0.001))
        return sys.exc_info()

    async def main():
        return await async_def(fn)

    assert run(main) == (None, None, None)


def test_awaited_coroutine_does_not_see_the_sync_exception():
    def fn():
        try:
            raise KeyError("sync")
        except KeyError as handled:
            seen_by_coroutine = awaitlet(report_exception_after_sleep())
            return handled, seen_by_coroutine

    async def main():
        return await async_def(fn)

    handled, seen_by_coroutine = run(main)
    assert seen_by_coroutine is not handled


def test_concurrent_tasks_each_see_only_their_own_exceptions():
    observations = []

    def fn(index):
        try:
            raise KeyError(f"sync {index}")
        except KeyError as handled:
            for _ in range(5):
                awaitlet(asyncio.sleep(0.001 * (index % 3)))
                observations.append(("sync", index, current_exception() is handled))
                seen_by_coroutine = awaitlet(report_exception_after_sleep())
                observations.append(("coroutine", index, seen_by_coroutine is not handled))
        return index

    async def task(index):
        try:
            raise ValueError(f"task {index}")
        except ValueError as task_exception:
            await asyncio.sleep(0)
            result = await async_def(fn, index)
            observations.append(("task", index, current_exception() is task_exception))
            return result

    async def main():
        return await asyncio.gather(*(task(index) for index in range(20)))

    assert run(main) == list(range(20))
    assert len(observations) == 20 * 11
    assert [entry for entry in observations if not entry[2]] == []
