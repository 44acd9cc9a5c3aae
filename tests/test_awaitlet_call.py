import asyncio
import contextvars
import gc
import types
import warnings

import pytest
from _support import returns
from awaitlet import NoAwaitletContext, async_def, awaitlet

NO_CONTEXT_MESSAGE = "Can't call awaitlet() unless the call stack was invoked with async_def()."


async def sleep_then_return(value):
    await asyncio.sleep(0.001)
    return value


async def await_it(awaitable):
    return await awaitable


def run(coroutine_function, *args):
    return asyncio.run(coroutine_function(*args))


def test_awaitlet_returns_the_result_of_the_awaitable():
    def fn():
        return awaitlet(sleep_then_return("result"))

    async def main():
        return await async_def(fn)

    assert run(main) == "result"


def test_awaitlet_works_at_any_depth_of_plain_calls():
    def level(depth):
        if depth == 0:
            return awaitlet(sleep_then_return("bottom"))
        return level(depth - 1)

    async def main():
        return await async_def(level, 50)

    assert run(main) == "bottom"


def test_many_awaitlet_calls_in_sequence():
    def fn():
        return [awaitlet(sleep_then_return(index)) for index in range(100)]

    async def main():
        return await async_def(fn)

    assert run(main) == list(range(100))


def test_awaitlet_of_a_future_and_a_task():
    def fn():
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_later(0.001, future.set_result, "from future")
        task = loop.create_task(sleep_then_return("from task"))
        return awaitlet(future), awaitlet(task)

    async def main():
        return await async_def(fn)

    assert run(main) == ("from future", "from task")


def test_awaitlet_of_an_object_with_dunder_await():
    class CustomAwaitable:
        def __await__(self):
            yield from asyncio.sleep(0.001).__await__()
            return "custom"

    def fn():
        return awaitlet(CustomAwaitable())

    async def main():
        return await async_def(fn)

    assert run(main) == "custom"


def test_awaitlet_inside_except_block():
    def fn():
        try:
            raise KeyError("handled")
        except KeyError:
            return awaitlet(sleep_then_return("in except"))

    async def main():
        return await async_def(fn)

    assert run(main) == "in except"


def test_awaitlet_inside_finally_block():
    results = []

    def fn():
        try:
            results.append(awaitlet(sleep_then_return("in try")))
        finally:
            results.append(awaitlet(sleep_then_return("in finally")))

    async def main():
        await async_def(fn)

    run(main)
    assert results == ["in try", "in finally"]


def test_awaitlet_inside_finally_block_while_an_exception_propagates():
    results = []

    def fn():
        try:
            raise ValueError("propagating")
        finally:
            results.append(awaitlet(sleep_then_return("in finally")))

    async def main():
        with pytest.raises(ValueError, match="propagating"):
            await async_def(fn)

    run(main)
    assert results == ["in finally"]


def test_awaitlet_inside_with_block():
    events = []

    class Manager:
        def __enter__(self):
            events.append(awaitlet(sleep_then_return("enter")))
            return self

        def __exit__(self, *exc_info):
            events.append(awaitlet(sleep_then_return("exit")))
            return False

    def fn():
        with Manager():
            events.append(awaitlet(sleep_then_return("body")))

    async def main():
        await async_def(fn)

    run(main)
    assert events == ["enter", "body", "exit"]


def test_awaitlet_inside_context_run():
    variable = contextvars.ContextVar("variable", default="outer")

    def inside_context():
        variable.set("inner")
        return awaitlet(sleep_then_return("inside run"))

    def fn():
        return contextvars.copy_context().run(inside_context)

    async def main():
        return await async_def(fn)

    assert run(main) == "inside run"


def test_awaitlet_inside_dunder_methods_called_by_c_code():
    class Key:
        def __init__(self, value):
            self.value = value

        def __lt__(self, other):
            return awaitlet(sleep_then_return(self.value < other.value))

    def fn():
        return [key.value for key in sorted([Key(3), Key(1), Key(2)])]

    async def main():
        return await async_def(fn)

    assert run(main) == [1, 2, 3]


