"""Helpers shared by the test modules (imported as ``import _support``)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass

import awaitlet

SCRIPTS_DIR = pathlib.Path(__file__).resolve().parent / "scripts"

CRASH_MARKERS = ("Fatal Python error", "Segmentation fault", "Aborted", "core dumped")


class Yield:
    """Awaitable that hands ``value`` to whoever drives the coroutine.

    ``await Yield(v)`` suspends the whole await chain; the driver's ``send(x)``
    resumes it and ``x`` becomes the result of the await.
    """

    def __init__(self, value=None):
        self.value = value

    def __await__(self):
        return (yield self.value)


async def returns(value):
    return value


async def raises(exc):
    raise exc


@dataclass
class ScriptResult:
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"exit code {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n"
            f"--- stderr ---\n{self.stderr}"
        )


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    package_parent = str(pathlib.Path(awaitlet.__file__).resolve().parent.parent)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = package_parent + (os.pathsep + existing if existing else "")
    env["PYTHONFAULTHANDLER"] = "1"
    env.pop("PYTHONASYNCIODEBUG", None)
    return env


def run_script(name: str, *args: str, timeout: float = 120) -> ScriptResult:
    """Run ``tests/scripts/<name>`` with the current interpreter and the same awaitlet."""
    completed = subprocess.run(
        [sys.executable, str(SCRIPTS_DIR / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_subprocess_env(),
        cwd=str(SCRIPTS_DIR),
    )
    return ScriptResult(completed.returncode, completed.stdout, completed.stderr)


def assert_script_succeeded(result: ScriptResult, expected_stdout_lines: list[str]) -> None:
    for marker in CRASH_MARKERS:
        assert marker not in result.stderr, result.describe()
    assert result.returncode == 0, result.describe()
    assert result.stdout.splitlines() == expected_stdout_lines, result.describe()


def resident_memory_bytes() -> int | None:
    """Current resident set size of this process, or None where it can't be read."""
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
