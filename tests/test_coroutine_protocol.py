"""The coroutine protocol of ``async_def()``'s coroutine, held to native coroutines.

Most tests here are differential: the same steps run on a native ``async def`` coroutine whose
body awaits what the sync code passes to ``awaitlet()``, and on the ``async_def`` coroutine,
and what each step returns, raises (type, message, ``__cause__``, ``__context__``) and warns
must be the same. So each Python version is held to its own native behaviour.
"""

import asyncio
import gc
import inspect
import sys
import types
import warnings

import pytest
from _support import Yield
from awaitlet import async_def, awaitlet


def our_type_name():
    coro = async_def(print)
    coro.close()
    return type(coro).__name__


OUR_TYPE_NAME = our_type_name()


def describe(error, depth=0):
    """What can be compared of an exception, its cause and its context."""
    if error is None or depth > 3:
        return None
    return (
        type(error).__name__,
        str(error),
        describe(error.__cause__, depth + 1),
        describe(error.__context__, depth + 1),
        error.__suppress_context__,
    )


def outcome(action):
    """Runs ``action()``: what it returned (or the StopIteration value) or raised, and what
    it warned."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = ("returned", action())
        except StopIteration as stop:
            result = ("stopped", stop.value)
        except BaseException as error:  # noqa: B036 - every exception is a result here
            result = ("raised", describe(error))
    return result, [
        (warning.category.__name__, str(warning.message), warning.filename, warning.lineno)
        for warning in caught
    ]


def run_steps(coro, steps):
    return [outcome(lambda step=step: step(coro)) for step in steps]


def assert_same_steps(native_function, sync_function, steps):
    """Runs ``steps`` (callables taking the coroutine) on a native coroutine and on an
    ``async_def`` one and compares every step's outcome."""
    native = native_function()
    ours = async_def(sync_function)
    try:
        native_results = run_steps(native, steps)
        our_results = run_steps(ours, steps)
    finally:
        native.close()
        ours.close()
    assert our_results == native_results
    return our_results


def send(value):
    return lambda coro: coro.send(value)


def throw(*args):
    return lambda coro: coro.throw(*args)


def close(coro):
    return coro.close()


def state(coro):
    return inspect.getcoroutinestate(coro)


# Bodies used by several tests: a sync function and the native coroutine function that
# awaits what it passes to awaitlet().


def wait_once():
    return awaitlet(Yield("yielded"))


async def native_wait_once():
    return await Yield("yielded")


def raise_stop_iteration():
    raise StopIteration("from the body")


async def native_raise_stop_iteration():
    raise StopIteration("from the body")


# --- awaiting a coroutine that is awaited already --------------------------------------


async def record_await(coro, results):
    try:
        results.append(("returned", await coro))
    except RuntimeError as error:
        results.append(("raised", str(error)))


def await_twice_from_two_tasks(make_coroutine):
    async def main():
        future = asyncio.get_running_loop().create_future()
        coro = make_coroutine(future)
        results = []
        first = asyncio.ensure_future(record_await(coro, results))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(record_await(coro, results))
        await asyncio.sleep(0)
        future.set_result("result")
        await asyncio.gather(first, second)
        return results

    return asyncio.run(main())


def test_second_awaiter_of_a_suspended_coroutine_is_refused():
    async def native(future):
        return await future

    native_results = await_twice_from_two_tasks(native)
    our_results = await_twice_from_two_tasks(lambda future: async_def(awaitlet, future))
    assert our_results == native_results
    assert our_results == [
        ("raised", "coroutine is being awaited already"),
        ("returned", "result"),
    ]


def test_sync_code_awaiting_a_suspended_coroutine_is_refused():
    def run(make_coroutine, await_it):
        async def main():
            future = asyncio.get_running_loop().create_future()
            coro = make_coroutine(future)
            task = asyncio.ensure_future(coro)
            await asyncio.sleep(0)
            result = await await_it(coro)
            future.set_result("result")
            return result, await task

        return asyncio.run(main())

    async def native(future):
        return await future

    def await_in_sync_code(coro):
        def fn():
            try:
                return awaitlet(coro)
            except RuntimeError as error:
                return str(error)

        return async_def(fn)

    async def await_natively(coro):
        try:
            return await coro
        except RuntimeError as error:
            return str(error)

    native_result = run(native, await_natively)
    our_result = run(lambda future: async_def(awaitlet, future), await_in_sync_code)
    assert our_result == native_result
    assert our_result == ("coroutine is being awaited already", "result")


