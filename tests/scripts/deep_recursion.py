"""Deep recursion inside sync code run by async_def.

Usage: deep_recursion.py SCENARIO
Prints "<scenario> OK" when every check of the scenario passed.
"""

import asyncio
import functools
import json
import sys

from awaitlet import async_def, awaitlet


def current_depth():
    depth = 0
    frame = sys._getframe(1)
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


def recurse_forever(depth=0):
    return recurse_forever(depth + 1)


def recurse_to(remaining):
    if remaining <= 0:
        return 0
    return recurse_to(remaining - 1) + 1


def descend_directly(remaining, at_bottom):
    if remaining <= 0:
        return at_bottom()
    return descend_directly(remaining - 1, at_bottom)


def descend_through_map(remaining, at_bottom):
    if remaining <= 0:
        return at_bottom()
    next_level = functools.partial(descend_through_map, at_bottom=at_bottom)
    return list(map(next_level, [remaining - 1]))[0]


def deepest_successful_descent(descend):
    """The largest number of levels ``descend`` reaches from here without RecursionError."""
    low, high = 0, 100_000
    while low < high:
        middle = (low + high + 1) // 2
        try:
            descend(middle, lambda: None)
        except RecursionError:
            high = middle - 1
        else:
            low = middle
    return low


def switch_and_report_depth():
    results = [awaitlet(asyncio.sleep(0, result=index)) for index in range(20)]
    return results, current_depth()


def recurse_through_reduce(depth=0):
    return functools.reduce(lambda accumulated, _: recurse_through_reduce(depth + 1), [0], 0)


def recurse_through_map(depth=0):
    return list(map(recurse_through_map, [depth + 1]))


def recurse_through_sorted_key(depth=0):
    return sorted([depth + 1], key=recurse_through_sorted_key)


class RecursiveAttribute:
    def __getattr__(self, name):
        return getattr(self, name)


def recurse_through_getattr():
    return RecursiveAttribute().missing_attribute


class RecursiveRepr:
    def __repr__(self):
        return repr(self)


def recurse_through_repr():
    return repr(RecursiveRepr())


@functools.cache
def recurse_through_lru_cache(depth=0):
    return recurse_through_lru_cache(depth + 1)


class RecursiveConstructor:
    def __init__(self, depth=0):
        self.child = RecursiveConstructor(depth + 1)


class RecursiveInstanceCheck(type):
    def __instancecheck__(cls, instance):
        return isinstance(instance, cls)


class CheckedType(metaclass=RecursiveInstanceCheck):
    pass


def recurse_through_isinstance():
    return isinstance(0, CheckedType)


def recurse_through_json_default():
    return json.dumps(object(), default=lambda value: [object()])


RECURSIONS = {
    "pure_python": recurse_forever,
    "reduce": recurse_through_reduce,
    "map": recurse_through_map,
    "sorted_key": recurse_through_sorted_key,
    "getattr": recurse_through_getattr,
    "repr": recurse_through_repr,
    "lru_cache": recurse_through_lru_cache,
    "constructor": RecursiveConstructor,
    "isinstance": recurse_through_isinstance,
    "json_default": recurse_through_json_default,
}


def raises_recursion_error(recursion):
    try:
        recursion()
    except RecursionError:
        return True
    return False


def sync_code_survives(recursion_names):
    outcomes = {}
    awaitlet(asyncio.sleep(0))
    for name in recursion_names:
        outcomes[name] = raises_recursion_error(RECURSIONS[name])
        awaitlet(asyncio.sleep(0))
        outcomes[f"{name} then recursion to 500"] = recurse_to(500) == 500
        outcomes[f"{name} then awaitlet"] = awaitlet(asyncio.sleep(0, result=True))
    return outcomes


def check_outcomes(outcomes):
    failed = [name for name, passed in outcomes.items() if not passed]
    assert not failed, f"failed checks: {failed}"


async def recursion_errors_are_survivable(recursion_names):
    for _ in range(2):
        check_outcomes(await async_def(sync_code_survives, recursion_names))
    results = await asyncio.gather(
        *(async_def(sync_code_survives, recursion_names) for _ in range(3))
    )
    for outcomes in results:
        check_outcomes(outcomes)
    assert raises_recursion_error(recurse_forever), "task side lost its recursion limit"
    assert recurse_to(500) == 500
    assert await async_def(awaitlet, asyncio.sleep(0, result="usable")) == "usable"


def recursion_error_survivable(name):
    asyncio.run(recursion_errors_are_survivable([name]))


async def recursion_in_a_first_step(recursion):
    return raises_recursion_error(recursion)


async def recursion_in_a_first_step_then_yield(recursion):
    raised = raises_recursion_error(recursion)
    await asyncio.sleep(0)
    return raised


def first_steps_survive(recursion_names):
    """Recursion in the first step of awaitables, which runs before any switch on the stack
    of the task that resumed the fiber, with that stack's limits."""
    outcomes = {}
    for name in recursion_names:
        recursion = RECURSIONS[name]
        outcomes[f"{name} in a first step"] = awaitlet(recursion_in_a_first_step(recursion))
        outcomes[f"{name} in a first step that yields"] = awaitlet(
            recursion_in_a_first_step_then_yield(recursion)
        )
        outcomes[f"{name} then recursion to 500"] = recurse_to(500) == 500
    return outcomes


