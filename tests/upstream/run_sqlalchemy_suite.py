"""Run SQLAlchemy's own asyncio and concurrency tests with the installed awaitlet and greenlet.

Usage::

    python tests/upstream/run_sqlalchemy_suite.py [--start-postgres | --postgres-url URL]
                                                  [--sqlalchemy-version X.Y.Z]
                                                  [--expect-greenlet facade|real]
                                                  [--cache-dir DIR] [--keep] [pytest args ...]

The newest SQLAlchemy sdist of the line the running interpreter supports (2.1.x on
Python 3.11 and later, 2.0.x on 3.10; ``--sqlalchemy-version`` picks another) is
fetched with ``pip download`` and unpacked into a temporary directory.  From
there, pytest runs ``test/base/test_concurrency.py`` (``test_concurrency_py3k.py``
in 2.0) and ``test/ext/asyncio/`` with ``--dburi sqlite+aiosqlite://``, then again
with ``--dburi`` set to a PostgreSQL asyncpg URL when one is given
(``--postgres-url``) or started here (``--start-postgres``, with
``tests/_postgres.py``).  The suite imports SQLAlchemy from the sdist's own
``lib/`` (its ``test/conftest.py`` puts it first on ``sys.path``); the drivers
(aiosqlite, asyncpg), ``typing-extensions`` and pytest must be installed.

Before any test runs, ``import greenlet`` must give what ``--expect-greenlet``
(default: ``$AWAITLET_EXPECT_GREENLET``, else ``facade``) names: awaitlet's
facade, or the real greenlet package.  Each backend ends with one line of counts,
``<backend>: N passed, N failed, N skipped`` (errors count as failed).  The exit
code is 0 only if every run passed and collected tests.  Unknown arguments go to
pytest.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SQLITE_URL = "sqlite+aiosqlite://"
TEST_DIRS = ("test/ext/asyncio/",)
# 2.1 renamed test_concurrency_py3k.py to test_concurrency.py.
CONCURRENCY_TESTS = ("test/base/test_concurrency.py", "test/base/test_concurrency_py3k.py")
REQUIRED_MODULES = {
    "pytest": "pytest",
    "aiosqlite": "aiosqlite",
    "typing_extensions": "typing-extensions",
}

# A pytest plugin loaded by name from the sdist's directory (``python -m pytest``
# puts the working directory on sys.path).  It stops the run before any test if
# greenlet is not the expected one, and reports what was imported.
PLUGIN = """\
import os
import sys

import pytest

EXPECT = os.environ["AWAITLET_EXPECT_GREENLET"]


def _describe(module):
    if module is None:
        return "not imported"
    spec = getattr(module, "__spec__", None)
    where = getattr(module, "__file__", None) or getattr(spec, "origin", None)
    kind = "awaitlet facade" if _is_facade(module) else "real greenlet"
    return f"{kind} {getattr(module, '__version__', '?')} from {where}"


def _is_facade(module):
    return module.__name__ == "awaitlet.greenlet" or bool(
        getattr(module, "__awaitlet_facade__", False)
    )


def pytest_configure(config):
    try:
        import greenlet
    except ImportError as error:
        pytest.exit(f"AWAITLET_EXPECT_GREENLET={EXPECT}, but import greenlet failed: {error}", 3)
    if _is_facade(greenlet) != (EXPECT == "facade"):
        pytest.exit(
            f"AWAITLET_EXPECT_GREENLET={EXPECT}, but import greenlet gave {_describe(greenlet)}",
            3,
        )


def pytest_report_header(config):
    import awaitlet

    return [
        f"awaitlet under test: {awaitlet.__file__}",
        f"greenlet: {_describe(sys.modules.get('greenlet'))}",
    ]


def pytest_terminal_summary(terminalreporter):
    sqlalchemy = sys.modules.get("sqlalchemy")
    where = getattr(sqlalchemy, "__file__", None)
    terminalreporter.write_line(f"SQLAlchemy imported from: {where}")
    terminalreporter.write_line(f"greenlet at the end: {_describe(sys.modules.get('greenlet'))}")
"""
PLUGIN_NAME = "_awaitlet_sqlalchemy_probe"


def default_line() -> str:
    """The SQLAlchemy release line to test on this interpreter."""
    # SQLAlchemy 2.1 requires Python 3.11.
    return "2.1" if sys.version_info >= (3, 11) else "2.0"


def requirement(version: str | None) -> str:
    if version:
        return f"sqlalchemy=={version}"
    major, minor = default_line().split(".")
    return f"sqlalchemy>={major}.{minor},<{major}.{int(minor) + 1}"


def fetch_sdist(spec: str, dest: Path) -> Path:
    """Download the newest sdist matching ``spec`` into ``dest`` (reused if there); return it."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check"]
    # Only SQLAlchemy as an sdist: ":all:" would also build pip's build
    # dependencies for reading its metadata (Cython) from source.
    cmd += ["--no-deps", "--no-binary", "sqlalchemy", spec, "-d", str(dest)]
    print("run_sqlalchemy_suite: " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"run_sqlalchemy_suite: pip download failed ({result.returncode})")
    # pip says "Saved <path>" or "File was already downloaded <path>".
    names = re.findall(r"(sqlalchemy-[0-9][^\s/]*\.tar\.gz)", result.stdout, re.IGNORECASE)
    if not names:
        raise SystemExit("run_sqlalchemy_suite: could not tell which sdist pip downloaded")
    return dest / names[-1]


