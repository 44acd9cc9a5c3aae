"""Profile sync code that switches with cProfile; print what the profiler recorded as JSON.

Usage: profile_across_switches.py
Prints one JSON object: the wall time of the run and, for each function of interest, its
call counts and times; the test checks them.
"""

import asyncio
import cProfile
import json
import pstats
import time

from awaitlet import async_def, awaitlet

TASKS = 4
ROUNDS = 5


async def awaited(value):
    await asyncio.sleep(0.001)
    return value


def sync_helper(value):
    return awaitlet(awaited(value)) + 1


def sync_entry(rounds):
    total = 0
    for index in range(rounds):
        total += awaitlet(awaited(index))
        total += sync_helper(index)
    return total


async def main():
    return await asyncio.gather(*(async_def(sync_entry, ROUNDS) for _ in range(TASKS)))


def report():
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    results = asyncio.run(main())
    profiler.disable()
    wall = time.perf_counter() - started
    assert results == [2 * sum(range(ROUNDS)) + ROUNDS] * TASKS, results
    stats = pstats.Stats(profiler).stats
    functions = {}
    negative = []
    for (filename, line, name), (primitive, total, own, cumulative, _) in stats.items():
        if own < 0 or cumulative < 0:
            negative.append([filename, line, name, own, cumulative])
        if name in ("sync_entry", "sync_helper", "awaited") or "awaitlet" in name:
            functions[name if "awaitlet" not in name else "awaitlet"] = {
                "primitive": primitive,
                "calls": total,
                "own": own,
                "cumulative": cumulative,
            }
    print(json.dumps({"wall": wall, "functions": functions, "negative": negative}))


if __name__ == "__main__":
    report()
