#!/usr/bin/env python3
"""Run the awaitlet-rs benchmark suite: ``python benches/run.py [--python python3.14]``.

awaitlet-rs has to be measured without greenlet installed (``import greenlet`` then gives its
facade), while the references (SQLAlchemy's ``greenlet_spawn``/``await_only``, the original
``awaitlet`` 0.0.1, greenback) need the real greenlet, and the original ``awaitlet`` installs
the same import name as this package. So the suite keeps two virtual environments per
interpreter under ``benches/.venvs/``:

``<tag>-awaitlet-rs``
    this checkout (built from source), SQLAlchemy, aiosqlite, pyperf, matplotlib; no greenlet.
``<tag>-greenlet``
    ``sqlalchemy[asyncio]`` (the real greenlet), aiosqlite, greenback, ``awaitlet==0.0.1``,
    pyperf, at the same SQLAlchemy, aiosqlite and pyperf versions.

It runs every case script in ``benches/cases/`` in each environment (pyperf spawns its own
worker processes; the pyperf cases run in rounds that alternate between the environments;
each scale run is a fresh process), then ``benches/report.py`` merges the results into
``benches/results/latest.{md,json,png}`` (and a dated copy) and prints the table. A failing
step is recorded in the results and the suite goes on; only a failure to set up the
awaitlet-rs environment stops it.

Only the standard library is needed to run this file; any Python 3.10+ will do.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
CASES = BENCHES / "cases"
VENVS = BENCHES / ".venvs"

#: What each environment gets besides what is pinned to match the other one.
OURS_PACKAGES = ["sqlalchemy", "aiosqlite", "pyperf", "matplotlib"]
GREENLET_EXTRAS = ["greenback", "awaitlet==0.0.1"]

#: Per --quality and part: rounds, and pyperf options per round. Each round runs every
#: environment once, in alternating order, and appends to the same pyperf files, so drift in
#: the machine's load during a run spreads over both environments instead of favouring the
#: one measured first. The ORM workloads are slow and noisy: one process per round, and more
#: rounds.
QUALITY: dict[str, dict[str, tuple[int, list[str]]]] = {
    "fast": {
        "micro": (2, ["--processes", "4", "--values", "2", "--warmups", "1"]),
        "orm": (4, ["--processes", "1", "--values", "3", "--warmups", "1"]),
    },
    "normal": {
        "micro": (3, ["--processes", "6", "--values", "3", "--warmups", "1"]),
        "orm": (6, ["--processes", "1", "--values", "4", "--warmups", "1"]),
    },
    "rigorous": {
        "micro": (5, ["--processes", "8", "--values", "3", "--warmups", "2"]),
        "orm": (10, ["--processes", "1", "--values", "5", "--warmups", "2"]),
    },
}


class StepFailed(Exception):
    """A command of the suite failed; the message has its output."""


def log(message: str) -> None:
    """Progress line on stderr, with the time."""
    now = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{now}] {message}", file=sys.stderr, flush=True)


def tail(text: str, lines: int = 25) -> str:
    """The last ``lines`` lines of a command's output."""
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own process group, capturing its output; raise
    :class:`StepFailed` with the output's tail if it fails or outlives ``timeout``, after
    killing the group (pyperf's workers too)."""
    with subprocess.Popen(
        cmd,
        cwd=CASES,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            output = tail(stdout + "\n" + stderr)
            raise StepFailed(
                f"{' '.join(cmd)}: timed out after {timeout:.0f} s\n{output}"
            ) from None
    result = subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)
    if result.returncode != 0:
        output = tail(stdout + "\n" + stderr)
        raise StepFailed(f"{' '.join(cmd)}: exit status {result.returncode}\n{output}")
    return result


def first_traceback(text: str, lines: int = 12) -> str | None:
    """The first traceback in a command's error output, if it has one."""
    start = text.find("Traceback (most recent call last)")
    if start < 0:
        return None
    context_start = text.rfind("\n", 0, max(start - 1, 0)) + 1
    return "\n".join(text[context_start:].splitlines()[:lines])


def interpreter_info(python: str) -> dict[str, str]:
    """Version and tag of the interpreter named ``python``."""
    found = shutil.which(python)
    if found is None:
        raise SystemExit(f"run.py: no interpreter {python!r} on PATH")
    script = (
        "import json, platform, sys; print(json.dumps({'version': platform.python_version(),"
        " 'implementation': sys.implementation.name,"
        " 'tag': f'{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}'}))"
    )
    info = json.loads(run([found, "-c", script]).stdout)
    info["executable"] = found
    return info


class Venv:
    """A virtual environment of the suite."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.python = str(path / "bin" / "python")

    def exists(self) -> bool:
        """Whether it has a working pip."""
        if not Path(self.python).exists():
            return False
        check = subprocess.run([self.python, "-m", "pip", "--version"], capture_output=True)
        return check.returncode == 0

    def create(self, interpreter: str) -> None:
        """Create it for ``interpreter`` unless it exists (virtualenv, then venv)."""
        if self.exists():
            return
        attempts = []
        if importlib.util.find_spec("virtualenv") is not None:
            attempts.append([sys.executable, "-m", "virtualenv", "-q", "-p", interpreter])
        attempts.append([interpreter, "-m", "virtualenv", "-q"])
        attempts.append([interpreter, "-m", "venv"])
        errors = []
        for attempt in attempts:
            shutil.rmtree(self.path, ignore_errors=True)
            result = subprocess.run([*attempt, str(self.path)], capture_output=True, text=True)
            if result.returncode == 0 and self.exists():
                return
            errors.append(f"{' '.join(attempt)}: {tail(result.stderr, 3)}")
        raise StepFailed(f"cannot create {self.path.name}:\n" + "\n".join(errors))

    def pip(self, *args: str, env: dict[str, str] | None = None) -> None:
        """``pip install``/``uninstall`` and so on, quietly."""
        run([self.python, "-m", "pip", *args, "--disable-pip-version-check", "-q"], env=env)

    def versions(self) -> dict[str, str]:
        """Installed versions of the packages the results depend on."""
        script = "import json, impls; print(json.dumps(impls.versions()))"
        return json.loads(run([self.python, "-c", script]).stdout)

    def impls(self) -> list[str]:
        """Implementation ids that :mod:`impls` detects here (native excluded)."""
        script = "import json, impls; print(json.dumps(sorted(impls.detect())))"
        return json.loads(run([self.python, "-c", script]).stdout)


def setup_ours(venv: Venv, interpreter: str, tag: str, rebuild: bool) -> None:
    """Environment with this checkout and no greenlet."""
    venv.create(interpreter)
    venv.pip("install", *OURS_PACKAGES)
    installed = subprocess.run(
        [venv.python, "-m", "pip", "show", "awaitlet-rs"], capture_output=True
    )
    if rebuild or installed.returncode != 0:
        log(f"building awaitlet-rs from {REPO.name}/ for {tag} (about a minute)")
        # A target directory of our own: no waiting on (or clobbering) other builds' locks.
        env = {**os.environ, "CARGO_TARGET_DIR": str(VENVS / f"target-{tag}")}
        venv.pip("install", "--force-reinstall", "--no-deps", str(REPO), env=env)
    # Nothing may have pulled the real greenlet in: awaitlet-rs must run on its own.
    venv.pip("uninstall", "-y", "greenlet")
    check = "import impls, sys; sys.exit(impls.greenlet_kind() != 'facade')"
    run([venv.python, "-c", check])


def setup_greenlet(venv: Venv, interpreter: str, pins: dict[str, str]) -> list[str]:
    """Environment with the real greenlet and the references; returns setup notes."""
    venv.create(interpreter)
    pinned = [
        f"sqlalchemy[asyncio]=={pins['sqlalchemy']}",
        f"aiosqlite=={pins['aiosqlite']}",
        f"pyperf=={pins['pyperf']}",
    ]
    venv.pip("install", *pinned)
    notes = []
    for extra in GREENLET_EXTRAS:
        try:
            venv.pip("install", extra)
        except StepFailed as error:
            notes.append(f"could not install {extra}: {error}")
            log(notes[-1])
    check = "import impls, sys; sys.exit(impls.greenlet_kind() != 'real')"
    run([venv.python, "-c", check])
    return notes


def pyperf_case(
    venv: Venv, script: str, options: list[str], output: Path, extra: list[str], timeout: float
) -> str | None:
    """Run a pyperf case script, adding its results to those in ``output``; returns the first
    traceback it logged, if any (an exception in an event loop callback is logged, not
    raised, and the benchmark goes on)."""
    cmd = [venv.python, script, *options, *extra, "--quiet", "--append", str(output)]
    result = run(cmd, timeout=timeout)
    for line in result.stdout.splitlines():
        if line.strip():
            log(f"  {line.strip()}")
    with output.with_suffix(".log").open("a", encoding="utf-8") as log_file:
        log_file.write(result.stdout + result.stderr)
    return first_traceback(result.stderr)


def scale_case(venv: Venv, impl: str, tasks: int, depth: int, timeout: float) -> dict[str, Any]:
    """One scale run in a fresh process; a failure is returned as a result, not raised."""
    cmd = [venv.python, "scale.py", impl, str(tasks), "--depth", str(depth)]
    record: dict[str, Any] = {"impl": impl, "tasks": tasks, "depth": depth, "ok": False}
    with subprocess.Popen(
        cmd, cwd=CASES, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            record["error"] = f"timed out after {timeout:.0f} s"
            return record
    result = subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)
    lines = result.stdout.strip().splitlines()
    if result.returncode == 0 and lines:
        record.update(json.loads(lines[-1]))
        if not record["ok"]:
            record["error"] = record.get("first_error") or "wrong results"
        return record
    if result.returncode < 0:
        record["error"] = f"killed by signal {-result.returncode}"
    else:
        record["error"] = f"exit status {result.returncode}"
    stderr = tail(result.stderr, 6)
    if stderr:
        record["error"] += f": {stderr}"
    return record


def git_describe() -> str:
    """The checkout's commit, with ``-dirty`` if it has local changes."""
    try:
        head = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    except (StepFailed, OSError):
        return "unknown"
    return head + ("-dirty" if dirty.stdout.strip() else "")


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Benchmark awaitlet-rs against native await, greenlet and greenback."
    )
    parser.add_argument(
        "--python", default="python3.11", help="interpreter to benchmark (default: python3.11)"
    )
    parser.add_argument(
        "--tasks",
        default="10000,100000",
        help="comma-separated task counts for the scale case (default: 10000,100000; "
        "add 1000000 for the large run)",
    )
    parser.add_argument("--depth", type=int, default=20, help="frames per task (default: 20)")
    parser.add_argument(
        "--quality",
        choices=list(QUALITY),
        default="fast",
        help="pyperf effort: fast (default, a few minutes), normal or rigorous",
    )
    parser.add_argument(
        "--cases",
        default="micro,orm,scale",
        help="comma-separated parts to run: micro, orm, scale (default: all)",
    )
    parser.add_argument(
        "--select", default="", help="micro cases to run (see cases/micro.py; default: all)"
    )
    parser.add_argument(
        "--no-rebuild",
        action="store_true",
        help="reuse the installed awaitlet-rs instead of rebuilding it from this checkout",
    )
    parser.add_argument(
        "--scale-timeout", type=float, default=600, help="seconds per scale run (default: 600)"
    )
    parser.add_argument(
        "--step-timeout",
        type=float,
        default=900,
        help="seconds per pyperf invocation before it is killed (default: 900)",
    )
    parser.add_argument(
        "--results", type=Path, default=BENCHES / "results", help="output directory"
    )
    return parser.parse_args()


