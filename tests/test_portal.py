"""awaitlet.portal: greenback-style portals on asyncio (C and pure-Python tasks, eager
tasks, uvloop) and Trio.  The behaviours greenback's own tests check, against our API."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import gc
import re
import socket
import subprocess
import sys
import textwrap
import traceback
import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from _support import _subprocess_env
from awaitlet import async_def
from awaitlet.portal import (
    await_,
    bestow_portal,
    ensure_portal,
    has_portal,
    portals_for_tree,
    with_portal_run,
    with_portal_run_sync,
    with_portal_run_tree,
)

try:
    import uvloop
except Exception:
    uvloop = None

try:
    import trio
    import trio.testing
except Exception:
    trio = None

requires_trio = pytest.mark.skipif(trio is None, reason="trio is not importable")


class Library:
    """One way to run an event loop, and the few async operations the tests need."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_trio = name == "trio"

    def __repr__(self) -> str:
        return self.name

    def run(self, main: Callable[[], Awaitable[Any]]) -> Any:
        if self.is_trio:
            return trio.run(main)
        loop = uvloop.new_event_loop() if self.name == "uvloop" else asyncio.new_event_loop()
        if self.name == "asyncio-pytask":
            py_task = asyncio.tasks._PyTask

            def factory(loop: Any, coro: Any, **kwargs: Any) -> Any:
                return py_task(coro, loop=loop, **kwargs)

            loop.set_task_factory(factory)
        elif self.name == "asyncio-eager":
            loop.set_task_factory(asyncio.eager_task_factory)
        try:
            return loop.run_until_complete(main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def sleep(self, seconds: float) -> None:
        if self.is_trio:
            await trio.sleep(seconds)
        else:
            await asyncio.sleep(seconds)

    def current_task(self) -> Any:
        if self.is_trio:
            return trio.lowlevel.current_task()
        # On 3.14+ a pure-Python Task is current only to asyncio's pure-Python bookkeeping.
        return asyncio.current_task() or asyncio.tasks._py_current_task()

    async def gather(self, *functions: Callable[[], Awaitable[Any]]) -> None:
        """Run each function in a task of its own, until all are done."""
        if self.is_trio:
            async with trio.open_nursery() as nursery:
                for function in functions:
                    nursery.start_soon(function)
        else:
            await asyncio.gather(*(asyncio.ensure_future(function()) for function in functions))

    def task_coro(self, task: Any) -> Any:
        return task.coro if self.is_trio else task.get_coro()


LIBRARY_NAMES = [
    "asyncio",
    "asyncio-pytask",
    pytest.param(
        "asyncio-eager",
        marks=pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are 3.12+"),
    ),
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(uvloop is None, reason="uvloop is not importable")
    ),
    pytest.param("trio", marks=requires_trio),
]


@pytest.fixture(params=LIBRARY_NAMES)
def library(request: pytest.FixtureRequest) -> Library:
    return Library(request.param)


@types.coroutine
def yield_value(value: Any) -> Any:
    return (yield value)


async def double_later(library: Library, value: int) -> int:
    await library.sleep(0)
    return value * 2


def sync_at_depth(depth: int, function: Callable[[], Any]) -> Any:
    """Call ``function`` ``depth`` ordinary frames down."""
    if depth == 0:
        return function()
    return sync_at_depth(depth - 1, function)


def test_await_in_sync_code_after_ensure_portal(library: Library) -> None:
    ticks = 0

    async def one_task(*, have_portal: bool = False) -> None:
        nonlocal ticks
        if not have_portal:
            assert not has_portal()
            with pytest.raises(RuntimeError, match="create a portal for this task"):
                await_(library.sleep(0))
            await ensure_portal()
            await ensure_portal()
        assert has_portal()
        for _ in range(50):
            await_(library.sleep(0))
            await library.sleep(0)
            ticks += 1

    async def main() -> None:
        await ensure_portal()
        await library.gather(one_task, one_task)
        await_(one_task(have_portal=True))
        await one_task(have_portal=True)

    library.run(main)
    assert ticks == 200


def test_await_deep_in_sync_frames(library: Library) -> None:
    async def main() -> list[int]:
        await ensure_portal()
        return [
            sync_at_depth(depth, lambda: await_(double_later(library, 21))) for depth in (1, 200)
        ]

    assert library.run(main) == [42, 42]


def test_real_io_through_await(library: Library) -> None:
    """Sync code reads and writes a socket pair with the loop's own async socket calls."""

    def echo_once(left: Any, right: Any, payload: bytes) -> bytes:
        if library.is_trio:
            await_(left.send(payload))
            return await_(right.recv(100))
        loop = asyncio.get_running_loop()
        await_(loop.sock_sendall(left, payload))
        return await_(loop.sock_recv(right, 100))

    async def main() -> bytes:
        await ensure_portal()
        if library.is_trio:
            left, right = trio.socket.socketpair()
        else:
            left, right = socket.socketpair()
            left.setblocking(False)
            right.setblocking(False)
        with left, right:
            return sync_at_depth(10, lambda: echo_once(left, right, b"ping"))

    assert library.run(main) == b"ping"