@pytest.mark.parametrize("second_while", ["created", "suspended"])
def test_wrapping_the_coroutine_in_two_tasks_matches_native(second_while):
    def run(make_coroutine):
        async def main():
            future = asyncio.get_running_loop().create_future()
            coro = make_coroutine(future)
            first = asyncio.ensure_future(coro)
            if second_while == "suspended":
                await asyncio.sleep(0)
            second = asyncio.ensure_future(coro)
            await asyncio.sleep(0)
            future.set_result("result")
            results = await asyncio.gather(first, second, return_exceptions=True)
            return [describe(r) if isinstance(r, BaseException) else r for r in results]

        return asyncio.run(main())

    async def native(future):
        return await future

    assert run(lambda future: async_def(awaitlet, future)) == run(native)


def test_awaiting_a_finished_coroutine_matches_native():
    def run(coro):
        async def main():
            first = await coro
            try:
                await coro
            except RuntimeError as error:
                return first, str(error)
            return first, None

        return asyncio.run(main())

    async def native():
        return await asyncio.sleep(0, result="first")

    our_result = run(async_def(awaitlet, asyncio.sleep(0, result="first")))
    assert our_result == run(native())
    assert our_result == ("first", "cannot reuse already awaited coroutine")


def test_coroutine_awaiting_itself_matches_native():
    async def native():
        return await coro

    def sync():
        return awaitlet(coro)

    coro = native()
    native_results = run_steps(coro, [send(None), close])
    coro = async_def(sync)
    assert run_steps(coro, [send(None), close]) == native_results
    assert native_results[0][0] == (
        "raised",
        ("ValueError", "coroutine already executing", None, None, False),
    )


# --- PEP 479: StopIteration ---------------------------------------------------------


def test_stop_iteration_raised_by_the_sync_code():
    results = assert_same_steps(
        native_raise_stop_iteration, raise_stop_iteration, [send(None), send(None)]
    )
    error = results[0][0][1]
    assert error[:2] == ("RuntimeError", "coroutine raised StopIteration")


def test_stop_iteration_raised_after_a_suspension():
    def sync():
        awaitlet(Yield("yielded"))
        raise StopIteration("late")

    async def native():
        await Yield("yielded")
        raise StopIteration("late")

    assert_same_steps(native, sync, [send(None), send(None), send(None), close])


def test_stop_iteration_subclass_raised_by_the_sync_code():
    class Stop(StopIteration):
        pass

    def sync():
        raise Stop("subclass")

    async def native():
        raise Stop("subclass")

    assert_same_steps(native, sync, [send(None)])


def test_stop_async_iteration_raised_by_the_sync_code_passes_through():
    def sync():
        raise StopAsyncIteration("async")

    async def native():
        raise StopAsyncIteration("async")

    results = assert_same_steps(native, sync, [send(None), send(None)])
    assert results[0][0][1][0] == "StopAsyncIteration"


@pytest.mark.parametrize(
    "thrown",
    [StopIteration, StopIteration("thrown"), StopAsyncIteration("thrown")],
    ids=["class", "instance", "stop-async-iteration"],
)
def test_stop_iteration_thrown_into_an_unstarted_coroutine(thrown):
    # 3.10 and 3.11 turn it into RuntimeError, later versions raise it as it is.
    assert_same_steps(native_wait_once, wait_once, [throw(thrown), send(None), close])


def test_stop_iteration_thrown_into_a_suspended_coroutine_awaiting_a_generator():
    assert_same_steps(
        native_wait_once,
        wait_once,
        [send(None), throw(StopIteration("thrown")), send(None)],
    )


class IteratorWithoutThrow:
    """An awaitable whose iterator has no ``throw``: exceptions go past it."""

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return "yielded by iterator"


class RecordingIterator:
    """An awaitable whose iterator records what ``throw`` and ``close`` receive, and raises
    ``on_throw`` from ``throw``."""

    def __init__(self, log, on_throw):
        self.log = log
        self.on_throw = on_throw

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return "yielded by iterator"

    def send(self, value):
        return "yielded by iterator"

    def throw(self, *args):
        self.log.append(("throw", [describe_argument(argument) for argument in args]))
        raise self.on_throw

    def close(self):
        self.log.append("close")


