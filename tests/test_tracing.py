import sys

import pytest
from _support import assert_script_succeeded, run_script

SCRIPT = "tracing_across_switches.py"


@pytest.mark.parametrize(
    "scenario",
    [
        "settrace_before_start",
        "settrace_toggled_in_sync_code",
        "settrace_left_on_by_sync_code",
        "setprofile_before_start",
        "setprofile_toggled_in_sync_code",
        "setprofile_left_on_by_sync_code",
        pytest.param(
            "monitoring_across_switches",
            marks=pytest.mark.skipif(
                sys.version_info < (3, 12), reason="sys.monitoring is new in 3.12"
            ),
        ),
    ],
)
def test_hooks_see_both_sides_of_switches_without_crashing(scenario):
    result = run_script(SCRIPT, scenario)
    assert_script_succeeded(result, [f"{scenario} OK"])
