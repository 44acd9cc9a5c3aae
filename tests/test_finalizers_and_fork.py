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