def describe_argument(argument):
    if isinstance(argument, BaseException):
        return ("instance of", type(argument).__name__, argument.args)
    return argument


def test_stop_iteration_thrown_past_an_iterator_without_throw():
    # Since 3.12 the await takes it as its result; before, it is raised at the await.
    def sync():
        return awaitlet(IteratorWithoutThrow())

    async def native():
        return await IteratorWithoutThrow()

    results = assert_same_steps(
        native, sync, [send(None), throw(StopIteration("thrown")), send(None)]
    )
    if sys.version_info >= (3, 12):
        assert results[1][0] == ("stopped", "thrown")
    else:
        assert results[1][0][1][:2] == ("RuntimeError", "coroutine raised StopIteration")


def test_stop_iteration_from_an_awaited_iterators_throw_is_its_return_value():
    log = []

    def sync():
        return ("sync code got", awaitlet(RecordingIterator(log, StopIteration("value"))))

    async def native():
        return ("sync code got", await RecordingIterator(log, StopIteration("value")))

    results = assert_same_steps(native, sync, [send(None), throw(ValueError("x"))])
    assert results[1][0] == ("stopped", ("sync code got", "value"))


def test_stop_iteration_raised_by_an_awaited_coroutine():
    async def raises_stop_iteration():
        raise StopIteration("inner")

    def sync():
        return awaitlet(raises_stop_iteration())

    async def native():
        return await raises_stop_iteration()

    assert_same_steps(native, sync, [send(None)])


def test_stop_iteration_raised_in_answer_to_generator_exit():
    def sync():
        try:
            awaitlet(Yield("yielded"))
        except GeneratorExit:
            raise StopIteration("instead of exiting") from None

    async def native():
        try:
            await Yield("yielded")
        except GeneratorExit:
            raise StopIteration("instead of exiting") from None

    assert_same_steps(native, sync, [send(None), close, close, send(None)])


# --- send -----------------------------------------------------------------------------


def test_send_of_a_value_to_a_just_started_coroutine():
    results = assert_same_steps(native_wait_once, wait_once, [send("value"), send(None), close])
    assert results[0][0] == (
        "raised",
        ("TypeError", "can't send non-None value to a just-started coroutine", None, None, False),
    )


def test_send_after_completion_and_after_an_exception():
    assert_same_steps(
        native_wait_once, wait_once, [send(None), send("result"), send(None), close, send(None)]
    )
    assert_same_steps(
        native_raise_stop_iteration, raise_stop_iteration, [send(None), send(None), close]
    )


def test_send_takes_one_positional_argument():
    # The messages of the argument parser name the method differently; the error is the same.
    for make in (native_wait_once, lambda: async_def(wait_once)):
        coro = make()
        with pytest.raises(TypeError):
            coro.send()
        with pytest.raises(TypeError):
            coro.send(None, None)
        with pytest.raises(TypeError):
            coro.send(value=None)
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CREATED
        coro.close()


# --- throw ----------------------------------------------------------------------------


THROW_ARGUMENTS = [
    (ValueError,),
    (ValueError("instance"),),
    (ValueError, "value"),
    (ValueError, ("two", "args")),
    (ValueError, KeyError("not a ValueError")),
    (ValueError, ValueError("value instance")),
    (ValueError, None, None),
    (ValueError("instance"), None),
    (ValueError("instance"), "value"),
    (1,),
    (int,),
    (ValueError, None, "not a traceback"),
]
THROW_IDS = [
    "class",
    "instance",
    "class-value",
    "class-tuple",
    "class-other-instance",
    "class-own-instance",
    "class-none-none",
    "instance-none",
    "instance-value",
    "not-an-exception",
    "not-an-exception-class",
    "bad-traceback",
]


@pytest.mark.parametrize("arguments", THROW_ARGUMENTS, ids=THROW_IDS)
@pytest.mark.parametrize("when", ["unstarted", "suspended", "finished"])
def test_throw_arguments(arguments, when):
    before = {"unstarted": [], "suspended": [send(None)], "finished": [send(None), send(1)]}
    assert_same_steps(
        native_wait_once, wait_once, [*before[when], throw(*arguments), send(None), close]
    )