def unpack(sdist: Path, into: Path) -> Path:
    """Unpack the sdist into ``into`` and return its top directory."""
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # Python 3.10 before 3.10.12
            tar.extractall(into)  # noqa: S202 - a PyPI sdist
    (top,) = [path for path in into.iterdir() if path.is_dir()]
    return top


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped


def read_counts(junit_xml: Path) -> Counts | None:
    """Counts from pytest's JUnit XML report, or None if it wrote none."""
    if not junit_xml.is_file():
        return None
    root = ElementTree.parse(junit_xml).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = Counts()
    for suite in suites:
        tests = int(suite.get("tests", 0))
        failures = int(suite.get("failures", 0))
        errors = int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        counts.failed += failures
        counts.errors += errors
        counts.skipped += skipped
        counts.passed += tests - failures - errors - skipped
    return counts


def run_backend(
    source: Path, name: str, dburi: str, version: str, expect: str, pytest_args: list[str]
) -> bool:
    """Run the selected tests against one database; print its counts; return success."""
    tests = [path for path in CONCURRENCY_TESTS if (source / path).is_file()][:1]
    tests += [path for path in TEST_DIRS if (source / path).is_dir()]
    junit_xml = source / f"results-{name}.xml"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", PLUGIN_NAME]
    cmd += [*tests, "--dburi", dburi, f"--junitxml={junit_xml}", *pytest_args]
    env = dict(os.environ, AWAITLET_EXPECT_GREENLET=expect)
    print(f"\nrun_sqlalchemy_suite: in {source}: " + " ".join(cmd), flush=True)
    returncode = subprocess.run(cmd, cwd=source, env=env).returncode

    counts = read_counts(junit_xml)
    detail = f"SQLAlchemy {version}, {dburi.split('://')[0]}, greenlet {expect}: pytest exit code "
    detail += str(returncode)
    if counts is None:
        print(f"{detail}; no report written", flush=True)
        print(f"{name}: 0 passed, 1 failed, 0 skipped", flush=True)
        return False
    if counts.errors:
        detail += f"; {counts.errors} errors (counted as failed)"
    print(detail, flush=True)
    print(
        f"{name}: {counts.passed} passed, {counts.failed + counts.errors} failed, "
        f"{counts.skipped} skipped",
        flush=True,
    )
    return returncode == 0 and counts.failed == counts.errors == 0 and counts.passed > 0


def check_modules(postgres: bool) -> None:
    needed = dict(REQUIRED_MODULES)
    if postgres:
        needed["asyncpg"] = "asyncpg"
    missing = []
    for module, distribution in needed.items():
        try:
            __import__(module)
        except ImportError:
            missing.append(distribution)
    if missing:
        raise SystemExit(f"run_sqlalchemy_suite: pip install {' '.join(missing)} first")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments not listed here are passed on to pytest.",
    )
    postgres = parser.add_mutually_exclusive_group()
    postgres.add_argument(
        "--start-postgres",
        action="store_true",
        help="also run against a throwaway PostgreSQL started here (tests/_postgres.py)",
    )
    postgres.add_argument(
        "--postgres-url",
        help="also run against this postgresql+asyncpg:// URL",
    )
    parser.add_argument(
        "--sqlalchemy-version",
        help=f"test this version instead of the newest {default_line()}.x",
    )
    parser.add_argument(
        "--expect-greenlet",
        choices=("facade", "real"),
        default=os.environ.get("AWAITLET_EXPECT_GREENLET", "facade").strip().lower() or "facade",
        help="which greenlet `import greenlet` must give (default: $AWAITLET_EXPECT_GREENLET "
        "or facade)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="keep downloaded sdists here and reuse them (default: a temporary directory)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the unpacked sdist")
    args, pytest_args = parser.parse_known_args(argv)
    if args.postgres_url and not args.postgres_url.startswith("postgresql+asyncpg://"):
        parser.error("--postgres-url must be a postgresql+asyncpg:// URL")
    check_modules(postgres=bool(args.start_postgres or args.postgres_url))

    tmp = Path(tempfile.mkdtemp(prefix="awaitlet-sqlalchemy-suite-"))
    server = None
    ok = True
    try:
        sdist = fetch_sdist(
            requirement(args.sqlalchemy_version), args.cache_dir or tmp / "download"
        )
        version = sdist.name[len("sqlalchemy-") : -len(".tar.gz")]
        source = unpack(sdist, tmp / "src")
        (source / f"{PLUGIN_NAME}.py").write_text(PLUGIN)

        backends = {"sqlite": SQLITE_URL}
        if args.start_postgres:
            sys.path.insert(0, str(HERE.parent))
            import _postgres

            server = _postgres.start_postgres()
            backends["postgresql"] = server.async_url
        elif args.postgres_url:
            backends["postgresql"] = args.postgres_url

        for name, dburi in backends.items():
            ok &= run_backend(source, name, dburi, version, args.expect_greenlet, pytest_args)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"run_sqlalchemy_suite: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
