"""coverage.py, pdb and cProfile on sync code that switches with awaitlet() and greenlets.

Each tool runs a script of tests/scripts in a subprocess, as a user would run it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys

import pytest
from _support import CRASH_MARKERS, SCRIPTS_DIR, _subprocess_env

COVERAGE_SCRIPTS = ["coverage_across_switches.py", "coverage_simple_switches.py"]
PDB_SCRIPT = "pdb_across_switches.py"
PROFILE_SCRIPT = "profile_across_switches.py"
HOOK_SCRIPT = "hook_events_across_switches.py"


def real_greenlet_installed() -> bool:
    try:
        importlib.metadata.distribution("greenlet")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def coverage_has_c_tracer() -> bool:
    return importlib.util.find_spec("coverage.tracer") is not None


def run(args: list[str], cwd, env=None, stdin: str | None = None) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env if env is not None else _subprocess_env(),
        cwd=str(cwd),
        input=stdin,
    )
    for marker in CRASH_MARKERS:
        assert marker not in completed.stderr, completed.stderr
    return completed


def describe(completed: subprocess.CompletedProcess) -> str:
    return f"exit {completed.returncode}\n{completed.stdout}\n{completed.stderr}"


# (arguments of `coverage run`, COVERAGE_CORE)
COVERAGE_MODES = [
    pytest.param([], None, id="default"),
    pytest.param(["--concurrency=greenlet"], None, id="concurrency-greenlet"),
    pytest.param([], "ctrace", id="core-ctrace"),
    pytest.param([], "sysmon", id="core-sysmon"),
    pytest.param(
        [],
        "pytrace",
        id="core-pytrace",
        marks=pytest.mark.xfail(
            strict=True,
            reason="coverage.py's Python tracer is a sys.settrace function, which is not told "
            "about switches (debuggers must not be); see the README",
        ),
    ),
]


@pytest.mark.skipif(
    importlib.util.find_spec("coverage") is None, reason="coverage.py is not installed"
)
@pytest.mark.skipif(
    real_greenlet_installed(), reason="with greenlet installed, async_def runs on greenlet's stacks"
)
@pytest.mark.parametrize(("run_args", "core"), COVERAGE_MODES)
@pytest.mark.parametrize("target", COVERAGE_SCRIPTS)
def test_coverage_sees_every_line_after_switches(tmp_path, target, run_args, core):
    if core is not None and sys.version_info < (3, 12):
        pytest.skip("COVERAGE_CORE choices are tested on 3.12+ (3.10/3.11 have only ctrace)")
    if (core == "ctrace" or run_args) and not coverage_has_c_tracer():
        pytest.skip("coverage.py was installed without its C tracer")
    script = tmp_path / target
    shutil.copy(SCRIPTS_DIR / target, script)
    env = _subprocess_env()
    env.pop("COVERAGE_CORE", None)
    env.pop("COVERAGE_PROCESS_START", None)
    if core is not None:
        env["COVERAGE_CORE"] = core
    measured = run(["-m", "coverage", "run", "--source=.", *run_args, target], tmp_path, env)
    assert measured.returncode == 0, describe(measured)
    assert "coverage target OK" in measured.stdout, describe(measured)
    assert "CoverageWarning" not in measured.stderr, describe(measured)
    reported = run(["-m", "coverage", "json", "-o", "report.json"], tmp_path, env)
    assert reported.returncode == 0, describe(reported)
    files = json.loads((tmp_path / "report.json").read_text())["files"]
    measured_file = files[target]
    lines = script.read_text().splitlines()
    never_runs = {n for n, line in enumerate(lines, 1) if line.endswith("  # never runs")}
    executed = set(measured_file["executed_lines"])
    missing = set(measured_file["missing_lines"])
    assert missing == never_runs, f"missed: {sorted(missing - never_runs)}"
    assert executed == (executed | missing) - never_runs
    if target != "coverage_across_switches.py":
        return
    # The lines right after switches, on both sides, are among them.
    for text in (
        "        total += 1",
        "    result += 1",
        "    partial += awaitlet(fetch(1))",
        "        total += 100",
        "    received += 1",
        "    value = child.switch(value + 1)",
        "    return value, finished",
        "    doubled = value * 2",
    ):
        assert lines.index(text) + 1 in executed, text


def line_numbers() -> dict[str, int]:
    lines = (SCRIPTS_DIR / PDB_SCRIPT).read_text().splitlines()
    numbers = {}
    for number, line in enumerate(lines, 1):
        match = re.search(r"# line:(\w+)", line)
        if match:
            numbers[match.group(1)] = number
    return numbers


def pdb_session(commands: list[str]) -> tuple[list[int], str]:
    """Runs the pdb script under `python -m pdb` with `commands`; returns the lines it stopped
    at in the script's functions, and its output."""
    completed = run(["-m", "pdb", PDB_SCRIPT], SCRIPTS_DIR, stdin="\n".join(commands) + "\n")
    assert completed.returncode == 0, describe(completed)
    stops = [
        int(match.group(1))
        for match in re.finditer(
            r"^(?:\(Pdb\) )*> .*pdb_across_switches\.py\((\d+)\)(?:sync_steps|compute)\(\)",
            completed.stdout,
            re.MULTILINE,
        )
    ]
    return stops, completed.stdout


