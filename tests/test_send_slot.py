"""The coroutine's `am_send` and `tp_iternext` slots, called as CPython's C code calls them
(asyncio's Task steps its coroutine with `PyIter_Send`; 3.12+'s `await` of a non-generator
calls `tp_iternext`): the `PySendResult` contract (PYGEN_NEXT with what was yielded,
PYGEN_RETURN with the result, PYGEN_ERROR with the exception set), who owns the result's
reference, and the same through throw() and close()."""

import asyncio
import ctypes
import gc
import sys
import types

import pytest
from awaitlet import async_def, awaitlet

PYGEN_RETURN, PYGEN_ERROR, PYGEN_NEXT = 0, -1, 1

# PyDLL: the GIL stays held, and an exception set by the call is raised after it.
_send = ctypes.pythonapi.PyIter_Send
_send.argtypes = (ctypes.py_object, ctypes.py_object, ctypes.POINTER(ctypes.c_void_p))
_send.restype = ctypes.c_int


def iter_send(coro, value=None):
    """`PyIter_Send(coro, value, &result)`: (status, result), taking over the result's new
    reference; an error is raised by ctypes."""
    result = ctypes.c_void_p()
    status = _send(coro, value, ctypes.byref(result))
    if status == PYGEN_ERROR:  # pragma: no cover - ctypes raises first
        raise AssertionError("PYGEN_ERROR without an exception")
    assert result.value is not None
    obj = ctypes.cast(result, ctypes.py_object).value
    # The cast made a reference of its own: drop the one PyIter_Send handed over.
    ctypes.pythonapi.Py_DecRef(ctypes.py_object(obj))
    return status, obj


class Marker:
    """An object whose reference count the tests follow."""


def test_send_yields_what_the_awaitable_yields_then_returns_the_result():
    marker = Marker()
    yielded = Marker()

    @types.coroutine
    def gives(value):
        received = yield value
        return received

    def fn():
        first = awaitlet(gives(yielded))
        return (marker, first)

    coro = async_def(fn)
    status, value = iter_send(coro)
    assert status == PYGEN_NEXT and value is yielded
    sent = Marker()
    before = sys.getrefcount(sent)
    status, value = iter_send(coro, sent)
    assert status == PYGEN_RETURN
    # A tuple result is the result itself, not StopIteration's arguments.
    assert value == (marker, sent)
    del value
    gc.collect()
    # Nothing kept the result tuple (which holds `sent`): its one reference was handed over.
    assert sys.getrefcount(sent) == before
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        iter_send(coro)


def test_a_result_of_none_and_of_an_exception_instance():
    status, value = iter_send(async_def(lambda: None))
    assert (status, value) == (PYGEN_RETURN, None)
    error = ValueError("a result, not raised")
    status, value = iter_send(async_def(lambda: error))
    assert status == PYGEN_RETURN and value is error


def test_an_exception_is_raised_with_pygen_error():
    def fn():
        raise KeyError("from the sync code")

    with pytest.raises(KeyError, match="from the sync code"):
        iter_send(async_def(fn))


def test_a_just_started_coroutine_refuses_a_value():
    coro = async_def(lambda: None)
    with pytest.raises(TypeError, match="can't send non-None value"):
        iter_send(coro, 1)
    coro.close()


def test_stop_iteration_from_the_sync_code_becomes_runtime_error():
    def fn():
        raise StopIteration(5)

    with pytest.raises(RuntimeError, match="coroutine raised StopIteration"):
        iter_send(async_def(fn))


def test_throw_and_close_after_steps_by_iter_send():
    seen = []

    @types.coroutine
    def pause():
        yield "paused"

    def fn():
        try:
            awaitlet(pause())
        except ZeroDivisionError as exc:
            seen.append(exc)
        try:
            awaitlet(pause())
        finally:
            seen.append("closed")

    coro = async_def(fn)
    assert iter_send(coro) == (PYGEN_NEXT, "paused")
    assert coro.throw(ZeroDivisionError("thrown")) == "paused"
    coro.close()
    assert [type(item) for item in seen] == [ZeroDivisionError, str]
    assert seen[1] == "closed"


def test_next_and_iteration_end_with_the_result():
    coro = async_def(lambda: 7)
    with pytest.raises(StopIteration) as info:
        next(coro)
    assert info.value.value == 7
    coro = async_def(lambda: None)
    with pytest.raises(StopIteration) as info:
        next(coro)
    assert info.value.value is None
    coro = async_def(lambda: (1, 2))
    with pytest.raises(StopIteration) as info:
        coro.__next__()
    assert info.value.value == (1, 2)


@pytest.mark.parametrize("result", [None, 0, (1, 2), ValueError("as a value")])
def test_await_and_tasks_get_the_result(result):
    def fn():
        awaitlet(asyncio.sleep(0))
        return result

    async def awaits():
        return await async_def(fn)

    async def main():
        return await awaits(), await asyncio.create_task(async_def(fn))

    assert asyncio.run(main()) == (result, result)


def test_exceptions_reach_the_task_and_the_awaiter():
    def fn():
        awaitlet(asyncio.sleep(0))
        raise LookupError("late")

    async def main():
        with pytest.raises(LookupError):
            await async_def(fn)
        with pytest.raises(LookupError):
            await asyncio.create_task(async_def(fn))

    asyncio.run(main())
