"""Time awaitlet.decorators against greenletio 0.11.0 on the real greenlet, in one invocation.

    python benches/bridge_decorators.py [--originals-dir DIR] [--repeat N]

Each side runs in a fresh interpreter: ours with this environment's awaitlet (no greenlet
importable), greenletio with a ``pip install --target`` directory holding greenlet and
greenletio put first on ``PYTHONPATH`` (made in a temporary directory unless
``--originals-dir`` names one that holds them).  Cases, the same code against either API:

- ``await_() round trip``: sync code run by ``async_`` calls ``await_()`` of a coroutine
  that completes at once (one suspension of the sync code and its resumption).
- ``await async_(f)()``: a coroutine awaits an ``async_``-wrapped sync function that returns
  at once (a fiber or greenlet started and finished).
- ``async_ + 1 await_``: the two together: a sync function that awaits once.
- ``await_() with no loop``: plain sync code (no loop running) awaits a coroutine that
  completes at once: ours runs its first step on the caller's stack as the task of the
  thread's own loop (the loop turns only for an awaitable that waits),
  greenletio switches to its bridge greenlet, which keeps a loop running across calls
  (on 3.14+ it fails: it asks ``asyncio.get_event_loop()``, which raises when no loop is set).

Each figure is the best of ``--repeat`` runs (default 5), in nanoseconds per operation;
the ratio is greenletio's time over ours (above 1: ours is faster).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from originals import argument_parser, best, best_async, installed, print_table, run_sides

KINDS = ("ours", "greenletio")  # ours, then the originals

ORIGINALS = ("greenlet==3.5.6", "greenletio==0.11.0")


async def _completes_at_once() -> None:
    return None


def _measure(
    async_: Any, await_: Any, close_own_loop: Callable[[], None], repeat: int
) -> dict[str, float | None]:
    def await_loop(loops: int) -> None:
        for _ in range(loops):
            await_(_completes_at_once())

    returns_at_once = async_(lambda: None)

    async def async_calls(loops: int) -> None:
        for _ in range(loops):
            await returns_at_once()

    @async_
    def awaits_once() -> None:
        await_(_completes_at_once())

    async def one_await_each(loops: int) -> None:
        for _ in range(loops):
            await awaits_once()

    async def in_a_loop() -> dict[str, float]:
        return {
            "await_() round trip": await best_async(async_(await_loop), 20_000, repeat),
            "await async_(f)()": await best_async(async_calls, 5_000, repeat),
            "async_ + 1 await_": await best_async(one_await_each, 5_000, repeat),
        }

    # First: greenletio's bridge uses asyncio.get_event_loop(), which raises once
    # asyncio.run() has run in the thread.  Both keep the loop they make for the next calls;
    # greenletio's stays marked running until bridge.stop().
    no_loop: float | None
    try:
        no_loop = best(await_loop, 5_000, repeat)
    except RuntimeError:
        # greenletio on 3.14+: asyncio.get_event_loop() raises when no loop is set.
        no_loop = None
    close_own_loop()
    results: dict[str, float | None] = dict(asyncio.run(in_a_loop()))
    results["await_() with no loop"] = no_loop
    return results


def child(kind: str, repeat: int) -> None:
    import greenlet  # ours: the facade (nothing uses it); greenletio: the real one

    is_facade = bool(getattr(greenlet, "__awaitlet_facade__", False))
    if kind == "ours":
        from awaitlet.decorators import async_, await_, close_thread_loop
    else:
        if is_facade:
            raise SystemExit(f"expected the real greenlet, got {greenlet.__file__}")
        from greenletio import async_, await_  # type: ignore[import-not-found,no-redef]
        from greenletio.core import bridge  # type: ignore[import-not-found]

        close_thread_loop = bridge.stop
    print(json.dumps(_measure(async_, await_, close_thread_loop, repeat)))


def main() -> int:
    parser = argument_parser(__doc__, "--originals-dir", "pip --target dir of greenletio", KINDS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeat)
        return 0

    with installed(args.originals_dir, ORIGINALS, "greenletio") as originals:
        ours, theirs = run_sides(__file__, KINDS, args.repeat, originals)

    def rows() -> Iterator[tuple[str, str, str, str]]:
        for case, value in ours.items():
            original = theirs[case]
            if value is None:
                raise SystemExit(f"{case}: ours failed")
            if original is None:
                yield case, f"{value:,.0f}", "fails (RuntimeError)", "-"
            else:
                yield case, f"{value:,.0f}", f"{original:,.0f}", f"{original / value:.2f}x"

    print(f"CPython {sys.version.split()[0]}; ns per operation, best of {args.repeat}\n")
    header = ("case", "awaitlet.decorators", "greenletio 0.11.0 (greenlet)", "greenletio / ours")
    print_table(header, rows())
    return 0


if __name__ == "__main__":
    sys.exit(main())
