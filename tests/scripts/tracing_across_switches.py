"""Trace, profile and monitor code that switches between sync stacks and the task.

Usage: tracing_across_switches.py SCENARIO
Prints "<scenario> OK" when every check of the scenario passed.
"""

import asyncio
import sys

from awaitlet import async_def, awaitlet

EXPECTED_CALLS = {
    "sync_entry_point",
    "before_switch_helper",
    "after_switch_helper",
    "awaited_coroutine",
    "task_side_helper",
    "raising_helper",
}

seen_calls = set()


def tracer(frame, event, arg):
    if event == "call":
        seen_calls.add(frame.f_code.co_name)
    return tracer


def profiler(frame, event, arg):
    if event == "call":
        seen_calls.add(frame.f_code.co_name)


def before_switch_helper():
    return "before"


def after_switch_helper():
    return "after"


def task_side_helper():
    return "task side"


def raising_helper():
    raise LookupError("raised while traced")


async def awaited_coroutine():
    await asyncio.sleep(0)
    return task_side_helper()


def sync_entry_point():
    before_switch_helper()
    for _ in range(3):
        awaitlet(awaited_coroutine())
        awaitlet(asyncio.sleep(0.001))
    after_switch_helper()
    try:
        raising_helper()
    except LookupError:
        awaitlet(asyncio.sleep(0))
    return "done"


async def run_sync_entry_points():
    return await asyncio.gather(*(async_def(sync_entry_point) for _ in range(5)))


def toggle(setter, hook, enabled):
    setter(hook if enabled else None)


async def toggling_awaited_coroutine(setter, hook, round_number):
    toggle(setter, hook, round_number % 3 == 0)
    await asyncio.sleep(0)
    task_side_helper()
    toggle(setter, hook, round_number % 3 == 1)
    await asyncio.sleep(0)
    return round_number


def toggling_entry_point(setter, hook, index):
    results = []
    for round_number in range(30):
        toggle(setter, hook, (round_number + index) % 2 == 0)
        before_switch_helper()
        results.append(awaitlet(toggling_awaited_coroutine(setter, hook, round_number)))
        after_switch_helper()
        toggle(setter, hook, (round_number + index) % 4 == 0)
        awaitlet(asyncio.sleep(0))
    return results


async def run_toggling_entry_points(setter, hook):
    results = await asyncio.gather(
        *(async_def(toggling_entry_point, setter, hook, index) for index in range(6))
    )
    setter(None)
    return results


def hook_installed_before_start(setter, hook):
    setter(hook)
    try:
        results = asyncio.run(run_sync_entry_points())
    finally:
        setter(None)
    assert results == ["done"] * 5, results
    missing = EXPECTED_CALLS - seen_calls
    assert not missing, f"no 'call' event for {sorted(missing)}"


def hook_toggled_inside_sync_code(setter, hook, getter):
    results = asyncio.run(run_toggling_entry_points(setter, hook))
    assert results == [list(range(30))] * 6, results
    assert getter() is None
    after = asyncio.run(run_sync_entry_points())
    assert after == ["done"] * 5, after


def hook_installed_inside_sync_code_and_left_on(setter, hook):
    def install_then_switch():
        setter(hook)
        awaitlet(awaited_coroutine())
        before_switch_helper()
        return "installed"

    async def main():
        result = await async_def(install_then_switch)
        task_side_helper()
        return result

    try:
        assert asyncio.run(main()) == "installed"
        assert asyncio.run(run_sync_entry_points()) == ["done"] * 5
    finally:
        setter(None)


def monitoring_across_switches():
    monitoring = sys.monitoring
    tool_id = 4
    started = set()

    def on_start(code, instruction_offset):
        started.add(code.co_name)

    def ignore(*args):
        return None

    events = monitoring.events
    monitoring.use_tool_id(tool_id, "awaitlet tests")
    try:
        monitoring.register_callback(tool_id, events.PY_START, on_start)
        for event in (events.PY_RESUME, events.PY_YIELD, events.PY_RETURN, events.RAISE):
            monitoring.register_callback(tool_id, event, ignore)
        all_events = (
            events.PY_START | events.PY_RESUME | events.PY_YIELD | events.PY_RETURN | events.RAISE
        )
        monitoring.set_events(tool_id, all_events)
        results = asyncio.run(run_sync_entry_points())

        def set_monitoring(hook):
            monitoring.set_events(tool_id, all_events if hook else 0)

        toggled = asyncio.run(run_toggling_entry_points(set_monitoring, True))
    finally:
        monitoring.set_events(tool_id, 0)
        monitoring.free_tool_id(tool_id)
    assert results == ["done"] * 5, results
    assert toggled == [list(range(30))] * 6, toggled
    missing = EXPECTED_CALLS - started
    assert not missing, f"no PY_START event for {sorted(missing)}"


SCENARIOS = {
    "settrace_before_start": lambda: hook_installed_before_start(sys.settrace, tracer),
    "settrace_toggled_in_sync_code": lambda: hook_toggled_inside_sync_code(
        sys.settrace, tracer, sys.gettrace
    ),
    "settrace_left_on_by_sync_code": lambda: hook_installed_inside_sync_code_and_left_on(
        sys.settrace, tracer
    ),
    "setprofile_before_start": lambda: hook_installed_before_start(sys.setprofile, profiler),
    "setprofile_toggled_in_sync_code": lambda: hook_toggled_inside_sync_code(
        sys.setprofile, profiler, sys.getprofile
    ),
    "setprofile_left_on_by_sync_code": lambda: hook_installed_inside_sync_code_and_left_on(
        sys.setprofile, profiler
    ),
    "monitoring_across_switches": monitoring_across_switches,
}


if __name__ == "__main__":
    scenario = sys.argv[1]
    SCENARIOS[scenario]()
    print(f"{scenario} OK")
