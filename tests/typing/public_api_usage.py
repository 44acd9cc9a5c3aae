"""Code using awaitlet's public API as its users would, checked (not run) by mypy --strict and
pyright in ``nox -s typecheck``: what the stubs give each call must be what it returns."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from awaitlet import NoAwaitletContext, NoAwaitOccurred, async_def, awaitlet, base
from awaitlet import greenlet as facade_module
from typing_extensions import assert_type


async def double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


def sync_total(*values: int) -> str:
    total = sum(assert_type(awaitlet(double(value)), int) for value in values)
    assert_type(awaitlet(awaitable=asyncio.sleep(0, "done")), str)
    return str(total)


async def main() -> None:
    coroutine = assert_type(
        async_def(sync_total, 1, 2, assert_await_occurs=True), Coroutine[Any, Any, str]
    )
    assert_type(await coroutine, str)
    assert_type(await base.async_def(sync_total, 3), str)
    try:
        awaitlet(double(1))
    except (NoAwaitletContext, NoAwaitOccurred) as error:
        assert_type(error, NoAwaitletContext | NoAwaitOccurred)
    assert_type(base.is_exit_exception(asyncio.CancelledError()), bool)


def facade() -> None:
    from awaitlet.greenlet import GreenletExit, error, getcurrent, greenlet

    class Worker(greenlet):
        def run(self, count: int) -> int:
            return count + 1

    current = assert_type(getcurrent(), greenlet)
    worker = Worker(parent=current)
    assert_type(worker.switch(1), Any)
    assert_type(worker.dead, bool)
    assert_type(worker.parent, greenlet | None)
    assert_type(worker.throw(), Any)
    assert_type(worker.throw(GreenletExit()), Any)
    assert issubclass(error, Exception)
    previous = facade_module.settrace(None)
    assert previous is None
    assert_type(facade_module.gettrace(), Callable[[str, tuple[greenlet, greenlet]], object] | None)
