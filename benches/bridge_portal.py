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

import asyncio
import json
import sys
from typing import Any

from originals import argument_parser, best_async, compared, installed, print_table, run_sides

KINDS = ("ours", "greenback")  # ours, then the originals

REQUIREMENTS = ["greenback==1.3.0", "greenlet==3.5.6"]
LOOPS = 20_000


async def _noop() -> None:
    return None


def _returns() -> None:
    return None


async def _sleeps(loops: int) -> None:
    sleep = asyncio.sleep
    for _ in range(loops):
        await sleep(0)


def measure(api: Any, repeat: int) -> dict[str, float]:
    """The cases, with `api` the module that has ensure_portal(), await_() and so on."""

    async def with_portal() -> float:
        await api.ensure_portal()
        return await best_async(_sleeps, LOOPS, repeat)

    async def without_portal() -> float:
        return await best_async(_sleeps, LOOPS, repeat)

    async def await_round_trip() -> float:
        await api.ensure_portal()
        await_ = api.await_

        async def step(loops: int) -> None:
            for _ in range(loops):
                await_(_noop())

        return await best_async(step, LOOPS, repeat)

    async def run_sync() -> float:
        with_portal_run_sync = api.with_portal_run_sync

        async def step(loops: int) -> None:
            for _ in range(loops):
                await with_portal_run_sync(_returns)

        return await best_async(step, LOOPS, repeat)

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


def main() -> int:
    parser = argument_parser(__doc__, "--greenback-dir", "a pip --target dir of greenback", KINDS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeat)
        return 0

    with installed(args.greenback_dir, REQUIREMENTS, "greenback") as target:
        ours, theirs = run_sides(__file__, KINDS, args.repeat, target)

    print(f"CPython {sys.version.split()[0]}, asyncio; ns per operation, best of {args.repeat}\n")
    header = ("case", "awaitlet.portal (ns)", "greenback 1.3.0 (ns)", "greenback / ours")
    print_table(header, compared(ours, theirs, ".0f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
