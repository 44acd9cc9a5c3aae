"""Run the test suite of the original ``awaitlet`` 0.0.1 against the installed ``awaitlet``.

Usage::

    python tests/upstream/run_upstream.py [--sqlalchemy] [--cache-dir DIR] [--keep]
                                          [pytest args ...]

The published sdist is fetched from PyPI with ``pip download`` (or taken from
``--cache-dir`` when an earlier run left it there), checked against a pinned
SHA-256, and only its ``tests/`` directory is copied into a fresh temporary
directory.  pytest runs there, so the sdist's own ``awaitlet/`` package can
never shadow the installed one; the pytest header names the module that was
imported.  By default only ``test_concurrency.py`` runs; ``--sqlalchemy`` adds
``test_sqlalchemy.py``.  Unknown arguments go to pytest.  The exit code is
pytest's, except that "no tests collected" (5) counts as a failure.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from pinned_sdist import fetch_pinned_sdist

UPSTREAM = "awaitlet==0.0.1"
SDIST_NAME = "awaitlet-0.0.1.tar.gz"
SDIST_SHA256 = "d98c8b821f595284f9327d45067995ccbee0d99993f0d0b935b23ac8ecf58334"
TEST_FILES = ("__init__.py", "conftest.py", "test_concurrency.py", "test_sqlalchemy.py")

# The sdist keeps its pytest settings in pyproject.toml, which is not copied
# (it would also name the sdist's package); these are the same settings.
PYTEST_INI = """\
[pytest]
addopts = --tb native -v -r sfxX -p warnings -p logging --strict-markers -p no:cacheprovider
python_files = test_*.py
markers =
    async_test: mark the given test as async
"""

# A pytest plugin loaded by name from the run directory: its report header
# shows which awaitlet was imported, and it refuses to run if that module
# lives in the run directory (i.e. is not the installed package).  The summary
# says whether a module named greenlet was loaded, and from where.
PLUGIN = """\
import os
import sys

import awaitlet

_here = os.path.dirname(os.path.abspath(__file__))
_file = os.path.abspath(awaitlet.__file__)
if os.path.commonpath([_here, _file]) == _here:
    raise RuntimeError(f"awaitlet imported from the run directory: {_file}")


def pytest_report_header(config):
    version = getattr(awaitlet, "__version__", "?")
    return [f"awaitlet under test: {_file} (version {version})"]


def pytest_terminal_summary(terminalreporter):
    # Name the file too: a greenlet-compatible module may stand in for the real one.
    module = sys.modules.get("greenlet")
    loaded = "no" if module is None else f"yes, from {getattr(module, '__file__', None)}"
    terminalreporter.write_line(f"greenlet loaded during the run: {loaded}")
"""


def fetch_sdist(dest: Path) -> Path:
    """Make sure ``dest`` holds the pinned sdist, downloading it if needed; return its path."""
    return fetch_pinned_sdist(UPSTREAM, SDIST_NAME, SDIST_SHA256, dest, "run_upstream")


def extract_tests(sdist: Path, run_dir: Path) -> Path:
    """Copy the sdist's test files, and nothing else from it, into ``run_dir/tests``."""
    tests_dir = run_dir / "tests"
    tests_dir.mkdir()
    prefix = SDIST_NAME.removesuffix(".tar.gz") + "/tests/"
    with tarfile.open(sdist) as tar:
        for name in TEST_FILES:
            member = tar.getmember(prefix + name)
            src = tar.extractfile(member)
            if src is None:
                raise SystemExit(f"run_upstream: {member.name} is not a regular file")
            with src, (tests_dir / name).open("wb") as out:
                shutil.copyfileobj(src, out)
    return tests_dir


def main(argv: list[str] | None = None) -> int:
    """Fetch, unpack and run the upstream suite; return the exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments not listed here are passed on to pytest.",
    )
    parser.add_argument("--sqlalchemy", action="store_true", help="also run test_sqlalchemy.py")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="keep the downloaded sdist here and reuse it (default: a temporary directory)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run directory and print its path"
    )
    args, pytest_args = parser.parse_known_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="awaitlet-upstream-"))
    try:
        sdist = fetch_sdist(args.cache_dir or tmp / "download")
        run_dir = tmp / "run"
        run_dir.mkdir()
        extract_tests(sdist, run_dir)
        (run_dir / "pytest.ini").write_text(PYTEST_INI)
        (run_dir / "_awaitlet_under_test.py").write_text(PLUGIN)

        files = ["tests/test_concurrency.py"]
        if args.sqlalchemy:
            files.append("tests/test_sqlalchemy.py")
        # `-m pytest` puts the run directory (cwd) first on sys.path, which is
        # what lets `-p` find the plugin; it holds no awaitlet package.
        cmd = [sys.executable, "-m", "pytest", "-p", "_awaitlet_under_test", *files]
        cmd += pytest_args
        print(f"run_upstream: in {run_dir}: " + " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, cwd=run_dir).returncode
    finally:
        if args.keep:
            print(f"run_upstream: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    if rc == 5:
        print("run_upstream: pytest collected no tests; counting that as a failure")
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
