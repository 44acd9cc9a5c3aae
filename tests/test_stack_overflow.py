"""A fiber whose recursion outruns its stack fails loudly, never silently corrupts memory."""

import signal
import sys

import pytest
from _support import run_script


@pytest.mark.parametrize("shape", ["python", "c"])
def test_recursion_past_the_stack_is_an_error_or_an_abort(shape):
    result = run_script("stack_overflow.py", shape)
    if result.returncode == 0:
        # CPython's own checks stopped it (3.12+ count C calls; 3.14+ measure the stack).
        assert "RecursionError" in result.stdout, result.describe()
        assert "switched out" in result.stdout, result.describe()
    else:
        # Nothing stopped the recursion before the stack's end: the process must die, by
        # awaitlet's abort when the fiber switches out (the overflow reached the canary) or
        # by the inaccessible page below a region of stacks.
        assert result.returncode in (-signal.SIGABRT, -signal.SIGSEGV), result.describe()
        if result.returncode == -signal.SIGABRT:
            assert "overflowed" in result.stderr, result.describe()
        assert sys.version_info < (3, 14), "3.14+ measures the fiber's stack: " + result.describe()
