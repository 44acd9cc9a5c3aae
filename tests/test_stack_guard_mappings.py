"""Guard pages below fiber stacks do not make memory mappings grow with the fiber count.

Linux limits a process to ``vm.max_map_count`` mappings (65,530 by default). Guard markers
(``MADV_GUARD_INSTALL``, Linux 6.13+) cost none; the ``mprotect`` fallback costs two per
guard, so it stops making guards at a budget and says so once, with a RuntimeWarning.
"""

import mmap
import pathlib

import pytest
from _support import run_script

SCRIPT = "stack_guard_mappings.py"
SUSPENDED = 20_000
MADV_GUARD_INSTALL = 102


def max_map_count():
    try:
        return int(pathlib.Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return None


def kernel_has_guard_markers():
    region = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.madvise(MADV_GUARD_INSTALL, 0, mmap.PAGESIZE)
    except OSError:
        return False
    finally:
        region.close()
    return True


pytestmark = pytest.mark.skipif(
    max_map_count() is None, reason="memory mappings are not counted in /proc here"
)


def run(guards):
    result = run_script(SCRIPT, guards, str(SUSPENDED))
    assert result.returncode == 0, result.describe()
    lines = result.stdout.splitlines()
    counts = dict(line.split() for line in lines[:3])
    assert counts["finished"] == str(SUSPENDED), result.describe()
    return int(counts["suspended"]) - int(counts["before"]), lines[3:], result


@pytest.mark.skipif(not kernel_has_guard_markers(), reason="the kernel has no guard markers")
def test_guard_markers_take_no_mapping_per_fiber():
    growth, warnings, result = run("auto")
    # A region's mapping (and the inaccessible space below it) per 4,096 stacks.
    assert growth < 50, result.describe()
    assert warnings == [], result.describe()


def test_mprotect_guards_stop_at_their_mapping_budget_with_one_warning():
    growth, warnings, result = run("mprotect")
    budget = max_map_count() // 4
    # Two more mappings per guard, up to the budget: the fibers beyond it still run.
    assert budget - 10 < growth < budget + 50, result.describe()
    assert len(warnings) == 1, result.describe()
    assert "budget" in warnings[0] and "canary" in warnings[0], result.describe()


def test_no_guards_when_turned_off():
    growth, warnings, result = run("none")
    assert growth < 50, result.describe()
    assert warnings == [], result.describe()


def test_an_unknown_setting_warns_and_makes_guards():
    result = run_script(SCRIPT, "sometimes", "10")
    assert result.returncode == 0, result.describe()
    assert result.stdout.splitlines()[3:] == [
        'awaitlet: ignoring AWAITLET_STACK_GUARDS="sometimes" (expected auto, mprotect or '
        "none); fiber stacks get guard pages as with auto"
    ], result.describe()
