"""Without PostgreSQL's server programs, the tests that need them stop the run with one message
that says how to run the rest; `-m "not postgresql"` deselects exactly those."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def collect(*args):
    env = {**os.environ, "AWAITLET_PG_BINDIR": str(ROOT / "no-such-directory")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/sqlalchemy", "--collect-only", "-q", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_missing_server_programs_stop_the_run_with_one_message():
    result = collect("-p", "no:cacheprovider")
    output = result.stdout + result.stderr
    assert result.returncode == 4, output
    assert output.count("pytest -m 'not postgresql'") == 1, output
    assert "apt-get install postgresql" in output


def test_not_postgresql_deselects_the_tests_that_need_the_server():
    result = collect("-p", "no:cacheprovider", "-m", "not postgresql")
    assert result.returncode == 0, result.stdout + result.stderr
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    assert collected
    assert not [line for line in collected if "postgres" in line], collected
