"""Time awaitlet's portals (awaitlet.portal) against greenback on the real greenlet.

    python benches/bridge_portal.py [--greenback-dir DIR] [--repeat N]

Each side runs in a fresh interpreter: ours with no greenlet importable, greenback from a
``pip install --target`` directory (greenback 1.3.0 with the real greenlet and its other
dependencies; made in a temporary directory unless ``--greenback-dir`` names one holding it)
put first on ``PYTHONPATH``.  Cases, on asyncio's default loop:

- ``checkpoint overhead``: ``await asyncio.sleep(0)`` in a task with a portal, minus the same
  in a task without one: what a portal adds to each step of its task.
- ``await_``: ``await_()`` of a coroutine that completes at once, from sync code in a task
  with a portal (the coroutine's creation included).
- ``with_portal_run_sync``: ``await with_portal_run_sync(f)`` of a function that returns at
  once, in a task without a portal.

Each figure is the best of ``--repeat`` runs (default 5), in nanoseconds per operation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REQUIREMENTS = ["greenback==1.3.0", "greenlet==3.5.6"]
LOOPS = 20_000


async def _noop() -> None:
    return None


def _returns() -> None:
    return None


async def _best(step: Callable[[int], Awaitable[None]], repeat: int) -> float:
    """Best time per loop, in ns, of `await step(LOOPS)` over `repeat` runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        await step(LOOPS)
        best = min(best, (time.perf_counter_ns() - start) / LOOPS)
    return best


async def _sleeps(loops: int) -> None:
    sleep = asyncio.sleep
    for _ in range(loops):
        await sleep(0)


def measure(api: Any, repeat: int) -> dict[str, float]:
    """The cases, with `api` the module that has ensure_portal(), await_() and so on."""

    async def with_portal() -> float:
        await api.ensure_portal()
        return await _best(_sleeps, repeat)

    async def without_portal() -> float:
        return await _best(_sleeps, repeat)

    async def await_round_trip() -> float:
        await api.ensure_portal()
        await_ = api.await_

        async def step(loops: int) -> None:
            for _ in range(loops):
                await_(_noop())

        return await _best(step, repeat)

    async def run_sync() -> float:
        with_portal_run_sync = api.with_portal_run_sync

        async def step(loops: int) -> None:
            for _ in range(loops):
                await with_portal_run_sync(_returns)

        return await _best(step, repeat)

    # Interleaved, so that both sides of the difference see the same machine.
    portal = plain = float("inf")
    for _ in range(3):
        portal = min(portal, asyncio.run(with_portal()))
        plain = min(plain, asyncio.run(without_portal()))
    return {
        "checkpoint overhead": portal - plain,
        "await_": asyncio.run(await_round_trip()),
        "with_portal_run_sync": asyncio.run(run_sync()),
    }


def child(kind: str, repeat: int) -> None:
    if kind == "ours":
        import awaitlet.portal as api

        try:
            import greenlet

            if not getattr(greenlet, "__awaitlet_facade__", False):
                raise SystemExit(f"the real greenlet is importable: {greenlet.__file__}")
        except ImportError:
            pass
    else:
        import greenback as api
        import greenlet

        if getattr(greenlet, "__awaitlet_facade__", False):
            raise SystemExit("greenback would run on awaitlet's greenlet facade")
    print(json.dumps(measure(api, repeat)))


def run_child(kind: str, repeat: int, path: Path | None) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    cmd = [sys.executable, __file__, "--child", kind, "--repeat", str(repeat)]
    output = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--greenback-dir", type=Path, help="a pip --target dir of greenback")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", choices=("ours", "greenback"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeat)
        return 0

    with tempfile.TemporaryDirectory(prefix="awaitlet-bench-greenback-") as tmp:
        target = args.greenback_dir or Path(tmp) / "greenback"
        if not (target / "greenback").is_dir():
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target)]
                + REQUIREMENTS,
                check=True,
            )
        ours = run_child("ours", args.repeat, None)
        theirs = run_child("greenback", args.repeat, target)

    print(f"CPython {sys.version.split()[0]}, asyncio; ns per operation, best of {args.repeat}\n")
    print("| case | awaitlet.portal (ns) | greenback 1.3.0 (ns) | greenback / ours |")
    print("| --- | ---: | ---: | ---: |")
    for case, value in ours.items():
        ratio = theirs[case] / value if value > 0 else float("inf")
        print(f"| {case} | {value:.0f} | {theirs[case]:.0f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
