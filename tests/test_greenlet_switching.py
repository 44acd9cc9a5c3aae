"""Every shape of switch of the greenlet facade, with greenlet's semantics: to siblings,
ancestors, descendants, the main greenlet, into and out of async_def code, with exceptions,
garbage collection and threads."""

import asyncio
import contextvars
import gc
import subprocess
import sys
import threading
import weakref

import pytest
from awaitlet import async_def, awaitlet
from awaitlet import greenlet as facade
from awaitlet.greenlet import GreenletExit, error, getcurrent, greenlet


def test_sibling_switches_resume_where_each_switched_away():
    main = getcurrent()
    trail = []

    def ping():
        got = main.switch("ping ready")
        for _ in range(3):
            trail.append(("ping", got))
            got = pong.switch(got + 1)
        return "ping done"

    def pong():
        got = main.switch("pong ready")
        while True:
            trail.append(("pong", got))
            got = ping.switch(got * 10)

    ping, pong = greenlet(ping), greenlet(pong)
    assert ping.switch() == "ping ready" and pong.switch() == "pong ready"
    assert ping.switch(1) == "ping done"
    assert trail == [
        ("ping", 1),
        ("pong", 2),
        ("ping", 20),
        ("pong", 21),
        ("ping", 210),
        ("pong", 211),
    ]
    assert ping.dead and not pong.dead
    pong.throw()
    assert pong.dead


def test_grandchild_switches_to_main_and_back():
    main = getcurrent()

    def grandchild():
        return main.switch("from grandchild") + "!"

    def child():
        inner = greenlet(grandchild)
        return ("child got", inner.switch())

    outer = greenlet(child)
    assert outer.switch() == "from grandchild"
    # outer waits inside inner.switch(): that call returns what main sends; the grandchild
    # stays suspended in main.switch().
    assert outer.switch("back") == ("child got", "back")
    assert outer.dead and not getcurrent().dead


def test_switch_to_a_descendant_suspended_deeper():
    main = getcurrent()
    inner_holder = []

    def inner():
        value = main.switch("inner waiting")
        return value * 2

    def middle():
        child = greenlet(inner)
        inner_holder.append(child)
        child.switch()
        return "middle never resumes the child itself"

    middle_glet = greenlet(middle)
    assert middle_glet.switch() == "inner waiting"
    # main switches straight to the grandchild; its result goes to its parent (middle).
    assert inner_holder[0].switch(21) == "middle never resumes the child itself"
    assert inner_holder[0].dead and middle_glet.dead


def test_throw_from_child_into_parent_and_into_main_from_grandchild():
    main = getcurrent()

    def child():
        main.throw(KeyError("thrown into main"))

    glet = greenlet(child)
    with pytest.raises(KeyError, match="thrown into main"):
        glet.switch()
    assert not glet.dead
    glet.throw()
    assert glet.dead

    def grandchild():
        main.throw(ValueError, ValueError("deep"), None)

    outer = greenlet(lambda: greenlet(grandchild).switch())
    with pytest.raises(ValueError, match="deep"):
        outer.switch()


def test_throw_forms_and_refusals():
    main = getcurrent()

    def catcher():
        caught = []
        while True:
            try:
                main.switch(caught)
            except Exception as exc:
                caught.append(type(exc).__name__)

    glet = greenlet(catcher)
    caught = glet.switch()
    glet.throw(KeyError)
    glet.throw(KeyError, "value")
    try:
        raise IndexError("with traceback")
    except IndexError:
        glet.throw(*sys.exc_info())
    glet.throw(LookupError("instance"))
    assert caught == ["KeyError", "KeyError", "IndexError", "LookupError"]
    with pytest.raises(TypeError, match="exceptions must be classes, or instances, not str"):
        glet.throw("not an exception")
    with pytest.raises(TypeError, match="traceback"):
        glet.throw(KeyError, KeyError(), "not a traceback")
    with pytest.raises(TypeError, match="separate value"):
        glet.throw(KeyError(), "value")
    exit_ = glet.throw()
    assert isinstance(exit_, GreenletExit) and glet.dead


def test_finished_greenlet_result_goes_to_its_parent_not_to_who_switched_last():
    main = getcurrent()
    trail = []

    def child():
        main.switch("suspended")
        return "child result"

    parent = greenlet(lambda: trail.append(("parent got", main.switch("parent waits"))) or "p")
    assert parent.switch() == "parent waits"
    glet = greenlet(child, parent=parent)
    assert glet.switch() == "suspended"
    # The child finishes; its result goes to `parent`, which returns "p" to its parent, main.
    assert glet.switch() == "p"
    assert trail == [("parent got", "child result")]