def test_awaitlet_inside_callbacks_of_builtins():
    def fn():
        mapped = list(map(lambda value: awaitlet(sleep_then_return(value * 2)), range(5)))
        keyed = sorted(range(5), key=lambda value: awaitlet(sleep_then_return(-value)))
        return mapped, keyed

    async def main():
        return await async_def(fn)

    assert run(main) == ([0, 2, 4, 6, 8], [4, 3, 2, 1, 0])


def test_awaitlet_of_a_non_awaitable_raises_type_error_in_the_sync_code():
    def fn():
        try:
            awaitlet(42)
        except TypeError as error:
            return "caught", type(error)
        return "not raised", None

    async def main():
        return await async_def(fn)

    assert run(main) == ("caught", TypeError)


def test_awaitlet_takes_a_types_coroutine_generator_but_not_a_plain_generator():
    @types.coroutine
    def legacy_coroutine():
        yield
        return "legacy"

    def plain_generator():
        yield

    def fn():
        result = awaitlet(legacy_coroutine())
        with pytest.raises(TypeError, match="can't be used in 'await' expression"):
            awaitlet(plain_generator())
        return result

    assert asyncio.run(async_def(fn)) == "legacy"


def test_sync_code_keeps_working_after_a_non_awaitable_was_passed():
    def fn():
        with pytest.raises(TypeError):
            awaitlet(object())
        return awaitlet(sleep_then_return("still works"))

    async def main():
        return await async_def(fn)

    assert run(main) == "still works"


def test_awaitlet_outside_async_def_raises_no_awaitlet_context():
    with pytest.raises(NoAwaitletContext) as raised:
        awaitlet(returns(1))
    assert str(raised.value) == NO_CONTEXT_MESSAGE