def test_one_fiber_for_the_task_whole_life(library: Library) -> None:
    """Every step of the task runs below the same step-loop frame (one fiber, one loop)."""

    def step_loop_frame() -> types.FrameType:
        frame = sys._getframe()
        while frame.f_code.co_name != "_run_steps":
            assert frame.f_back is not None, "no step loop below this frame"
            frame = frame.f_back
        return frame

    async def main() -> None:
        await ensure_portal()
        frames = set()
        for _ in range(5):
            frames.add(id(step_loop_frame()))
            await library.sleep(0)
            await_(library.sleep(0))
        assert len(frames) == 1

    library.run(main)


def test_task_runs_the_portal_coroutine(library: Library) -> None:
    async def main() -> None:
        task = library.current_task()
        original = library.task_coro(task)
        await ensure_portal()
        replacement = library.task_coro(task)
        assert replacement is not original
        assert type(replacement).__name__ == "async_def_coroutine"
        assert isinstance(replacement, Coroutine)
        # A second ensure_portal() keeps the first portal.
        await ensure_portal()
        assert library.task_coro(task) is replacement

    library.run(main)


def test_task_result_and_portal_cleanup(library: Library) -> None:
    if library.is_trio:
        pytest.skip("Trio tasks have no result")

    async def child() -> str:
        await ensure_portal()
        return await_(double_later(library, 4)) * "x"

    async def main() -> str:
        task = asyncio.ensure_future(child())
        result = await task
        assert not has_portal(task)
        return result

    assert library.run(main) == "x" * 8


def test_exception_traceback_through_sync_frames(library: Library) -> None:
    async def fails() -> None:
        await library.sleep(0)
        raise ValueError("from the awaited coroutine")

    def sync_middle() -> None:
        await_(fails())

    async def main() -> None:
        await ensure_portal()
        with pytest.raises(ValueError, match="from the awaited coroutine") as info:
            sync_middle()
        names = [entry.name for entry in info.traceback]
        assert names[:2] == ["main", "sync_middle"]
        assert names[-1] == "fails"
        assert "await_" in names

    library.run(main)


def test_recursive_error_keeps_every_frame(library: Library) -> None:
    async def countdown(n: int) -> None:
        if n == 0:
            raise ValueError("Blastoff!")
        if n % 2 == 0:
            await countdown(n - 1)
        else:
            await_(countdown(n - 1))

    async def main() -> None:
        await ensure_portal()
        with pytest.raises(ValueError, match="Blastoff!") as info:
            await countdown(10)
        frames = collections.Counter(entry.name for entry in info.traceback)
        values = {entry.locals["n"] for entry in info.traceback if entry.name == "countdown"}
        assert frames["countdown"] == 11
        assert frames["await_"] == 5
        assert values == set(range(11))

    library.run(main)


def test_uncaught_exception_leaves_the_task(library: Library) -> None:
    async def failing_task() -> None:
        await ensure_portal()
        await_(double_later(library, 1))
        raise KeyError("task failed")

    if library.is_trio:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(failing_task)

        with pytest.raises(BaseException) as info:
            library.run(main)
        exceptions = getattr(info.value, "exceptions", [info.value])
        assert [type(error) for error in exceptions] == [KeyError]
    else:
        with pytest.raises(KeyError, match="task failed") as info:
            library.run(failing_task)
        assert "failing_task" in [entry.name for entry in info.traceback]


def test_resume_task_with_error(library: Library) -> None:
    """What the loop throws in for a bad yield reaches the original coroutine unchanged."""

    async def main() -> None:
        try:
            await yield_value(42)
        except Exception as error:
            kind, message = type(error), str(error)
        else:  # pragma: no cover
            pytest.fail("yielding 42 did not raise")
        await ensure_portal()
        with pytest.raises(kind, match=re.escape(message)):
            await yield_value(42)
        with pytest.raises(kind, match=re.escape(message)):
            await_(yield_value(42))

    library.run(main)


def test_awaitable_that_is_not_a_coroutine(library: Library) -> None:
    class Awaitable:
        def __init__(self, fail: bool = False) -> None:
            self.fail = fail

        def __await__(self) -> Any:
            yield from library.sleep(0).__await__()
            if self.fail:
                raise ValueError("nope")
            return "it works!"

    async def main() -> None:
        await ensure_portal()
        assert (await Awaitable()) == await_(Awaitable()) == "it works!"
        with pytest.raises(ValueError, match="nope") as info:
            await_(Awaitable(fail=True))
        assert [entry.name for entry in info.traceback][-1] == "__await__"
        assert await with_portal_run(Awaitable) == "it works!"

    library.run(main)