def test_dead_parents_are_skipped_and_exceptions_travel_up():
    dead_parent = greenlet(lambda: None)
    dead_parent.switch()
    assert dead_parent.dead

    def fails():
        raise LookupError("to the nearest live ancestor")

    glet = greenlet(fails, parent=dead_parent)
    with pytest.raises(LookupError):
        glet.switch()
    # A switch to a dead greenlet goes to its parent.
    assert glet.switch("to the parent", kw=1) == (("to the parent",), {"kw": 1})


def test_parent_reassignment_while_suspended():
    main = getcurrent()
    first = greenlet(lambda: main.switch("first waits") and "first done")
    assert first.switch() == "first waits"

    def child():
        main.switch("child waits")
        return "to the new parent"

    glet = greenlet(child)
    glet.switch()
    glet.parent = first
    with pytest.raises(ValueError, match="cyclic parent chain"):
        first.parent = glet
    # glet finishes: its result resumes `first`, which finishes and returns to main.
    assert glet.switch() == "first done"


def test_switches_to_greenlets_of_other_threads_are_refused():
    main = getcurrent()
    glet = greenlet(lambda: main.switch())
    glet.switch()
    outcomes = []

    def elsewhere():
        for attempt in (glet.switch, glet.throw, main.switch):
            try:
                attempt()
            except error as exc:
                outcomes.append(str(exc))
        other_main = getcurrent()
        outcomes.append(other_main is not main)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert outcomes[:3] == ["cannot switch to a different thread"] * 3
    assert outcomes[3] is True
    glet.throw()


def test_greenlets_in_many_threads_switch_independently():
    results = []

    def worker(n):
        main = getcurrent()
        glets = [greenlet(lambda i=i: main.switch(i) + 1) for i in range(3)]
        values = [glet.switch() for glet in glets]
        values += [glet.switch(v * n) for glet, v in zip(glets, values, strict=True)]
        results.append((n, values))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [(n, [0, 1, 2, 1, n + 1, 2 * n + 1]) for n in range(1, 5)]


def test_garbage_suspended_greenlets_are_killed_wherever_they_wait():
    main = getcurrent()
    cleanup = []

    def waits(name, target):
        try:
            target().switch()
        finally:
            cleanup.append(name)

    first = greenlet(lambda: waits("first", lambda: main))
    first.switch()
    second = greenlet(lambda: waits("second", lambda: first))
    # second switches to its sibling `first`, which finishes (its finally runs) and returns to
    # main; second stays suspended until it is garbage.
    second.switch()
    assert cleanup == ["first"]
    ref = weakref.ref(second)
    del second
    gc.collect()
    assert cleanup == ["first", "second"] and ref() is None


def test_greenlet_killed_by_gc_in_a_cycle_runs_finally():
    main = getcurrent()
    cleanup = []

    def run():
        try:
            main.switch()
        except GreenletExit:
            cleanup.append("exit")
            raise

    glet = greenlet(run)
    glet.cycle = glet
    glet.switch()
    del glet
    gc.collect()
    assert cleanup == ["exit"]


def test_gr_context_before_start_while_suspended_and_after_finish():
    var = contextvars.ContextVar("var", default="unset")
    main = getcurrent()

    def run():
        before = var.get()
        var.set("set inside")
        main.switch(before)
        return var.get()

    glet = greenlet(run)
    context = contextvars.copy_context()
    glet.gr_context = context
    assert glet.gr_context is context
    assert glet.switch() == "unset"
    assert glet.gr_context is context and context[var] == "set inside"
    assert glet.switch() == "set inside"
    assert glet.dead and glet.gr_context is context

    fresh = greenlet(lambda: (var.get(), getcurrent().gr_context))
    var.set("in main")
    # A new greenlet starts with no context, as in greenlet.
    assert fresh.switch() == ("unset", None)
    with pytest.raises(AttributeError, match="can't delete context attribute"):
        del fresh.gr_context


