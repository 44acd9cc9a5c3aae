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

import json
import sys

from originals import argument_parser, best, best_async, installed, run_sides

KINDS = ("facade", "real")  # ours, then the originals
GREENLET = "greenlet==3.5.6"
DEPTHS = (1, 100, 1000)


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

    per_round_trip = best(loop, 20_000, repeat)
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

    return asyncio.run(best_async(async_(sync), 20_000, repeat))


def bench_greenletio_async(repeat: int) -> float:
    import asyncio

    from greenletio import async_

    wrapped = async_(lambda: None)

    async def calls(loops: int) -> None:
        for _ in range(loops):
            await wrapped()

    return asyncio.run(best_async(calls, 5_000, repeat))


def bench_greenback_await(repeat: int) -> float:
    import asyncio

    import greenback

    def sync(loops: int) -> None:
        for _ in range(loops):
            greenback.await_(_noop())

    async def main() -> float:
        await greenback.ensure_portal()
        return best(sync, 20_000, repeat)

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


def main() -> int:
    parser = argument_parser(
        __doc__, "--greenlet-dir", "a pip --target directory of greenlet", KINDS
    )
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeat)
        return 0

    with installed(args.greenlet_dir, (GREENLET,), "greenlet") as greenlet_dir:
        facade, real = run_sides(__file__, KINDS, args.repeat, greenlet_dir)

    print(f"CPython {sys.version.split()[0]}; ns per operation, best of {args.repeat}")
    print(f"{'case':<20} {'facade':>10} {'greenlet':>10} {'greenlet/facade':>16}")
    for case, value in facade.items():
        print(f"{case:<20} {value:>10.0f} {real[case]:>10.0f} {real[case] / value:>15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
