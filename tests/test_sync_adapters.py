"""awaitlet.sync_adapters: async functions, context managers, iterators and generators used
from sync code in a task with a portal; each checked against the native ``async`` form."""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from awaitlet.portal import ensure_portal, has_portal
from awaitlet.sync_adapters import (
    async_context,
    async_generator,
    async_iter,
    autoawait,
    decorate_as_sync,
)

try:
    import trio
    import trio.testing
except Exception:
    trio = None

requires_trio = pytest.mark.skipif(trio is None, reason="trio is not importable")


def run_trio_with_fake_clock(main: Callable[[], Awaitable[Any]]) -> Any:
    """Trio with a clock that jumps ahead whenever all tasks sleep: time is exact."""
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@requires_trio
def test_autoawait_makes_a_sync_function() -> None:
    @autoawait
    async def sync_sleep(seconds: float) -> float:
        await trio.sleep(seconds)
        return trio.current_time()

    async def main() -> None:
        await ensure_portal()
        assert sync_sleep(1) == 1
        await trio.sleep(2)
        assert sync_sleep(3) == 6
        assert sync_sleep.__name__ == "sync_sleep"

    run_trio_with_fake_clock(main)


def test_autoawait_on_asyncio_raises_the_coroutine_exception() -> None:
    @autoawait
    async def fails(message: str) -> None:
        await asyncio.sleep(0)
        raise LookupError(message)

    async def main() -> None:
        await ensure_portal()
        with pytest.raises(LookupError, match="from the coroutine") as info:
            fails("from the coroutine")
        assert [entry.name for entry in info.traceback][-1] == "fails"

    asyncio.run(main())


@requires_trio
def test_decorate_as_sync_with_lru_cache() -> None:
    @decorate_as_sync(functools.lru_cache())
    async def example(*args: int, **kwargs: str) -> tuple[int, list[str]]:
        assert has_portal()
        await trio.sleep(1)
        return sum(args), list(kwargs)

    async def main() -> None:
        assert example.__wrapped__.__name__ == "example"  # type: ignore[attr-defined]
        assert await example(1, 2, test="foo") == (3, ["test"])
        assert trio.current_time() == 1
        # Cached: the coroutine does not run again.
        assert await example(1, 2, test="foo") == (3, ["test"])
        assert trio.current_time() == 1
        assert await example(1) == (1, [])
        assert trio.current_time() == 2
        assert not has_portal()

    run_trio_with_fake_clock(main)


@requires_trio
def test_autoawait_on_magic_methods() -> None:
    destroyed_in: list[str] = []

    class AsyncMagic:
        @autoawait
        async def __init__(self) -> None:
            await trio.sleep(1)

        @autoawait
        async def __del__(self) -> None:
            await trio.sleep(2)
            destroyed_in.append(trio.lowlevel.current_task().name.rsplit(".", 1)[-1])

    async def release(holder: list[AsyncMagic]) -> None:
        # Until the end of the step that trio.sleep()'s Cancelled ended, Trio holds that
        # exception, whose traceback's frames hold the object: let one step go by, then
        # drop the last reference (and collect, for a cycle through those frames).
        await trio.sleep(0)
        holder.clear()
        gc.collect()

    async def construct_in_child() -> None:
        await ensure_portal()
        await release([AsyncMagic()])

    async def main() -> None:
        await ensure_portal()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(construct_in_child)
            holder = [AsyncMagic()]
        await release(holder)
        # 1 s to construct each (concurrently), 2 s to destroy each: the child's in the
        # child, then ours here.
        assert trio.current_time() == 5

    # The collector runs only when told to, in a task (not at an allocation in Trio's
    # scheduler, where no task could await).
    gc.disable()
    try:
        run_trio_with_fake_clock(main)
    finally:
        gc.enable()
    assert destroyed_in == ["construct_in_child", "main"]


async def summarize_context(template: Callable[[], Any]) -> str:
    """What ``async with template() as value`` did, as text to compare."""
    value: Any = "<failed>"
    try:
        async with template() as value:
            pass
        return f"got {value!r}"
    except BaseException as error:
        if value == "<failed>":
            return f"failed in enter: {type(error)!r}"
        return f"got {value!r} then failed in exit: {type(error)!r}"


class NoExitCM:
    async def __aenter__(self) -> None:
        await asyncio.sleep(0)  # pragma: no cover


class NoEnterCM:
    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0)  # pragma: no cover


class ThrowExitCM:
    async def __aenter__(self) -> str:
        await asyncio.sleep(0)
        return "entered"

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0)
        raise ValueError


class InstanceAttrCM:
    """The protocol is looked up on the type, as ``async with`` does."""

    def __init__(self) -> None:
        self.__aenter__ = lambda: "instance"  # pragma: no cover
        self.__aexit__ = None

    async def __aenter__(self) -> str:
        await asyncio.sleep(0)
        return "class"

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0)


