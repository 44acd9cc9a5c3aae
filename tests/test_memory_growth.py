import asyncio
import gc
import random
import sys

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


# ---------------------------------------------------------------- stacks' memory returned

BURST = 20_000
SOAK_CONCURRENCY = 500
SOAK_JOBS = 20_000
#: What idle stacks may keep resident: a few dozen recently used ones stay warm.
ALLOWED_IDLE_STACKS_BYTES = 4 * 1024 * 1024
#: Python's own allocators keep part of what a burst of tasks needed (a burst of native
#: coroutines leaves about as much): the whole process gets this much more slack.
ALLOWED_BURST_RESIDUE_BYTES = 32 * 1024 * 1024
ALLOWED_SOAK_GROWTH_BYTES = 8 * 1024 * 1024
#: Fiber stacks are carved from anonymous mappings of many GiB; nothing else here is as big.
STACK_REGION_MIN_BYTES = 1 << 30


def stack_regions_resident_bytes():
    """Resident memory of the fiber stacks' regions, from /proc/self/smaps."""
    resident = 0
    in_region = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                low, high = (int(bound, 16) for bound in fields[0].split("-"))
                in_region = high - low >= STACK_REGION_MIN_BYTES and len(fields) == 5
            elif in_region and fields[0] == "Rss:":
                resident += int(fields[1]) * 1024
    return resident


def wait_for(event):
    return awaitlet(event.wait())


async def native_wait_for(event):
    return await event.wait()


async def suspend_all_then_finish(count, task_body):
    """``count`` tasks suspended at once on one event, then released together."""
    event = asyncio.Event()
    tasks = [asyncio.ensure_future(task_body(event)) for _ in range(count)]
    await asyncio.sleep(0)
    event.set()
    await asyncio.gather(*tasks)


def test_memory_of_a_burst_of_suspended_fibers_is_returned_when_they_finish():
    async def main():
        # Let Python's allocators first grow to what a burst of this many tasks needs.
        await suspend_all_then_finish(BURST, native_wait_for)
        await suspend_all_then_finish(100, lambda event: async_def(wait_for, event))
        gc.collect()
        before = resident_memory_bytes(), stack_regions_resident_bytes()
        await suspend_all_then_finish(BURST, lambda event: async_def(wait_for, event))
        gc.collect()
        return resident_memory_bytes() - before[0], stack_regions_resident_bytes() - before[1]

    residue, stacks_residue = asyncio.run(main())
    assert stacks_residue < ALLOWED_IDLE_STACKS_BYTES, f"stacks kept {stacks_residue} bytes"
    assert residue < ALLOWED_BURST_RESIDUE_BYTES, f"{residue} bytes stayed resident"


def descend_through_c_then_wait(depth):
    """Sync code ``depth`` calls deep, each through a C call (so it uses the machine stack)."""
    if depth:
        return [*map(descend_through_c_then_wait, [depth - 1])][0]
    awaitlet(asyncio.sleep(0))
    return 0


def test_stacks_stay_flat_over_a_soak_of_jobs_of_random_depth():
    rng = random.Random(5)

    async def worker(jobs):
        for _ in range(jobs):
            await async_def(descend_through_c_then_wait, rng.randrange(60))

    async def soak(concurrency, jobs):
        await asyncio.gather(*(worker(jobs // concurrency) for _ in range(concurrency)))

    async def main():
        await soak(10, 1_000)
        gc.collect()
        before = resident_memory_bytes(), stack_regions_resident_bytes()
        growth = []
        for _ in range(3):
            await soak(SOAK_CONCURRENCY, SOAK_JOBS)
            gc.collect()
            growth.append(
                (resident_memory_bytes() - before[0], stack_regions_resident_bytes() - before[1])
            )
        return growth

    growth = asyncio.run(main())
    assert max(stacks for _, stacks in growth) < ALLOWED_IDLE_STACKS_BYTES, growth
    assert max(total for total, _ in growth) < ALLOWED_SOAK_GROWTH_BYTES, growth


class Levels:
    """Sync frames as benches/cases/scale.py makes them: a method calling itself."""

    def __init__(self, event):
        self.event = event

    def level(self, depth):
        if depth == 1:
            awaitlet(self.event.wait())
            return 1
        return self.level(depth - 1) + 1


@pytest.mark.skipif(
    sys.gettrace() is not None or sys.getprofile() is not None,
    reason="trace and profile functions are told about switches on the fiber's stack",
)
def test_a_task_suspended_twenty_frames_deep_keeps_few_pages_of_its_stack():
    # The frames area shares the page that holds the top of the machine stack (see
    # stack_pool.rs), and the awaitable's first step runs on the resumer's stack: on 3.11-3.13
    # a task waiting 20 frames deep fits in that one page; on 3.14+, whose evaluation loop
    # has larger frames, two pages hold it. On 3.10 every Python call also recurses in C:
    # 20 frames take about 8 KiB of machine stack.
    count = 2000
    if sys.version_info < (3, 11):
        pages_allowed = 3
    elif sys.version_info < (3, 14):
        pages_allowed = 1
    else:
        pages_allowed = 2

    async def main():
        event = asyncio.Event()
        levels = Levels(event)
        warm_up = [asyncio.ensure_future(async_def(levels.level, 20)) for _ in range(100)]
        await asyncio.sleep(0)
        event.set()
        await asyncio.gather(*warm_up)
        event.clear()
        gc.collect()
        before = stack_regions_resident_bytes()
        tasks = [asyncio.ensure_future(async_def(levels.level, 20)) for _ in range(count)]
        await asyncio.sleep(0)
        resident = stack_regions_resident_bytes() - before
        event.set()
        assert await asyncio.gather(*tasks) == [20] * count
        return resident

    pages_per_task = asyncio.run(main()) / count / 4096
    assert pages_per_task < pages_allowed + 0.1, f"{pages_per_task:.2f} pages per task"
