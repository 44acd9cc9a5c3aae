"""Reference cycles that run through suspended sync stacks are collected.

A suspended fiber's frames are on no thread's frame chain: the coroutine (or greenlet of the
facade) that owns the fiber reports what they reference to the cycle collector, and when it
turns out to be garbage, its finalizer finishes the sync code (GeneratorExit, GreenletExit
for a greenlet) before anything is cleared, so its ``finally`` blocks run.
"""

import asyncio
import gc
import subprocess
import sys
import threading
import weakref

import pytest
from _support import (
    CRASH_MARKERS,
    SCRIPTS_DIR,
    Yield,
    _subprocess_env,
    resident_memory_bytes,
)
from awaitlet import async_def, awaitlet
from awaitlet.greenlet import GreenletExit, getcurrent, greenlet

TASKS = 100
PAYLOAD_BYTES = 64 * 1024
DESTROYED_PENDING = "Task was destroyed but it is pending!"


@pytest.fixture(autouse=True)
def explicit_collections_only():
    """The tests check what one gc.collect() does: an automatic collection in between would
    find the cycles earlier."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def holds_its_own_task(index, finished):
    # A cycle: the task refers to its coroutine, whose suspended frame refers to the task.
    task = asyncio.current_task()
    payload = bytearray(b"x" * PAYLOAD_BYTES)
    try:
        # A future that nothing will ever complete: the task is abandoned.
        awaitlet(asyncio.get_running_loop().create_future())
    finally:
        finished.append(index if task is not None and len(payload) == PAYLOAD_BYTES else -1)


async def abandon_tasks(finished):
    """Starts TASKS tasks that suspend holding themselves, keeping nothing of them but weak
    references."""
    loop = asyncio.get_running_loop()
    references = []
    for index in range(TASKS):
        task = loop.create_task(async_def(holds_its_own_task, index, finished))
        references.append(weakref.ref(task))
    del task
    await asyncio.sleep(0)  # each task runs until its sync code suspends
    return references


def collect_reports(loop):
    reports = []
    loop.set_exception_handler(lambda loop, context: reports.append(context["message"]))
    return reports


def test_abandoned_tasks_that_hold_themselves_are_collected_by_one_collection():
    async def main():
        reports = collect_reports(asyncio.get_running_loop())
        finished = []
        gc.collect()
        objects_before = len(gc.get_objects())
        references = await abandon_tasks(finished)
        assert finished == []
        assert all(reference() is not None for reference in references)
        objects_suspended = len(gc.get_objects())

        gc.collect()

        assert sorted(finished) == list(range(TASKS))
        assert [reference() for reference in references] == [None] * TASKS
        assert reports == [DESTROYED_PENDING] * TASKS
        del references
        objects_after = len(gc.get_objects())
        # Every task leaves dozens of objects behind if it is not collected.
        assert objects_suspended - objects_before > 5 * TASKS
        assert objects_after - objects_before < TASKS // 2, (objects_before, objects_after)

    asyncio.run(main())


@pytest.mark.skipif(
    resident_memory_bytes() is None, reason="resident memory size is not readable here"
)
def test_memory_of_abandoned_tasks_that_hold_themselves_is_reused():
    rounds = 10

    async def main():
        collect_reports(asyncio.get_running_loop())
        finished = []
        # A first round settles the stack pool and the allocator.
        await abandon_tasks(finished)
        gc.collect()
        before = resident_memory_bytes()
        for _ in range(rounds):
            await abandon_tasks(finished)
            gc.collect()
        growth = resident_memory_bytes() - before
        assert len(finished) == TASKS * (rounds + 1)
        # Each round abandons over 6 MiB of payloads (and 100 stacks): kept, they would add
        # over 60 MiB; the allocator's fragmentation stays well below the margin.
        assert growth < 16 * 1024 * 1024, f"grew by {growth} bytes"

    asyncio.run(main())


class SubclassedGreenlet(greenlet):
    """Like SQLAlchemy's greenlet subclass, with instance attributes."""

    def __init__(self, run, parent):
        greenlet.__init__(self, run, parent)
        self.driver = parent


@pytest.mark.parametrize("greenlet_class", [greenlet, SubclassedGreenlet])
def test_suspended_greenlet_that_holds_itself_is_killed_and_collected(greenlet_class):
    events = []

    def run():
        me = getcurrent()
        try:
            me.parent.switch("suspended")
        except GreenletExit:
            events.append(("GreenletExit", me.dead))
            raise
        finally:
            events.append("finally")

    glet = greenlet_class(run, getcurrent())
    assert glet.switch() == "suspended"
    reference = weakref.ref(glet)
    del glet
    gc.collect()
    assert events == [("GreenletExit", False), "finally"]
    assert reference() is None


