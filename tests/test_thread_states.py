"""Fibers belong to a thread state: other thread states never run them, and what is left of
them when they become garbage elsewhere, or when their thread goes away, is finished or
freed, never used after its thread state is gone."""

import asyncio
import functools
import gc
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import threading
import weakref

import pytest
from _support import (
    CRASH_MARKERS,
    Yield,
    assert_script_succeeded,
    resident_memory_bytes,
    run_script,
)
from awaitlet import async_def, awaitlet
from awaitlet.greenlet import greenlet

NATIVE_DIR = pathlib.Path(__file__).resolve().parent / "native"


@pytest.mark.parametrize("mode", ["plain", "fiber", "greenlet"])
def test_daemon_thread_blocked_on_a_fiber_at_exit_ends_like_a_plain_one(mode):
    result = run_script("daemon_thread_at_exit.py", mode, "3")
    for marker in (*CRASH_MARKERS, "FATAL"):
        assert marker not in result.stderr, result.describe()
    assert result.returncode == 3, result.describe()
    assert result.stdout.splitlines() == ["exiting"], result.describe()


@pytest.fixture(scope="module")
def gilstate_helper(tmp_path_factory):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the native-thread helper")
    library = tmp_path_factory.mktemp("native") / "gilstate_callbacks.so"
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        [
            compiler,
            "-shared",
            "-fPIC",
            "-pthread",
            "-O1",
            f"-I{include}",
            # Debian-style layouts keep the real pyconfig.h in <multiarch>/pythonX.Y/ beside it.
            f"-I{pathlib.Path(include).parent}",
            str(NATIVE_DIR / "gilstate_callbacks.c"),
            "-o",
            str(library),
        ],
        check=True,
    )
    return library


def test_fibers_are_refused_under_a_later_thread_state_of_the_same_native_thread(
    gilstate_helper,
):
    result = run_script("gilstate_callbacks.py", str(gilstate_helper))
    refused = (
        "cannot resume an async_def() coroutine from a thread state other than the one it "
        "started under"
    )
    assert_script_succeeded(
        result,
        [
            "started: suspended",
            "started: suspended",
            f"send: RuntimeError: {refused}",
            f"throw: RuntimeError: {refused}",
            f"close: RuntimeError: {refused}",
            # As greenlet says it once the greenlet's thread (state) is gone.
            "switch: GreenletError: cannot switch to a different thread "
            "(which happens to have exited)",
            "dropped: [True, True]",
            "failed callbacks: 0",
            # Their thread state is gone: nothing ran them again.
            "finally ran: []",
        ],
    )


class Worker:
    """A thread that runs functions it is handed, one at a time, until stopped."""

    def __init__(self):
        self._requests = []
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self):
        while True:
            with self._condition:
                while not self._requests:
                    self._condition.wait()
                function, done, outcome = self._requests.pop(0)
            if function is None:
                done.set()
                return
            try:
                outcome.append(("returned", function()))
            except BaseException as error:
                outcome.append(("raised", error))
            # Keep no reference to what the call returned.
            del function, outcome
            done.set()

    def call(self, function):
        done, outcome = threading.Event(), []
        with self._condition:
            self._requests.append((function, done, outcome))
            self._condition.notify()
        assert done.wait(30)
        kind, value = outcome[0]
        if kind == "raised":
            raise value
        return value

    def stop(self):
        done = threading.Event()
        with self._condition:
            self._requests.append((None, done, []))
            self._condition.notify()
        self._thread.join(30)
        assert not self._thread.is_alive()

    @property
    def ident(self):
        return self._thread.ident


def finishing_sync_code(record):
    try:
        awaitlet(Yield("suspended"))
    except GeneratorExit:
        record.append(("GeneratorExit", threading.get_ident()))
        raise
    finally:
        record.append(("finally", threading.get_ident()))


def finishing_greenlet(record):
    try:
        greenlet.getcurrent().parent.switch("suspended")
    except BaseException as error:
        record.append((type(error).__name__, threading.get_ident()))
        raise
    finally:
        record.append(("finally", threading.get_ident()))


