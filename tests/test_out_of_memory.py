"""Out of memory while fibers are created and run is a MemoryError, never an abort."""

import sys

import pytest
from _support import assert_script_succeeded, run_script


@pytest.mark.skipif(sys.platform != "linux", reason="squeezes memory through /proc and RLIMIT_AS")
def test_fibers_started_while_out_of_memory_raise_memory_error():
    rounds = 256
    result = run_script("out_of_memory.py", str(rounds))
    assert_script_succeeded(
        result, [f"{rounds} of {rounds} rounds ended in MemoryError; recovered"]
    )
