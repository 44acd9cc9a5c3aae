"""A program for a scripted pdb session: sync code stepped over awaitlet() switches.

Lines the test refers to carry a ``# line:NAME`` marker.  Prints "result 112" at the end.
"""

import asyncio

from awaitlet import async_def, awaitlet


async def compute(value):
    await asyncio.sleep(0)
    return value * 10  # line:in_coroutine


def sync_steps():
    first = awaitlet(compute(1))  # line:first_switch
    second = first + 1  # line:after_first
    third = awaitlet(compute(second))  # line:second_switch
    fourth = third + 2  # line:after_second
    return fourth  # line:return


async def main():
    result = await async_def(sync_steps)
    print("result", result)


asyncio.run(main())
