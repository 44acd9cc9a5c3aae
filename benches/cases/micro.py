"""Microbenchmarks of one awaitlet()-style wait and one async_def()-style call (pyperf).

Run by ``benches/run.py`` in each benchmark environment; every implementation that
:mod:`impls` finds here is measured, plus native ``await``. Each value pyperf records is
the time of one operation:

``wait_ready``
    ``awaitlet(coro())`` where ``coro`` returns without suspending, in a loop inside one
    ``async_def`` (native: ``await coro()`` in a loop).
``spawn_no_wait``
    ``await async_def(f)`` where ``f`` never waits (native: ``await coro()`` of an
    ``async def`` that does nothing).
``wait_sleep0``
    ``awaitlet(asyncio.sleep(0))`` in a loop inside one ``async_def``: one trip through the
    event loop per operation (native: ``await asyncio.sleep(0)``).

Usage: ``python micro.py [pyperf options] [--select CASE[,CASE]]``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyperf
from impls import Impl, detect, versions

CASES = ("wait_ready", "spawn_no_wait", "wait_sleep0")

_loop: asyncio.AbstractEventLoop | None = None


def event_loop() -> asyncio.AbstractEventLoop:
    """One event loop per worker process, reused by every measurement."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop


async def ready() -> None:
    """A coroutine that returns without ever suspending."""


def nothing() -> None:
    """A sync function that never waits."""


# ---------------------------------------------------------------- sync bodies (spawned)


def wait_ready_loop(wait: Callable[[Awaitable[Any]], Any], loops: int) -> float:
    """Sync code: wait for ``loops`` coroutines that complete at once; returns the time."""
    start = time.perf_counter()
    for _ in range(loops):
        wait(ready())
    return time.perf_counter() - start


def wait_sleep0_loop(wait: Callable[[Awaitable[Any]], Any], loops: int) -> float:
    """Sync code: wait for ``asyncio.sleep(0)`` ``loops`` times; returns the time."""
    sleep = asyncio.sleep
    start = time.perf_counter()
    for _ in range(loops):
        wait(sleep(0))
    return time.perf_counter() - start


async def spawn_loop(spawn: Callable[..., Awaitable[Any]], loops: int) -> float:
    """Await ``spawn(nothing)`` ``loops`` times; returns the time."""
    start = time.perf_counter()
    for _ in range(loops):
        await spawn(nothing)
    return time.perf_counter() - start


# ---------------------------------------------------------------- native equivalents


async def native_wait_ready(loops: int) -> float:
    """``await ready()`` ``loops`` times; returns the time."""
    start = time.perf_counter()
    for _ in range(loops):
        await ready()
    return time.perf_counter() - start


async def native_sleep0(loops: int) -> float:
    """``await asyncio.sleep(0)`` ``loops`` times; returns the time."""
    sleep = asyncio.sleep
    start = time.perf_counter()
    for _ in range(loops):
        await sleep(0)
    return time.perf_counter() - start


# ---------------------------------------------------------------- pyperf time functions


def time_native(loops: int, case: str) -> float:
    """pyperf time function for native ``await``."""
    body = native_sleep0 if case == "wait_sleep0" else native_wait_ready
    return event_loop().run_until_complete(body(loops))


def time_impl(loops: int, case: str, impl: Impl) -> float:
    """pyperf time function for one implementation."""
    if case == "spawn_no_wait":
        coro = spawn_loop(impl.spawn, loops)
    elif case == "wait_ready":
        coro = impl.spawn(wait_ready_loop, impl.wait, loops)
    else:
        coro = impl.spawn(wait_sleep0_loop, impl.wait, loops)

    async def run() -> float:
        return await coro

    return event_loop().run_until_complete(run())


def add_cmdline_args(cmd: list[str], args: Any) -> None:
    """Pass our own options on to pyperf's worker processes."""
    if args.select:
        cmd.extend(("--select", args.select))


def main() -> None:
    """Register every (case, implementation) pair with pyperf."""
    runner = pyperf.Runner(add_cmdline_args=add_cmdline_args)
    runner.argparser.add_argument(
        "--select", default="", help="comma-separated cases to run (default: all)"
    )
    args = runner.parse_args()
    selected = [case for case in CASES if not args.select or case in args.select.split(",")]
    impls = detect()
    for name, version in versions().items():
        runner.metadata[f"version_{name}"] = version
    for case in selected:
        metadata = {"case": case, "impl": "native"}
        runner.bench_time_func(f"{case}:native", time_native, case, metadata=metadata)
        for impl in impls.values():
            metadata = {"case": case, "impl": impl.name}
            runner.bench_time_func(f"{case}:{impl.name}", time_impl, case, impl, metadata=metadata)


if __name__ == "__main__":
    main()
