import os
import sys

import pytest
from _support import assert_script_succeeded, run_script


def test_finalizers_running_during_switches_see_a_consistent_interpreter():
    result = run_script("finalizers_during_switches.py")
    assert_script_succeeded(result, ["finalizers_during_switches OK"])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
@pytest.mark.skipif(sys.platform == "darwin", reason="fork without exec is unsafe on macOS")
def test_suspended_coroutines_can_be_resumed_in_a_forked_child_and_in_the_parent():
    result = run_script("fork_with_suspended_coroutines.py")
    assert_script_succeeded(
        result,
        ["child resumed 20", "parent resumed 20", "fork_with_suspended_coroutines OK"],
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
@pytest.mark.skipif(sys.platform == "darwin", reason="fork without exec is unsafe on macOS")
def test_a_forked_child_leaves_the_parents_await_loop_alone():
    # The child gets a loop of its own for await_(); its exit (and closing its own loop)
    # does not unregister the parent's loop's wake-up pipe from their shared epoll instance.
    result = run_script("await_without_loop_across_fork.py")
    assert_script_succeeded(
        result,
        [
            "child: own loop, woken",
            "parent: same loop, woken",
            "await_without_loop_across_fork OK",
        ],
    )
