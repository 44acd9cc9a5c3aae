"""Build and test awaitlet against every supported CPython.

    nox                    # all versions
    nox -s tests-3.12      # one version
    nox -s tests-3.12 -- -k contextvars   # extra arguments go to pytest (our own tests)
    nox -s soak-3.12 -- --minutes 30 --threads 4   # a long soak (arguments: tests/soak/run.py)
    nox -s valgrind-3.11   # the soak and fault scenarios under memcheck (CPython 3.11)

Each ``tests`` session builds the Rust extension from source for its interpreter
(``pip install .``), then, with no greenlet package installed (awaitlet's facade
stands in), runs this repository's tests, the original ``awaitlet`` 0.0.1 test
suite, SQLAlchemy's own asyncio tests (on SQLite and on a PostgreSQL server the
tests start) and a short soak (tests/soak/run.py, one thread, then four); then, with
the real greenlet installed, the SQLAlchemy tests again.
PostgreSQL's server binaries must be installed (``apt-get install postgresql``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13", "3.14", "3.15"]

# virtualenv brings its own pip; `python -m venv` cannot bootstrap pip on
# interpreters whose ensurepip has no bundled wheels (Debian's builds).
nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["tests"]
# A missing interpreter must fail the run, not be skipped silently.
nox.options.error_on_missing_interpreters = True


# Where SQLAlchemy's own suites also run on the real greenlet, for the pass counts to
# compare with the facade's: the newest 2.1 (3.11) and 2.0 (3.10).
GREENLET_BASELINE_PYTHONS = {"3.10", "3.11"}
COUNTS = re.compile(r"^(\S+): (\d+) passed, (\d+) failed, (\d+) skipped", re.MULTILINE)
# The soak in each tests session: this long with one thread, and again with four (about a
# minute per version in all). AWAITLET_SOAK_SEED repeats a run's plans.
SOAK_MINUTES = "0.4"
VALGRIND_PYTHON = "3.11"


def _install(session: nox.Session, *build_args: str) -> None:
    """Builds and installs the package, then the test requirements."""
    env = {
        # One target directory for every version, so the builds share the
        # compiled dependencies that do not depend on the interpreter.
        "CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")),
    }
    config = [f"--config-settings=build-args={' '.join(build_args)}"] if build_args else []
    # --force-reinstall: a reused venv must get the freshly built extension.
    session.install("--force-reinstall", "--no-deps", ".", *config, env=env)
    session.install("-r", "tests/requirements.txt", "typing-extensions")
    # The facade is under test: no greenlet package (SQLAlchemy 2.0 depends on it).
    session.run("python", "-m", "pip", "uninstall", "--yes", "--quiet", "greenlet")


def _soak_command(*args: str) -> list[str]:
    seed = os.environ.get("AWAITLET_SOAK_SEED")
    return ["python", "tests/soak/run.py", *args, *(["--seed", seed] if seed else [])]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Build and install the package, then run every suite on the greenlet facade (and the
    SQLAlchemy ones on the real greenlet too)."""
    _install(session)
    session.run("python", "-c", "import awaitlet; print('awaitlet from', awaitlet.__file__)")

    # One download cache per version: CI runs sessions in parallel.
    cache = session.cache_dir / f"python{session.python}"
    sqlalchemy_suite = [
        "python",
        "tests/upstream/run_sqlalchemy_suite.py",
        "--start-postgres",
        "--cache-dir",
        str(cache / "sqlalchemy"),
    ]
    # Run every suite even if one fails, so one run reports everything.
    # session.run fails on any non-zero exit, so pytest's 5 (no tests) fails too.
    failed = []
    outputs = {}

    def run_suite(name: str, args: list[str], **run_env: str) -> None:
        try:
            # Captured for the pass counts, then shown.
            output = session.run(*args, env=run_env or None, silent=True)
        except nox.command.CommandFailed:
            failed.append(name)
        else:
            print(output)
            outputs[name] = output

    run_suite(
        "our tests (facade)",
        ["python", "-m", "pytest", "tests", "-p", "no:cacheprovider", *session.posargs],
        AWAITLET_EXPECT_GREENLET="facade",
    )
    run_suite(
        "awaitlet 0.0.1 tests",
        [
            "python",
            "tests/upstream/run_upstream.py",
            "--sqlalchemy",
            "--cache-dir",
            str(cache / "upstream"),
        ],
    )
    run_suite("SQLAlchemy's suites (facade)", [*sqlalchemy_suite, "--expect-greenlet", "facade"])
    for threads in ("1", "4"):
        run_suite(
            f"soak ({threads} thread{'s' if threads != '1' else ''})",
            _soak_command("--minutes", SOAK_MINUTES, "--threads", threads),
        )

    # The same SQLAlchemy tests with the real greenlet installed: nothing is hijacked, and
    # awaitlet() still works inside SQLAlchemy's greenlets.
    session.install("greenlet")
    run_suite(
        "our SQLAlchemy tests (real greenlet)",
        ["python", "-m", "pytest", "tests/sqlalchemy", "-p", "no:cacheprovider"],
        AWAITLET_EXPECT_GREENLET="real",
    )
    if session.python in GREENLET_BASELINE_PYTHONS:
        run_suite(
            "SQLAlchemy's suites (real greenlet)", [*sqlalchemy_suite, "--expect-greenlet", "real"]
        )
        _compare_counts(
            session,
            outputs.get("SQLAlchemy's suites (facade)"),
            outputs.get("SQLAlchemy's suites (real greenlet)"),
        )
    session.run("python", "-m", "pip", "uninstall", "--yes", "--quiet", "greenlet")
    if failed:
        session.error("failed: " + ", ".join(failed))


