"""Time awaitlet.executor.AsyncExecutor against aiofutures' AsyncExecutor, in one invocation.

    python benches/bridge_executor.py [--originals-dir DIR] [--repeat N]

Each side runs in a fresh interpreter: ours with this environment's awaitlet (no greenlet
importable), aiofutures from a ``pip install --target`` directory (with the real greenlet
beside it, as for the other bridges; aiofutures itself does not use it) put first on
``PYTHONPATH``, made in a temporary directory unless ``--originals-dir`` names one that
holds them.  Cases, the same code against either executor:

- ``submit().result()``: a sync caller submits a coroutine that returns at once and waits
  for its result: two thread hand-offs (the caller's thread to the loop's and back).
- ``... awaiting sleep(0)``: the same, with a coroutine that suspends once.
- ``1,000 submits, then results``: a burst submitted before waiting; time per submission.
- ``await sync_to_async(f)``: a task of the executor awaits a sync function that returns
  at once: ours runs it on a fiber of the loop, aiofutures in its thread pool.

Each figure is the best of ``--repeat`` runs (default 5), in microseconds per operation;
the ratio is aiofutures' time over ours (above 1: ours is faster).  The machine's thread
hand-off latency bounds the first cases from below for any design: the last column of the
table's footer gives it (a ``queue.SimpleQueue`` ping-pong between two threads), and the
least an executor running an asyncio loop in a thread can do (``call_soon_threadsafe``
completing a ``concurrent.futures.Future``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

from originals import argument_parser, best, compared, installed, print_table, run_sides

KINDS = ("ours", "aiofutures")  # ours, then the originals

ORIGINALS = ("greenlet==3.5.6", "aiofutures==0.1.3")


def _best(run: Callable[[int], Any], loops: int, repeat: int) -> float:
    """Best time per loop, in microseconds, of `run(loops)` over `repeat` runs."""
    return best(run, loops, repeat) / 1000


async def _returns(value: int) -> int:
    return value


async def _sleeps_once(value: int) -> int:
    await asyncio.sleep(0)
    return value


def _measure(executor: Any, repeat: int) -> dict[str, float]:
    def round_trips(loops: int) -> None:
        for n in range(loops):
            executor.submit(_returns, n).result()

    def round_trips_sleeping(loops: int) -> None:
        for n in range(loops):
            executor.submit(_sleeps_once, n).result()

    def bursts(loops: int) -> None:
        for _ in range(loops // 1000):
            futures = [executor.submit(_returns, n) for n in range(1000)]
            for future in futures:
                future.result()

    def nothing() -> None:
        return None

    async def sync_calls(loops: int) -> None:
        for _ in range(loops):
            await executor.sync_to_async(nothing)

    def sync_to_async_calls(loops: int) -> None:
        executor.submit(sync_calls, loops).result()

    round_trips(200)  # warm up: the loop's thread and its first turns
    results = {
        "submit().result()": _best(round_trips, 2_000, repeat),
        "submit().result(), awaiting sleep(0)": _best(round_trips_sleeping, 2_000, repeat),
        "1,000 submits, then results": _best(bursts, 5_000, repeat),
        "await sync_to_async(f)": _best(sync_to_async_calls, 2_000, repeat),
    }
    executor.shutdown(wait=True)
    return results


def _thread_hand_off_floor(repeat: int) -> float:
    """A round trip between two threads through queue.SimpleQueue, in microseconds."""
    requests: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    replies: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        while (item := requests.get()) is not None:
            replies.put(item)

    thread = threading.Thread(target=echo)
    thread.start()

    def ping_pong(loops: int) -> None:
        for n in range(loops):
            requests.put(n)
            replies.get()

    floor = _best(ping_pong, 2_000, repeat)
    requests.put(None)
    thread.join()
    return floor


def _loop_hand_off_floor(repeat: int) -> float:
    """The least any executor of this design does, in microseconds: wake an event loop in
    another thread with ``call_soon_threadsafe`` and wait on a ``concurrent.futures.Future``
    that the callback completes (no coroutine, no task)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()

    def complete(future: concurrent.futures.Future[int], value: int) -> None:
        future.set_result(value)

    def hand_offs(loops: int) -> None:
        for n in range(loops):
            future: concurrent.futures.Future[int] = concurrent.futures.Future()
            loop.call_soon_threadsafe(complete, future, n)
            future.result()

    floor = _best(hand_offs, 2_000, repeat)
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
    return floor


def child(kind: str, repeat: int) -> None:
    executor: Any
    if kind == "ours":
        from awaitlet.executor import AsyncExecutor

        executor = AsyncExecutor()
    else:
        from aiofutures import AsyncExecutor as OriginalExecutor  # type: ignore[import-not-found]

        executor = OriginalExecutor()
    results = _measure(executor, repeat)
    results["thread hand-off floor"] = _thread_hand_off_floor(repeat)
    results["loop hand-off floor"] = _loop_hand_off_floor(repeat)
    print(json.dumps(results))


def main() -> int:
    parser = argument_parser(__doc__, "--originals-dir", "pip --target dir of aiofutures", KINDS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeat)
        return 0

    with installed(args.originals_dir, ORIGINALS, "aiofutures") as originals:
        ours, theirs = run_sides(__file__, KINDS, args.repeat, originals)

    floor = min(ours.pop("thread hand-off floor"), theirs.pop("thread hand-off floor"))
    loop_floor = min(ours.pop("loop hand-off floor"), theirs.pop("loop hand-off floor"))
    print(f"CPython {sys.version.split()[0]}; µs per operation, best of {args.repeat}\n")
    header = ("case", "awaitlet.executor", "aiofutures 0.1.3", "aiofutures / ours")
    print_table(header, compared(ours, theirs, ",.2f"))
    print(
        f"\nFloors on this machine, in the same runs: a SimpleQueue ping-pong between two"
        f" threads, {floor:.2f} µs; waking a loop in another thread with"
        f" call_soon_threadsafe to complete a concurrent.futures.Future, {loop_floor:.2f} µs."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
