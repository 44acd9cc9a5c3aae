#!/usr/bin/env python3
"""Quick A/B timing of ``awaitlet(asyncio.sleep(0))`` against native ``await``, interleaved.

For comparing builds on a noisy machine without the whole suite: each round starts one fresh
process per interpreter given (say, two virtual environments with different builds of this
package), in alternating order; each process times native ``await asyncio.sleep(0)`` and
``awaitlet(asyncio.sleep(0))`` in turns, ``--loops`` trips each, several times, and reports
the best time per trip of each. The table gives, per interpreter, the mean over rounds, the
coefficient of variation, and the ratio to native with its noise and verdict
(``verdict.py``: no verdict where the noise exceeds the difference).

Usage::

    python benches/interleaved.py --python A/bin/python --python B/bin/python [--rounds 10]

Only the standard library is needed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdict import against_target, compare, summarize  # noqa: E402

CHILD = """
import asyncio, json, sys, time
from awaitlet import async_def, awaitlet

loops, repeats = int(sys.argv[1]), int(sys.argv[2])

def sync_sleep0(n):
    sleep = asyncio.sleep
    start = time.perf_counter()
    for _ in range(n):
        awaitlet(sleep(0))
    return time.perf_counter() - start

async def native_sleep0(n):
    sleep = asyncio.sleep
    start = time.perf_counter()
    for _ in range(n):
        await sleep(0)
    return time.perf_counter() - start

async def ours(n):
    return await async_def(sync_sleep0, n)

loop = asyncio.new_event_loop()
best = {"native": float("inf"), "awaitlet-rs": float("inf")}
loop.run_until_complete(native_sleep0(loops // 10))
loop.run_until_complete(ours(loops // 10))
for _ in range(repeats):
    best["native"] = min(best["native"], loop.run_until_complete(native_sleep0(loops)) / loops)
    best["awaitlet-rs"] = min(best["awaitlet-rs"], loop.run_until_complete(ours(loops)) / loops)
loop.close()
print(json.dumps(best))
"""


def main() -> int:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", required=True, help="interpreter (repeat)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--loops", type=int, default=20000, help="trips per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per process")
    args = parser.parse_args()
    samples: dict[str, dict[str, list[float]]] = {
        python: {"native": [], "awaitlet-rs": []} for python in args.python
    }
    for number in range(args.rounds):
        order = args.python if number % 2 == 0 else args.python[::-1]
        for python in order:
            cmd = [python, "-c", CHILD, str(args.loops), str(args.repeats)]
            result = json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)
            for impl, value in result.items():
                samples[python][impl].append(value)
    print(
        "| interpreter | native ns/trip (CV) | awaitlet-rs ns/trip (CV) | vs native "
        "| paired: ≤ 1.10× |"
    )
    print("| --- | ---: | ---: | --- | --- |")
    for python, by_impl in samples.items():
        native, ours = summarize(by_impl["native"]), summarize(by_impl["awaitlet-rs"])
        versus = compare(by_impl["awaitlet-rs"], by_impl["native"]).text()
        # The ratio within each process (both measured in turns, under the same load), whose
        # spread over the rounds is its noise: steadier than the ratio of the means.
        paired = [a / n for a, n in zip(by_impl["awaitlet-rs"], by_impl["native"], strict=True)]
        target = against_target(paired, [1.0] * len(paired), 1.10).text()
        print(
            f"| {python} | {native.mean * 1e9:,.0f} ({native.cv:.1%}) "
            f"| {ours.mean * 1e9:,.0f} ({ours.cv:.1%}) | {versus} | {target} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
