import sys

import pytest
from _support import assert_script_succeeded, run_script

SCRIPT = "deep_recursion.py"

RECURSIONS_THAT_MUST_RAISE = [
    "pure_python",
    "reduce",
    "map",
    "sorted_key",
    "getattr",
    "repr",
    "lru_cache",
    "constructor",
    "isinstance",
    "json_default",
]


@pytest.mark.parametrize("recursion", RECURSIONS_THAT_MUST_RAISE)
def test_unbounded_recursion_in_sync_code_raises_recursion_error_and_stays_usable(recursion):
    scenario = f"recursion_error_{recursion}"
    result = run_script(SCRIPT, scenario)
    assert_script_succeeded(result, [f"{scenario} OK"])


@pytest.mark.parametrize(
    "scenario",
    [
        "recursion_error_in_first_steps",
        "awaitlet_at_depth_pure_python",
        "awaitlet_at_depth_through_c_calls",
        "depth_counter_stable_after_many_switches",
        "limit_changed_inside_sync_code",
        "switch_at_every_level",
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