def test_await_of_a_non_awaitable_raises_type_error(library: Library) -> None:
    async def main() -> None:
        await ensure_portal()
        with pytest.raises(TypeError):
            await_(42)  # type: ignore[arg-type]

    library.run(main)


def test_cancellation_reaches_sync_code(library: Library) -> None:
    seen: list[str] = []

    def wait_forever() -> None:
        try:
            await_(library.sleep(3600))
        except BaseException as error:
            seen.append(type(error).__name__)
            raise

    if library.is_trio:

        async def main() -> None:
            await ensure_portal()
            with trio.move_on_after(0.01) as scope:
                sync_at_depth(5, wait_forever)
            assert scope.cancelled_caught
            assert has_portal()
            await_(trio.sleep(0))

        library.run(main)
        assert seen == ["Cancelled"]
        return

    async def waiter() -> None:
        await ensure_portal()
        sync_at_depth(5, wait_forever)

    async def main() -> None:
        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.01)
        assert has_portal(task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    library.run(main)
    assert seen == ["CancelledError"]


def test_cancellation_at_a_plain_await_in_a_portal_task(library: Library) -> None:
    if library.is_trio:
        pytest.skip("the asyncio Task.cancel() path")

    async def waiter() -> None:
        await ensure_portal()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            # The task goes on after a caught cancellation, portal and all.
            assert await_(double_later(library, 5)) == 10
            raise

    async def main() -> None:
        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.01)
        task.cancel("stop")
        with pytest.raises(asyncio.CancelledError):
            await task

    library.run(main)


def test_contextvars_flow_like_await(library: Library) -> None:
    variable: contextvars.ContextVar[int] = contextvars.ContextVar("variable")

    async def inner() -> None:
        assert variable.get() == 20
        await library.sleep(0)
        variable.set(30)

    def middle() -> None:
        assert variable.get() == 10
        variable.set(20)
        await_(inner())
        assert variable.get() == 30
        variable.set(50)
        other = contextvars.copy_context()
        other.run(variable.set, 20)
        other.run(await_, inner())
        assert other[variable] == 30
        assert variable.get() == 50
        variable.set(40)

    async def main() -> None:
        variable.set(10)
        await ensure_portal()
        assert variable.get() == 10
        middle()
        assert variable.get() == 40
        await library.sleep(0)
        assert variable.get() == 40

    library.run(main)


def test_contextvars_stay_per_task(library: Library) -> None:
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable")

    def owner(name: str) -> Callable[[], Awaitable[None]]:
        async def task() -> None:
            variable.set(name)
            await ensure_portal()
            for _ in range(5):
                await_(library.sleep(0))
                assert variable.get() == name
                await library.sleep(0)
                assert variable.get() == name

        return task

    async def main() -> None:
        await library.gather(owner("a"), owner("b"), owner("c"))
        with pytest.raises(LookupError):
            variable.get()

    library.run(main)


def test_bestow_portal(library: Library) -> None:
    async def main() -> None:
        started = asyncio.Event() if not library.is_trio else trio.Event()
        installed = asyncio.Event() if not library.is_trio else trio.Event()
        task: Any = None

        async def child() -> None:
            nonlocal task
            task = library.current_task()
            started.set()
            await installed.wait()
            assert has_portal(task)
            assert has_portal()
            await_(library.sleep(0))

        async def parent() -> None:
            await started.wait()
            assert not has_portal(task)
            bestow_portal(task)
            assert has_portal(task)
            bestow_portal(task)
            installed.set()

        await library.gather(child, parent)
        with pytest.raises(RuntimeError, match="create a portal for this task"):
            await_(library.sleep(0))

        # On the running task, a portal is in use only after its next step.
        this = library.current_task()
        bestow_portal(this)
        assert not has_portal()
        assert not has_portal(this)
        with pytest.raises(RuntimeError, match="must yield to the event loop"):
            await_(library.sleep(0))
        await library.sleep(0)
        assert has_portal()
        assert has_portal(this)
        await_(library.sleep(0))

    library.run(main)


