import asyncio
import traceback

import pytest
from _support import raises
from awaitlet import NoAwaitOccurred, async_def, awaitlet


class CustomBaseException(BaseException):
    pass


def run(coroutine_function, *args):
    return asyncio.run(coroutine_function(*args))


def frame_names(exception):
    return [summary.name for summary in traceback.extract_tb(exception.__traceback__)]


def is_ordered_subsequence(expected, actual):
    remaining = iter(actual)
    return all(name in remaining for name in expected)


async def sleep_then_raise(exception):
    await asyncio.sleep(0.001)
    raise exception


EXCEPTIONS_FROM_AWAITABLES = [
    ValueError("value error"),
    asyncio.CancelledError("cancelled"),
    TimeoutError("timed out"),
    asyncio.TimeoutError("asyncio timed out"),
    KeyboardInterrupt("keyboard interrupt"),
    CustomBaseException("custom base exception"),
]
EXCEPTION_IDS = [type(exception).__name__ for exception in EXCEPTIONS_FROM_AWAITABLES]


@pytest.mark.parametrize("exception", EXCEPTIONS_FROM_AWAITABLES, ids=EXCEPTION_IDS)
def test_exception_from_awaitable_is_raised_at_the_awaitlet_call(exception):
    def fn():
        try:
            awaitlet(sleep_then_raise(exception))
        except BaseException as caught:
            return caught
        return None

    async def main():
        return await async_def(fn)

    assert run(main) is exception


@pytest.mark.parametrize("exception", EXCEPTIONS_FROM_AWAITABLES, ids=EXCEPTION_IDS)
def test_unhandled_exception_from_awaitable_propagates_as_the_same_object(exception):
    async def main():
        try:
            await async_def(awaitlet, sleep_then_raise(exception))
        except BaseException as caught:
            return caught
        return None

    caught = run(main)
    assert caught is exception
    assert caught.__context__ is None


@pytest.mark.parametrize("exception", EXCEPTIONS_FROM_AWAITABLES, ids=EXCEPTION_IDS)
def test_exception_propagates_through_sync_frames_unchanged(exception):
    def inner():
        awaitlet(asyncio.sleep(0))
        awaitlet(sleep_then_raise(exception))

    def outer():
        inner()

    async def main():
        try:
            await async_def(outer)
        except BaseException as caught:
            return caught
        return None

    caught = run(main)
    assert caught is exception
    assert caught.__context__ is None


def test_exception_from_a_non_suspending_awaitable_is_raised_in_sync_code():
    error = ValueError("immediate")

    def fn():
        try:
            awaitlet(raises(error))
        except ValueError as caught:
            return caught
        return None

    async def main():
        return await async_def(fn)

    assert run(main) is error


def test_sync_code_can_handle_an_exception_and_keep_awaiting():
    def fn():
        results = []
        for index in range(5):
            try:
                awaitlet(sleep_then_raise(ValueError(index)))
            except ValueError as caught:
                results.append(caught.args[0])
        return results

    async def main():
        return await async_def(fn)

    assert run(main) == [0, 1, 2, 3, 4]


def test_exception_raised_by_sync_code_before_any_switch_propagates():
    error = LookupError("before switch")

    def fn():
        raise error

    async def main():
        try:
            await async_def(fn)
        except LookupError as caught:
            return caught
        return None

    caught = run(main)
    assert caught is error
    assert caught.__context__ is None


def test_exception_raised_by_sync_code_after_switches_propagates():
    error = LookupError("after switch")

    def fn():
        awaitlet(asyncio.sleep(0))
        awaitlet(asyncio.sleep(0.001))
        raise error

    async def main():
        try:
            await async_def(fn)
        except LookupError as caught:
            return caught
        return None

    caught = run(main)
    assert caught is error
    assert caught.__context__ is None


def test_explicitly_suppressed_context_is_kept():
    def fn():
        try:
            awaitlet(sleep_then_raise(KeyError("first")))
        except KeyError:
            awaitlet(asyncio.sleep(0))
            raise ValueError("second") from None

    async def main():
        try:
            await async_def(fn)
        except ValueError as caught:
            return caught
        return None

    caught = run(main)
    assert isinstance(caught, ValueError)
    assert caught.__suppress_context__ is True
    assert isinstance(caught.__context__, KeyError)