@pytest.mark.parametrize("arguments", THROW_ARGUMENTS, ids=THROW_IDS)
def test_throw_arguments_past_an_iterator_without_throw(arguments):
    def sync():
        try:
            return awaitlet(IteratorWithoutThrow())
        except BaseException as error:  # noqa: B036
            return ("sync code caught", describe(error))

    async def native():
        try:
            return await IteratorWithoutThrow()
        except BaseException as error:  # noqa: B036
            return ("sync code caught", describe(error))

    assert_same_steps(native, sync, [send(None), throw(*arguments), send(None)])


@pytest.mark.parametrize("arguments", THROW_ARGUMENTS, ids=THROW_IDS)
def test_throw_arguments_reach_the_awaited_iterator_as_given(arguments):
    def run(make):
        log = []
        results = run_steps(make(log), [send(None), throw(*arguments), close])
        return results, log

    def sync(log):
        try:
            return awaitlet(RecordingIterator(log, KeyError("raised by throw")))
        except BaseException as error:  # noqa: B036
            log.append(("sync code caught", describe(error)))
            raise

    async def native(log):
        try:
            return await RecordingIterator(log, KeyError("raised by throw"))
        except BaseException as error:  # noqa: B036
            log.append(("sync code caught", describe(error)))
            raise

    assert run(lambda log: async_def(sync, log)) == run(native)


def test_throw_three_arguments_with_a_traceback():
    try:
        raise ValueError("with traceback")
    except ValueError as error:
        traceback = error.__traceback__

    def carries_the_traceback(error):
        entry = error.__traceback__
        while entry is not None and entry is not traceback:
            entry = entry.tb_next
        return entry is traceback

    def sync():
        try:
            awaitlet(Yield("yielded"))
        except ValueError as error:
            return carries_the_traceback(error)
        return None

    async def native():
        try:
            await Yield("yielded")
        except ValueError as error:
            return carries_the_traceback(error)
        return None

    results = assert_same_steps(
        native, sync, [send(None), throw(ValueError, ValueError("x"), traceback)]
    )
    assert results[1][0] == ("stopped", True)


def test_throw_argument_count_and_keywords():
    def normalize(results):
        # CPython names its own type in one of these messages.
        return [
            (
                (kind, (value[0], value[1].replace(f"{OUR_TYPE_NAME}.", "coroutine."), *value[2:]))
                if kind == "raised"
                else (kind, value),
                caught,
            )
            for (kind, value), caught in results
        ]

    steps = [
        send(None),
        lambda coro: coro.throw(),
        lambda coro: coro.throw(ValueError, None, None, None),
        lambda coro: coro.throw(typ=ValueError),
        lambda coro: coro.throw(ValueError, **{}),
    ]
    native = native_wait_once()
    native_results = run_steps(native, steps)
    ours = async_def(wait_once)
    assert normalize(run_steps(ours, steps)) == native_results
    assert native_results[1][0][1][1] == "throw expected at least 1 argument, got 0"


def test_throw_from_the_awaited_generator_does_not_warn_twice():
    # The 3-argument form warns once, for the outer throw(), on 3.12+.
    results = assert_same_steps(
        native_wait_once, wait_once, [send(None), throw(ValueError, ValueError("x"), None)]
    )
    warned = results[1][1]
    assert len(warned) == (1 if sys.version_info >= (3, 12) else 0)


def test_throw_into_a_running_coroutine():
    def run(coro, body_log):
        results = run_steps(coro, [send(None)])
        return results, body_log

    native_log = []
    our_log = []

    async def native():
        native_log.append(outcome(lambda: coro.throw(1)))
        native_log.append(outcome(lambda: coro.throw(ValueError)))
        return "done"

    def sync():
        our_log.append(outcome(lambda: coro.throw(1)))
        our_log.append(outcome(lambda: coro.throw(ValueError)))
        return "done"

    coro = native()
    native_results = run(coro, native_log)
    coro = async_def(sync)
    assert run(coro, our_log) == native_results
    # Up to 3.14 the arguments are checked first; 3.15 refuses the running coroutine first.
    first_error = "TypeError" if sys.version_info < (3, 15) else "ValueError"
    assert native_log[0][0][1][0] == first_error
    assert native_log[1][0][1][:2] == ("ValueError", "coroutine already executing")


