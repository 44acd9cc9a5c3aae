"""The fast path of the facade's switch(): a switch with no keyword and at most one positional
argument, while no settrace() tracer and no trace or profile hook is set, into a suspended
greenlet or back to the greenlet that resumed the running one, skips the general way. These
check that it hands over what the general way does, and that whatever it meets on the other
side of the switch (a tracer or a hook set meanwhile, a greenlet that finished or switched
elsewhere) is handled as the general way handles it."""

import sys

import pytest
from _support import assert_script_succeeded, run_script
from awaitlet import greenlet as facade
from awaitlet.greenlet import getcurrent, greenlet


def test_switch_hands_over_nothing_as_the_empty_tuple_and_one_value_as_itself():
    main = getcurrent()
    received = []

    def run(*first):
        received.append(first)
        received.append(main.switch())
        received.append(main.switch(("a", "tuple")))
        received.append(main.switch(None))
        return "done"

    child = greenlet(run)
    assert child.switch() == ()
    assert child.switch() == ("a", "tuple")
    assert child.switch(("b",)) is None
    assert child.switch(7) == "done"
    assert received == [(), (), ("b",), 7]


def test_switches_between_a_greenlet_and_the_greenlet_that_resumed_it():
    main = getcurrent()

    def inner(count, outer):
        total = 0
        for index in range(count):
            total += outer.switch(index)
        return total

    def outer():
        me = getcurrent()
        child = greenlet(inner)
        value = child.switch(4, me)
        trail = []
        while not child.dead:
            trail.append(value)
            main.switch(value)
            value = child.switch(value * 10)
        return trail, value

    runner = greenlet(outer)
    seen = [runner.switch()]
    while True:
        value = runner.switch()
        if runner.dead:
            break
        seen.append(value)
    assert seen == [0, 1, 2, 3]
    assert value == ([0, 1, 2, 3], 0 + 10 + 20 + 30)


def test_a_greenlet_resumed_fast_that_finishes_or_switches_elsewhere_goes_on_as_in_general():
    main = getcurrent()

    def to_sibling():
        main.switch("suspended")
        return sibling.switch("to the sibling")

    def sibling_run(value):
        got = main.switch(("sibling got", value))
        return ("sibling done", got)

    child, sibling = greenlet(to_sibling), greenlet(sibling_run)
    assert child.switch() == "suspended"
    # Resumed the fast way, the child switches to a greenlet it did not come from.
    assert child.switch() == ("sibling got", "to the sibling")
    # The sibling's result goes to its parent (main), the child stays suspended.
    assert sibling.switch("back") == ("sibling done", "back")
    assert not child.dead

    def finishing():
        main.switch()
        raise KeyError("from the child")

    failing = greenlet(finishing, parent=main)
    failing.switch()
    with pytest.raises(KeyError, match="from the child"):
        failing.switch()
    assert failing.dead
    child.throw()
    assert child.dead


def test_a_tracer_set_while_a_greenlet_waits_in_a_fast_switch_sees_its_arrival():
    main = getcurrent()
    events = []

    def run():
        value = main.switch("ready")
        events.append(("resumed with", value))
        return "done"

    child = greenlet(run)
    assert child.switch() == "ready"
    previous = facade.settrace(lambda event, args: events.append((event, args, getcurrent())))
    try:
        assert child.switch("go") == "done"
    finally:
        facade.settrace(previous)
    assert events == [
        ("switch", (main, child), child),
        ("resumed with", "go"),
        ("switch", (child, main), main),
    ]


def test_a_tracer_set_by_the_greenlet_a_fast_switch_resumed_sees_the_switch_back():
    main = getcurrent()
    events = []
    previous = []

    def run():
        main.switch()
        previous.append(
            facade.settrace(lambda event, args: events.append((event, args, getcurrent())))
        )
        main.switch("traced")

    child = greenlet(run)
    child.switch()
    try:
        assert child.switch() == "traced"
    finally:
        facade.settrace(previous[0])
    assert events == [("switch", (child, main), main)]
    child.throw()


def test_a_greenlet_resumed_fast_that_switches_with_keywords_or_to_others_goes_the_general_way():
    main = getcurrent()

    def run():
        assert main.switch(1, 2) == {"key": "word"}
        assert main.switch(key="word") == (3, 4)
        return main.switch()

    child = greenlet(run)
    assert child.switch() == (1, 2)
    assert child.switch(key="word") == {"key": "word"}
    assert child.switch(3, 4) == ()
    assert child.switch("last") == "last"
    assert child.dead


def test_fast_switches_leak_no_reference():
    main = getcurrent()
    token = object()

    def run(value):
        while True:
            value = main.switch(value)

    child = greenlet(run)
    child.switch(token)
    before = sys.getrefcount(token)
    for _ in range(1000):
        assert child.switch(token) is token
    assert sys.getrefcount(token) == before
    child.throw()
    assert child.dead


def test_a_greenlet_resumed_fast_releases_its_call_when_it_finishes():
    assert_script_succeeded(run_script("fast_switch_hazards.py", "release"), ["release OK"])


# On 3.12+, where PyEval_SetTrace/SetProfile are built on sys.monitoring, a hook installed
# while greenlets are suspended gets a second "call" event for the innermost frame of one
# that is resumed (the same through the general way, before the fast path existed): the
# shadow-stack check does not hold there.
@pytest.mark.skipif(
    sys.version_info >= (3, 12),
    reason="legacy hooks installed midway report resumed frames twice on 3.12+",
)
@pytest.mark.parametrize("kind", ["trace", "profile"])
def test_c_level_hooks_set_while_greenlets_wait_in_fast_switches_see_calls_that_nest(kind):
    assert_script_succeeded(
        run_script("fast_switch_hazards.py", "hooks-midway", kind), [f"{kind} OK"]
    )