def test_implicit_exception_context_is_set_inside_sync_code():
    def fn():
        try:
            awaitlet(sleep_then_raise(KeyError("first")))
        except KeyError:
            awaitlet(asyncio.sleep(0))
            raise ValueError("second")  # noqa: B904

    async def main():
        try:
            await async_def(fn)
        except ValueError as caught:
            return caught
        return None

    caught = run(main)
    assert isinstance(caught, ValueError)
    assert isinstance(caught.__context__, KeyError)
    assert caught.__suppress_context__ is False


def test_traceback_contains_every_sync_frame_and_the_awaiting_coroutine():
    def raising_helper():
        awaitlet(asyncio.sleep(0))
        raise ValueError("deep")

    def middle_helper():
        awaitlet(asyncio.sleep(0.001))
        raising_helper()

    def sync_entry_point():
        awaitlet(asyncio.sleep(0))
        middle_helper()

    async def awaiting_coroutine():
        try:
            await async_def(sync_entry_point)
        except ValueError as caught:
            return frame_names(caught)
        return []

    names = run(awaiting_coroutine)
    expected = ["awaiting_coroutine", "sync_entry_point", "middle_helper", "raising_helper"]
    assert is_ordered_subsequence(expected, names), names
    assert names[-1] == "raising_helper"


def test_traceback_of_exception_from_awaitable_contains_the_sync_frames():
    async def failing_coroutine():
        await asyncio.sleep(0)
        raise ValueError("from awaitable")

    def calling_helper():
        awaitlet(failing_coroutine())

    def sync_entry_point():
        calling_helper()

    async def awaiting_coroutine():
        try:
            await async_def(sync_entry_point)
        except ValueError as caught:
            return frame_names(caught)
        return []

    names = run(awaiting_coroutine)
    expected = ["awaiting_coroutine", "sync_entry_point", "calling_helper", "failing_coroutine"]
    assert is_ordered_subsequence(expected, names), names


def test_traceback_can_be_formatted_after_many_switches():
    def fn():
        for _ in range(200):
            awaitlet(asyncio.sleep(0))
        raise ValueError("after many switches")

    async def main():
        try:
            await async_def(fn)
        except ValueError as caught:
            return "".join(traceback.format_exception(type(caught), caught, caught.__traceback__))
        return ""

    formatted = run(main)
    assert "ValueError: after many switches" in formatted
    assert "in fn" in formatted


@pytest.mark.parametrize("switch_first", [False, True], ids=["no-switch", "after-switch"])
def test_stop_iteration_escaping_fn_becomes_runtime_error(switch_first):
    def fn():
        if switch_first:
            awaitlet(asyncio.sleep(0))
        raise StopIteration("escaped")

    async def main():
        try:
            await async_def(fn)
        except RuntimeError as caught:
            return caught
        return None

    caught = run(main)
    assert isinstance(caught, RuntimeError)
    assert isinstance(caught.__cause__, StopIteration)
    assert caught.__cause__.args == ("escaped",)


def test_stop_iteration_from_awaited_coroutine_arrives_as_runtime_error():
    async def raises_stop_iteration():
        raise StopIteration("inner")

    def fn():
        try:
            awaitlet(raises_stop_iteration())
        except RuntimeError as caught:
            return caught
        return None

    async def main():
        return await async_def(fn)

    caught = run(main)
    assert isinstance(caught, RuntimeError)
    assert isinstance(caught.__cause__, StopIteration)


def test_generator_exit_raised_by_fn_propagates():
    def fn():
        awaitlet(asyncio.sleep(0))
        raise GeneratorExit("explicit")

    async def main():
        try:
            await async_def(fn)
        except GeneratorExit as caught:
            return caught.args
        return None

    assert run(main) == ("explicit",)


def test_no_await_occurred_when_required_and_fn_never_awaited():
    def fn():
        return "no await"

    async def main():
        with pytest.raises(NoAwaitOccurred) as raised:
            await async_def(fn, assert_await_occurs=True)
        return str(raised.value)

    assert run(main) == "Function was run but no await was called."


def test_no_await_occurred_is_not_raised_when_fn_awaited():
    def fn():
        return awaitlet(asyncio.sleep(0, result="awaited"))

    async def main():
        return await async_def(fn, assert_await_occurs=True)

    assert run(main) == "awaited"


def test_no_await_occurred_is_not_raised_without_the_flag():
    async def main():
        return await async_def(lambda: "plain", assert_await_occurs=False)

    assert run(main) == "plain"


def test_exception_from_fn_wins_over_no_await_occurred():
    def fn():
        raise LookupError("fn failed")

    async def main():
        with pytest.raises(LookupError):
            await async_def(fn, assert_await_occurs=True)

    run(main)
