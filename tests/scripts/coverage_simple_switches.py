"""The shape of issue 9's sample: a loop of awaitlet() calls in two gathered tasks.

Every line runs except those marked ``# never runs``.  Prints "coverage target OK".
"""

import asyncio

from awaitlet import async_def, awaitlet


async def fetch(n):
    await asyncio.sleep(0)
    return n * 2


def helper(value):
    result = awaitlet(fetch(value))
    result += 1
    return result


def never_called():
    return "missed"  # never runs


def sync_work(count):
    total = 0
    for i in range(count):
        total += awaitlet(fetch(i))
        total += 1
    total += helper(5)
    if total < 0:
        total = never_called()  # never runs
    total += 2
    return total


async def main():
    results = await asyncio.gather(async_def(sync_work, 3), async_def(sync_work, 2))
    assert results == [22, 17], results
    print("coverage target OK")


asyncio.run(main())