def recursion_error_in_first_steps():
    async def main():
        check_outcomes(await async_def(first_steps_survive, list(RECURSIONS)))
        results = await asyncio.gather(
            *(async_def(first_steps_survive, list(RECURSIONS)) for _ in range(3))
        )
        for outcomes in results:
            check_outcomes(outcomes)
        assert raises_recursion_error(recurse_forever), "task side lost its recursion limit"
        assert recurse_to(500) == 500

    asyncio.run(main())


async def awaitlet_near_the_limit(descend):
    levels = deepest_successful_descent(descend) - 100
    assert levels >= 300, levels

    def entry_point():
        return descend(levels, switch_and_report_depth)

    results, depth = await async_def(entry_point)
    assert results == list(range(20)), results
    assert depth >= levels, (depth, levels)
    concurrent = await asyncio.gather(*(async_def(entry_point) for _ in range(5)))
    for results, depth in concurrent:
        assert results == list(range(20)), results
        assert depth >= levels, (depth, levels)


def awaitlet_at_depth_pure_python():
    asyncio.run(awaitlet_near_the_limit(descend_directly))


def awaitlet_at_depth_through_c_calls():
    asyncio.run(awaitlet_near_the_limit(descend_through_map))


def raised_limit_pure_python():
    sys.setrecursionlimit(20_000)

    def deep_then_switch():
        results, depth = descend_directly(19_000 - current_depth(), switch_and_report_depth)
        error = raises_recursion_error(recurse_forever)
        return results, depth, error

    async def main():
        return await asyncio.gather(*(async_def(deep_then_switch) for _ in range(3)))

    for results, depth, error in asyncio.run(main()):
        assert results == list(range(20)), results
        assert depth >= 18_990, depth
        assert error


def switch_at_every_level():
    def descend_switching(remaining):
        awaitlet(asyncio.sleep(0))
        if remaining <= 0:
            return 0
        below = descend_switching(remaining - 1)
        awaitlet(asyncio.sleep(0))
        return below + 1

    async def main():
        levels = sys.getrecursionlimit() - 100
        return await asyncio.gather(*(async_def(descend_switching, levels) for _ in range(8)))

    levels = sys.getrecursionlimit() - 100
    assert asyncio.run(main()) == [levels] * 8


def limit_changed_inside_sync_code():
    original = sys.getrecursionlimit()
    raised = 3 * original

    def changes_limit_across_switches():
        sys.setrecursionlimit(400)
        awaitlet(asyncio.sleep(0))
        assert raises_recursion_error(recurse_forever)
        assert recurse_to(200) == 200
        awaitlet(task_side_checks(lowered=True))
        sys.setrecursionlimit(raised)
        awaitlet(asyncio.sleep(0))
        assert recurse_to(original + 500) == original + 500
        assert raises_recursion_error(recurse_forever)
        awaitlet(task_side_checks(lowered=False))
        sys.setrecursionlimit(original)
        awaitlet(asyncio.sleep(0))
        assert raises_recursion_error(recurse_forever)
        return recurse_to(original - 150 - current_depth()) > 0

    async def task_side_checks(lowered):
        await asyncio.sleep(0)
        assert raises_recursion_error(recurse_forever)
        if lowered:
            assert recurse_to(200) == 200
        else:
            assert recurse_to(original + 500) == original + 500

    async def main():
        for _ in range(3):
            assert await async_def(changes_limit_across_switches)
        assert raises_recursion_error(recurse_forever)
        return recurse_to(original - 150 - current_depth()) > 0

    assert asyncio.run(main())
    assert sys.getrecursionlimit() == original


def depth_counter_stable_after_many_switches():
    limit = sys.getrecursionlimit()

    def switch_at_depth(depth):
        if depth > 0:
            return switch_at_depth(depth - 1)
        for _ in range(50):
            awaitlet(asyncio.sleep(0))
        return recurse_to(limit - 100 - current_depth())

    async def main():
        for _ in range(3):
            await asyncio.gather(
                *(async_def(switch_at_depth, depth) for depth in range(0, 400, 10))
            )
        return recurse_to(limit - 100 - current_depth())

    asyncio.run(main())


SCENARIOS = {
    **{
        f"recursion_error_{name}": functools.partial(recursion_error_survivable, name)
        for name in RECURSIONS
    },
    "recursion_error_in_first_steps": recursion_error_in_first_steps,
    "awaitlet_at_depth_pure_python": awaitlet_at_depth_pure_python,
    "awaitlet_at_depth_through_c_calls": awaitlet_at_depth_through_c_calls,
    "raised_limit_pure_python": raised_limit_pure_python,
    "depth_counter_stable_after_many_switches": depth_counter_stable_after_many_switches,
    "limit_changed_inside_sync_code": limit_changed_inside_sync_code,
    "switch_at_every_level": switch_at_every_level,
}


if __name__ == "__main__":
    scenario = sys.argv[1]
    SCENARIOS[scenario]()
    print(f"{scenario} OK")