class SuppressingCM:
    async def __aenter__(self) -> str:
        return "suppressing"

    async def __aexit__(self, *exc: object) -> bool:
        await asyncio.sleep(0)
        return True


@pytest.mark.parametrize(
    "factory", [NoExitCM, NoEnterCM, ThrowExitCM, InstanceAttrCM, SuppressingCM]
)
def test_async_context_matches_async_with(factory: Callable[[], Any]) -> None:
    @asynccontextmanager
    async def through_sync_with() -> AsyncIterator[Any]:
        with async_context(factory()) as value:
            yield value

    async def main() -> None:
        await ensure_portal()
        assert await summarize_context(through_sync_with) == await summarize_context(factory)

    asyncio.run(main())


def test_async_context_passes_the_exception_to_aexit() -> None:
    seen: list[Any] = []

    class Recording:
        async def __aenter__(self) -> Recording:
            return self

        async def __aexit__(self, kind: Any, error: Any, traceback: Any) -> bool:
            await asyncio.sleep(0)
            seen.append((kind, str(error), traceback is not None))
            return kind is KeyError

    async def main() -> None:
        await ensure_portal()
        with async_context(Recording()):
            raise KeyError("suppressed")
        with pytest.raises(ValueError), async_context(Recording()):
            raise ValueError("kept")

    asyncio.run(main())
    assert seen == [(KeyError, "'suppressed'", True), (ValueError, "kept", True)]


async def collect(template: Callable[[], Any]) -> list[Any]:
    """What ``async for`` over ``template()`` gave, ending with its exception if any."""
    results: list[Any] = []
    try:
        async for value in template():
            results.append(value)
    except BaseException as error:
        results.append(f"exception: {type(error)!r}")
    return results


async def arange(end: int = 5) -> AsyncIterator[int]:
    for value in range(end):
        await asyncio.sleep(0)
        yield value


class NoAIter:
    async def __anext__(self) -> None:
        raise StopAsyncIteration  # pragma: no cover


class NoANext:
    def __aiter__(self) -> NoANext:
        return self


class IteratorDefinedElsewhere:
    def __aiter__(self) -> AsyncIterator[int]:
        return arange(3)

    async def __anext__(self) -> None:
        raise ValueError("nope")  # pragma: no cover


class InstanceAttrIter:
    def __init__(self) -> None:
        self.__aiter__ = arange

    def __aiter__(self) -> InstanceAttrIter:
        return self

    async def __anext__(self) -> None:
        raise StopAsyncIteration


@pytest.mark.parametrize(
    "factory", [arange, NoAIter, NoANext, IteratorDefinedElsewhere, InstanceAttrIter]
)
def test_async_iter_matches_async_for(factory: Callable[[], Any]) -> None:
    async def through_sync_for() -> AsyncIterator[Any]:
        for value in async_iter(factory()):
            yield value

    async def main() -> None:
        await ensure_portal()
        assert await collect(through_sync_for) == await collect(factory)

    asyncio.run(main())


def test_async_iter_of_an_async_generator_is_a_generator() -> None:
    async def main() -> None:
        await ensure_portal()
        assert type(async_iter(arange())) is async_generator
        assert type(async_iter(IteratorDefinedElsewhere())) is async_generator
        assert type(async_iter(InstanceAttrIter())) is async_iter
        assert list(async_iter(arange(4))) == [0, 1, 2, 3]

    asyncio.run(main())


def test_async_generator_send_throw_close() -> None:
    closed: list[bool] = []

    async def example(suppress: bool = False) -> Any:
        try:
            received = yield 10
            await asyncio.sleep(0)
            yield received + 1
        except GeneratorExit:
            closed.append(True)
            raise
        except BaseException:
            if not suppress:
                raise

    def wrap(**kwargs: Any) -> Iterator[Any]:
        return (yield from async_iter(example(**kwargs)))

    async def main() -> None:
        await ensure_portal()
        generator = wrap()
        assert next(generator) == 10
        assert generator.send(20) == 21
        with pytest.raises(ValueError, match="hi"):
            generator.throw(ValueError("hi"))

        generator = wrap()
        assert generator.send(None) == 10
        generator.close()
        assert closed == [True]

        generator = wrap(suppress=True)
        assert generator.send(None) == 10
        with pytest.raises(StopIteration):
            generator.throw(ValueError("lo"))

        generator = wrap()
        assert next(generator) == 10
        assert generator.send(20) == 21
        with pytest.raises(StopIteration):
            generator.send(30)

    asyncio.run(main())


def test_adapters_without_a_portal_raise() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="create a portal"):
            next(async_iter(arange()))
        with pytest.raises(RuntimeError, match="create a portal"), async_context(ThrowExitCM()):
            pass  # pragma: no cover

    asyncio.run(main())
