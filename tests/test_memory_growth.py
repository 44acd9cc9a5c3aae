import asyncio
import gc

import pytest
from _support import resident_memory_bytes
from awaitlet import async_def, awaitlet

ALLOWED_GROWTH_BYTES = 4 * 1024 * 1024

pytestmark = pytest.mark.skipif(
    resident_memory_bytes() is None, reason="resident memory size is not readable here"
)


async def trivial():
    return 1


def awaits_trivial():
    return awaitlet(trivial())


def awaits_a_loop_iteration():
    return awaitlet(asyncio.sleep(0, result=1))


async def failing():
    raise LookupError("failed")


def raises_from_the_awaitable():
    awaitlet(failing())


def measure_growth(run_calls, warm_up, measured):
    """Resident memory growth across ``measured`` calls after ``warm_up`` calls."""

    async def main():
        await run_calls(warm_up)
        gc.collect()
        before = resident_memory_bytes()
        await run_calls(measured)
        gc.collect()
        return resident_memory_bytes() - before

    return asyncio.run(main())


def sequential_calls(fn):
    async def run_calls(count):
        for _ in range(count):
            assert await async_def(fn) == 1

    return run_calls


def test_no_growth_over_two_hundred_thousand_sequential_calls():
    growth = measure_growth(sequential_calls(awaits_trivial), 20_000, 180_000)
    assert growth < ALLOWED_GROWTH_BYTES, f"grew by {growth} bytes"


def test_no_growth_when_every_call_suspends_through_the_loop():
    growth = measure_growth(sequential_calls(awaits_a_loop_iteration), 10_000, 30_000)
    assert growth < ALLOWED_GROWTH_BYTES, f"grew by {growth} bytes"


def test_no_growth_when_every_call_raises():
    async def run_calls(count):
        for _ in range(count):
            try:
                await async_def(raises_from_the_awaitable)
            except LookupError:
                pass

    growth = measure_growth(run_calls, 10_000, 30_000)
    assert growth < ALLOWED_GROWTH_BYTES, f"grew by {growth} bytes"


def test_no_growth_when_suspended_tasks_are_cancelled():
    def sleeps_long():
        try:
            awaitlet(asyncio.sleep(10))
        finally:
            pass

    async def run_calls(count):
        for _ in range(count // 100):
            tasks = [asyncio.create_task(async_def(sleeps_long)) for _ in range(100)]
            await asyncio.sleep(0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    growth = measure_growth(run_calls, 5_000, 15_000)
    assert growth < ALLOWED_GROWTH_BYTES, f"grew by {growth} bytes"


def test_no_growth_when_suspended_coroutines_are_dropped():
    class Suspend:
        def __await__(self):
            return (yield)

    def suspends_forever():
        try:
            awaitlet(Suspend())
        finally:
            pass

    async def run_calls(count):
        for _ in range(count):
            coro = async_def(suspends_forever)
            coro.send(None)
            del coro

    growth = measure_growth(run_calls, 10_000, 30_000)
    assert growth < ALLOWED_GROWTH_BYTES, f"grew by {growth} bytes"