def test_settrace_reports_switches_and_throws():
    main = getcurrent()
    events = []
    assert facade.gettrace() is None
    previous = facade.settrace(lambda event, args: events.append((event, args)))
    try:
        child = greenlet(lambda: main.switch("x"))
        child.switch()
        child.throw(KeyError)
    except KeyError:
        pass
    finally:
        assert facade.settrace(previous) is not None
    assert facade.gettrace() is None
    assert events == [
        ("switch", (main, child)),
        ("switch", (child, main)),
        ("throw", (main, child)),
        ("throw", (child, main)),
    ]


def test_module_constants_pickling_and_run_deletion():
    assert facade.GREENLET_USE_CONTEXT_VARS and facade.GREENLET_USE_GC
    assert facade.GREENLET_USE_TRACING
    import pickle

    with pytest.raises(TypeError, match="cannot serialize"):
        pickle.dumps(greenlet(lambda: None))
    main = getcurrent()
    glet = greenlet(lambda: main.switch())
    glet.switch()
    with pytest.raises(AttributeError):
        glet.run  # noqa: B018 - dropped once started
    glet.throw()


async def _double(value):
    await asyncio.sleep(0)
    return value * 2


def test_greenlet_inside_async_def_switches_to_main_to_await():
    def sync_side():
        main = getcurrent().parent

        def child():
            return main.switch(_double(5)) + 1

        # A switch to main from below async_def code goes to its driver, which awaits what it
        # is handed and sends the result to the async_def code (as awaitlet's driver loop on
        # greenlet does): here, where it waits, in child.switch(); the child stays suspended.
        return greenlet(child).switch()

    assert asyncio.run(async_def(sync_side)) == 10


def test_greenlets_started_inside_async_def_switch_among_themselves_and_await():
    def sync_side():
        here = getcurrent()

        def worker(n):
            got = here.switch(n)
            return awaitlet(_double(got))

        glets = [greenlet(worker, parent=here) for _ in range(3)]
        firsts = [glet.switch(i) for i, glet in enumerate(glets)]
        return firsts, [glet.switch(10 + i) for i, glet in enumerate(glets)]

    # awaitlet() in a plain greenlet started inside async_def is refused: not a provider.
    with pytest.raises(Exception, match="async_def"):
        asyncio.run(async_def(sync_side))


def test_switch_from_async_def_code_into_a_suspended_greenlet_and_back():
    main_greenlets = []

    def waiter():
        main_greenlets.append(getcurrent().parent)
        value = getcurrent().parent.switch("waiting")
        return value + 1

    glet = greenlet(waiter)
    assert glet.switch() == "waiting"

    def sync_side():
        # A greenlet created on the thread's main stack, resumed from inside async_def code:
        # it finishes and its result goes to its parent, the main greenlet, i.e. the driver.
        return glet.switch(41)

    async def main():
        return await async_def(sync_side)

    with pytest.raises(TypeError):
        # The driver is handed 42 as an awaitable, as awaitlet's driver would be.
        asyncio.run(main())
    assert glet.dead


def test_suspended_greenlet_dropped_on_another_thread_dies_on_its_own_thread():
    # greenlet's test_threaded_updatecurrent in short: the last reference to a suspended
    # greenlet goes away on another thread. As in greenlet, it is handed back to its own
    # thread, whose next getcurrent() kills it and deallocates it there, finalizers of its
    # attributes included (a finalizer that waits for this thread deadlocked before).
    seen = []
    main_ident = threading.get_ident()

    class Finalized:
        def __del__(self):
            seen.append(("del", threading.get_ident()))

    def body():
        try:
            getcurrent().parent.switch()
        finally:
            seen.append(("finally", threading.get_ident()))

    glets = [greenlet(body)]
    glets[0].bomb = Finalized()
    glets[0].switch()

    def drop():
        del glets[0]
        gc.collect()

    thread = threading.Thread(target=drop)
    thread.start()
    thread.join(10)
    assert seen == []
    getcurrent()
    assert seen == [("finally", main_ident), ("del", main_ident)]


