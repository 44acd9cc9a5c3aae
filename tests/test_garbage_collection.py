import asyncio
import gc
import weakref

from _support import Yield
from awaitlet import async_def, awaitlet

COUNT = 1000


def suspend_then_record(finished, index):
    try:
        awaitlet(Yield(index))
    finally:
        finished.append(index)


def test_dropping_many_suspended_coroutines_runs_every_finally():
    finished = []
    coroutines = [async_def(suspend_then_record, finished, index) for index in range(COUNT)]
    for index, coro in enumerate(coroutines):
        assert coro.send(None) == index
    del coroutines, coro
    gc.collect()
    assert sorted(finished) == list(range(COUNT))


def test_dropping_a_nested_suspended_stack_runs_finally_innermost_first():
    events = []

    def innermost_sync():
        try:
            awaitlet(Yield("innermost"))
        finally:
            events.append("innermost sync finally")

    async def middle_coroutine():
        try:
            await async_def(innermost_sync)
        finally:
            events.append("middle coroutine finally")

    def outer_sync():
        try:
            awaitlet(middle_coroutine())
        finally:
            events.append("outer sync finally")

    coro = async_def(outer_sync)
    assert coro.send(None) == "innermost"
    del coro
    gc.collect()
    assert events == [
        "innermost sync finally",
        "middle coroutine finally",
        "outer sync finally",
    ]


def test_collection_while_suspended_keeps_objects_only_the_sync_stack_references():
    class Node:
        pass

    def build_cycle_then_suspend(index):
        first, second = Node(), Node()
        first.partner, second.partner = second, first
        first.value = [index] * 10
        tracker = weakref.ref(first)
        awaitlet(Yield(index))
        return tracker() is first and first.partner.partner is first and first.value[9] == index

    coroutines = [async_def(build_cycle_then_suspend, index) for index in range(COUNT)]
    for coro in coroutines:
        coro.send(None)
    for _ in range(3):
        gc.collect()
    results = []
    for coro in coroutines:
        try:
            coro.send(None)
        except StopIteration as stop:
            results.append(stop.value)
    assert results == [True] * COUNT


def test_collection_while_tasks_are_suspended_in_sync_code():
    def fn(index):
        payload = {"index": index, "items": list(range(index % 7))}
        awaitlet(asyncio.sleep(0))
        gc.collect()
        awaitlet(asyncio.sleep(0.001))
        return payload["index"], len(payload["items"])

    async def main():
        return await asyncio.gather(*(async_def(fn, index) for index in range(50)))

    assert asyncio.run(main()) == [(index, index % 7) for index in range(50)]


def test_suspended_coroutines_in_reference_cycles_do_not_break_collection():
    def holds_itself(holder):
        try:
            awaitlet(Yield())
        finally:
            holder.clear()

    for _ in range(COUNT):
        holder = []
        coro = async_def(holds_itself, holder)
        holder.append(coro)
        coro.send(None)
    del holder, coro
    gc.collect()
    gc.collect()


def test_finished_coroutine_releases_fn_and_its_arguments():
    class Argument:
        pass

    argument = Argument()
    argument_reference = weakref.ref(argument)

    def fn(value):
        awaitlet(asyncio.sleep(0))
        return None

    async def main(coro):
        await coro

    coro = async_def(fn, argument)
    del argument
    asyncio.run(main(coro))
    gc.collect()
    assert argument_reference() is None


def test_dropped_unstarted_coroutine_releases_its_arguments():
    class Argument:
        pass

    argument = Argument()
    argument_reference = weakref.ref(argument)
    coro = async_def(lambda value: value, argument)
    del argument
    coro.close()
    del coro
    gc.collect()
    assert argument_reference() is None
