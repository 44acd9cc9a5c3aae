#!/usr/bin/env python3
"""Instructions per operation of the micro cases, counted with valgrind's callgrind.

Timings on a shared machine are noisy; instruction counts are not. For each case and
implementation this runs the case's loop twice under ``valgrind --tool=callgrind``, with
``--loops`` operations and with none, and divides the difference of the instructions
executed (callgrind's "Collected" total) by ``--loops``: what remains is the cost of one
operation, without the interpreter's start-up and the setup.

Usage::

    python benches/callgrind.py --python /path/to/venv/bin/python [--loops 20000]
        [--cases wait_sleep0,wait_ready,spawn_no_wait,greenlet_switch] [--keep DIR]

``--python`` must have this package installed (no greenlet: ``native`` and ``awaitlet-rs``
are measured). ``greenlet_switch`` (not run unless asked for) is a round trip of two switches
of the greenlet facade, main to a suspended child and back, as the loop of ``switch@1`` in
``greenlet_family.py`` makes it; it has no ``native`` counterpart. The children run with
``PYTHONHASHSEED=0``, so that a count does not move with the hash seed. ``--keep DIR`` keeps
the callgrind output files of the large runs, for ``callgrind_annotate``. Only the standard
library is needed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = ("wait_sleep0", "wait_ready", "spawn_no_wait")
#: Cases measured only when named in ``--cases``.
EXTRA_CASES = ("greenlet_switch",)
IMPLS = ("native", "awaitlet-rs")

#: The child: runs one case's loop ``loops`` times on a fresh event loop, after a warm-up
#: that is the same whatever ``loops`` is (so that it cancels out in the difference).
CHILD = """
import asyncio, sys
from awaitlet import async_def, awaitlet

case, impl, loops = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def ready():
    pass

def nothing():
    pass

def sync_sleep0(n):
    sleep = asyncio.sleep
    for _ in range(n):
        awaitlet(sleep(0))

def sync_ready(n):
    for _ in range(n):
        awaitlet(ready())

async def native_sleep0(n):
    sleep = asyncio.sleep
    for _ in range(n):
        await sleep(0)

async def native_ready(n):
    for _ in range(n):
        await ready()

async def native_spawn(n):
    for _ in range(n):
        await ready()

async def ours_spawn(n):
    for _ in range(n):
        await async_def(nothing)

async def body(n):
    if impl == "native":
        coro = {"wait_sleep0": native_sleep0, "wait_ready": native_ready,
                "spawn_no_wait": native_spawn}[case](n)
        await coro
    elif case == "spawn_no_wait":
        await ours_spawn(n)
    else:
        fn = sync_sleep0 if case == "wait_sleep0" else sync_ready
        await async_def(fn, n)

def switch_round_trips(n):
    from awaitlet.greenlet import getcurrent, greenlet
    main = getcurrent()
    def run():
        while True:
            main.switch()
    child = greenlet(run)
    child.switch()
    def loop(n):
        switch = child.switch
        for _ in range(n):
            switch()
    loop(200)
    loop(n)
    child.throw()

if case == "greenlet_switch":
    switch_round_trips(loops)
else:
    loop = asyncio.new_event_loop()
    loop.run_until_complete(body(200))
    loop.run_until_complete(body(loops))
    loop.close()
"""

COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def instructions(python: str, case: str, impl: str, loops: int, out_file: str) -> int:
    """Instructions callgrind counted for one run of the child."""
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        python,
        "-c",
        CHILD,
        case,
        impl,
        str(loops),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{result.stderr[-3000:]}")
    match = COLLECTED.search(result.stderr)
    if match is None:
        raise SystemExit(f"no instruction count in callgrind's output:\n{result.stderr[-2000:]}")
    return int(match.group(1))


def main() -> int:
    """Measure every selected case and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    parser.add_argument("--loops", type=int, default=20000, help="operations per run")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--keep", type=Path, help="directory for the callgrind output files")
    args = parser.parse_args()
    cases = [case for case in args.cases.split(",") if case]
    unknown = set(cases) - set(CASES) - set(EXTRA_CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory() as scratch:
        keep = args.keep or Path(scratch)
        keep.mkdir(parents=True, exist_ok=True)
        print("| case | implementation | instructions / op | vs native |")
        print("| --- | --- | ---: | ---: |")
        for case in cases:
            per_op: dict[str, float] = {}
            for impl in IMPLS if case in CASES else IMPLS[1:]:
                base = instructions(args.python, case, impl, 0, str(Path(scratch) / "base.out"))
                out = str(keep / f"callgrind.{case}.{impl}.out")
                full = instructions(args.python, case, impl, args.loops, out)
                per_op[impl] = (full - base) / args.loops
                ratio = f"{per_op[impl] / per_op['native']:.2f}×" if "native" in per_op else "—"
                print(f"| {case} | {impl} | {per_op[impl]:,.0f} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
