import asyncio
import gc
import warnings

import pytest
from _support import Yield
from awaitlet import async_def, awaitlet

REUSE_MESSAGE = "cannot reuse already awaited coroutine"


def suspend_once(events, value="suspended"):
    try:
        events.append("started")
        result = awaitlet(Yield(value))
        events.append(("resumed with", result))
        return result
    except GeneratorExit:
        events.append("generator exit")
        raise
    finally:
        events.append("finally")


def finish(coro, value=None):
    with pytest.raises(StopIteration) as stop:
        coro.send(value)
    return stop.value.value


def test_first_send_returns_the_asyncio_future_being_awaited():
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        coro = async_def(awaitlet, future)
        assert coro.send(None) is future
        future.set_result("future result")
        assert finish(coro) == "future result"
    finally:
        loop.close()


def test_send_value_becomes_the_result_of_awaitlet():
    events = []
    coro = async_def(suspend_once, events, "yielded value")
    assert coro.send(None) == "yielded value"
    assert finish(coro, "sent value") == "sent value"
    assert events == ["started", ("resumed with", "sent value"), "finally"]


def test_each_awaitlet_call_is_one_yield_to_the_driver():
    def fn():
        return [awaitlet(Yield(index)) for index in range(3)]

    coro = async_def(fn)
    assert coro.send(None) == 0
    assert coro.send("a") == 1
    assert coro.send("b") == 2
    assert finish(coro, "c") == ["a", "b", "c"]


def test_close_raises_generator_exit_at_the_awaitlet_call():
    events = []
    coro = async_def(suspend_once, events)
    coro.send(None)
    assert coro.close() is None
    assert events == ["started", "generator exit", "finally"]


def test_send_after_close_raises_runtime_error():
    coro = async_def(suspend_once, [])
    coro.send(None)
    coro.close()
    with pytest.raises(RuntimeError, match=REUSE_MESSAGE):
        coro.send(None)


def test_close_twice_is_harmless():
    events = []
    coro = async_def(suspend_once, events)
    coro.send(None)
    coro.close()
    coro.close()
    assert events == ["started", "generator exit", "finally"]


def test_close_leaves_sync_code_suspended_when_it_awaits_after_swallowing_generator_exit():
    # As a coroutine that awaits again after GeneratorExit: close() fails and the coroutine
    # stays suspended where it awaits.
    events = []

    def fn():
        try:
            awaitlet(Yield())
        except GeneratorExit:
            events.append("generator exit")
            events.append(("second awaitlet returned", awaitlet(Yield())))
        return "returned"

    coro = async_def(fn)
    coro.send(None)
    with pytest.raises(RuntimeError, match="coroutine ignored GeneratorExit"):
        coro.close()
    assert events == ["generator exit"]
    assert finish(coro, "sent after close") == "returned"
    assert events == ["generator exit", ("second awaitlet returned", "sent after close")]


def test_close_raises_runtime_error_when_sync_code_ignores_generator_exit():
    events = []

    def fn():
        try:
            awaitlet(Yield())
        except GeneratorExit:
            events.append("generator exit")
            awaitlet(Yield())
            events.append("second awaitlet returned")

    coro = async_def(fn)
    coro.send(None)
    with pytest.raises(RuntimeError):
        coro.close()
    assert events == ["generator exit"]


def test_close_raises_runtime_error_when_finally_calls_awaitlet():
    events = []

    def fn():
        try:
            awaitlet(Yield())
        finally:
            events.append("finally")
            awaitlet(Yield())
            events.append("awaitlet in finally returned")

    coro = async_def(fn)
    coro.send(None)
    with pytest.raises(RuntimeError):
        coro.close()
    assert events == ["finally"]


def test_close_raises_an_exception_raised_by_sync_finally():
    error = LookupError("raised in finally")

    def fn():
        try:
            awaitlet(Yield())
        finally:
            raise error

    coro = async_def(fn)
    coro.send(None)
    with pytest.raises(LookupError) as raised:
        coro.close()
    assert raised.value is error


