"""A program that coverage.py measures: sync code that keeps running after awaitlet() switches.

Every line runs except those marked ``# never runs``; the test compares coverage's report
with that, line for line.  Run as a script; prints "coverage target OK".
"""

import asyncio

from awaitlet import async_def, awaitlet
from awaitlet.greenlet import getcurrent, greenlet


async def fetch(value):
    await asyncio.sleep(0)
    doubled = value * 2
    return doubled


async def at_once(value):
    return value + 1


async def fails():
    await asyncio.sleep(0)
    raise LookupError("from the task")


def deep_helper(value):
    result = awaitlet(fetch(value))
    result += 1
    return result


def middle_helper(value):
    partial = deep_helper(value)
    partial += awaitlet(fetch(1))
    return partial


def never_called():
    return "missed"  # never runs


def sync_work(count):
    total = 0
    for index in range(count):
        total += awaitlet(fetch(index))
        total += 1
    total += middle_helper(5)
    total += awaitlet(at_once(1))
    total += sum(awaitlet(fetch(n)) for n in range(2))
    try:
        awaitlet(fails())
    except LookupError:
        total += 100
    if total < 0:
        total = never_called()  # never runs
    total += 2
    return total


def greenlet_child(first):
    parent = getcurrent().parent
    received = parent.switch(first + 1)
    received += 1
    parent.switch(received)
    return "child done"


def greenlet_work():
    child = greenlet(greenlet_child, getcurrent())
    value = child.switch(1)
    value = child.switch(value + 1)
    finished = child.switch()
    return value, finished


async def main():
    results = await asyncio.gather(async_def(sync_work, 3), async_def(sync_work, 2))
    assert results == [128, 123], results
    after = await async_def(sync_work, 1)
    assert after == 120, after
    assert greenlet_work() == (4, "child done")
    print("coverage target OK")


asyncio.run(main())