def suspended_coroutine(record):
    coroutine = async_def(finishing_sync_code, record)
    assert coroutine.send(None) == "suspended"
    return coroutine


def suspended_greenlet(record):
    spawned = greenlet(finishing_greenlet)
    assert spawned.switch(record) == "suspended"
    return spawned


@pytest.mark.parametrize(
    ("make_suspended", "exit_exception"),
    [(suspended_coroutine, "GeneratorExit"), (suspended_greenlet, "GreenletExit")],
)
def test_suspended_fiber_dropped_on_another_thread_is_finished_by_its_own(
    make_suspended, exit_exception
):
    worker = Worker()
    try:
        record = []
        suspended = worker.call(lambda: make_suspended(record))
        gone = weakref.ref(suspended)
        del suspended  # the last reference goes away on this thread
        gc.collect()
        # A coroutine goes at once; a greenlet, as in greenlet, is resurrected and handed to
        # its thread, which deallocates it once it has killed it.
        assert (gone() is None) == (make_suspended is suspended_coroutine)
        # The owner has not run awaitlet code since: nothing ran yet.
        assert record == []
        # The next awaitlet code the owner runs finishes it there first.
        assert worker.call(lambda: asyncio.run(async_def(lambda: "later"))) == "later"
        assert record == [(exit_exception, worker.ident), ("finally", worker.ident)]
        assert gone() is None
        worker.call(lambda: asyncio.run(async_def(lambda: None)))
        assert len(record) == 2, "finished exactly once"
    finally:
        worker.stop()


def test_awaitable_of_an_orphaned_coroutine_is_closed_by_the_owner():
    closed_on = []

    class Closable:
        def __await__(self):
            return self

        def __iter__(self):
            return self

        def __next__(self):
            return "suspended"

        def close(self):
            closed_on.append(threading.get_ident())

    def sync_code():
        awaitlet(Closable())

    worker = Worker()
    try:

        def start():
            coroutine = async_def(sync_code)
            assert coroutine.send(None) == "suspended"
            return coroutine

        coroutine = worker.call(start)
        del coroutine
        assert closed_on == []
        worker.call(lambda: asyncio.run(async_def(lambda: None)))
        assert closed_on == [worker.ident]
    finally:
        worker.stop()


def test_suspended_fiber_whose_thread_is_gone_is_freed_without_running():
    worker = Worker()
    record = []
    coroutine = worker.call(lambda: suspended_coroutine(record))
    spawned = worker.call(lambda: suspended_greenlet(record))
    worker.stop()
    gone = [weakref.ref(coroutine), weakref.ref(spawned)]
    with pytest.raises(RuntimeError, match="thread state other than the one it started under"):
        coroutine.send(None)
    del coroutine, spawned
    gc.collect()
    assert [ref() is None for ref in gone] == [True, True]
    assert record == []
    # This thread's own fibers are unaffected.
    assert asyncio.run(async_def(lambda: awaitlet(asyncio.sleep(0, "ok")))) == "ok"


def test_many_fibers_orphaned_across_threads_are_all_finished():
    worker = Worker()
    try:
        record = []
        coroutines = worker.call(lambda: [suspended_coroutine(record) for _ in range(200)])
        del coroutines
        worker.call(lambda: asyncio.run(async_def(lambda: None)))
        assert record.count(("finally", worker.ident)) == 200
    finally:
        worker.stop()


def deep_suspended_sync_code(depth):
    # Every level goes through C (map), so the suspended stack holds depth C frames: a good
    # part of the fiber's machine stack is in use, as under deep C code.
    if depth:
        return next(map(deep_suspended_sync_code, [depth - 1]))
    return awaitlet(Yield("suspended"))