def test_bestow_portal_refuses_what_it_cannot_do() -> None:
    async def finished() -> int:
        return 1

    async def main() -> None:
        task = asyncio.ensure_future(finished())
        await task
        with pytest.raises(RuntimeError, match="it has finished"):
            bestow_portal(task)
        with pytest.raises(RuntimeError, match="not an asyncio.Task or a Trio task"):
            bestow_portal(object())  # type: ignore[arg-type]
        future = asyncio.get_running_loop().create_future()
        with pytest.raises(RuntimeError, match="not an asyncio.Task or a Trio task"):
            bestow_portal(future)  # type: ignore[arg-type]
        future.cancel()

    asyncio.run(main())


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are 3.12+")
def test_eager_task_finished_in_create_task_is_refused() -> None:
    async def at_once() -> str:
        return "done"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        task = asyncio.ensure_future(at_once())
        assert task.done()
        with pytest.raises(RuntimeError, match="it has finished"):
            bestow_portal(task)

    asyncio.run(main())


def test_pure_python_task_subclass() -> None:
    class MyTask(asyncio.tasks._PyTask):  # type: ignore[name-defined,misc]
        pass

    async def child() -> int:
        await ensure_portal()
        assert type(asyncio.current_task() or asyncio.tasks._py_current_task()) is MyTask
        return await_(double_later(Library("asyncio"), 3))

    async def main() -> int:
        loop = asyncio.get_running_loop()
        task = MyTask(child(), loop=loop)
        result: int = await task
        return result

    assert asyncio.run(main()) == 6


@pytest.mark.skipif(
    asyncio.Task is getattr(asyncio.tasks, "_PyTask", None), reason="asyncio.Task is not the C Task"
)
def test_the_c_task_coroutine_field_is_found_replaced_and_checked() -> None:
    """The native locator of the C Task's coroutine field: found once in a Task that has not
    run, replaced with the references moved, and refusing what it must not touch."""
    from awaitlet._awaitlet import _TaskCoroField

    async def original() -> str:
        return "original"

    async def replacement() -> str:
        return "replacement"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        old, new = original(), replacement()
        task = asyncio.Task(old, loop=loop)
        field = _TaskCoroField(task, old)
        assert field.offset >= object.__basicsize__
        assert field.offset % 8 == 0 or field.offset % 4 == 0
        old_count, new_count = sys.getrefcount(old), sys.getrefcount(new)
        field.replace(task, old, new)
        assert task.get_coro() is new
        assert sys.getrefcount(old) == old_count - 1
        assert sys.getrefcount(new) == new_count + 1
        # The field holds `new` now: replacing `old` again is refused, and nothing changes.
        with pytest.raises(RuntimeError, match="its coroutine field is not where it was"):
            field.replace(task, old, new)
        assert sys.getrefcount(new) == new_count + 1
        assert task.get_coro() is new
        # Only instances of the Task type it was found in (or of subclasses).
        future = loop.create_future()
        with pytest.raises(TypeError, match="not _asyncio.Future|not Future"):
            field.replace(future, old, new)
        future.cancel()
        old.close()
        assert await task == "replacement"
        # Not found: the coroutine's address is nowhere in the object.
        stranger = original()
        with pytest.raises(RuntimeError, match="occurs 0 times"):
            _TaskCoroField(asyncio.Task(replacement(), loop=loop), stranger)
        stranger.close()

    asyncio.run(main())


def test_c_task_subclass() -> None:
    class MyTask(asyncio.Task):  # type: ignore[type-arg]
        pass

    async def child() -> int:
        await ensure_portal()
        task = asyncio.current_task()
        assert type(task) is MyTask
        assert task is not None and task.get_coro() is not None
        return await_(double_later(Library("asyncio"), 3))

    async def main() -> int:
        task = MyTask(child(), loop=asyncio.get_running_loop())
        result: int = await task
        return result

    assert asyncio.run(main()) == 6


