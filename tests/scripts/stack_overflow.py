"""Recursion that the interpreter's limits let run past the end of a fiber's stack.

The recursion limit is raised far beyond what 8 MiB of machine stack holds. The outcome must
be loud: RecursionError (where CPython checks the stack itself) or awaitlet's abort when the
overflowing fiber switches out. It must never go on as if nothing happened.
"""

import asyncio
import sys

from awaitlet import async_def, awaitlet


def recurse(depth):
    return recurse(depth + 1) + 1


def recurse_through_c(depth):
    return sorted([depth + 1], key=recurse_through_c)


def overflow(recursion):
    try:
        recursion(0)
    except RecursionError:
        print("RecursionError", flush=True)
    awaitlet(asyncio.sleep(0))
    return "switched out"


async def main(recursion):
    event = asyncio.Event()
    # Neighbours: suspended fibers whose stacks lie next to the overflowing one's.
    neighbours = [asyncio.ensure_future(async_def(awaitlet, event.wait())) for _ in range(4)]
    await asyncio.sleep(0)
    result = await async_def(overflow, recursion)
    event.set()
    await asyncio.gather(*neighbours)
    print(result, flush=True)


if __name__ == "__main__":
    sys.setrecursionlimit(1_000_000)
    asyncio.run(main(recurse_through_c if sys.argv[1] == "c" else recurse))
