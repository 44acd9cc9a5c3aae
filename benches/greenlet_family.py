"""Time the greenlet facade against the real greenlet, in one invocation.

    python benches/greenlet_family.py [--greenlet-dir DIR] [--repeat N]

Cases, each run in a fresh interpreter on awaitlet's facade (no greenlet importable) and on
the real greenlet (a ``pip install --target`` directory put first on ``PYTHONPATH``; made in
a temporary directory unless ``--greenlet-dir`` names one that holds it):

- ``switch@N``: one switch between the main greenlet and a child whose stack is N Python
  frames deep (a round trip is two switches; the time is per switch); ``switch@N/C``: the same
  with each of the N calls made through a C function (``map``), so that each level also uses
  the machine stack.  greenlet copies the slices of machine stack it switches away from, so
  its cost grows with the machine stack in use (on 3.11 and later, Python-to-Python calls use
  none: only ``/C`` grows); a fiber's switch does not copy anything.
- ``greenletio await_``: ``greenletio.await_()`` of a coroutine that completes at once, from
  sync code run by ``greenletio.async_``.
- ``greenletio async_``: ``await async_(f)()`` of a sync function that returns at once.
- ``greenback await_``: ``greenback.await_()`` of a coroutine that completes at once, after
  ``greenback.ensure_portal()``.

greenback and greenletio must be installed (``--no-deps``: they require greenlet).  Each
figure is the best of ``--repeat`` runs (default 5), in nanoseconds per operation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GREENLET = "greenlet==3.5.6"
DEPTHS = (1, 100, 1000)


def _best(fn, loops: int, repeat: int) -> float:
    """Best time per loop, in ns, of `fn(loops)` over `repeat` runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn(loops)
        best = min(best, (time.perf_counter_ns() - start) / loops)
    return best


def bench_switch(depth: int, repeat: int, through_c: bool = False) -> float:
    from greenlet import getcurrent, greenlet

    main = getcurrent()

    def descend(n: int) -> None:
        if n > 1:
            if through_c:
                next(map(descend, [n - 1]))
            else:
                descend(n - 1)
            return
        while True:
            main.switch()

    child = greenlet(lambda: descend(depth))
    child.switch()

    def loop(loops: int) -> None:
        switch = child.switch
        for _ in range(loops):
            switch()

    per_round_trip = _best(loop, 20_000, repeat)
    child.throw()
    return per_round_trip / 2


async def _noop() -> None:
    return None


def bench_greenletio_await(repeat: int) -> float:
    import asyncio

    from greenletio import async_, await_

    def sync(loops: int) -> None:
        for _ in range(loops):
            await_(_noop())

    timed = async_(sync)

    async def main() -> float:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter_ns()
            await timed(20_000)
            best = min(best, (time.perf_counter_ns() - start) / 20_000)
        return best

    return asyncio.run(main())


def bench_greenletio_async(repeat: int) -> float:
    import asyncio

    from greenletio import async_

    wrapped = async_(lambda: None)

    async def main() -> float:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter_ns()
            for _ in range(5_000):
                await wrapped()
            best = min(best, (time.perf_counter_ns() - start) / 5_000)
        return best

    return asyncio.run(main())


def bench_greenback_await(repeat: int) -> float:
    import asyncio

    import greenback

    def sync(loops: int) -> None:
        for _ in range(loops):
            greenback.await_(_noop())

    async def main() -> float:
        await greenback.ensure_portal()
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter_ns()
            sync(20_000)
            best = min(best, (time.perf_counter_ns() - start) / 20_000)
        return best

    return asyncio.run(main())


def child(kind: str, repeat: int) -> None:
    import greenlet

    # The 1000-frame case needs more than the default limit.
    sys.setrecursionlimit(10_000)
    is_facade = bool(getattr(greenlet, "__awaitlet_facade__", False))
    if is_facade != (kind == "facade"):
        raise SystemExit(f"expected the {kind} greenlet, got {greenlet.__file__}")
    results = {f"switch@{depth}": bench_switch(depth, repeat) for depth in DEPTHS}
    for depth in DEPTHS:
        results[f"switch@{depth}/C"] = bench_switch(depth, repeat, through_c=True)
    results["greenletio await_"] = bench_greenletio_await(repeat)
    results["greenletio async_"] = bench_greenletio_async(repeat)
    results["greenback await_"] = bench_greenback_await(repeat)
    print(json.dumps(results))


def run_child(kind: str, repeat: int, greenlet_dir: Path | None) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if greenlet_dir is not None:
        env["PYTHONPATH"] = str(greenlet_dir)
    cmd = [sys.executable, __file__, "--child", kind, "--repeat", str(repeat)]
    output = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--greenlet-dir", type=Path, help="a pip --target directory of greenlet")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", choices=("facade", "real"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeat)
        return 0

    with tempfile.TemporaryDirectory(prefix="awaitlet-bench-greenlet-") as tmp:
        greenlet_dir = args.greenlet_dir or Path(tmp) / "greenlet"
        if not (greenlet_dir / "greenlet").is_dir():
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--target"]
                + [str(greenlet_dir), GREENLET],
                check=True,
            )
        facade = run_child("facade", args.repeat, None)
        real = run_child("real", args.repeat, greenlet_dir)

    print(f"CPython {sys.version.split()[0]}; ns per operation, best of {args.repeat}")
    print(f"{'case':<20} {'facade':>10} {'greenlet':>10} {'greenlet/facade':>16}")
    for case, value in facade.items():
        print(f"{case:<20} {value:>10.0f} {real[case]:>10.0f} {real[case] / value:>15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
