"""Scale: N concurrent tasks, each suspended DEPTH Python frames deep, then all completed.

Run by ``benches/run.py`` in a fresh process per (implementation, N), because the number it
reports is the process's peak resident set size (``ru_maxrss``):

* the process imports everything, warms the code path up with a few tasks, and takes
  ``ru_maxrss`` as its baseline;
* it starts N tasks; each calls a chain of DEPTH frames (sync functions under ``spawn()``
  for an implementation, ``async def`` functions for native) whose innermost one waits for
  one shared ``asyncio.Event``;
* once every task is suspended it counts the process's memory mappings, sets the event and
  gathers the tasks;
* it prints one JSON object: peak RSS minus baseline per task, times, mappings, and the
  first error if any task failed.

Usage: ``python scale.py IMPL N [--depth 20]``; IMPL is ``native`` or an id of
:data:`impls.ORDER` installed here.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from impls import detect


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mapping_count() -> int | None:
    """How many memory mappings the process has (None where /proc is not available)."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return None


class Scenario:
    """N tasks suspended DEPTH frames deep on one event."""

    def __init__(self, impl: str, depth: int) -> None:
        self.depth = depth
        self.event = asyncio.Event()
        self.suspended = 0
        self.done = 0
        self.task_body: Callable[[], Awaitable[Any]]
        if impl == "native":
            self.task_body = self.native_task
        else:
            found = detect()
            if impl not in found:
                raise SystemExit(f"scale.py: {impl!r} is not installed here ({sorted(found)})")
            chosen = found[impl]
            self.spawn = chosen.spawn
            self.wait = chosen.wait
            self.task_body = self.spawned_task

    # Native: DEPTH coroutine frames.
    async def native_level(self, level: int) -> int:
        """One ``async def`` frame; the innermost waits for the event."""
        if level == 1:
            self.suspended += 1
            await self.event.wait()
            return 1
        return await self.native_level(level - 1) + 1

    async def native_task(self) -> int:
        """A task DEPTH native frames deep."""
        return await self.native_level(self.depth)

    # Implementations: DEPTH sync frames under spawn().
    def sync_level(self, level: int) -> int:
        """One sync frame; the innermost waits for the event with the implementation."""
        if level == 1:
            self.suspended += 1
            self.wait(self.event.wait())
            return 1
        return self.sync_level(level - 1) + 1

    async def spawned_task(self) -> int:
        """A task DEPTH sync frames deep under the implementation's spawn()."""
        return await self.spawn(self.sync_level, self.depth)

    def count_done(self, _task: asyncio.Future[Any]) -> None:
        """Done callback: a task finished (before the event is set, only by failing)."""
        self.done += 1

    async def run(self, count: int) -> dict[str, Any]:
        """Start ``count`` tasks, wait until all are suspended, release them, gather them."""
        self.event.clear()
        self.suspended = self.done = 0
        start = time.perf_counter()
        tasks = [asyncio.ensure_future(self.task_body()) for _ in range(count)]
        for task in tasks:
            task.add_done_callback(self.count_done)
        # Each task runs to its wait (or fails) within its first steps: a few trips through
        # the event loop let them all get there.
        while self.suspended + self.done < count:
            await asyncio.sleep(0)
        started = time.perf_counter()
        mappings = mapping_count()
        self.event.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        finished = time.perf_counter()
        errors = [result for result in results if isinstance(result, BaseException)]
        wrong = [result for result in results if not isinstance(result, BaseException)]
        wrong = [result for result in wrong if result != self.depth]
        return {
            "suspended": self.suspended,
            "failed": len(errors),
            "first_error": f"{type(errors[0]).__name__}: {errors[0]}" if errors else None,
            "wrong_results": len(wrong),
            "mappings_while_suspended": mappings,
            "start_seconds": started - start,
            "total_seconds": finished - start,
        }


def main() -> None:
    """Run one scenario and print its JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("impl")
    parser.add_argument("tasks", type=int)
    parser.add_argument("--depth", type=int, default=20)
    args = parser.parse_args()

    scenario = Scenario(args.impl, args.depth)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(scenario.run(100))  # warm-up: imports, caches, pools
    gc.collect()
    baseline_mappings = mapping_count()
    baseline = peak_rss_bytes()
    outcome = loop.run_until_complete(scenario.run(args.tasks))
    peak = peak_rss_bytes()
    result = {
        "impl": args.impl,
        "tasks": args.tasks,
        "depth": args.depth,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "peak_rss_per_task_bytes": (peak - baseline) / args.tasks,
        "baseline_mappings": baseline_mappings,
        **outcome,
    }
    if result["mappings_while_suspended"] is not None and baseline_mappings is not None:
        extra = result["mappings_while_suspended"] - baseline_mappings
        result["mappings_per_task"] = extra / args.tasks
    result["ok"] = not outcome["failed"] and not outcome["wrong_results"]
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    loop.close()


if __name__ == "__main__":
    main()