def test_memory_of_fibers_whose_thread_is_gone_is_returned():
    resident = resident_memory_bytes()
    if resident is None:
        pytest.skip("resident memory size is not readable here")
    worker = Worker()

    def start_deep_coroutines():
        coroutines = [async_def(deep_suspended_sync_code, 150) for _ in range(500)]
        for coroutine in coroutines:
            assert coroutine.send(None) == "suspended"
        return coroutines

    coroutines = worker.call(start_deep_coroutines)
    worker.stop()
    gc.collect()
    with_stacks = resident_memory_bytes()
    del coroutines
    gc.collect()
    after = resident_memory_bytes()
    # 500 stacks 150 C calls deep hold tens of MiB of machine stack, which must be returned.
    # The rest of the growth is Python objects (on 3.10 heap frames: about as much as the
    # stacks), whose memory the allocator may keep once freed: a third of the growth is the
    # stacks' part with a margin, and not returning them would leave all of it.
    grown = with_stacks - resident
    assert after < with_stacks - grown // 3, (resident, with_stacks, after)


class Held:
    """An object whose collection a weak reference tells."""


def suspended_holding(kind, held):
    """Sync code suspended below a greenlet or async_def, with `held` in a local variable and
    on its value stack (an argument of the call it suspends in)."""

    def sync_code(item):
        local = item  # noqa: F841 (held by the frame)
        if kind == "greenlet":
            return greenlet.getcurrent().parent.switch(item)
        return awaitlet(Yield(item))

    if kind == "greenlet":
        spawned = greenlet(sync_code)
        assert spawned.switch(held) is held
        return spawned
    coroutine = async_def(sync_code, held)
    assert coroutine.send(None) is held
    return coroutine


def dropped_after_its_thread(kind, frame_kept):
    """Drops a fiber suspended as by suspended_holding in a thread that has exited since;
    returns a weak reference to the object only its frames held, and the frame of `sync_code`
    if `frame_kept` (taken before the drop)."""
    worker = Worker()
    held = Held()
    gone = weakref.ref(held)
    suspended = worker.call(functools.partial(suspended_holding, kind, held))
    del held
    worker.stop()
    frame = None
    if frame_kept:
        frame = suspended.gr_frame if kind == "greenlet" else suspended.cr_frame
        while frame.f_code.co_name != "sync_code":
            frame = frame.f_back
    del suspended
    gc.collect()
    return gone, frame


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="3.10's frames are objects the fiber's C stack holds"
)
@pytest.mark.parametrize("kind", ["greenlet", "async_def"])
@pytest.mark.parametrize("frame_kept", [False, True])
def test_what_frames_of_a_fiber_whose_thread_is_gone_reference_is_released(kind, frame_kept):
    gone, frame = dropped_after_its_thread(kind, frame_kept)
    # The frames can never run again (their thread state is gone): what they referenced is
    # released, as when a frame is cleared.
    assert gone() is None
    if frame is not None:
        # A frame object kept meanwhile still reads its frame: its variables are unbound now.
        assert frame.f_code.co_name == "sync_code"
        assert frame.f_lineno > 0
        assert "local" not in frame.f_locals and "item" not in frame.f_locals
    # This thread's own fibers are unaffected.
    assert asyncio.run(async_def(lambda: awaitlet(asyncio.sleep(0, "ok")))) == "ok"


@pytest.mark.skipif(
    sys.version_info >= (3, 11), reason="3.11+ frames live in the fiber's data stack: tested above"
)
@pytest.mark.parametrize("kind", ["greenlet", "async_def"])
@pytest.mark.parametrize("frame_kept", [False, True])
def test_frames_of_a_fiber_whose_thread_is_gone_are_released_on_3_10(kind, frame_kept):
    gone, frame = dropped_after_its_thread(kind, frame_kept)
    if frame is not None:
        # The dead C stack's references to the frames are dropped, not the frames' own: a
        # frame object kept elsewhere (as by a traceback) keeps its variables, as any does.
        assert frame.f_locals["local"] is gone()
        del frame
        gc.collect()
    # With nothing else keeping them, the frames went, with what they referenced: the local
    # variable, and the arguments of the call the fiber was suspended in (the innermost
    # frame's value stack, which a frame's deallocation leaves alone while it runs).
    assert gone() is None
    # This thread's own fibers are unaffected.
    assert asyncio.run(async_def(lambda: awaitlet(asyncio.sleep(0, "ok")))) == "ok"
