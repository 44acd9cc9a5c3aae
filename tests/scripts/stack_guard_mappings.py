"""Memory mappings taken by the guards below fiber stacks, with many fibers suspended.

Usage: stack_guard_mappings.py GUARDS COUNT

GUARDS is the value given to AWAITLET_STACK_GUARDS. Suspends COUNT fibers at once, then
finishes them, and prints, one per line: ``before N`` and ``suspended N`` (the lines of
/proc/self/maps before the first fiber and with all of them suspended), ``finished N`` (how
many returned the right value), then the message of every RuntimeWarning raised.
"""

import asyncio
import os
import sys
import warnings

from awaitlet import async_def, awaitlet


def mapping_count():
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def wait_for(event, index):
    awaitlet(event.wait())
    return index


async def main(count):
    print("before", mapping_count())
    event = asyncio.Event()
    tasks = [asyncio.ensure_future(async_def(wait_for, event, index)) for index in range(count)]
    await asyncio.sleep(0)
    print("suspended", mapping_count())
    event.set()
    results = await asyncio.gather(*tasks)
    print("finished", sum(1 for index, result in enumerate(results) if index == result))


if __name__ == "__main__":
    # Read when the first stack slot is carved, which has not happened yet.
    os.environ["AWAITLET_STACK_GUARDS"] = sys.argv[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main(int(sys.argv[2])))
    for warning in caught:
        if issubclass(warning.category, RuntimeWarning):
            print(warning.message)
