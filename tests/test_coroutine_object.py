import asyncio
import collections.abc
import copy
import functools
import gc
import inspect
import pickle
import warnings
import weakref

import pytest
from _support import Yield
from awaitlet import async_def, awaitlet


def return_one():
    return 1


def capture_arguments(*args, **kwargs):
    return args, kwargs


class CallableObject:
    def __call__(self, value):
        return ("called", value)


class Holder:
    def method(self):
        return "method result"


def run(coroutine_function, *args):
    return asyncio.run(coroutine_function(*args))


def test_result_is_recognised_as_a_coroutine():
    coro = async_def(return_one)
    try:
        assert asyncio.iscoroutine(coro)
        assert isinstance(coro, collections.abc.Coroutine)
        assert isinstance(coro, collections.abc.Awaitable)
    finally:
        coro.close()


def test_coroutine_has_the_coroutine_protocol_attributes():
    coro = async_def(return_one)
    try:
        for name in ("send", "throw", "close", "__await__"):
            assert callable(getattr(coro, name)), name
        for name in ("cr_running", "cr_frame", "cr_await", "cr_code"):
            assert hasattr(coro, name), name
    finally:
        coro.close()


def test_name_and_qualname_reflect_the_function():
    coro = async_def(Holder().method)
    try:
        assert coro.__name__ == "method"
        assert coro.__qualname__ == "Holder.method"
    finally:
        coro.close()


def test_name_and_qualname_reflect_a_nested_function():
    def nested_function():
        return None

    coro = async_def(nested_function)
    try:
        assert coro.__name__ == "nested_function"
        assert coro.__qualname__ == nested_function.__qualname__
    finally:
        coro.close()


def test_async_def_is_reported_as_a_coroutine_function():
    assert inspect.iscoroutinefunction(async_def)


def test_signature_has_positional_only_fn_and_keyword_only_flag():
    signature = inspect.signature(async_def)
    parameters = list(signature.parameters.values())
    assert [(parameter.name, parameter.kind) for parameter in parameters] == [
        ("fn", inspect.Parameter.POSITIONAL_ONLY),
        ("args", inspect.Parameter.VAR_POSITIONAL),
        ("assert_await_occurs", inspect.Parameter.KEYWORD_ONLY),
        ("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
    assert signature.parameters["assert_await_occurs"].default is False
    assert str(signature) == "(fn, /, *args, assert_await_occurs=False, **kwargs)"


def test_arguments_are_passed_to_fn():
    async def main():
        return await async_def(capture_arguments, 1, "two", key="value")

    assert run(main) == ((1, "two"), {"key": "value"})


def test_assert_await_occurs_keyword_is_never_passed_to_fn():
    async def main():
        return await async_def(capture_arguments, 1, assert_await_occurs=False, key="value")

    assert run(main) == ((1,), {"key": "value"})


def test_positional_boolean_is_an_argument_of_fn_not_the_flag():
    async def main():
        return await async_def(capture_arguments, True)

    assert run(main) == ((True,), {})


def test_keyword_named_fn_is_passed_to_fn():
    async def main():
        return await async_def(capture_arguments, fn="keyword value")

    assert run(main) == ((), {"fn": "keyword value"})


@pytest.mark.parametrize(
    ("callable_object", "argument", "expected"),
    [
        (CallableObject(), "x", ("called", "x")),
        (functools.partial(capture_arguments, "bound"), "x", (("bound", "x"), {})),
        (Holder().method, None, "method result"),
        (sum, [1, 2, 3], 6),
        (lambda value: [value], "x", ["x"]),
    ],
    ids=["callable-instance", "partial", "bound-method", "builtin", "lambda"],
)
def test_any_callable_can_be_run(callable_object, argument, expected):
    arguments = () if argument is None else (argument,)

    async def main():
        return await async_def(callable_object, *arguments)

    assert run(main) == expected


@pytest.mark.parametrize("not_callable", [None, 42, "text", object()])
def test_non_callable_raises_type_error_immediately(not_callable):
    with pytest.raises(TypeError):
        async_def(not_callable)


def test_missing_fn_raises_type_error():
    with pytest.raises(TypeError):
        async_def()


def test_creating_the_coroutine_does_not_run_fn():
    calls = []
    coro = async_def(calls.append, "ran")
    assert calls == []
    assert asyncio.run(_await(coro)) is None
    assert calls == ["ran"]


async def _await(awaitable):
    return await awaitable


def test_never_awaited_coroutine_warns_and_never_runs_fn():
    calls = []
    coro = async_def(calls.append, "ran")
    with pytest.warns(RuntimeWarning, match="was never awaited"):
        del coro
        gc.collect()
    assert calls == []


def test_closing_an_unstarted_coroutine_runs_nothing_and_warns_nothing():
    calls = []
    coro = async_def(calls.append, "ran")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert coro.close() is None
        del coro
        gc.collect()
    assert calls == []
    assert [str(warning.message) for warning in caught] == []


def test_cr_running_is_true_only_while_the_sync_code_runs():
    observed = []

    def fn():
        observed.append(coro.cr_running)
        awaitlet(Yield())
        observed.append(coro.cr_running)
        return "done"

    coro = async_def(fn)
    assert coro.cr_running is False
    coro.send(None)
    assert coro.cr_running is False
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    assert stop.value.value == "done"
    assert coro.cr_running is False
    assert observed == [True, True]


def test_repr_is_a_string_in_every_state():
    def fn():
        awaitlet(Yield())

    coro = async_def(fn)
    assert isinstance(repr(coro), str)
    coro.send(None)
    assert isinstance(repr(coro), str)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert isinstance(repr(coro), str)


def test_coroutine_type_cannot_be_instantiated_copied_or_pickled():
    coro = async_def(return_one)
    try:
        with pytest.raises(TypeError):
            type(coro)()
        with pytest.raises(TypeError):
            copy.copy(coro)
        with pytest.raises(TypeError):
            pickle.dumps(coro)
    finally:
        coro.close()


def test_coroutine_supports_weak_references():
    coro = async_def(return_one)
    reference = weakref.ref(coro)
    assert reference() is coro
    coro.close()
    del coro
    gc.collect()
    assert reference() is None


def test_referents_can_be_listed_in_every_state():
    def fn():
        awaitlet(Yield())

    coro = async_def(fn)
    assert fn in gc.get_referents(coro)
    coro.send(None)
    assert isinstance(gc.get_referents(coro), list)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert isinstance(gc.get_referents(coro), list)


def test_inspect_getcoroutinestate_follows_the_lifecycle():
    states = []

    def fn():
        states.append(inspect.getcoroutinestate(coro))
        awaitlet(Yield())

    coro = async_def(fn)
    states.append(inspect.getcoroutinestate(coro))
    coro.send(None)
    states.append(inspect.getcoroutinestate(coro))
    with pytest.raises(StopIteration):
        coro.send(None)
    states.append(inspect.getcoroutinestate(coro))
    assert states == [
        inspect.CORO_CREATED,
        inspect.CORO_RUNNING,
        inspect.CORO_SUSPENDED,
        inspect.CORO_CLOSED,
    ]