def test_with_portal_run_and_run_sync(library: Library) -> None:
    async def uses_portal(value: int) -> int:
        assert has_portal()
        return await_(double_later(library, value)) + await double_later(library, value)

    async def main() -> None:
        assert await with_portal_run(uses_portal, 1) == 4
        assert await with_portal_run(with_portal_run, uses_portal, 2) == 8
        with pytest.raises(RuntimeError, match="ensure_portal"):
            await_(library.sleep(0))
        assert await with_portal_run_sync(lambda: await_(uses_portal(3))) == 12
        assert (
            await with_portal_run_sync(
                lambda: await_(with_portal_run_sync(lambda: await_(uses_portal(4))))
            )
            == 16
        )
        with pytest.raises(RuntimeError, match="ensure_portal"):
            await_(library.sleep(0))
        # An exception from the sync function propagates with its frames.
        with pytest.raises(ZeroDivisionError) as info:
            await with_portal_run_sync(lambda: sync_at_depth(3, lambda: 1 // 0))
        assert [entry.name for entry in info.traceback].count("sync_at_depth") == 4
        assert not has_portal()

    library.run(main)


def test_ensure_portal_inside_with_portal_run_adds_none(library: Library) -> None:
    async def inner() -> None:
        coro = library.task_coro(library.current_task())
        await ensure_portal()
        assert library.task_coro(library.current_task()) is coro
        await_(library.sleep(0))

    async def main() -> None:
        await with_portal_run(inner)
        assert not has_portal()

    library.run(main)


def test_no_portal_outside_a_task() -> None:
    assert not has_portal()
    with pytest.raises(RuntimeError, match="running asyncio or Trio task"):
        await_(asyncio.sleep(0))

    async def main() -> bool:
        await ensure_portal()
        future = asyncio.get_running_loop().create_future()

        def callback() -> None:
            # A loop callback runs in no task: no portal there.
            future.set_result(has_portal())
            with pytest.raises(RuntimeError, match="No asyncio task"):
                await_(asyncio.sleep(0))

        asyncio.get_running_loop().call_soon(callback)
        result: bool = await future
        return result

    assert asyncio.run(main()) is False


def test_portal_map_does_not_leak(library: Library) -> None:
    from awaitlet import portal

    async def main() -> None:
        await library.gather(*[ensure_portal] * 300)

    library.run(main)
    for _ in range(3):
        gc.collect()
    assert not portal._portals


async def abandon_task(function: Callable[[asyncio.Future[None]], Awaitable[None]]) -> Any:
    """Start a task running ``function`` on a future nothing will complete, drop every
    reference to it, collect garbage, and give a weak reference to the task."""
    import weakref

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)  # "destroyed but pending"
    task = asyncio.ensure_future(function(loop.create_future()))
    task_ref = weakref.ref(task)
    await asyncio.sleep(0.01)
    del task
    for _ in range(3):
        gc.collect()
    return task_ref


def test_abandoned_portal_task_is_collected() -> None:
    """A portal does not keep alive a task that nothing else holds."""

    async def stuck(future: asyncio.Future[None]) -> None:
        await ensure_portal()
        await future

    async def main() -> Any:
        return await abandon_task(stuck)

    assert asyncio.run(main())() is None


# Before 3.14 the collector does not always see what the frames of a coroutine paused in
# the middle of a step on a suspended fiber hold (the task's coroutine, while sync code below
# it waits in await_()): whether such an abandoned task is collected depends on where its
# references sit.  On 3.14 it is, and CPython may report "coroutine already executing" as
# unraisable when it finalizes that coroutine before the portal.
@pytest.mark.skipif(sys.version_info < (3, 14), reason="not assured before 3.14")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_abandoned_task_waiting_in_await_is_collected() -> None:
    def wait_in_sync_code(future: asyncio.Future[None]) -> None:
        await_(future)

    async def stuck(future: asyncio.Future[None]) -> None:
        await ensure_portal()
        wait_in_sync_code(future)

    async def main() -> Any:
        return await abandon_task(stuck)

    assert asyncio.run(main())() is None


@pytest.mark.skipif(sys.version_info < (3, 14), reason="not assured before 3.14")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_abandoned_task_waiting_in_a_greenlet_is_collected() -> None:
    """The greenlet waiting below the portal refers to its task; the portal's fiber refers
    to that greenlet while the task waits: still garbage, and the greenlet is finished."""
    from awaitlet.greenlet import greenlet

    finished: list[bool] = []

    def wait_in_greenlet(future: asyncio.Future[None]) -> None:
        task = asyncio.current_task()
        try:
            await_(future)
        finally:
            finished.append(task is not None)

    async def stuck(future: asyncio.Future[None]) -> None:
        await ensure_portal()
        greenlet(wait_in_greenlet).switch(future)

    async def main() -> Any:
        return await abandon_task(stuck)

    assert asyncio.run(main())() is None
    assert finished == [True]


@requires_trio
def test_checkpoints_match_await() -> None:
    async def nothing() -> None:
        pass

    async def main() -> None:
        with trio.testing.assert_checkpoints():
            await ensure_portal()
        with trio.testing.assert_checkpoints():
            await_(trio.sleep(0))
        with trio.testing.assert_no_checkpoints():
            await_(nothing())

    trio.run(main)


@requires_trio
def test_no_context_leakage_between_bestowing_and_bestowed() -> None:
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("task_id")

    async def main() -> None:
        installed = trio.Event()

        async def task1(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            variable.set("task1")
            task_status.started(trio.lowlevel.current_task())
            assert not has_portal()
            await installed.wait()
            assert has_portal()
            assert variable.get() == "task1"
            await_(trio.sleep(0))
            assert variable.get() == "task1"

        async def task2(target: Any) -> None:
            variable.set("task2")
            await ensure_portal()
            await_(trio.sleep(0))
            assert variable.get() == "task2"
            bestow_portal(target)
            installed.set()
            await trio.sleep(0)
            assert variable.get() == "task2"

        async with trio.open_nursery() as nursery:
            target = await nursery.start(task1)
            nursery.start_soon(task2, target)
        with pytest.raises(LookupError):
            variable.get()

    trio.run(main)


@requires_trio
@pytest.mark.parametrize("use_context_manager", [False, True])
def test_with_portal_run_tree(use_context_manager: bool) -> None:
    async def run_tree(async_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if use_context_manager:
            async with portals_for_tree():
                return await async_fn(*args)
        return await with_portal_run_tree(async_fn, *args)

    async def expect_no_portal() -> None:
        await trio.sleep(0.5)
        assert not has_portal()

    async def expect_portal() -> None:
        assert has_portal()
        await_(trio.sleep(0.5))

    async def example_child(depth: int) -> None:
        assert has_portal()
        await_(trio.sleep(0))
        if depth == 0:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(expect_portal)
            nursery.start_soon(run_tree, example_child, depth - 1)
            nursery.start_soon(example_child, depth - 1)
            await_(run_tree(example_child, depth - 1))
            await trio.sleep(1)

    async def main() -> None:
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as middle:
                assert not has_portal()
                outer.start_soon(expect_no_portal)
                middle.start_soon(expect_no_portal)
                await run_tree(example_child, 2)
                assert not has_portal()
                outer.start_soon(expect_no_portal)
                middle.start_soon(expect_no_portal)
                middle.start_soon(run_tree, example_child, 2)
                await trio.sleep(0.5)
                assert not has_portal()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_portals_for_tree_is_trio_only() -> None:
    async def main() -> None:
        async with portals_for_tree():
            pass  # pragma: no cover

    with pytest.raises(RuntimeError, match="only supported when running under Trio"):
        asyncio.run(main())


@pytest.mark.parametrize(
    "library_name",
    [
        "asyncio",
        "asyncio-pytask",
        pytest.param(
            "asyncio-eager",
            marks=pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are 3.12+"),
        ),
        pytest.param(
            "uvloop", marks=pytest.mark.skipif(uvloop is None, reason="uvloop is not importable")
        ),
    ],
)
def test_with_portal_run_tree_on_asyncio(library_name: str) -> None:
    """Tasks created below with_portal_run_tree(), at any depth, start with a portal."""
    library = Library(library_name)
    results: list[str] = []

    async def leaf(name: str) -> None:
        # From the first step on, eager tasks included.
        assert has_portal()
        results.append(await_(double_later(library, 1)) * name)

    async def branch(depth: int) -> None:
        assert has_portal()
        if depth == 0:
            await leaf("x")
            return
        await asyncio.gather(branch(depth - 1), leaf("y"))
        await asyncio.ensure_future(leaf("z"))

    async def outside() -> None:
        assert not has_portal()
        with pytest.raises(RuntimeError, match="create a portal"):
            await_(library.sleep(0))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()
        outer = asyncio.ensure_future(outside())
        await with_portal_run_tree(branch, 2)
        await outer
        assert not has_portal()
        # The loop has its own factory back, and tasks created now get no portal.
        assert loop.get_task_factory() is factory
        await asyncio.ensure_future(outside())

    library.run(main)
    assert sorted(results) == ["xx", "yy", "yy", "zz", "zz"]


def test_portals_for_children_on_asyncio_keeps_the_enclosing_task_portalless() -> None:
    from awaitlet.portal import portals_for_children

    async def child() -> str:
        return await_(double_later(Library("asyncio"), 2)) * "c"

    async def main() -> str:
        with portals_for_children():
            assert not has_portal()
            task = asyncio.ensure_future(child())
            # A task created in a Context from outside the block gets none.
            outside = contextvars.Context().run(
                asyncio.get_running_loop().create_task, asyncio.sleep(0, "plain")
            )
        assert await outside == "plain"
        return await task

    assert asyncio.run(main()) == "cccc"


def test_portals_for_children_needs_a_loop() -> None:
    from awaitlet.portal import portals_for_children

    with pytest.raises(RuntimeError, match="running under Trio or asyncio"):
        with portals_for_children():
            pass  # pragma: no cover


def test_nested_async_def_under_a_portal(library: Library) -> None:
    """awaitlet's own async_def() and the portal nest: each await goes to the right one."""
    from awaitlet import awaitlet

    def inner_sync() -> int:
        return awaitlet(double_later(library, 2)) + await_(double_later(library, 3))

    async def main() -> int:
        await ensure_portal()
        result: int = await_(async_def(inner_sync))
        return result

    assert library.run(main) == 10


_KEYBOARD_INTERRUPT_SCRIPT = """
import os, signal, sys
from awaitlet.portal import await_, ensure_portal

# A process started in the background by a shell inherits SIGINT ignored, and Python then
# keeps it ignored: install Python's own handler, as an interactive run has.
signal.signal(signal.SIGINT, signal.default_int_handler)

seen = []

def wait(sleep):
    try:
        await_(sleep(3600))
    except BaseException as error:
        seen.append(type(error).__name__)
        raise

if sys.argv[1] == "trio":
    import trio

    async def main():
        await ensure_portal()
        trio.lowlevel.current_trio_token().run_sync_soon(os.kill, os.getpid(), signal.SIGINT)
        wait(trio.sleep)

    run = lambda: trio.run(main)
else:
    import asyncio

    async def main():
        await ensure_portal()
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
        wait(asyncio.sleep)

    run = lambda: asyncio.run(main())
try:
    run()
except KeyboardInterrupt:
    print("KeyboardInterrupt", *seen)
"""


@pytest.mark.parametrize(
    "library_name",
    [
        pytest.param(
            "asyncio",
            marks=pytest.mark.skipif(
                sys.version_info < (3, 11), reason="asyncio.run() cancels on SIGINT from 3.11"
            ),
        ),
        pytest.param("trio", marks=requires_trio),
    ],
)
def test_keyboard_interrupt_reaches_sync_code(library_name: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KEYBOARD_INTERRUPT_SCRIPT), library_name],
        capture_output=True,
        text=True,
        timeout=60,
        env=_subprocess_env(),
    )
    assert completed.returncode == 0, completed.stderr
    expected = "CancelledError" if library_name == "asyncio" else "KeyboardInterrupt"
    assert completed.stdout.split() == ["KeyboardInterrupt", expected], completed.stderr


def test_traceback_print_of_task_exception_shows_sync_frames() -> None:
    def sync_layer() -> None:
        await_(asyncio.sleep(0))
        raise OSError("in sync code")

    async def main() -> None:
        await ensure_portal()
        sync_layer()

    with pytest.raises(OSError) as info:
        asyncio.run(main())
    text = "".join(traceback.format_exception(info.value))
    assert "sync_layer" in text and "in main" in text


def test_await_in_a_greenlet_below_the_portal(library: Library) -> None:
    """As in greenback: a greenlet started below a portal awaits through it, and the task's
    answers come back to that greenlet."""
    from awaitlet.greenlet import getcurrent, greenlet

    async def main() -> None:
        await ensure_portal()
        portal_greenlet = getcurrent()

        def in_greenlet(value: int) -> int:
            first = await_(double_later(library, value))
            assert getcurrent() is child
            second = await_(yield_value_then(library, first))
            return second + 1

        child = greenlet(in_greenlet)
        assert child.switch(5) == 21
        assert child.dead
        assert getcurrent() is portal_greenlet
        assert await_(double_later(library, 1)) == 2

    library.run(main)


async def yield_value_then(library: Library, value: int) -> int:
    """``value * 2`` after two trips through the event loop."""
    await library.sleep(0)
    await library.sleep(0)
    return value * 2


def test_greenlets_below_portals_of_two_tasks_take_turns(library: Library) -> None:
    from awaitlet.greenlet import greenlet

    order: list[tuple[str, int]] = []

    async def worker(name: str) -> None:
        await ensure_portal()

        def body() -> None:
            for step in range(3):
                order.append((name, step))
                await_(library.sleep(0))

        greenlet(body).switch()

    async def main() -> None:
        await library.gather(lambda: worker("a"), lambda: worker("b"))

    library.run(main)
    # Each waits in the loop between its steps: the other task runs meanwhile.
    assert sorted(order) == [(name, step) for name in "ab" for step in range(3)]
    assert [step for _, step in order] == [0, 0, 1, 1, 2, 2]


def test_await_in_nested_greenlets_below_the_portal(library: Library) -> None:
    """Greenlets that switch among themselves between awaits keep greenlet's semantics: each
    switch returns what the greenlet is switched back with, each await what it awaited."""
    from awaitlet.greenlet import getcurrent, greenlet

    log: list[object] = []

    def inner() -> str:
        log.append(await_(double_later(library, 1)))
        # To its parent, `outer`, suspended in the switch that started this greenlet.
        log.append(getcurrent().parent.switch("from inner"))
        log.append(await_(double_later(library, 3)))
        return "inner done"

    def outer() -> str:
        inner_greenlet = greenlet(inner)
        log.append(inner_greenlet.switch())
        log.append(await_(double_later(library, 2)))
        log.append(inner_greenlet.switch("resumed"))
        return "outer done"

    async def main() -> None:
        await ensure_portal()
        log.append(greenlet(outer).switch())

    library.run(main)
    assert log == [2, "from inner", 4, "resumed", 6, "inner done", "outer done"]


async def fail_later(library: Library) -> None:
    await library.sleep(0)
    raise ValueError("failed in the awaitable")


def test_exceptions_in_a_greenlet_below_the_portal(library: Library) -> None:
    from awaitlet.greenlet import greenlet

    def in_greenlet() -> None:
        with pytest.raises(ValueError, match="failed in the awaitable"):
            await_(fail_later(library))
        await_(fail_later(library))

    async def main() -> None:
        await ensure_portal()
        greenlet(in_greenlet).switch()

    with pytest.raises(ValueError, match="failed in the awaitable") as info:
        library.run(main)
    names = [entry.name for entry in info.traceback]
    assert names.index("main") < names.index("in_greenlet") < names.index("fail_later")


def test_cancellation_reaches_a_greenlet_waiting_below_the_portal() -> None:
    from awaitlet.greenlet import greenlet

    seen: list[str] = []

    def body() -> None:
        try:
            await_(asyncio.sleep(10))
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def victim() -> None:
        await ensure_portal()
        greenlet(body).switch()

    async def main() -> None:
        task = asyncio.ensure_future(victim())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["cancelled"]


@requires_trio
def test_trio_cancellation_reaches_a_greenlet_waiting_below_the_portal() -> None:
    from awaitlet.greenlet import greenlet

    seen: list[str] = []

    def body() -> None:
        try:
            await_(trio.sleep(10))
        except trio.Cancelled:
            seen.append("cancelled")
            raise

    async def main() -> None:
        await ensure_portal()
        with trio.move_on_after(0.01):
            greenlet(body).switch()

    trio.run(main)
    assert seen == ["cancelled"]


def test_await_in_a_greenlet_below_with_portal_run_sync(library: Library) -> None:
    from awaitlet.greenlet import greenlet

    def sync_code() -> int:
        return greenlet(lambda: await_(double_later(library, 4)) + 1).switch()

    async def main() -> int:
        return await with_portal_run_sync(sync_code)

    assert library.run(main) == 9


@requires_trio
def test_auto_portal_instrument_gives_every_task_a_portal() -> None:
    from awaitlet.portal import AutoPortalInstrument

    seen: list[bool] = []

    async def child() -> None:
        seen.append(has_portal())
        await_(trio.sleep(0))

    async def main() -> None:
        seen.append(has_portal())
        await_(trio.sleep(0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
            nursery.start_soon(child)

    trio.run(main, instruments=[AutoPortalInstrument()])
    assert seen == [True, True, True]


@requires_trio
def test_portals_for_children_on_trio() -> None:
    from awaitlet.portal import portals_for_children

    seen: list[bool] = []

    async def child() -> None:
        seen.append(has_portal())
        await trio.sleep(0)

    async def main() -> None:
        async with trio.open_nursery() as outside:
            with portals_for_children():
                assert not has_portal()
                async with trio.open_nursery() as inside:
                    inside.start_soon(child)
                # A nursery opened before the block: its children get none.
                outside.start_soon(child)

    trio.run(main)
    assert seen == [True, False]


def test_bestow_portal_on_a_task_that_has_not_started(library: Library) -> None:
    if library.name == "asyncio-eager":
        pytest.skip("an eager task runs its first step inside create_task()")

    async def child() -> int:
        # Trio has already chosen what its first step resumes, as with greenback: the portal
        # is in use from the task's next step.
        await library.sleep(0)
        assert has_portal()
        return await_(double_later(library, 7))

    async def main() -> None:
        if library.is_trio:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child)
                (task,) = nursery.child_tasks  # spawned, not yet run
                bestow_portal(task)
                assert has_portal(task)
            return
        task = asyncio.ensure_future(child())
        bestow_portal(task)
        assert has_portal(task)
        assert await task == 14

    library.run(main)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is new in 3.11")
def test_asyncio_timeout_around_sync_code_waiting_in_await() -> None:
    cleaned_up: list[bool] = []

    def wait_long() -> None:
        try:
            await_(asyncio.sleep(3600))
        finally:
            cleaned_up.append(True)

    async def main() -> str:
        await ensure_portal()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                wait_long()
        # The task was uncancelled by the timeout: it goes on, portal and all.
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        return await_(asyncio.sleep(0, "after"))

    assert asyncio.run(main()) == "after"
    assert cleaned_up == [True]


def test_exception_context_survives_await(library: Library) -> None:
    class Awaitable:
        def __await__(self) -> Any:
            yield from library.sleep(0).__await__()
            try:
                raise KeyError("first")
            except KeyError:
                raise ValueError("second")  # noqa: B904 - the context is what is tested

    async def main() -> None:
        await ensure_portal()
        with pytest.raises(ValueError, match="second") as info:
            await_(Awaitable())
        assert isinstance(info.value.__context__, KeyError)
        assert not info.value.__suppress_context__

    library.run(main)
