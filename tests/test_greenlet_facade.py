"""The greenlet facade (awaitlet.greenlet): the API SQLAlchemy and awaitlet rely on."""

import asyncio
import contextvars
import gc
import sys
import threading
import weakref

import pytest
from awaitlet import async_def, awaitlet
from awaitlet import greenlet as facade
from awaitlet.greenlet import GreenletExit, error, getcurrent, greenlet


class ProviderGreenlet(greenlet):
    __sqlalchemy_greenlet_provider__ = True

    def __init__(self, fn, driver):
        greenlet.__init__(self, fn, driver)
        self.gr_context = driver.gr_context


async def spawn(fn, *args, **kwargs):
    """SQLAlchemy's greenlet_spawn algorithm, written against the facade."""
    context = ProviderGreenlet(fn, getcurrent())
    result = context.switch(*args, **kwargs)
    while not context.dead:
        try:
            value = await result
        except BaseException:
            result = context.throw(*sys.exc_info())
        else:
            result = context.switch(value)
    return result


def await_only(awaitable):
    """SQLAlchemy's await_only, written against the facade."""
    current = getcurrent()
    if not getattr(current, "__sqlalchemy_greenlet_provider__", False):
        raise RuntimeError("not in a provider greenlet")
    return current.parent.switch(awaitable)


async def double(value):
    await asyncio.sleep(0)
    return value * 2


def test_main_greenlet_is_current_outside_fibers_and_per_thread():
    main = getcurrent()
    assert main is getcurrent() is greenlet.getcurrent()
    assert main.parent is None and bool(main) and not main.dead
    other = []
    thread = threading.Thread(target=lambda: other.append(getcurrent()))
    thread.start()
    thread.join()
    assert other[0] is not main


def test_switch_into_child_and_back_passes_values():
    main = getcurrent()
    seen = []

    def run(a, b=0):
        seen.append((a, b))
        got = main.switch(a + b)
        seen.append(got)
        return "done"

    child = greenlet(run)
    assert not child and not child.dead and child.parent is main
    assert child.switch(1, b=2) == 3
    assert child and not child.dead
    assert child.switch("back") == "done"
    assert child.dead and not child
    assert seen == [(1, 2), "back"]


def test_getcurrent_returns_the_exact_running_subclass_instance():
    observed = []

    class Custom(greenlet):
        pass

    child = Custom(lambda: observed.append(getcurrent()))
    child.switch()
    assert observed == [child]


def test_exception_in_child_propagates_to_parent_with_traceback():
    def run():
        raise ValueError("from child")

    with pytest.raises(ValueError, match="from child") as info:
        greenlet(run).switch()
    assert "run" in [entry.name for entry in info.traceback]


def test_throw_raises_at_the_switch_point_and_greenlet_exit_is_returned():
    main = getcurrent()
    caught = []

    def run():
        try:
            main.switch()
        except KeyError as exc:
            caught.append(exc)
        main.switch("after")

    child = greenlet(run)
    child.switch()
    assert child.throw(KeyError, KeyError("k"), None) == "after"
    assert isinstance(caught[0], KeyError)
    exit_ = child.throw()
    assert isinstance(exit_, GreenletExit) and child.dead


def test_throw_into_unstarted_greenlet_kills_it_without_running():
    ran = []
    child = greenlet(lambda: ran.append(1))
    with pytest.raises(ValueError):
        child.throw(ValueError)
    assert child.dead and not ran


def test_dropping_a_suspended_greenlet_kills_it_and_runs_finally():
    main = getcurrent()
    cleanup = []

    def run():
        try:
            main.switch()
        finally:
            cleanup.append("finally")

    child = greenlet(run)
    child.switch()
    ref = weakref.ref(child)
    del child
    gc.collect()
    assert cleanup == ["finally"]
    assert ref() is None


def test_switch_to_a_sibling_resumes_it_where_it_switched_away():
    main = getcurrent()

    def first():
        return ("first got", main.switch())

    def second():
        return sibling.switch("from second")

    sibling = greenlet(first)
    sibling.switch()
    # sibling finishes; its result goes to its parent, main.
    assert greenlet(second).switch() == ("first got", "from second")
    assert sibling.dead


