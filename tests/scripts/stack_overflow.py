"""A fiber's recursion runs past its stack while neighbouring fibers are suspended.

Usage: stack_overflow.py GUARDS RECURSION [reused]

GUARDS is the value given to AWAITLET_STACK_GUARDS (auto, mprotect or none). Four
neighbours are started and suspended first; stack slots are carved upward and stacks grow
down, so the overflowing fiber's stack lies right above the last neighbour's, whose top holds
its live C frames (and, on 3.11+, its first Python frames). With ``reused``, 200 fibers run
and finish first and 64 neighbours are suspended, so that the overflowing fiber runs on a
slot that was used before and had all its pages given back.

RECURSION:
``python``, ``c``
    Recursion that CPython checks, at the default recursion limit: prints RecursionError,
    then the neighbours resume and check their locals.
``python-raised-limit``, ``c-raised-limit``
    The same with the recursion limit raised far past what the stack holds: CPython's own
    stack or C recursion checks stop it where it has them (3.11+ for Python calls, 3.12+
    through C), otherwise the fiber overflows.
``unchecked``
    ``next()`` of 300,000 nested ``itertools.chain`` iterators: C recursion that no CPython
    version checks, 32-48 bytes a level (9-14 MiB), more than the fiber's 8 MiB stack and
    less than two. It must die at the guard below the fiber's stack with SIGSEGV, which
    faulthandler reports with the fiber's Python frames; without a guard it would write over
    the neighbour below and finish, and the canary check aborts when it switches out.
"""

import asyncio
import itertools
import os
import sys

from awaitlet import async_def, awaitlet

NESTED_ITERATORS = 300_000


def recurse(depth):
    return recurse(depth + 1) + 1


def recurse_through_c(depth):
    return sorted([depth + 1], key=recurse_through_c)


def nested_iterators(depth):
    iterator = iter([1])
    for _ in range(depth):
        iterator = itertools.chain(iterator)
    return iterator


def overflow_checked(recursion):
    try:
        recursion(0)
    except RecursionError:
        print("RecursionError", flush=True)
    awaitlet(asyncio.sleep(0))
    return "switched out"


def overflow_without_checks(iterator):
    print("overflowing", flush=True)
    return next(iterator)


def neighbour(index, event):
    name = f"neighbour {index}"
    numbers = list(range(index * 1000, index * 1000 + 64))
    awaitlet(event.wait())
    # Read back through the frames the overflow would have written over.
    return name == f"neighbour {index}" and numbers == list(range(index * 1000, index * 1000 + 64))


def awaitlet_sleep():
    return awaitlet(asyncio.sleep(0))


async def main(recursion, neighbour_count, warm_up):
    if warm_up:
        await asyncio.gather(*(async_def(awaitlet_sleep) for _ in range(warm_up)))
    event = asyncio.Event()
    neighbours = [
        asyncio.ensure_future(async_def(neighbour, index, event))
        for index in range(neighbour_count)
    ]
    await asyncio.sleep(0)
    if recursion == "unchecked":
        result = await async_def(overflow_without_checks, nested_iterators(NESTED_ITERATORS))
    else:
        function = recurse_through_c if recursion.startswith("c") else recurse
        result = await async_def(overflow_checked, function)
    print(result, flush=True)
    event.set()
    intact = await asyncio.gather(*neighbours)
    print("neighbours intact" if all(intact) else f"neighbours trampled: {intact}", flush=True)


if __name__ == "__main__":
    # Read when the first stack slot is carved, which has not happened yet.
    os.environ["AWAITLET_STACK_GUARDS"] = sys.argv[1]
    recursion = sys.argv[2]
    reused = sys.argv[3:] == ["reused"]
    if recursion.endswith("raised-limit"):
        sys.setrecursionlimit(1_000_000)
    asyncio.run(main(recursion, 64 if reused else 4, 200 if reused else 0))
