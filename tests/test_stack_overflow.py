"""A fiber whose recursion outruns its stack never writes into another fiber's stack.

Each case runs ``scripts/stack_overflow.py`` in a subprocess with suspended neighbours whose
stacks lie right below the overflowing fiber's; GUARDS is how the guard below each stack is
made (``auto``: guard markers where the kernel has them, else ``mprotect``).
"""

import signal
import sys

import pytest
from _support import run_script

SCRIPT = "stack_overflow.py"
CHECKED_OUTPUT = ["RecursionError", "switched out", "neighbours intact"]
GUARDS = ["auto", "mprotect"]


def assert_died_at_the_guard(result, function):
    """Killed by SIGSEGV, reported by faulthandler with the overflowing fiber's frames."""
    assert result.returncode == -signal.SIGSEGV, result.describe()
    assert "Segmentation fault" in result.stderr, result.describe()
    assert f"in {function}" in result.stderr, result.describe()
    assert "overflowed" not in result.stderr, result.describe()


@pytest.mark.parametrize("recursion", ["python", "c"])
@pytest.mark.parametrize("guards", [*GUARDS, "none"])
def test_checked_recursion_raises_and_leaves_the_neighbours_intact(guards, recursion):
    result = run_script(SCRIPT, guards, recursion)
    assert result.returncode == 0, result.describe()
    assert result.stdout.splitlines() == CHECKED_OUTPUT, result.describe()


def checked_by_cpython(recursion):
    """Whether CPython's own checks, sized for the fiber's stack, stop the recursion with the
    recursion limit out of the way: True, False, or None where it depends on the release.

    Python calls stop using the C stack in 3.11. Calls through C are counted against a C
    recursion budget in 3.12 and 3.13 (3.13.0's lets this recursion run past 8 MiB, on a
    thread as well) and measured against the stack's bounds from 3.14 on.
    """
    if recursion == "python":
        return sys.version_info >= (3, 11)
    if sys.version_info[:2] == (3, 13):
        return None
    return sys.version_info[:2] == (3, 12) or sys.version_info >= (3, 14)


@pytest.mark.parametrize(
    ("recursion", "function"), [("python", "recurse"), ("c", "recurse_through_c")]
)
@pytest.mark.parametrize("guards", GUARDS)
def test_recursion_past_a_raised_limit_raises_or_dies_at_the_guard(guards, recursion, function):
    result = run_script(SCRIPT, guards, f"{recursion}-raised-limit")
    checked = checked_by_cpython(recursion)
    if checked is None:
        checked = result.returncode == 0
    if checked:
        assert result.returncode == 0, result.describe()
        assert result.stdout.splitlines() == CHECKED_OUTPUT, result.describe()
    else:
        assert_died_at_the_guard(result, function)


@pytest.mark.parametrize("slot", ["fresh", "reused"])
@pytest.mark.parametrize("guards", GUARDS)
def test_unchecked_c_recursion_dies_at_the_guard_below_its_stack(guards, slot):
    result = run_script(SCRIPT, guards, "unchecked", *(["reused"] if slot == "reused" else []))
    assert result.stdout.splitlines() == ["overflowing"], result.describe()
    assert_died_at_the_guard(result, "overflow_without_checks")


def test_without_guards_the_canary_check_aborts_before_the_neighbours_run():
    result = run_script(SCRIPT, "none", "unchecked")
    assert result.returncode == -signal.SIGABRT, result.describe()
    assert "overflowed" in result.stderr, result.describe()
    assert "neighbours" not in result.stdout, result.describe()
