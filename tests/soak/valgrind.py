"""Runs the soak and the fault-injection scenarios under valgrind's memcheck.

    python tests/soak/valgrind.py                 # needs valgrind and a `valgrind` build
    python tests/soak/valgrind.py --keep-logs DIR

The package must be built with the cargo feature ``valgrind`` (``pip install .
--config-settings=build-args="--features valgrind"``), which registers every fiber stack
with valgrind, so memcheck knows a switch onto one for what it is. Python runs with
``PYTHONMALLOC=malloc``, so memcheck sees every object allocation.

A job fails if memcheck reports an invalid read, write or free, a jump to an invalid
address, a fatal signal, a switch onto a stack it does not know (an unregistered fiber
stack), or an error in a place (kind and innermost two functions) that a bare interpreter
running ``BASELINE`` does not report too: CPython has a few errors of its own (3.11:
uninitialised digits read by ``int.from_bytes``), which are printed but not counted.
Exit status 0 when every job passed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

TESTS = pathlib.Path(__file__).resolve().parent.parent
SOAK = TESTS / "soak" / "run.py"
FAULTS = TESTS / "scripts" / "fault_injection.py"
# Four rounds: three of warm-up, one measured.
SHORT_SOAK = [str(SOAK), "--minutes", "0", "--warmup-rounds", "3"]
BASELINE = "import asyncio, contextvars, threading; asyncio.run(asyncio.sleep(0))"

# (name, arguments after the interpreter, expected exit code)
JOBS: list[tuple[str, list[str], int]] = [
    ("soak-1-thread", [*SHORT_SOAK, "--tasks", "300", "--seed", "1"], 0),
    (
        "soak-4-threads",
        [*SHORT_SOAK, "--tasks", "400", "--threads", "4", "--seed", "2"],
        0,
    ),
    # Not the SIGINT scenarios whose sync code spins: valgrind runs one thread at a time, and
    # the thread that sends the signal may not get the GIL back before the spin ends (seen
    # on a loaded machine), which tells nothing about memory. pytest runs them natively.
    *(
        (scenario, [str(FAULTS), scenario, "awaitlet"], 0)
        for scenario in (
            "sigint_while_sync_code_is_suspended",
            "sigint_while_sync_code_is_suspended_in_asyncio_run",
        )
    ),
    (
        "sys_exit_from_nested_sync_code_ends_the_process",
        [str(FAULTS), "sys_exit_from_nested_sync_code_ends_the_process"],
        3,
    ),
    *(
        (scenario, [str(FAULTS), scenario], 0)
        for scenario in (
            "sys_exit_on_a_fiber_ends_only_its_thread",
            "fork_from_sync_code_on_a_fiber",
            "fork_while_another_thread_holds_suspended_fibers",
            "exit_while_daemon_threads_wait_in_their_loops",
            "exit_after_threads_ended_leaving_suspended_fibers",
        )
    ),
]

FATAL_KINDS = (
    "Invalid read",
    "Invalid write",
    "Invalid free",
    "Mismatched free",
    "Jump to the invalid address",
    "Process terminating with default action",
    "client switching stacks?",
)
ERROR_START = re.compile(r"^==\d+== (\S.*)$")
FRAME = re.compile(r"^==\d+==    (?:at|by) 0x[0-9A-F]+: (\S+)")
SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) errors from (\d+) contexts")


@dataclass
class LogReport:
    errors: int
    contexts: set[tuple[str, ...]]
    fatal: list[str]


def read_logs(paths: list[pathlib.Path]) -> LogReport:
    """Error contexts (kind, innermost two functions) and fatal findings in memcheck logs."""
    errors = 0
    contexts: set[tuple[str, ...]] = set()
    fatal: list[str] = []
    for path in paths:
        kind: str | None = None
        frames: list[str] = []
        for line in path.read_text(errors="replace").splitlines() + [""]:
            if summary := SUMMARY.search(line):
                errors += int(summary.group(1))
                continue
            if frame := FRAME.match(line):
                if kind is not None and len(frames) < 2:
                    frames.append(frame.group(1))
                continue
            if kind is not None and (not line.strip("= 0123456789") or ERROR_START.match(line)):
                contexts.add((kind, *frames))
                kind, frames = None, []
            start = ERROR_START.match(line)
            if start and not start.group(1).startswith(" "):
                text = start.group(1)
                if any(text.startswith(k) or k in text for k in FATAL_KINDS):
                    fatal.append(f"{path.name}: {text}")
                if _is_error_heading(text):
                    kind = re.sub(r"size \d+", "size N", text)
    return LogReport(errors, contexts, fatal)


def _is_error_heading(text: str) -> bool:
    return text.startswith(
        (
            "Invalid ",
            "Mismatched ",
            "Conditional jump",
            "Use of uninitialised",
            "Syscall param",
            "Source and destination overlap",
            "Jump to the invalid",
            "Argument ",
        )
    )


def run_job(
    valgrind: str, python: str, name: str, args: list[str], logs: pathlib.Path
) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONMALLOC="malloc", PYTHONFAULTHANDLER="1")
    env.pop("PYTHONASYNCIODEBUG", None)
    started = time.monotonic()
    completed = subprocess.run(
        [
            valgrind,
            "--tool=memcheck",
            "--leak-check=no",
            "--num-callers=30",
            f"--log-file={logs / name}.%p.log",
            python,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        env=env,
        cwd=str(TESTS / "scripts"),
    )
    return completed.returncode, time.monotonic() - started, completed.stdout + completed.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to run")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep memcheck's logs there")
    parser.add_argument("--only", help="run only jobs whose name contains this")
    args = parser.parse_args(argv)
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed (Debian and Ubuntu: apt-get install valgrind)")
        return 1
    logs = pathlib.Path(args.keep_logs or tempfile.mkdtemp(prefix="awaitlet-valgrind-"))
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    code, seconds, output = run_job(valgrind, args.python, "baseline", ["-c", BASELINE], logs)
    baseline = read_logs(sorted(logs.glob("baseline.*.log")))
    print(
        f"valgrind: baseline (a bare interpreter): {baseline.errors} errors in "
        f"{len(baseline.contexts)} places, {seconds:.0f} s",
        flush=True,
    )
    failed = []
    for name, job_args, expected_code in JOBS:
        if args.only and args.only not in name:
            continue
        code, seconds, output = run_job(valgrind, args.python, name, job_args, logs)
        report = read_logs(sorted(logs.glob(f"{name}.*.log")))
        new = sorted(report.contexts - baseline.contexts)
        problems = list(report.fatal)
        problems += [f"error not in the baseline: {' / '.join(context)}" for context in new]
        if code != expected_code:
            problems.append(f"exit code {code}, expected {expected_code}:\n{output[-3000:]}")
        print(
            f"valgrind: {name}: {report.errors} errors in {len(report.contexts)} places "
            f"({len(new)} not in the baseline), exit code {code}, {seconds:.0f} s"
            + ("" if problems else ": OK"),
            flush=True,
        )
        for problem in problems[:10]:
            print(f"    {problem}")
        if problems:
            failed.append(name)
    keep = bool(failed or args.keep_logs)
    print(
        f"valgrind: {'FAILED: ' + ', '.join(failed) if failed else 'OK'} "
        f"({time.monotonic() - started:.0f} s{f'; logs in {logs}' if keep else ''})"
    )
    if not keep:
        shutil.rmtree(logs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