def test_generator_exit_thrown_closes_the_awaited_coroutine_first():
    log = []

    async def awaited():
        try:
            await Yield("yielded by awaited")
        finally:
            log.append("awaited finally")

    def sync():
        try:
            awaitlet(awaited())
        finally:
            log.append("sync finally")

    async def native():
        try:
            await awaited()
        finally:
            log.append("sync finally")

    assert_same_steps(native, sync, [send(None), throw(GeneratorExit), send(None)])
    assert log == ["awaited finally", "sync finally"] * 2


def test_close_error_of_the_awaited_iterator_is_raised_in_the_sync_code():
    class CloseRaises(RecordingIterator):
        def close(self):
            raise KeyError("from close")

    def sync():
        try:
            return awaitlet(CloseRaises([], None))
        except KeyError as error:
            return ("caught", describe(error))

    async def native():
        try:
            return await CloseRaises([], None)
        except KeyError as error:
            return ("caught", describe(error))

    assert_same_steps(native, sync, [send(None), throw(GeneratorExit), close])
    assert_same_steps(native, sync, [send(None), close, send(None)])


# --- close ----------------------------------------------------------------------------


def test_close_in_every_state():
    assert_same_steps(native_wait_once, wait_once, [close, close, send(None), throw(ValueError)])
    assert_same_steps(
        native_wait_once, wait_once, [send(None), close, close, send(None), throw(ValueError)]
    )
    assert_same_steps(native_wait_once, wait_once, [send(None), send("result"), close])


def test_close_when_the_sync_code_returns_after_generator_exit():
    # Since 3.13 close() returns the value.
    def sync():
        try:
            awaitlet(Yield("yielded"))
        except GeneratorExit:
            return "returned on exit"

    async def native():
        try:
            await Yield("yielded")
        except GeneratorExit:
            return "returned on exit"

    results = assert_same_steps(native, sync, [send(None), close, close, send(None)])
    expected = "returned on exit" if sys.version_info >= (3, 13) else None
    assert results[1][0] == ("returned", expected)


def test_close_when_the_sync_code_raises_after_generator_exit():
    def sync():
        try:
            awaitlet(Yield("yielded"))
        except GeneratorExit:
            raise LookupError("raised on exit") from None

    async def native():
        try:
            await Yield("yielded")
        except GeneratorExit:
            raise LookupError("raised on exit") from None

    assert_same_steps(native, sync, [send(None), close, send(None)])


def test_close_when_the_sync_code_awaits_what_completes_at_once():
    async def completes_at_once():
        return "completed"

    def sync():
        try:
            awaitlet(Yield("yielded"))
        except GeneratorExit:
            return awaitlet(completes_at_once())

    async def native():
        try:
            await Yield("yielded")
        except GeneratorExit:
            return await completes_at_once()

    assert_same_steps(native, sync, [send(None), close, send(None)])


def test_close_when_the_sync_code_suspends_again_leaves_it_suspended():
    def sync():
        try:
            awaitlet(Yield("yielded"))
        except GeneratorExit:
            pass
        return ("resumed with", awaitlet(Yield("yielded again")))

    async def native():
        try:
            await Yield("yielded")
        except GeneratorExit:
            pass
        return ("resumed with", await Yield("yielded again"))

    results = assert_same_steps(
        native, sync, [send(None), close, state, send("value"), state, close]
    )
    assert results[1][0] == (
        "raised",
        ("RuntimeError", "coroutine ignored GeneratorExit", None, None, False),
    )
    assert results[2][0] == ("returned", inspect.CORO_SUSPENDED)
    assert results[3][0] == ("stopped", ("resumed with", "value"))


def test_dropping_a_coroutine_that_ignored_close_finishes_its_sync_code():
    # Chosen behaviour: when the coroutine is finalized, the fiber must finish (a suspended
    # one could only be leaked), so awaitlet() raises there instead of suspending.
    events = []

    def sync():
        for _ in range(2):
            try:
                awaitlet(Yield("yielded"))
            except GeneratorExit:
                events.append("generator exit")
        try:
            awaitlet(Yield("yielded a third time"))
        except RuntimeError as error:
            events.append(str(error))
        finally:
            events.append("finally")

    coro = async_def(sync)
    coro.send(None)
    with pytest.raises(RuntimeError, match="coroutine ignored GeneratorExit"):
        coro.close()
    del coro
    gc.collect()
    assert events == [
        "generator exit",
        "generator exit",
        "coroutine ignored GeneratorExit",
        "finally",
    ]


