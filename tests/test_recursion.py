import sys

import pytest
from _support import assert_script_succeeded, run_script

SCRIPT = "deep_recursion.py"


@pytest.mark.parametrize(
    "scenario",
    [
        "pure_python_to_limit",
        "through_c_calls",
        "awaitlet_at_depth_pure_python",
        "awaitlet_at_depth_through_c_calls",
        "depth_counter_stable_after_many_switches",
        pytest.param(
            "raised_limit_pure_python",
            marks=pytest.mark.skipif(
                sys.version_info < (3, 11),
                reason="Python-to-Python calls use the C stack before 3.11",
            ),
        ),
    ],
)
def test_deep_recursion_in_sync_code(scenario):
    result = run_script(SCRIPT, scenario)
    assert_script_succeeded(result, [f"{scenario} OK"])
