"""The soak (tests/soak/run.py) in short: it passes, its checks catch deliberate faults, a
seed names its plans; and the one kind of abandoned coroutine the soak leaves out."""

from __future__ import annotations

import gc
import pathlib
import re
import subprocess
import sys
import weakref

import pytest
from _support import CRASH_MARKERS, Yield, _subprocess_env
from awaitlet import async_def, awaitlet

SOAK = pathlib.Path(__file__).resolve().parent / "soak" / "run.py"


def soak(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(SOAK), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=_subprocess_env(),
    )
    for marker in CRASH_MARKERS:
        assert marker not in result.stderr, result.stdout + result.stderr
    return result


@pytest.mark.parametrize("threads", ["1", "4"])
def test_short_soak_passes(threads):
    result = soak("--minutes", "0.05", "--threads", threads, "--tasks", "800", "--seed", "7")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "soak: OK (seed 7;" in result.stdout, result.stdout
    assert result.stderr == "", result.stderr


@pytest.mark.parametrize(
    ("fault", "reported"),
    [
        ("wrong-result", r"task 0:0:\d+: .*tokens"),
        ("skip-finally", r"task 0:0:\d+: .*did not finish exactly once"),
        ("leak-objects", r"gc-tracked objects grew by"),
    ],
)
def test_soak_reports_a_deliberate_fault_with_its_seed(fault, reported):
    result = soak(
        "--minutes",
        "0",
        "--warmup-rounds",
        "3",
        "--tasks",
        "1000",
        "--seed",
        "11",
        "--inject",
        fault,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "soak: FAILED" in result.stdout and "(seed 11)" in result.stdout, result.stdout
    assert re.search(reported, result.stdout), result.stdout
    assert "python tests/soak/run.py --seed 11 " in result.stdout, result.stdout


def test_a_seed_names_the_plans_and_a_task_can_be_replayed_alone():
    first = soak("--seed", "5", "--replay", "0:1:7")
    again = soak("--seed", "5", "--replay", "0:1:7")
    other = soak("--seed", "6", "--replay", "0:1:7")
    assert first.returncode == 0 and "replay: OK" in first.stdout, first.stdout + first.stderr
    plan = [line for line in first.stdout.splitlines() if line.startswith("plan: ")]
    assert len(plan) == 1, first.stdout
    assert plan[0] in again.stdout.splitlines(), again.stdout
    assert plan[0] not in other.stdout.splitlines(), other.stdout


def test_coroutines_abandoned_in_reference_cycles_are_collected():
    """The soak drops abandoned coroutines by their last reference. Here each one is part of
    a reference cycle through its own suspended sync frame, which only the cyclic collector
    can break: it must see into the suspended fiber's frames, close the coroutine (its
    finally runs) and free what the frames held."""
    finally_ran = []

    class Held:
        pass

    def holds_itself(holder, held):
        try:
            awaitlet(Yield())
        finally:
            finally_ran.append(True)

    held_refs = []
    for _ in range(100):
        holder = []
        held = Held()
        held_refs.append(weakref.ref(held))
        coro = async_def(holds_itself, holder, held)
        holder.append(coro)
        coro.send(None)
        del coro, holder, held
    gc.collect()
    gc.collect()
    assert len(finally_ran) == 100
    assert [ref for ref in held_refs if ref() is not None] == []
