import asyncio
import contextlib

import pytest
from awaitlet import NoAwaitletContext, async_def, awaitlet


def run(coroutine_function, *args):
    return asyncio.run(coroutine_function(*args))


async def sleep_then_return(value):
    await asyncio.sleep(0.001)
    return value


async def sleep_then_raise(exception):
    await asyncio.sleep(0.001)
    raise exception


def awaiting_generator(count):
    for index in range(count):
        yield awaitlet(sleep_then_return(index))


def test_generator_calling_awaitlet_consumed_by_a_for_loop():
    def fn():
        return [value * 10 for value in awaiting_generator(5)]

    async def main():
        return await async_def(fn)

    assert run(main) == [0, 10, 20, 30, 40]


def test_generator_expression_calling_awaitlet():
    def fn():
        return sum(awaitlet(sleep_then_return(value)) for value in range(10))

    async def main():
        return await async_def(fn)

    assert run(main) == 45


def test_exception_from_awaitable_propagates_out_of_the_generator():
    error = LookupError("from awaitable")

    def failing_generator():
        yield awaitlet(sleep_then_return("first"))
        yield awaitlet(sleep_then_raise(error))
        yield "not reached"

    def fn():
        received = []
        try:
            for value in failing_generator():
                received.append(value)
        except LookupError as caught:
            return received, caught
        return received, None

    async def main():
        return await async_def(fn)

    received, caught = run(main)
    assert received == ["first"]
    assert caught is error


def test_unhandled_exception_from_generator_body_leaves_async_def():
    error = LookupError("from awaitable")

    def failing_generator():
        yield awaitlet(sleep_then_return("first"))
        awaitlet(sleep_then_raise(error))
        yield "not reached"

    def fn():
        return list(failing_generator())

    async def main():
        try:
            await async_def(fn)
        except LookupError as caught:
            return caught
        return None

    assert run(main) is error


def test_generator_can_handle_the_exception_and_continue():
    def recovering_generator():
        for index in range(3):
            try:
                awaitlet(sleep_then_raise(LookupError(index)))
            except LookupError as error:
                yield ("recovered", error.args[0])

    def fn():
        return list(recovering_generator())

    async def main():
        return await async_def(fn)

    assert run(main) == [("recovered", 0), ("recovered", 1), ("recovered", 2)]


def test_generator_created_by_the_task_and_consumed_in_sync_code():
    async def main():
        generator = awaiting_generator(4)
        return await async_def(list, generator)

    assert run(main) == [0, 1, 2, 3]


def test_generator_started_in_one_sync_stack_continues_in_another():
    def take(generator, count):
        return [next(generator) for _ in range(count)]

    async def main():
        generator = awaiting_generator(6)
        first = await async_def(take, generator, 2)
        second = await async_def(take, generator, 2)
        rest = await async_def(list, generator)
        return first, second, rest

    assert run(main) == ([0, 1], [2, 3], [4, 5])


def test_generator_resumed_outside_async_def_raises_no_awaitlet_context():
    async def main():
        generator = awaiting_generator(3)
        first = await async_def(next, generator)
        with pytest.raises(NoAwaitletContext):
            next(generator)
        return first

    assert run(main) == 0


def test_yield_from_chain_calling_awaitlet():
    def inner():
        yield awaitlet(sleep_then_return("inner one"))
        yield awaitlet(sleep_then_return("inner two"))
        return awaitlet(sleep_then_return("inner result"))

    def outer():
        result = yield from inner()
        yield result

    def fn():
        return list(outer())

    async def main():
        return await async_def(fn)

    assert run(main) == ["inner one", "inner two", "inner result"]


def test_generator_closed_in_sync_code_can_await_in_its_finally():
    events = []

    def generator_with_cleanup():
        try:
            yield awaitlet(sleep_then_return("first"))
            yield "second"
        finally:
            events.append(awaitlet(sleep_then_return("cleanup awaited")))

    def fn():
        generator = generator_with_cleanup()
        first = next(generator)
        generator.close()
        return first

    async def main():
        return await async_def(fn)

    assert run(main) == "first"
    assert events == ["cleanup awaited"]


def test_context_manager_generator_calling_awaitlet():
    events = []

    @contextlib.contextmanager
    def managed_resource():
        events.append(awaitlet(sleep_then_return("opened")))
        try:
            yield "resource"
        finally:
            events.append(awaitlet(sleep_then_return("closed")))

    def fn():
        with managed_resource() as resource:
            events.append(awaitlet(sleep_then_return(f"using {resource}")))
        return "done"

    async def main():
        return await async_def(fn)

    assert run(main) == "done"
    assert events == ["opened", "using resource", "closed"]


def test_context_manager_generator_sees_an_exception_from_an_awaitable():
    events = []

    @contextlib.contextmanager
    def managed_resource():
        try:
            yield
        except LookupError as error:
            events.append(("context manager saw", error.args[0]))
            awaitlet(sleep_then_return(None))
            raise

    def fn():
        with managed_resource():
            awaitlet(sleep_then_raise(LookupError("inside with")))

    async def main():
        with pytest.raises(LookupError):
            await async_def(fn)

    run(main)
    assert events == [("context manager saw", "inside with")]


def test_async_generator_consumed_from_sync_code():
    async def numbers():
        for index in range(3):
            await asyncio.sleep(0)
            yield index

    def fn():
        generator = numbers()
        received = []
        while True:
            try:
                received.append(awaitlet(generator.__anext__()))
            except StopAsyncIteration:
                return received

    async def main():
        return await async_def(fn)

    assert run(main) == [0, 1, 2]


def test_many_interleaved_generators_across_concurrent_sync_stacks():
    def fn(offset):
        return [value + offset for value in awaiting_generator(20)]

    async def main():
        return await asyncio.gather(*(async_def(fn, offset * 100) for offset in range(20)))

    assert run(main) == [[value + offset * 100 for value in range(20)] for offset in range(20)]
