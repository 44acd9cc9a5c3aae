"""``python -m awaitlet``: the demo passes where SQLAlchemy is installed, says that part 2 was
skipped (and what to install) where it cannot be imported, and shows its timings."""

import os
import subprocess
import sys

import pytest

# Runs the demo as `python -m awaitlet` does, after making `import sqlalchemy` fail: a None
# entry in sys.modules is how Python itself blocks an import.
BLOCKED = (
    "import runpy, sys; sys.modules['sqlalchemy'] = None; "
    "runpy.run_module('awaitlet', run_name='__main__', alter_sys=True)"
)


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


def assert_speed_table(output: str) -> None:
    assert "Part 3: speed" in output
    rows = [line for line in output.splitlines() if " ns" in line or " µs" in line]
    assert len(rows) == 3, output
    for row in rows:
        assert row.count(" ns") + row.count(" µs") >= 2, row


def test_demo_passes():
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("aiosqlite")
    result = run_demo("-m", "awaitlet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("All parts passed.")
    assert "5/5 echoes correct" in result.stdout
    assert "sync code via async_def() + awaitlet(): 5 books published 1968-1993" in result.stdout
    assert_speed_table(result.stdout)


def test_demo_without_sqlalchemy_says_part_two_was_skipped():
    result = run_demo("-c", BLOCKED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All parts passed" not in result.stdout
    last = result.stdout.rstrip().splitlines()[-1]
    assert last.startswith("The other parts passed; part 2 skipped (sqlalchemy is not installed")
    assert "pip install 'awaitlet-rs[sqlalchemy]'" in last
    assert "5/5 echoes correct" in result.stdout
    assert_speed_table(result.stdout)
