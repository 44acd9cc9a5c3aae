"""Garbage collection runs finalizers at arbitrary points while sync stacks switch.

Finalizers walk the stack, format tracebacks and create and close async_def
coroutines; the collector is tuned to run very often.
Prints "finalizers_during_switches OK" when every task finished correctly.
"""

import asyncio
import gc
import sys
import traceback

from awaitlet import async_def, awaitlet

finalized = 0


def noop():
    return None


class Finalizable:
    def __init__(self, payload):
        self.payload = payload
        self.cycle = self

    def __del__(self):
        global finalized
        names = []
        frame = sys._getframe()
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        assert names[0] == "__del__", names
        traceback.extract_stack(limit=20)
        coro = async_def(noop)
        coro.close()
        finalized += 1


async def awaited_coroutine(index):
    Finalizable(index)
    await asyncio.sleep(0)
    Finalizable(index)
    return index


def sync_code(index):
    total = 0
    for step in range(30):
        Finalizable(step)
        total += awaitlet(awaited_coroutine(step))
        Finalizable([step] * 3)
        awaitlet(asyncio.sleep(0))
    return index, total


async def main():
    return await asyncio.gather(*(async_def(sync_code, index) for index in range(200)))


if __name__ == "__main__":
    gc.set_threshold(5, 2, 2)
    results = asyncio.run(main())
    gc.collect()
    expected_total = sum(range(30))
    assert results == [(index, expected_total) for index in range(200)], results[:3]
    assert finalized > 0
    print("finalizers_during_switches OK")
