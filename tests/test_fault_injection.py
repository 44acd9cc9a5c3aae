"""Faults from outside the program, each in its own process (tests/scripts/fault_injection.py):
address-space exhaustion, SIGINT, sys.exit(), fork and interpreter exit, delivered while
sync code runs on a fiber or is suspended in awaitlet(). The outcome is an exception where
a thread would get one, never a crash."""

from __future__ import annotations

import os
import sys

import pytest
from _support import CRASH_MARKERS, ScriptResult, run_script

SCRIPT = "fault_injection.py"

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="needs Linux (RLIMIT_AS, /proc)"
)
needs_fork = pytest.mark.skipif(
    not hasattr(os, "fork") or sys.platform == "darwin",
    reason="needs os.fork() (unsafe without exec on macOS)",
)


def run(scenario: str, *args: str) -> ScriptResult:
    result = run_script(SCRIPT, scenario, *args, timeout=180)
    for marker in CRASH_MARKERS:
        assert marker not in result.stderr, result.describe()
    return result


def assert_clean(result: ScriptResult, expected_stdout: list[str]) -> None:
    assert result.returncode == 0, result.describe()
    assert result.stdout.splitlines() == expected_stdout, result.describe()
    assert result.stderr == "", result.describe()


@linux_only
def test_no_address_space_for_the_first_stack_raises_memory_error():
    scenario = "address_space_too_small_for_the_first_stack"
    assert_clean(
        run(scenario),
        ["with no room: MemoryError", "with room again: 42", f"{scenario} OK"],
    )


@linux_only
def test_address_space_running_out_under_suspended_stacks_raises_memory_error():
    scenario = "address_space_runs_out_while_stacks_are_suspended"
    assert_clean(
        run(scenario),
        [
            "ran out: MemoryError",
            "every suspended one finished: True",
            "every finally ran once: True",
            "new stacks after that: True",
            f"{scenario} OK",
        ],
    )


BUSY = [
    "busy code started",
    "KeyboardInterrupt in busy code, raised in spin",
    "busy code finally",
    "KeyboardInterrupt left the loop, raised in spin",
    "the task failed with KeyboardInterrupt",
]
NESTED_BUSY = [
    "outer code started",
    "busy code started",
    "KeyboardInterrupt in busy code, raised in spin",
    "busy code finally",
    "KeyboardInterrupt in outer code, raised in spin",
    "outer code finally",
    "KeyboardInterrupt left the loop, raised in spin",
    "the task failed with KeyboardInterrupt",
]
# The loop waits for I/O on the thread's own stack: that is where the signal lands; the
# cancellation that follows reaches the suspended code.
SUSPENDED = [
    "waiting code started",
    "KeyboardInterrupt left the loop, raised in select",
    "CancelledError in waiting code",
    "waiting code finally",
    "the task was cancelled",
]
# asyncio.run turns the first SIGINT into a cancellation of the main task (3.11+), or
# cancels what is left after KeyboardInterrupt left the loop (3.10): the same events.
SUSPENDED_IN_ASYNCIO_RUN = [
    "waiting code started",
    "CancelledError in waiting code",
    "waiting code finally",
    "KeyboardInterrupt left asyncio.run",
]


@linux_only
@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("sigint_while_sync_code_runs", BUSY),
        ("sigint_while_nested_sync_code_runs", NESTED_BUSY),
        ("sigint_while_sync_code_is_suspended", SUSPENDED),
        ("sigint_while_sync_code_is_suspended_in_asyncio_run", SUSPENDED_IN_ASYNCIO_RUN),
    ],
)
def test_sigint_raises_keyboard_interrupt_where_coroutines_would_see_it(scenario, expected):
    """The same program with the sync code as coroutines and on fibers: the same events."""
    native = run(scenario, "native")
    assert_clean(native, [*expected, f"{scenario} OK"])
    assert_clean(run(scenario, "awaitlet"), native.stdout.splitlines())


def test_uncaught_sys_exit_in_nested_sync_code_exits_with_its_code_after_every_finally():
    result = run("sys_exit_from_nested_sync_code_ends_the_process")
    assert result.returncode == 3, result.describe()
    assert result.stdout.splitlines() == [
        "at exit: ['inner finally', 'other 0 finally', 'other 1 finally', 'other 2 finally', "
        "'outer finally']"
    ], result.describe()
    assert result.stderr == "", result.describe()


def test_sys_exit_on_a_fiber_in_a_thread_ends_that_thread_quietly():
    scenario = "sys_exit_on_a_fiber_ends_only_its_thread"
    assert_clean(
        run(scenario),
        [
            "thread events: ['thread started', 'sync finally']",
            "main thread: still works",
            f"{scenario} OK",
        ],
    )


@needs_fork
def test_fork_from_sync_code_on_a_fiber_child_runs_a_new_loop_with_fibers():
    scenario = "fork_from_sync_code_on_a_fiber"
    assert_clean(
        run(scenario),
        [
            "child on a fiber: True",
            "parent: child exit code 0, others True",
            f"{scenario} OK",
        ],
    )


@needs_fork
def test_fork_while_another_thread_holds_suspended_fibers():
    scenario = "fork_while_another_thread_holds_suspended_fibers"
    assert_clean(
        run(scenario),
        [
            "child: True",
            "parent: child exit code 0",
            "parent: thread finished: True",
            f"{scenario} OK",
        ],
    )


@pytest.mark.parametrize("activity", ["sleeping", "spinning"])
def test_interpreter_exit_while_daemon_threads_run_sync_code_on_fibers(activity):
    scenario = "exit_while_daemon_threads_run_sync_code"
    assert_clean(run(scenario, activity), [f"{scenario} OK"])


@pytest.mark.parametrize(
    "scenario",
    [
        "exit_while_daemon_threads_wait_in_their_loops",
        "exit_after_threads_ended_leaving_suspended_fibers",
    ],
)
def test_interpreter_exit_with_suspended_fibers_in_several_threads(scenario):
    assert_clean(run(scenario), [f"{scenario} OK"])