def test_greenlets_outliving_their_thread_do_not_hold_memory_or_hang():
    # Suspended greenlets kept past the end of their thread cannot be killed any more (as in
    # greenlet, they get no GreenletExit); once they are dropped, their stacks must serve new
    # fibers: before, each one kept its frames area and its stack slot for good (the greenlet
    # suite's test_untracked_memory_doesnt_increase_unfinished_thread_dealloc_in_main grew to
    # gigabytes and the process did not exit).
    script = """
import resource, threading
from awaitlet.greenlet import getcurrent, greenlet

exits = []

def body():
    try:
        getcurrent().parent.switch()
    except BaseException:
        exits.append(1)
        raise

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024

def round_():
    kept = []
    def run():
        for _ in range(2000):
            g = greenlet(body)
            kept.append(g)
            g.switch()
    t = threading.Thread(target=run)
    t.start()
    t.join()
    del kept[:]

for _ in range(3):
    round_()
before = rss_kib()
for _ in range(20):
    round_()
after = rss_kib()
assert not exits, len(exits)
print("growth_kib", after - before)
assert after - before < 32 * 1024, (before, after)
"""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/statm")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_greenlet_being_killed_has_its_killer_for_parent_until_dead():
    # greenlet's test_parent_restored_on_kill, without its switch to the hub.
    hub = greenlet(lambda: None)
    main = getcurrent()
    seen = []

    def worker():
        try:
            main.switch()
        except GreenletExit:
            seen.append(getcurrent().parent)
            seen.append(getcurrent())
            raise

    glet = greenlet(worker, parent=hub)
    glet.switch()
    del glet
    assert seen[0] is main
    assert seen[1].parent is hub
    assert seen[1].dead


def test_trace_function_runs_in_the_target_after_the_switch():
    # As in greenlet: the trace function is called by the greenlet a switch arrives in,
    # with (origin, target); a switch it makes from there starts from the target.
    main = getcurrent()
    events = []
    switch_away = []

    def tracer(event, args):
        origin, target = args
        events.append((event, origin, target, getcurrent()))
        if switch_away:
            other = switch_away.pop()
            other.switch()

    def first_run():
        switch_away.append(second)
        main.switch()
        events.append("first resumed")
        return "first done"

    def second_run():
        first.switch()
        return "second done"

    first, second = greenlet(first_run), greenlet(second_run)
    previous = facade.settrace(tracer)
    try:
        first.switch()
        # The trace call in main (first -> main) switched to second, which switched back to
        # first, which finished into main, still inside that trace call.
        assert second.switch() == "second done"
    finally:
        facade.settrace(previous)
    assert events == [
        ("switch", main, first, first),
        ("switch", first, main, main),
        ("switch", main, second, second),
        ("switch", second, first, first),
        "first resumed",
        ("switch", first, main, main),
        ("switch", main, second, second),
        ("switch", second, main, main),
    ]


def test_trace_function_that_raises_makes_the_switch_raise_in_the_target():
    def tracer(event, args):
        raise ValueError("tracer failed")

    child = greenlet(lambda: "never runs")
    previous = facade.settrace(tracer)
    try:
        with pytest.raises(ValueError, match="tracer failed"):
            child.switch()
        # Tracing stopped; the child died of the tracer's exception, in the child.
        assert facade.gettrace() is None
        assert child.dead
    finally:
        facade.settrace(previous)


def test_switch_into_a_greenlet_from_its_own_run_lookup_starts_it_there():
    class StartsItself(greenlet):
        looked_up = 0

        def __getattribute__(self, name):
            if name == "run" and not object.__getattribute__(self, "looked_up"):
                self.looked_up = 1
                # Starts this greenlet now; the outer switch then resumes it instead.
                assert self.switch(43) == 43
            return greenlet.__getattribute__(self, name)

        def run(self, value):
            while True:
                value = self.parent.switch(value)

    child = StartsItself()
    # The inner switch started it with 43, which it sent back; the outer switch then resumed
    # it (not started it again) with 42, which it sends back.
    assert child.switch(42) == 42
    assert child.switch(44) == 44
    child.throw()
    assert child.dead


def test_greenlet_started_and_finished_during_its_run_lookup_passes_the_switch_to_its_parent():
    results = []

    def parent_run(*args):
        results.append(("parent started with", args))
        return "parent done"

    class Finishes(greenlet):
        busy = False

        def __getattribute__(self, name):
            if name == "run" and not object.__getattribute__(self, "busy"):
                self.busy = True
                results.append(("inner switch gave", self.switch()))
            return object.__getattribute__(self, name)

        def run(self, *args):
            return "child done"

    parent = greenlet(parent_run)
    child = Finishes(parent=parent)
    # The lookup ran the child to its end ("child done" went to its parent, which started and
    # finished into main); the outer switch then goes to the dead child's parent, dead too,
    # and so to main itself, which gets what it sent.
    assert child.switch("sent") == "sent"
    assert results == [
        ("parent started with", ("child done",)),
        ("inner switch gave", "parent done"),
    ]
    assert child.dead and parent.dead