def test_dropping_a_suspended_coroutine_runs_sync_finally():
    events = []
    coro = async_def(suspend_once, events)
    coro.send(None)
    del coro
    gc.collect()
    assert events == ["started", "generator exit", "finally"]


def test_dropping_a_finished_coroutine_runs_nothing_more():
    events = []
    coro = async_def(suspend_once, events)
    coro.send(None)
    finish(coro, "done")
    del coro
    gc.collect()
    assert events == ["started", ("resumed with", "done"), "finally"]


def test_send_after_completion_raises_runtime_error():
    coro = async_def(suspend_once, [])
    coro.send(None)
    finish(coro)
    with pytest.raises(RuntimeError, match=REUSE_MESSAGE):
        coro.send(None)


def test_send_after_completion_without_switch_raises_runtime_error():
    coro = async_def(lambda: "immediate")
    assert finish(coro) == "immediate"
    with pytest.raises(RuntimeError, match=REUSE_MESSAGE):
        coro.send(None)


def test_send_after_failure_raises_runtime_error():
    def fn():
        awaitlet(Yield())
        raise LookupError("failed")

    coro = async_def(fn)
    coro.send(None)
    with pytest.raises(LookupError):
        coro.send(None)
    with pytest.raises(RuntimeError, match=REUSE_MESSAGE):
        coro.send(None)


def test_close_after_completion_is_silent():
    coro = async_def(suspend_once, [])
    coro.send(None)
    finish(coro)
    assert coro.close() is None


def test_awaiting_the_same_coroutine_twice_raises_runtime_error():
    async def main():
        coro = async_def(awaitlet, asyncio.sleep(0, result="first"))
        first = await coro
        with pytest.raises(RuntimeError, match=REUSE_MESSAGE):
            await coro
        return first

    assert asyncio.run(main()) == "first"


def test_first_send_must_be_none():
    coro = async_def(suspend_once, [])
    with pytest.raises(TypeError):
        coro.send("not none")
    coro.close()


def test_reentrant_send_from_sync_code_raises_value_error():
    outcomes = []

    def fn():
        try:
            coro.send(None)
        except ValueError as error:
            outcomes.append(str(error))
        awaitlet(Yield())
        try:
            coro.send(None)
        except ValueError as error:
            outcomes.append(str(error))
        return "finished"

    coro = async_def(fn)
    coro.send(None)
    assert finish(coro) == "finished"
    assert len(outcomes) == 2
    for message in outcomes:
        assert "already executing" in message


@pytest.mark.parametrize("method", ["throw", "close"])
def test_reentrant_throw_or_close_from_sync_code_raises_value_error(method):
    outcomes = []

    def fn():
        awaitlet(Yield())
        try:
            if method == "throw":
                coro.throw(LookupError("reentrant"))
            else:
                coro.close()
        except ValueError as error:
            outcomes.append(str(error))
        return "finished"

    coro = async_def(fn)
    coro.send(None)
    assert finish(coro) == "finished"
    assert len(outcomes) == 1
    assert "already executing" in outcomes[0]


def test_send_from_a_coroutine_awaited_for_the_sync_code_raises_value_error():
    outcomes = []

    async def awaited_coroutine():
        try:
            coro.send(None)
        except ValueError as error:
            outcomes.append(str(error))
        return "awaited result"

    def fn():
        return awaitlet(awaited_coroutine())

    coro = async_def(fn)
    assert finish(coro) == "awaited result"
    assert len(outcomes) == 1
    assert "already executing" in outcomes[0]


def test_throw_into_an_unstarted_coroutine_raises_without_running_fn():
    events = []
    error = LookupError("thrown before start")
    coro = async_def(suspend_once, events)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(LookupError) as raised:
            coro.throw(error)
        with pytest.raises(RuntimeError, match=REUSE_MESSAGE):
            coro.send(None)
        del coro
        gc.collect()
    assert raised.value is error
    assert events == []
    assert [str(warning.message) for warning in caught] == []


