"""Build and test awaitlet against every supported CPython.

    nox                    # all versions
    nox -s tests-3.12      # one version
    nox -s tests-3.12 -- -k contextvars   # extra arguments go to pytest (our own tests)

Each session builds the Rust extension from source for its interpreter
(``pip install .``), then runs this repository's tests and the original
``awaitlet`` 0.0.1 test suite (``tests/upstream/run_upstream.py``) against the
installed package.
"""

from __future__ import annotations

import os
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


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Build and install the package, then run our tests and the upstream suite."""
    env = {
        # One target directory for every version, so the builds share the
        # compiled dependencies that do not depend on the interpreter.
        "CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")),
    }
    # --force-reinstall: a reused venv must get the freshly built extension.
    session.install("--force-reinstall", "--no-deps", ".", env=env)
    session.install("-r", "tests/requirements.txt")
    session.run("python", "-c", "import awaitlet; print('awaitlet from', awaitlet.__file__)")

    # Run both suites even if the first fails, so one run reports everything.
    # session.run fails on any non-zero exit, so pytest's 5 (no tests) fails too.
    suites = {
        "our tests": ["python", "-m", "pytest", "tests", "-p", "no:cacheprovider"],
        "awaitlet 0.0.1 tests": ["python", "tests/upstream/run_upstream.py"],
    }
    suites["our tests"] += session.posargs
    suites["awaitlet 0.0.1 tests"] += ["--cache-dir", str(session.cache_dir / "upstream")]
    failed = []
    for name, args in suites.items():
        try:
            session.run(*args)
        except nox.command.CommandFailed:
            failed.append(name)
    if failed:
        session.error("failed: " + ", ".join(failed))