def _compare_counts(session: nox.Session, facade: str | None, real: str | None) -> None:
    """Print SQLAlchemy's pass counts on the facade beside those on the real greenlet."""
    if not facade or not real:
        return
    facade_counts = {m[0]: m[1:] for m in COUNTS.findall(facade)}
    real_counts = {m[0]: m[1:] for m in COUNTS.findall(real)}
    session.log("SQLAlchemy's suites, passed/failed/skipped: facade vs real greenlet")
    for backend in sorted(set(facade_counts) | set(real_counts)):
        session.log(
            f"  {backend}: facade {'/'.join(facade_counts.get(backend, ('-',) * 3))}"
            f"  real greenlet {'/'.join(real_counts.get(backend, ('-',) * 3))}"
        )


@nox.session(python=PYTHONS)
def soak(session: nox.Session) -> None:
    """A soak of any length: ``nox -s soak-3.12 -- --minutes 30 --threads 4`` (arguments go
    to tests/soak/run.py; default: one minute, one thread)."""
    _install(session)
    session.run(*_soak_command(*(session.posargs or ["--minutes", "1"])))


@nox.session(python=[VALGRIND_PYTHON])
def valgrind(session: nox.Session) -> None:
    """The soak and the fault-injection scenarios under valgrind's memcheck, on a build
    that registers fiber stacks with valgrind (the cargo feature ``valgrind``). Needs
    valgrind (``apt-get install valgrind``); arguments go to tests/soak/valgrind.py."""
    if not shutil.which("valgrind"):
        session.error("valgrind is not installed (Debian and Ubuntu: apt-get install valgrind)")
    _install(session, "--features", "valgrind")
    session.run("python", "tests/soak/valgrind.py", *session.posargs)


# What the greenlet-family suites need besides the packages under test (installed with
# --no-deps from their sdists by the runner, so that no greenlet comes with them).
GREENLET_FAMILY_DEPS = ("outcome", "sniffio", "trio", "anyio", "psutil", "objgraph")
GREENLET_FAMILY_GREENLET = "greenlet==3.5.6"


@nox.session(name="greenlet-family", python=PYTHONS)
def greenlet_family(session: nox.Session) -> None:
    """greenback 1.3.0's and greenletio 0.11.0's test suites and greenlet 3.5.6's own
    Python-API tests on the facade (no greenlet installed), then on the real greenlet for the
    counts to compare (tests/upstream/run_greenlet_family.py; arguments go to it)."""
    _install(session)
    session.install(*GREENLET_FAMILY_DEPS)
    cache = session.cache_dir / f"python{session.python}" / "greenlet-family"
    runner = ["python", "tests/upstream/run_greenlet_family.py", "--cache-dir", str(cache)]
    failed = []
    for expect in ("facade", "real"):
        if expect == "real":
            session.install(GREENLET_FAMILY_GREENLET)
        try:
            session.run(*runner, "--expect-greenlet", expect, *session.posargs)
        except nox.command.CommandFailed:
            failed.append(expect)
    session.run("python", "-m", "pip", "uninstall", "--yes", "--quiet", "greenlet")
    if failed:
        session.error("failed on: " + ", ".join(failed))