def test_awaitlet_outside_async_def_closes_the_coroutine_without_warning():
    coro = returns(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(NoAwaitletContext):
            awaitlet(coro)
        assert coro.cr_frame is None

        with pytest.raises(RuntimeError):
            asyncio.run(await_it(coro))
        del coro
        gc.collect()
    assert [str(warning.message) for warning in caught] == []


def test_awaitlet_in_a_plain_coroutine_raises_no_awaitlet_context():
    async def main():
        with pytest.raises(NoAwaitletContext) as raised:
            awaitlet(returns(1))
        return str(raised.value)

    assert run(main) == NO_CONTEXT_MESSAGE


def test_awaitlet_outside_async_def_leaves_a_future_untouched():
    async def main():
        future = asyncio.get_running_loop().create_future()
        with pytest.raises(NoAwaitletContext):
            awaitlet(future)
        assert not future.done()
        future.set_result("still usable")
        return await future

    assert run(main) == "still usable"


def test_awaitlet_outside_async_def_with_non_awaitable_raises_no_awaitlet_context():
    with pytest.raises(NoAwaitletContext):
        awaitlet(42)


def test_awaitlet_in_a_thread_without_async_def_raises_no_awaitlet_context():
    async def main():
        def in_thread():
            coro = returns(1)
            try:
                awaitlet(coro)
            except NoAwaitletContext as error:
                return str(error)
            return "no error"

        return await asyncio.to_thread(in_thread)

    assert run(main) == NO_CONTEXT_MESSAGE


def test_coroutine_awaited_for_sync_code_cannot_call_awaitlet_directly():
    inner_coroutines = []

    async def calls_awaitlet_directly():
        inner = returns(1)
        inner_coroutines.append(inner)
        awaitlet(inner)

    def fn():
        awaitlet(calls_awaitlet_directly())

    async def main():
        with pytest.raises(NoAwaitletContext):
            await async_def(fn)
        with pytest.raises(RuntimeError):
            await inner_coroutines[0]

    run(main)


def test_no_awaitlet_context_is_catchable_in_the_sync_code():
    async def calls_awaitlet_directly():
        awaitlet(returns(1))

    def fn():
        try:
            awaitlet(calls_awaitlet_directly())
        except NoAwaitletContext:
            return awaitlet(sleep_then_return("recovered"))
        return "not raised"

    async def main():
        return await async_def(fn)

    assert run(main) == "recovered"


def test_async_def_nests_through_awaited_coroutines():
    def sync_level(depth):
        if depth == 0:
            return awaitlet(sleep_then_return(["bottom"]))
        return [f"sync {depth}", *awaitlet(async_level(depth - 1))]

    async def async_level(depth):
        await asyncio.sleep(0)
        result = await async_def(sync_level, depth)
        await asyncio.sleep(0)
        return [f"async {depth}", *result]

    async def main():
        return await async_def(sync_level, 4)

    assert run(main) == [
        "sync 4",
        "async 3",
        "sync 3",
        "async 2",
        "sync 2",
        "async 1",
        "sync 1",
        "async 0",
        "bottom",
    ]


def test_async_def_of_awaitlet_itself():
    async def main():
        return await async_def(awaitlet, sleep_then_return("direct"))

    assert run(main) == "direct"


def test_async_def_can_be_wrapped_in_a_task():
    def fn(value):
        return awaitlet(sleep_then_return(value))

    async def main():
        tasks = [asyncio.create_task(async_def(fn, index)) for index in range(10)]
        return await asyncio.gather(*tasks)

    assert run(main) == list(range(10))


def test_async_def_can_be_gathered_directly():
    def fn(value):
        return awaitlet(sleep_then_return(value))

    async def main():
        return await asyncio.gather(*(async_def(fn, index) for index in range(10)))

    assert run(main) == list(range(10))


def test_async_def_can_be_run_by_asyncio_run_directly():
    def fn():
        return awaitlet(sleep_then_return("top level"))

    assert asyncio.run(async_def(fn)) == "top level"


RETURN_VALUES = [
    None,
    (),
    (1,),
    (1, 2),
    [1, 2],
    ValueError("returned, not raised"),
    StopIteration("returned, not raised"),
    GeneratorExit(),
    asyncio.CancelledError(),
    ValueError,
]
RETURN_VALUE_IDS = [
    "none",
    "empty-tuple",
    "one-tuple",
    "pair",
    "list",
    "exception-instance",
    "stop-iteration-instance",
    "generator-exit-instance",
    "cancelled-error-instance",
    "exception-class",
]


@pytest.mark.parametrize("value", RETURN_VALUES, ids=RETURN_VALUE_IDS)
def test_values_of_every_kind_pass_through_awaitlet_unchanged(value):
    def fn():
        awaitlet(asyncio.sleep(0))
        return awaitlet(returns(value)), awaitlet(sleep_then_return(value))

    async def main():
        return await async_def(fn)

    immediate, suspended = run(main)
    assert immediate is value
    assert suspended is value


@pytest.mark.parametrize("value", RETURN_VALUES, ids=RETURN_VALUE_IDS)
def test_values_of_every_kind_returned_by_fn_pass_through_unchanged(value):
    def returns_after_switch():
        awaitlet(asyncio.sleep(0))
        return value

    async def main():
        return await async_def(lambda: value), await async_def(returns_after_switch)

    without_switch, after_switch = run(main)
    assert without_switch is value
    assert after_switch is value


def test_awaitlet_of_an_async_def_coroutine_created_in_sync_code():
    def inner(value):
        return awaitlet(sleep_then_return(value * 2))

    def outer():
        return [awaitlet(async_def(inner, value)) for value in range(3)]

    async def main():
        return await async_def(outer)

    assert run(main) == [0, 2, 4]


def test_async_def_nests_thirty_levels_deep():
    def sync_level(depth):
        awaitlet(asyncio.sleep(0))
        if depth == 0:
            return 0
        return 1 + awaitlet(async_level(depth - 1))

    async def async_level(depth):
        return await async_def(sync_level, depth)

    async def main():
        return await async_level(30)

    assert run(main) == 30


def test_current_task_inside_sync_code_is_the_awaiting_task():
    def fn():
        before = asyncio.current_task()
        awaitlet(asyncio.sleep(0))
        return before, asyncio.current_task()

    async def main():
        before, after = await async_def(fn)
        return before is asyncio.current_task(), after is asyncio.current_task()

    assert run(main) == (True, True)