def main() -> int:
    """Set up, run every case in both environments, write the report."""
    args = parse_args()
    parts = set(args.cases.split(","))
    task_counts = [int(count) for count in args.tasks.split(",") if count]
    started = time.monotonic()
    info = interpreter_info(args.python)
    tag = info["tag"]
    raw = args.results / "raw" / tag
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    VENVS.mkdir(exist_ok=True)
    ours = Venv(VENVS / f"{tag}-awaitlet-rs")
    theirs = Venv(VENVS / f"{tag}-greenlet")
    run_info: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": info,
        "commit": git_describe(),
        "quality": args.quality,
        "depth": args.depth,
        "failures": [],
        "notes": [],
        "scale": [],
    }

    def failed(step: str, error: Exception) -> None:
        log(f"FAILED: {step}: {error}")
        run_info["failures"].append({"step": step, "error": str(error)})

    log(f"{info['implementation']} {info['version']} ({info['executable']})")
    log(f"environment {ours.path.name}")
    try:
        setup_ours(ours, info["executable"], tag, rebuild=not args.no_rebuild)
    except StepFailed as error:
        log(f"FAILED: awaitlet-rs environment: {error}")
        return 2
    pins = ours.versions()
    envs = {"awaitlet-rs": ours}
    log(f"environment {theirs.path.name}")
    try:
        run_info["notes"] += setup_greenlet(theirs, info["executable"], pins)
        envs["greenlet"] = theirs
    except StepFailed as error:
        failed("greenlet environment", error)
    run_info["versions"] = {name: venv.versions() for name, venv in envs.items()}

    extra = ["--select", args.select] if args.select else []
    quality = QUALITY[args.quality]
    for part, script in (("micro", "micro.py"), ("orm", "orm.py")):
        if part not in parts:
            continue
        failing: set[str] = set()
        tracebacks: set[str] = set()
        rounds, options = quality[part]
        for number in range(rounds):
            names = list(envs) if number % 2 == 0 else list(envs)[::-1]
            for name in names:
                if name in failing:
                    continue
                log(f"{part} cases, round {number + 1}/{rounds}, {name} environment")
                try:
                    logged = pyperf_case(
                        envs[name],
                        script,
                        options,
                        raw / f"{part}-{name}.json",
                        extra if part == "micro" else [],
                        args.step_timeout,
                    )
                except StepFailed as error:
                    failing.add(name)
                    failed(f"{part} cases ({name})", error)
                    continue
                if logged and name not in tracebacks:
                    tracebacks.add(name)
                    failed(f"{part} cases ({name}) logged errors (numbers kept)", Exception(logged))
    if "scale" in parts:
        for name, venv in envs.items():
            impls = (["native"] if name == "awaitlet-rs" else []) + venv.impls()
            for impl in impls:
                for count in task_counts:
                    log(f"scale: {impl}, {count:,} tasks, {args.depth} frames deep")
                    record = scale_case(venv, impl, count, args.depth, args.scale_timeout)
                    if not record["ok"]:
                        log(f"scale run failed: {record['error'].splitlines()[0]}")
                    run_info["scale"].append(record)

    run_info["seconds"] = round(time.monotonic() - started)
    (raw / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
    log("report")
    report = run([ours.python, str(BENCHES / "report.py"), str(raw), str(args.results)])
    print(report.stdout, end="")
    log(f"done in {run_info['seconds']} s; results in {args.results}")
    return 1 if run_info["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