def test_switch_from_another_thread_raises_error():
    main = getcurrent()
    child = greenlet(lambda: main.switch())
    child.switch()
    errors = []

    def resume_elsewhere():
        for attempt in (lambda: child.switch(), lambda: child.throw()):
            try:
                attempt()
            except error as exc:
                errors.append(str(exc))

    thread = threading.Thread(target=resume_elsewhere)
    thread.start()
    thread.join()
    assert len(errors) == 2
    assert all("different thread" in message for message in errors)
    assert not child.dead
    child.throw()
    assert child.dead


def test_gr_context_is_the_drivers_context():
    var = contextvars.ContextVar("var")

    async def main():
        var.set("task value")

        def sync_side():
            assert var.get() == "task value"
            var.set("set in greenlet")
            return await_only(double(2))

        assert await spawn(sync_side) == 4
        return var.get()

    assert asyncio.run(main()) == "set in greenlet"


def test_spawn_algorithm_awaits_and_propagates_errors():
    async def fails():
        await asyncio.sleep(0)
        raise LookupError("async failure")

    def sync_side():
        assert await_only(double(5)) == 10
        try:
            await_only(fails())
        except LookupError:
            return "handled"

    assert asyncio.run(spawn(sync_side)) == "handled"


def test_awaitlet_works_inside_provider_greenlets():
    def sync_side():
        return awaitlet(double(21))

    assert asyncio.run(spawn(sync_side)) == 42


def test_awaitlet_refuses_plain_greenlets():
    from awaitlet import NoAwaitletContext

    def sync_side():
        coro = double(1)
        try:
            awaitlet(coro)
        except NoAwaitletContext:
            return "refused"

    assert greenlet(sync_side).switch() == "refused"


def test_getcurrent_inside_async_def_is_a_provider_whose_parent_awaits():
    def sync_side():
        current = getcurrent()
        assert current.__sqlalchemy_greenlet_provider__
        assert current is getcurrent()
        assert current.parent is not None
        return await_only(double(4)) + awaitlet(double(1))

    async def main():
        return await async_def(sync_side)

    assert asyncio.run(main()) == 10


def test_facade_module_is_marked():
    assert facade.__awaitlet_facade__ is True
    assert issubclass(GreenletExit, BaseException)
    assert issubclass(error, Exception)


def test_parent_must_be_a_greenlet_and_not_make_a_cycle():
    first = greenlet(lambda: None)
    second = greenlet(lambda: None, parent=first)
    with pytest.raises(TypeError, match="Expected any type of greenlet"):
        first.parent = object()
    with pytest.raises(ValueError, match="cyclic parent chain"):
        first.parent = second
    assert first.parent is getcurrent() and second.parent is first
    with pytest.raises(AttributeError):
        getcurrent().parent = first


def test_unstarted_greenlets_in_a_reference_cycle_through_parent_are_collected():
    parent = greenlet(lambda: None)
    child = greenlet(lambda: None, parent=parent)
    # The cycle runs through the native `parent` reference, not only instance dicts.
    parent.child = child
    refs = [weakref.ref(parent), weakref.ref(child)]
    del parent, child
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


def test_repr_names_the_class_and_state():
    main = getcurrent()
    child = greenlet(lambda: main.switch(repr(getcurrent())))
    assert repr(child).startswith("<awaitlet.greenlet.greenlet object at ")
    assert repr(child).endswith(" pending>")
    assert child.switch().endswith(" current active started>")
    assert repr(child).endswith(" suspended active started>")
    child.switch()
    assert repr(child).endswith(" dead>")
    assert repr(main).endswith(" current active started main>")


def test_nested_greenlets_switch_to_their_parents_and_past_them():
    main = getcurrent()
    trail = []

    def inner():
        trail.append(("inner parent is middle", getcurrent().parent is middle))
        got = middle.switch("from inner")
        trail.append(main.switch("skipping a level"))
        return got

    def outer():
        child = greenlet(inner)
        trail.append(child.switch())
        trail.append(child.switch(value="kw"))
        return "outer done"

    middle = greenlet(outer)
    assert middle.switch() == "skipping a level"
    # middle waits inside child.switch(value="kw"); inner inside main.switch().
    assert not middle.dead and middle.gr_frame is not None
    assert middle.switch("resumed") == "outer done"
    # inner is left waiting in main.switch().
    assert trail == [("inner parent is middle", True), "from inner", "resumed"]


def test_subclass_run_method_and_switch_arguments():
    class Adder(greenlet):
        def run(self, a, b=0):
            return a + b

    assert Adder().switch(1, b=2) == 3
    assert greenlet(lambda *args: args).switch() == ()
