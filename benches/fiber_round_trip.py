"""What one trip through a fiber costs, beside case 3 (``awaitlet(asyncio.sleep(0))``).

    python benches/fiber_round_trip.py [--repeat 7]

Run it with an interpreter where awaitlet is installed. Two figures, each the best of
``--repeat`` runs, in nanoseconds per operation:

- the round trip alone: ``send(None)`` into an ``async_def()`` coroutine whose sync code
  loops on ``awaitlet()`` of an awaitable that yields once (a switch onto the fiber and one
  back), against the same ``send(None)`` into a native coroutine that awaits it;
- case 3: a loop of ``awaitlet(asyncio.sleep(0))`` under ``async_def()`` on an asyncio loop,
  against a native ``async def`` loop of ``await asyncio.sleep(0)``.

The first difference is the least the second can cost above native: each trip of case 3
makes that round trip once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from awaitlet import async_def, awaitlet


@types.coroutine
def _yield_once() -> Generator[None, None, None]:
    yield None


def _sync_loop() -> None:
    while True:
        awaitlet(_yield_once())


async def _native_loop() -> None:
    while True:
        await _yield_once()


def _round_trip(coroutine: Coroutine[Any, Any, Any], loops: int, repeat: int) -> float:
    """Best ns per ``send(None)`` into ``coroutine``, over ``repeat`` runs."""
    send = coroutine.send
    send(None)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(loops):
            send(None)
        best = min(best, (time.perf_counter_ns() - start) / loops)
    coroutine.close()
    return best


async def _native_sleeps(loops: int) -> None:
    for _ in range(loops):
        await asyncio.sleep(0)


def _sync_sleeps(loops: int) -> None:
    for _ in range(loops):
        awaitlet(asyncio.sleep(0))


def _on_a_loop(make: Callable[[int], Coroutine[Any, Any, None]], loops: int, repeat: int) -> float:
    """Best ns per iteration of ``make(loops)`` run on a fresh loop, over ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        loop = asyncio.new_event_loop()
        try:
            start = time.perf_counter_ns()
            loop.run_until_complete(make(loops))
            best = min(best, (time.perf_counter_ns() - start) / loops)
        finally:
            loop.close()
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    fiber = _round_trip(async_def(_sync_loop), 200_000, args.repeat)
    native = _round_trip(_native_loop(), 200_000, args.repeat)
    native_case = _on_a_loop(_native_sleeps, 100_000, args.repeat)
    ours_case = _on_a_loop(lambda loops: async_def(_sync_sleeps, loops), 100_000, args.repeat)
    print(f"CPython {sys.version.split()[0]}; ns per operation, best of {args.repeat}")
    print(f"round trip: fiber {fiber:.0f}, native {native:.0f}, difference {fiber - native:.0f}")
    print(
        f"case 3: ours {ours_case:.0f}, native {native_case:.0f}, difference"
        f" {ours_case - native_case:.0f} ({ours_case / native_case:.3f}x native; 1.10x"
        f" leaves {native_case * 0.10:.0f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