def test_close_takes_no_arguments():
    for make in (native_wait_once, lambda: async_def(wait_once)):
        coro = make()
        with pytest.raises(TypeError, match=r"close\(\) takes no arguments \(1 given\)"):
            coro.close(None)
        coro.close()


# --- attributes and states ------------------------------------------------------------


def snapshot(coro, awaited=None):
    """The coroutine's attributes that can be compared between the two kinds."""
    cr_await = coro.cr_await
    return {
        "cr_running": coro.cr_running,
        "has cr_suspended": hasattr(coro, "cr_suspended"),
        "cr_suspended": getattr(coro, "cr_suspended", None),
        "cr_await type": type(cr_await).__name__,
        "cr_await is awaited": awaited is not None and cr_await is awaited,
        "cr_frame is None": coro.cr_frame is None,
        "cr_origin": coro.cr_origin,
        "state": inspect.getcoroutinestate(coro),
    }


def test_attributes_through_the_lifecycle():
    def run(make):
        log = []
        awaited = {}

        def observe(label):
            log.append((label, snapshot(coro, awaited.get("coroutine"))))

        async def inner():
            await Yield("from inner")

        def sync():
            running = snapshot(coro)
            # Chosen behaviour: the running sync code has no frame of the coroutine's own
            # to show (its frames are the caller's stack), so cr_frame is None while it runs.
            running.pop("cr_frame is None")
            log.append(("running", running))
            awaitlet(Yield("yielded"))
            awaited["coroutine"] = inner()
            awaitlet(awaited["coroutine"])
            return "done"

        async def native():
            running = snapshot(coro)
            running.pop("cr_frame is None")
            log.append(("running", running))
            await Yield("yielded")
            awaited["coroutine"] = inner()
            await awaited["coroutine"]
            return "done"

        coro = make(native, sync)
        observe("created")
        coro.send(None)
        observe("suspended in a generator")
        coro.send(None)
        observe("suspended in a coroutine")
        with pytest.raises(StopIteration):
            coro.send(None)
        observe("finished")
        return log

    native_log = run(lambda native, sync: native())
    assert run(lambda native, sync: async_def(sync)) == native_log
    assert [entry[1]["state"] for entry in native_log] == [
        inspect.CORO_CREATED,
        inspect.CORO_RUNNING,
        inspect.CORO_SUSPENDED,
        inspect.CORO_SUSPENDED,
        inspect.CORO_CLOSED,
    ]


def test_cr_frame_while_running_is_none():
    # Chosen behaviour (see test_attributes_through_the_lifecycle).
    seen = []

    def sync():
        seen.append(coro.cr_frame)

    coro = async_def(sync)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert seen == [None]


def test_cr_code_of_a_created_and_a_closed_coroutine_is_the_functions():
    def sync():
        return None

    coro = async_def(sync)
    try:
        assert coro.cr_code is sync.__code__
    finally:
        coro.close()
    assert coro.cr_code is sync.__code__


def test_reentrant_calls_from_the_sync_code():
    def run(coro, log):
        results = run_steps(coro, [send(None), send(None)])
        return results, log

    steps = [send(None), throw(ValueError("reentrant")), close]
    native_log = []
    our_log = []

    async def native():
        native_log.append(run_steps(coro, steps))
        await Yield("yielded")
        native_log.append(run_steps(coro, steps))
        return "done"

    def sync():
        our_log.append(run_steps(coro, steps))
        awaitlet(Yield("yielded"))
        our_log.append(run_steps(coro, steps))
        return "done"

    coro = native()
    native_results = run(coro, native_log)
    coro = async_def(sync)
    assert run(coro, our_log) == native_results
    refused = ("raised", ("ValueError", "coroutine already executing", None, None, False))
    assert [result for result, _ in native_log[0]] == [refused] * 3