def test_throw_while_suspended_raises_in_the_sync_code():
    events = []
    error = ValueError("x")

    def fn():
        try:
            awaitlet(Yield("first"))
        except ValueError as caught:
            events.append(caught)
        return awaitlet(Yield("after throw"))

    coro = async_def(fn)
    assert coro.send(None) == "first"
    assert coro.throw(error) == "after throw"
    assert finish(coro, "final") == "final"
    assert events == [error]


def test_unhandled_thrown_exception_propagates_out_of_throw():
    error = ValueError("x")
    events = []
    coro = async_def(suspend_once, events)
    coro.send(None)
    with pytest.raises(ValueError) as raised:
        coro.throw(error)
    assert raised.value is error
    assert events == ["started", "finally"]
    with pytest.raises(RuntimeError, match=REUSE_MESSAGE):
        coro.send(None)


def test_thrown_exception_reaches_the_awaitable_first():
    events = []

    class RecordingAwaitable:
        def __await__(self):
            try:
                yield "suspended"
            except ValueError as error:
                events.append(("awaitable saw", error.args[0]))
                raise
            return "not reached"

    def fn():
        try:
            awaitlet(RecordingAwaitable())
        except ValueError as error:
            events.append(("sync code saw", error.args[0]))
            return "handled"
        return "not reached"

    coro = async_def(fn)
    assert coro.send(None) == "suspended"
    assert finish_with_throw(coro, ValueError("x")) == "handled"
    assert events == [("awaitable saw", "x"), ("sync code saw", "x")]


def finish_with_throw(coro, error):
    with pytest.raises(StopIteration) as stop:
        coro.throw(error)
    return stop.value.value


def test_awaitable_that_handles_a_thrown_exception_resumes_normally():
    class ForgivingAwaitable:
        def __await__(self):
            try:
                yield "suspended"
            except ValueError:
                return "forgiven"
            return "not thrown"

    coro = async_def(awaitlet, ForgivingAwaitable())
    assert coro.send(None) == "suspended"
    assert finish_with_throw(coro, ValueError("x")) == "forgiven"


def test_close_is_forwarded_to_the_suspended_awaitable():
    events = []

    async def awaited_coroutine():
        try:
            await Yield("suspended in awaited coroutine")
        finally:
            events.append("awaited coroutine finally")

    def fn():
        try:
            awaitlet(awaited_coroutine())
        finally:
            events.append("sync finally")

    coro = async_def(fn)
    assert coro.send(None) == "suspended in awaited coroutine"
    coro.close()
    assert events == ["awaited coroutine finally", "sync finally"]


def test_throw_accepts_an_exception_class():
    def fn():
        try:
            awaitlet(Yield())
        except LookupError as error:
            return type(error), error.args
        return None

    coro = async_def(fn)
    coro.send(None)
    assert finish_with_throw(coro, LookupError) == (LookupError, ())


def test_coroutine_driven_by_hand_from_sync_code_continues_from_the_task():
    def inner():
        first = awaitlet(Yield("inner suspended"))
        second = awaitlet(asyncio.sleep(0.001, result="inner slept"))
        return first, second

    def outer():
        inner_coro = async_def(inner)
        yielded = inner_coro.send(None)
        awaitlet(asyncio.sleep(0.001))
        return yielded, inner_coro

    async def main():
        yielded, inner_coro = await async_def(outer)
        try:
            inner_coro.send("sent by task")
        except StopIteration:
            raise AssertionError("inner finished too early") from None
        return yielded, await _continue(inner_coro)

    assert asyncio.run(main()) == ("inner suspended", ("sent by task", "inner slept"))


async def _continue(coro):
    """Finish awaiting ``coro``, which is suspended in an asyncio awaitable."""
    await asyncio.sleep(0.01)
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    return stop.value.value