def test_cycle_through_nested_async_def_frames_is_collected_innermost_first():
    events = []

    def inner_sync():
        task = asyncio.current_task()  # the outer task, running all of them
        try:
            awaitlet(asyncio.get_running_loop().create_future())
        finally:
            events.append(("inner sync", task is not None))

    async def middle():
        try:
            await async_def(inner_sync)
        finally:
            events.append("middle coroutine")

    def outer_sync():
        try:
            awaitlet(middle())
        finally:
            events.append("outer sync")

    async def main():
        reports = collect_reports(asyncio.get_running_loop())
        reference = weakref.ref(asyncio.get_running_loop().create_task(async_def(outer_sync)))
        await asyncio.sleep(0)
        assert events == [] and reference() is not None
        gc.collect()
        assert events == [("inner sync", True), "middle coroutine", "outer sync"]
        assert reference() is None
        assert reports == [DESTROYED_PENDING]

    asyncio.run(main())


def test_cycle_through_sync_code_suspended_in_a_generator_is_collected():
    events = []

    def values():
        try:
            yield awaitlet(asyncio.get_running_loop().create_future())
        finally:
            events.append("generator")

    def sync():
        task = asyncio.current_task()
        try:
            for value in values():
                return value
        finally:
            events.append(("sync", task is not None))

    async def main():
        collect_reports(asyncio.get_running_loop())
        reference = weakref.ref(asyncio.get_running_loop().create_task(async_def(sync)))
        await asyncio.sleep(0)
        assert events == [] and reference() is not None
        gc.collect()
        assert events == ["generator", ("sync", True)]
        assert reference() is None

    asyncio.run(main())


class Marker:
    pass


def test_referents_of_a_suspended_coroutine_include_its_frames_references():
    local, argument, running_referents = Marker(), Yield("suspended"), []

    def sync(box, coroutines):
        kept = box.pop()
        # While the sync code runs, its frames are the thread's: none of them is reported.
        running_referents.extend(gc.get_referents(coroutines[0]))
        result = [Marker(), awaitlet(box.pop())]
        return kept, result

    coroutines = []
    coro = async_def(sync, [argument, local], coroutines)
    coroutines.append(coro)
    assert coro.send(None) == "suspended"
    referents = gc.get_referents(coro)
    assert any(referent is local for referent in referents)
    # The argument of awaitlet(), in the value stack of the suspended frame.
    assert any(referent is argument for referent in referents)
    # The list element being built, below it in the same stack.
    assert any(type(referent) is Marker and referent is not local for referent in referents)
    assert not any(referent is local for referent in running_referents)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert not any(referent is local for referent in gc.get_referents(coro))


def test_collection_on_another_thread_leaves_the_cycle_to_its_own_thread():
    finished = []
    collected_elsewhere = threading.Event()

    def collect_elsewhere():
        gc.collect()
        collected_elsewhere.set()

    def sync():
        task = asyncio.current_task()
        try:
            awaitlet(asyncio.get_running_loop().create_future())
        finally:
            finished.append((threading.current_thread().name, task is not None))

    async def main():
        collect_reports(asyncio.get_running_loop())
        reference = weakref.ref(asyncio.get_running_loop().create_task(async_def(sync)))
        await asyncio.sleep(0)
        # Another thread's collection cannot finish the sync code there: it leaves it alone.
        other = threading.Thread(target=collect_elsewhere, name="other")
        other.start()
        other.join()
        assert collected_elsewhere.is_set()
        assert finished == [] and reference() is not None
        gc.collect()
        assert finished == [(threading.current_thread().name, True)]
        assert reference() is None

    asyncio.run(main())


def expected_shapes():
    shapes = [
        "greenlet_local",
        "local_of_the_suspended_frame",
        "local_of_a_calling_frame",
        "local_of_a_frame_calling_through_c",
        "closure_cell",
        "value_stack_of_the_suspended_frame",
        "value_stack_of_a_calling_frame",
        "argument_of_awaitlet",
        "keyword_argument_of_awaitlet",
        "argument_of_async_def",
        "keyword_argument_of_async_def",
        "exception_being_handled",
        "frame_below_a_running_generator",
        "local_of_a_running_generator",
        "nested_async_def",
    ]
    not_found = set()
    if sys.version_info < (3, 11):
        # Every Python call recurses in C, and a frame's value stack is known only for the
        # innermost frame: what the others' stacks refer to counts as referenced from outside
        # (here the holder itself, and the generator, whose frame holds the holder).
        not_found = {"value_stack_of_a_calling_frame", "local_of_a_running_generator"}
    lines = [
        f"{shape}: kept {'not finished' if shape in not_found else 'collected'}" for shape in shapes
    ]
    # One report per collected task (the greenlet is none).
    return [*lines, f"reports: {len(shapes) - 1 - len(not_found)}"]


@pytest.mark.parametrize(
    "interpreter_options, malloc",
    [([], None), (["-X", "dev"], "debug")],
    ids=["plain", "dev-mode-debug-allocator"],
)
def test_cycles_through_every_kind_of_stack_reference(interpreter_options, malloc):
    env = _subprocess_env()
    if malloc is not None:
        env["PYTHONMALLOC"] = malloc
    completed = subprocess.run(
        [sys.executable, *interpreter_options, str(SCRIPTS_DIR / "gc_cycle_shapes.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(SCRIPTS_DIR),
    )
    description = f"exit {completed.returncode}\n{completed.stdout}\n{completed.stderr}"
    for marker in CRASH_MARKERS:
        assert marker not in completed.stderr, description
    assert completed.returncode == 0, description
    assert completed.stdout.splitlines() == expected_shapes(), description