def test_run_replaced_by_lookup_is_dropped_in_the_new_greenlet():
    main = getcurrent()
    results = []

    class DroppedRun:
        def __del__(self):
            results.append(("dropped in", getcurrent() is child))
            main.switch("from the finalizer")

    class LooksUpAnother(greenlet):
        def __getattribute__(self, name):
            if name == "run":
                return lambda: results.append("run called") or "run done"
            return object.__getattribute__(self, name)

    child = LooksUpAnother(DroppedRun())
    assert child.switch() == "from the finalizer"
    assert results == [("dropped in", True)]
    assert child.switch() == "run done"
    assert results == [("dropped in", True), "run called"]


def test_parent_set_during_run_lookup_is_checked_when_the_greenlet_starts():
    started = threading.Event()
    release = threading.Event()
    theirs = []

    def other_thread():
        theirs.append(greenlet(lambda: None))
        started.set()
        release.wait(10)

    class Reparents(greenlet):
        def __getattribute__(self, name):
            if name == "run":
                # Not started yet: any thread's greenlet may be its parent until it starts.
                self.parent = theirs[0]
            return greenlet.__getattribute__(self, name)

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        started.wait(10)
        child = Reparents(lambda: None)
        with pytest.raises(error, match="Cannot switch to a different thread") as caught:
            child.switch()
        assert "Expected" in str(caught.value) and "Current" in str(caught.value)
    finally:
        release.set()
        thread.join(10)
    child = Reparents(lambda: None)
    with pytest.raises(
        error, match=r"^cannot switch to a different thread \(which happens to have exited\)$"
    ):
        child.switch()
    # Once started (or dead), a greenlet's parent must be of its own thread.
    with pytest.raises(ValueError, match="parent cannot be on a different thread"):
        greenlet_started_here().parent = theirs[0]


def greenlet_started_here():
    main = getcurrent()
    child = greenlet(lambda: main.switch())
    child.switch()
    return child


def test_greenlet_killed_as_garbage_may_switch_away_and_is_kept_if_referenced():
    main = getcurrent()
    hub = greenlet(lambda: "hub done")
    seen = []

    def worker():
        try:
            main.switch()
        except GreenletExit as exit:
            # While it is being killed, its killer is its parent.
            seen.extend([str(exit), getcurrent().parent, getcurrent()])
            hub.switch()

    child = greenlet(worker, parent=hub)
    child.switch()
    del child
    gc.collect()
    message, parent_while_killed, survivor = seen
    assert message == "Killing the greenlet because all references have vanished."
    assert parent_while_killed is main
    # It switched to hub (which finished into main) instead of dying: it is suspended, with
    # its own parent back, alive through the reference it took to itself.
    assert survivor.parent is hub and not survivor.dead and hub.dead
    seen.clear()
    # It is an ordinary suspended greenlet again: a throw kills it, into its dead parent's
    # parent.
    assert isinstance(survivor.throw(), GreenletExit)
    assert survivor.dead


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )


def test_getcurrent_refuses_while_the_interpreter_finalizes():
    # As in greenlet: a finalizer run by the interpreter's last collection gets an error
    # instead of a greenlet of a thread state that is going away.
    done = run_python(
        """
import gc, os
from awaitlet.greenlet import getcurrent
gc.disable()
class Checker:
    def __del__(self):
        try:
            getcurrent()
        except RuntimeError as err:
            os.write(1, b"refused: " + str(err).encode() + b"\\n")
        else:
            os.write(1, b"not refused\\n")
a = Checker(); b = {"a": a}; a.cycle = b
del a, b
print("cycle left for shutdown", flush=True)
"""
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "cycle left for shutdown",
        "refused: greenlet is being finalized",
    ]


def test_switch_from_a_finalizer_at_module_teardown_is_clean():
    done = run_python(
        """
import awaitlet._awaitlet as native
from awaitlet.greenlet import greenlet
children = []
def run(children=children):
    children[0].parent.switch(1)
children.append(greenlet(run))
class SwitchesWhenCleared:
    def __del__(self, children=children):
        print("result", children[0].switch(), flush=True)
native.cleared_at_teardown = SwitchesWhenCleared()
"""
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["result 1"]
