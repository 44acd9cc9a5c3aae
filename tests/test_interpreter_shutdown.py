import pytest
from _support import CRASH_MARKERS, run_script

SCRIPT = "shutdown_with_suspended_stacks.py"

ASYNCIO_PENDING_TASK_LINES = ("Task was destroyed but it is pending!", "task: <Task pending ")


def assert_clean_exit(scenario, expected_stdout_lines, stderr_may_report_pending_tasks):
    result = run_script(SCRIPT, scenario)
    for marker in CRASH_MARKERS:
        assert marker not in result.stderr, result.describe()
    assert result.returncode == 0, result.describe()
    assert result.stdout.splitlines() == [*expected_stdout_lines, f"{scenario} OK"], (
        result.describe()
    )
    unexpected_stderr = [
        line
        for line in result.stderr.splitlines()
        if line.strip()
        and not (stderr_may_report_pending_tasks and line.startswith(ASYNCIO_PENDING_TASK_LINES))
    ]
    assert unexpected_stderr == [], result.describe()


def test_asyncio_run_returning_cancels_suspended_sync_stacks():
    assert_clean_exit("asyncio_run_returns", ["finally ran 50"], False)


@pytest.mark.parametrize(
    "scenario",
    [
        "loop_closed_with_pending_tasks",
        "loop_closed_and_tasks_kept_until_exit",
        "loop_left_open_at_exit",
    ],
)
def test_loop_stopped_with_tasks_suspended_in_sync_code_exits_cleanly(scenario):
    assert_clean_exit(scenario, [], True)


@pytest.mark.parametrize(
    "scenario",
    [
        "coroutines_in_globals_at_exit",
        "daemon_thread_holding_suspended_coroutines",
    ],
)
def test_interpreter_exit_with_suspended_coroutines_is_clean(scenario):
    assert_clean_exit(scenario, [], False)


def test_sys_exit_with_suspended_coroutines_in_globals_is_clean():
    result = run_script(SCRIPT, "coroutines_in_globals_at_sys_exit")
    assert result.returncode == 0, result.describe()
    assert result.stdout.splitlines() == ["coroutines_in_globals_at_sys_exit OK"], result.describe()
    assert result.stderr == "", result.describe()


def test_sys_exit_inside_sync_code_leaves_asyncio_run_and_cancels_the_rest():
    assert_clean_exit(
        "sys_exit_inside_sync_code", ["SystemExit(0) left asyncio.run", "finally ran 50"], False
    )


def test_keyboard_interrupt_raised_in_sync_code_leaves_asyncio_run():
    assert_clean_exit(
        "keyboard_interrupt_raised_in_sync_code",
        ["KeyboardInterrupt left asyncio.run", "finally ran 50"],
        False,
    )


def test_sigint_while_sync_code_runs_interrupts_asyncio_run_and_runs_finally():
    assert_clean_exit(
        "sigint_while_sync_code_runs",
        ["KeyboardInterrupt left asyncio.run", "events ['sync finally']"],
        False,
    )
