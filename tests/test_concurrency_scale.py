import asyncio
import random

from awaitlet import async_def, awaitlet

TASK_COUNT = 10_000


def sleep_a_few_times(index):
    total = 0
    for step in range(3):
        awaitlet(asyncio.sleep(random.uniform(0, 0.01)))
        total += step
    return index, total


def test_ten_thousand_concurrent_sync_stacks_complete_with_correct_results():
    async def main():
        return await asyncio.gather(*(async_def(sleep_a_few_times, i) for i in range(TASK_COUNT)))

    assert asyncio.run(main()) == [(index, 3) for index in range(TASK_COUNT)]


def test_ten_thousand_concurrent_tasks_awaiting_sync_stacks():
    async def task(index):
        await asyncio.sleep(random.uniform(0, 0.005))
        return await async_def(sleep_a_few_times, index)

    async def main():
        tasks = [asyncio.create_task(task(index)) for index in range(TASK_COUNT)]
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [(index, 3) for index in range(TASK_COUNT)]


def test_concurrent_successes_and_failures_are_reported_to_the_right_task():
    def succeed_or_fail(index):
        awaitlet(asyncio.sleep(random.uniform(0, 0.005)))
        if index % 3 == 0:
            raise LookupError(index)
        awaitlet(asyncio.sleep(0))
        return index

    async def main():
        return await asyncio.gather(
            *(async_def(succeed_or_fail, index) for index in range(3000)),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    for index, result in enumerate(results):
        if index % 3 == 0:
            assert isinstance(result, LookupError)
            assert result.args == (index,)
        else:
            assert result == index


def test_concurrent_nested_sync_stacks():
    async def inner_coroutine(index):
        return await async_def(sleep_a_few_times, index)

    def outer(index):
        awaitlet(asyncio.sleep(random.uniform(0, 0.005)))
        inner_index, total = awaitlet(inner_coroutine(index))
        return inner_index, total + 1

    async def main():
        return await asyncio.gather(*(async_def(outer, index) for index in range(2000)))

    assert asyncio.run(main()) == [(index, 4) for index in range(2000)]