def test_pdb_next_steps_over_awaitlet_to_the_following_line():
    line = line_numbers()
    stops, output = pdb_session(
        [
            f"break {PDB_SCRIPT}:{line['first_switch']}",
            "continue",
            "next",
            "p first",
            "next",
            "next",
            "p third",
            "next",
            "continue",
            "quit",
        ]
    )
    assert stops == [
        line["first_switch"],
        line["after_first"],
        line["second_switch"],
        line["after_second"],
        line["return"],
    ], output
    assert "(Pdb) 10\n" in output, output
    assert "(Pdb) 110\n" in output, output
    assert "result 112" in output, output
    assert "--Return--" not in output and "--Call--" not in output, output


def test_pdb_breakpoints_after_a_switch_are_hit():
    line = line_numbers()
    stops, output = pdb_session(
        [
            f"break {PDB_SCRIPT}:{line['in_coroutine']}",
            f"break {PDB_SCRIPT}:{line['after_second']}",
            "continue",
            "p value",
            "continue",
            "p value",
            "continue",
            "p third",
            "continue",
            "quit",
        ]
    )
    assert stops == [line["in_coroutine"], line["in_coroutine"], line["after_second"]], output
    assert re.search(r"\(Pdb\) 1\n.*\(Pdb\) 11\n.*\(Pdb\) 110\n", output, re.DOTALL), output
    assert "result 112" in output, output


def test_cprofile_counts_sync_code_like_coroutines():
    completed = run([PROFILE_SCRIPT], SCRIPTS_DIR)
    assert completed.returncode == 0, describe(completed)
    report = json.loads(completed.stdout)
    assert report["negative"] == [], report
    functions = report["functions"]
    # 4 tasks of 5 rounds, each round with two awaitlet() calls (one in sync_helper) that
    # switch: like a coroutine, a sync function counts one call per start and per resume.
    expected_calls = {
        "sync_entry": 4 + 4 * 5 * 2,
        "sync_helper": 4 * 5 + 4 * 5,
        "awaitlet": 4 * 5 * 2 * 2,
        "awaited": 4 * 5 * 2 * 2,
    }
    for name, calls in expected_calls.items():
        stats = functions[name]
        assert (stats["calls"], stats["primitive"]) == (calls, calls), (name, stats)
        assert 0 <= stats["own"] <= stats["cumulative"] + 1e-6, (name, stats)
        assert stats["cumulative"] <= report["wall"], (name, stats, report["wall"])


@pytest.mark.parametrize("kind", ["trace", "profile"])
def test_c_level_hooks_see_calls_and_returns_that_nest(kind):
    completed = run([HOOK_SCRIPT, kind], SCRIPTS_DIR)
    assert completed.returncode == 0, describe(completed)
    assert f"{kind} OK" in completed.stdout, describe(completed)