def test_reentrant_send_from_the_awaited_coroutine():
    def run(make):
        log = []

        async def awaited():
            log.append(outcome(lambda: coro.send(None)))
            await Yield("yielded by awaited")
            log.append(outcome(lambda: coro.send(None)))
            return "awaited result"

        coro = make(awaited)
        return run_steps(coro, [send(None), send(None)]), log

    async def native(awaited):
        return await awaited()

    native_results = run(lambda awaited: native(awaited))
    assert run(lambda awaited: async_def(lambda: awaitlet(awaited()))) == native_results


# --- names ----------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["__name__", "__qualname__"])
def test_name_assignment(attribute):
    def run(coro):
        results = []
        for value in ("assigned", 5, None, b"bytes"):
            results.append(outcome(lambda value=value: setattr(coro, attribute, value)))
            results.append(getattr(coro, attribute))
        results.append(outcome(lambda: delattr(coro, attribute)))
        results.append(getattr(coro, attribute))
        coro.close()
        return results

    results = run(async_def(wait_once))
    assert results == run(native_wait_once())
    assert results[1] == "assigned"


def test_assigned_qualname_shows_in_repr_and_in_the_never_awaited_warning():
    coro = async_def(wait_once)
    coro.__qualname__ = "Assigned.name"
    assert "Assigned.name" in repr(coro)
    with pytest.warns(RuntimeWarning, match="coroutine 'Assigned.name' was never awaited"):
        del coro
        gc.collect()


def test_assigned_name_keeps_a_str_subclass_value_equal():
    class Name(str):
        pass

    coro = async_def(wait_once)
    coro.__name__ = Name("subclass")
    assert coro.__name__ == "subclass"
    coro.close()


# --- the never awaited warning ----------------------------------------------------------


def test_never_awaited_warning_matches_native():
    def warnings_of(make):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            coro = make()
            del coro
            gc.collect()
        return [(w.category, str(w.message), w.filename, w.lineno) for w in caught]

    native_wait_once_copy = types.FunctionType(native_wait_once.__code__, globals(), "wait_once")
    native_wait_once_copy.__qualname__ = wait_once.__qualname__
    native_warnings = warnings_of(native_wait_once_copy)
    assert warnings_of(lambda: async_def(wait_once)) == native_warnings
    assert native_warnings[0][:2] == (RuntimeWarning, "coroutine 'wait_once' was never awaited")


def origin_tracking(depth):
    """Context manager: ``sys.set_coroutine_origin_tracking_depth(depth)`` for a while."""
    import contextlib

    @contextlib.contextmanager
    def tracking():
        previous = sys.get_coroutine_origin_tracking_depth()
        sys.set_coroutine_origin_tracking_depth(depth)
        try:
            yield
        finally:
            sys.set_coroutine_origin_tracking_depth(previous)

    return tracking()


def create_through_two_calls(make, *args):
    def inner():
        return make(*args)  # the coroutine is created here, by either kind of call

    def outer():
        return inner()

    return outer()


@pytest.mark.parametrize("depth", [0, 1, 2, 100])
def test_cr_origin_matches_native(depth):
    def origins(make, *args):
        with origin_tracking(depth):
            coro = create_through_two_calls(make, *args)
        try:
            return coro.cr_origin
        finally:
            coro.close()

    # On one line, as the deepest origins reach this frame.
    native_origin, our_origin = origins(native_wait_once), origins(async_def, wait_once)
    assert our_origin == native_origin
    if depth:
        assert len(native_origin) == min(depth, len(native_origin))
        assert [entry[2] for entry in native_origin[:3]] == [
            "inner",
            "outer",
            "create_through_two_calls",
        ][:depth]
    else:
        assert native_origin is None


def test_never_awaited_warning_names_where_the_coroutine_was_created():
    def warnings_of(make, *args):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with origin_tracking(3):
                coro = create_through_two_calls(make, *args)
            del coro
            gc.collect()
        return [(w.category, str(w.message), w.filename, w.lineno) for w in caught]

    native_copy = types.FunctionType(native_wait_once.__code__, globals(), "wait_once")
    native_copy.__qualname__ = wait_once.__qualname__
    native_warnings = warnings_of(native_copy)
    assert warnings_of(async_def, wait_once) == native_warnings
    message = native_warnings[0][1].splitlines()
    assert message[:2] == [
        f"coroutine '{wait_once.__qualname__}' was never awaited",
        "Coroutine created at (most recent call last)",
    ]
