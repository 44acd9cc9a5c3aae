"""Run the test suites of greenlet-based libraries, and greenlet's own, on the installed greenlet.

Usage::

    python tests/upstream/run_greenlet_family.py [--suite greenback|greenletio|greenlet ...]
                                                 [--expect-greenlet facade|real]
                                                 [--cache-dir DIR] [--keep] [pytest args ...]

Three pinned sdists are fetched with ``pip download`` (or taken from ``--cache-dir``) and
checked against their SHA-256:

- greenback 1.3.0: installed with ``--no-deps`` (its other dependencies, ``outcome``,
  ``sniffio``, ``trio`` and ``anyio``, must be installed), then its own tests run from the
  installed package (``--pyargs greenback._tests``), on asyncio and Trio;
- greenletio 0.11.0: installed the same way; its ``tests/`` directory (only that) is
  copied into a temporary directory and runs there;
- greenlet 3.5.6: the Python-API test files listed in ``GREENLET_TEST_FILES``.  On the
  facade, its ``src/greenlet/tests/`` directory is copied as the package ``greenlet_tests``
  (also importable as ``greenlet.tests``, which some tests name); on the real greenlet, the
  installed ``greenlet.tests`` runs, the same files.  The tests listed in
  ``greenlet_not_applicable.txt`` beside this script (greenlet's C API, C++ internals,
  stack copying) are deselected, on both, with the reason given there.  They need
  ``psutil`` and ``objgraph``.

Before any test runs, ``import greenlet`` must give what ``--expect-greenlet`` (default:
``$AWAITLET_EXPECT_GREENLET``, else ``facade``) names.  Every test file ends with one line,
``<suite>/<file>: N passed, N failed, N skipped`` (errors count as failed), and every suite
with a total.  A test greenlet marks ``fails_leakcheck`` (greenlet is known to leak there)
fails greenlet's leak checker when nothing leaks; such a test, if that is its only failure,
counts as passed and the line says how many did.  The exit code is 0 only if every suite
passed and collected tests.  Unknown arguments go to pytest.
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
from collections import defaultdict
from importlib import metadata
from pathlib import Path

from pinned_sdist import fetch_pinned_sdist

HERE = Path(__file__).resolve().parent
NOT_APPLICABLE = HERE / "greenlet_not_applicable.txt"

SDISTS = {
    "greenback": (
        "greenback==1.3.0",
        "greenback-1.3.0.tar.gz",
        "d1441f542ec9c6efb32a9250dd954a5b1cc1eb789294c19b1eb747f49cab818c",
    ),
    "greenletio": (
        "greenletio==0.11.0",
        "greenletio-0.11.0.tar.gz",
        "5751773f859ee7c5a8745569af04b27532e2b8bdb170eb224193bebc32f38136",
    ),
    "greenlet": (
        "greenlet==3.5.6",
        "greenlet-3.5.6.tar.gz",
        "8e67c43bdfc88d5fee6db0d3e40175b362fc95fb85f0412d233b9b203c53a575",
    ),
}
SUITES = tuple(SDISTS)
# The real greenlet of --compare-real: the version whose tests run here.
GREENLET = SDISTS["greenlet"][0]
GREENLET_TEST_FILES = (
    "test_greenlet.py",
    "test_throw.py",
    "test_contextvars.py",
    "test_gc.py",
    "test_generator.py",
    "test_generator_nested.py",
    "test_weakref.py",
    "test_tracing.py",
    "test_leaks.py",
    "test_interpreter_shutdown.py",
)
REQUIRED_MODULES = {
    "greenback": ("pytest", "outcome", "sniffio", "trio", "anyio"),
    "greenletio": ("pytest",),
    "greenlet": ("pytest", "psutil", "objgraph"),
}

# A pytest plugin loaded by name from the run directory: it stops the run before any test if
# greenlet is not the expected one, makes the copied greenlet tests importable as
# greenlet.tests, and deselects the tests that do not apply.
PLUGIN = """\
import os
import sys

import pytest

EXPECT = os.environ["AWAITLET_EXPECT_GREENLET"]
NOT_APPLICABLE = os.environ.get("AWAITLET_NOT_APPLICABLE", "")


def _is_facade(module):
    return bool(getattr(module, "__awaitlet_facade__", False))


def pytest_configure(config):
    try:
        import greenlet
    except ImportError as error:
        pytest.exit(f"AWAITLET_EXPECT_GREENLET={EXPECT}, but import greenlet failed: {error}", 3)
    if _is_facade(greenlet) != (EXPECT == "facade"):
        where = getattr(greenlet, "__file__", None)
        pytest.exit(f"AWAITLET_EXPECT_GREENLET={EXPECT}, but greenlet is from {where}", 3)
    if os.environ.get("AWAITLET_ALIAS_GREENLET_TESTS"):
        import greenlet_tests

        sys.modules["greenlet.tests"] = greenlet_tests
        greenlet.tests = greenlet_tests


def _not_applicable():
    if not NOT_APPLICABLE:
        return {}
    reasons = {}
    with open(NOT_APPLICABLE, encoding="utf-8") as listing:
        for line in listing:
            line = line.strip()
            if line and not line.startswith("#"):
                node, _, reason = line.partition(" ")
                reasons[node] = reason.strip()
    return reasons


def pytest_collection_modifyitems(config, items):
    reasons = _not_applicable()
    if not reasons:
        return
    keep, drop = [], []
    for item in items:
        path, _, rest = item.nodeid.partition("::")
        node = os.path.basename(path) + "::" + rest
        (drop if node in reasons else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    import greenlet

    kind = "awaitlet facade" if _is_facade(greenlet) else "real greenlet"
    return [f"greenlet: {kind} {getattr(greenlet, '__version__', '?')}"]
"""
PLUGIN_NAME = "_awaitlet_greenlet_family_probe"


def fetch_sdist(suite: str, dest: Path) -> Path:
    """Make sure ``dest`` holds the pinned sdist of ``suite``; return its path."""
    spec, name, want = SDISTS[suite]
    return fetch_pinned_sdist(spec, name, want, dest, "run_greenlet_family")


def ensure_installed(suite: str, sdist: Path) -> None:
    """Install the pinned release of ``suite`` from its sdist without dependencies (so that
    no greenlet comes with it), unless it is installed already."""
    spec = SDISTS[suite][0]
    version = spec.partition("==")[2]
    try:
        if metadata.version(suite) == version:
            return
    except metadata.PackageNotFoundError:
        pass
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps"]
    cmd += ["--quiet", str(sdist)]
    print("run_greenlet_family: " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def extract(sdist: Path, prefix: str, into: Path) -> None:
    """Copy the sdist's files under ``prefix`` (and nothing else) into ``into``."""
    root = sdist.name.removesuffix(".tar.gz") + "/" + prefix
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if not member.name.startswith(root) or not member.isfile():
                continue
            target = into / member.name[len(root) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with src, target.open("wb") as out:
                shutil.copyfileobj(src, out)


# What greenlet's leak checker says when a test marked ``fails_leakcheck`` (greenlet is known
# to leak there) leaks nothing: the test itself passed, several times over.
NO_LEAK_WHERE_GREENLET_LEAKS = re.compile(r"Expected .* to leak but it did not\.")


def read_counts(junit_xml: Path) -> tuple[dict[str, list[int]], set[str]]:
    """Passed, failed (and errors), skipped per test file, from pytest's JUnit XML, and how
    many of the passed are tests that greenlet expects to leak and that leaked nothing here;
    and the failed tests (file::class::name)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    failed: set[str] = set()
    if not junit_xml.is_file():
        return counts, failed
    for case in ElementTree.parse(junit_xml).getroot().iter("testcase"):
        # The xunit1 family names the file of each test case.
        file = os.path.basename(case.get("file") or case.get("classname", "?"))
        problems = [child for child in case if child.tag in ("failure", "error")]
        row = counts[file]
        if problems and all(
            NO_LEAK_WHERE_GREENLET_LEAKS.search(child.get("message") or "") for child in problems
        ):
            row[0] += 1
            row[3] += 1
        elif problems:
            row[1] += 1
            failed.add(f"{file}::{case.get('classname', '')}::{case.get('name', '')}")
        elif any(child.tag == "skipped" for child in case):
            row[2] += 1
        else:
            row[0] += 1
    return counts, failed


def _no_leak_note(row: list[int]) -> str:
    return f" ({row[3]} of them leak nothing where greenlet leaks)" if row[3] else ""


def run_suite(
    suite: str,
    sdist: Path,
    work: Path,
    expect: str,
    pytest_args: list[str],
    real_greenlet: Path | None = None,
) -> tuple[bool, set[str]]:
    """Runs one suite; returns whether it passed (and collected tests), and its failures.
    ``real_greenlet``: a directory holding the real greenlet, put first on the path."""
    run_dir = work / (suite if expect == "facade" else f"{suite}-{expect}")
    run_dir.mkdir()
    (run_dir / f"{PLUGIN_NAME}.py").write_text(PLUGIN)
    (run_dir / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    env = dict(os.environ, AWAITLET_EXPECT_GREENLET=expect)
    if real_greenlet is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(real_greenlet), os.environ.get("PYTHONPATH")])
        )
    if suite == "greenback":
        ensure_installed(suite, sdist)
        targets = ["--pyargs", "greenback._tests"]
    elif suite == "greenletio":
        ensure_installed(suite, sdist)
        extract(sdist, "tests/", run_dir / "tests")
        targets = ["tests"]
    else:
        env["AWAITLET_NOT_APPLICABLE"] = str(NOT_APPLICABLE)
        if expect == "facade":
            extract(sdist, "src/greenlet/tests/", run_dir / "greenlet_tests")
            env["AWAITLET_ALIAS_GREENLET_TESTS"] = "1"
            targets = [f"greenlet_tests/{name}" for name in GREENLET_TEST_FILES]
        else:
            targets = ["--pyargs"] + [
                "greenlet.tests." + name.removesuffix(".py") for name in GREENLET_TEST_FILES
            ]
    junit = run_dir / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-p", PLUGIN_NAME, "-q", f"--junitxml={junit}"]
    cmd += ["-o", "junit_family=xunit1", *targets, *pytest_args]
    print(f"run_greenlet_family: in {run_dir}: " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=run_dir, env=env).returncode
    counts, failed = read_counts(junit)
    total = [0, 0, 0, 0]
    for file in sorted(counts):
        row = counts[file]
        total = [a + b for a, b in zip(total, row, strict=True)]
        print(
            f"{suite}/{file}: {row[0]} passed, {row[1]} failed, {row[2]} skipped"
            + _no_leak_note(row)
        )
    print(
        f"{suite} (greenlet {expect}): {total[0]} passed, {total[1]} failed, {total[2]} skipped"
        f" (pytest exit code {rc})" + _no_leak_note(total),
        flush=True,
    )
    # pytest's exit code 1 means failed tests: fine if every failure was a missing leak.
    passed = (rc == 0 or (rc == 1 and total[3] > 0)) and total[1] == 0 and sum(total[:3]) > 0
    # A failure of every test (an import error, say) is not a run to compare.
    return passed, failed if total[0] or not failed else {"<no test passed>"}


def install_real_greenlet(work: Path) -> Path:
    """The pinned real greenlet, installed into a directory of its own under ``work``."""
    target = work / "real-greenlet"
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    cmd += ["--no-deps", "--target", str(target), GREENLET]
    print("run_greenlet_family: " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return target


def compare_with_real(suite: str, facade_failed: set[str], real_failed: set[str]) -> bool:
    """Prints how the facade's failures compare with the real greenlet's; true if every test
    that fails on the facade fails on the real greenlet too."""
    only_facade = sorted(facade_failed - real_failed)
    only_real = sorted(real_failed - facade_failed)
    verdict = "same failures" if not only_facade and not only_real else "different"
    print(
        f"{suite}: facade vs real greenlet: {verdict}; {len(facade_failed)} failed on the"
        f" facade, {len(real_failed)} on the real greenlet",
        flush=True,
    )
    for name in only_facade:
        print(f"{suite}: fails on the facade only: {name}")
    for name in only_real:
        print(f"{suite}: fails on the real greenlet only: {name}")
    return not only_facade


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments not listed here are passed on to pytest.",
    )
    parser.add_argument(
        "--suite", action="append", choices=SUITES, help="run only this suite (repeatable)"
    )
    parser.add_argument(
        "--expect-greenlet",
        choices=("facade", "real"),
        default=os.environ.get("AWAITLET_EXPECT_GREENLET") or "facade",
    )
    parser.add_argument(
        "--compare-real",
        action="store_true",
        help=f"after greenback's and greenletio's runs on the facade, run them on {GREENLET}"
        " (installed into the run directory) too; they then pass if every test that fails on"
        " the facade fails on the real greenlet as well",
    )
    parser.add_argument("--cache-dir", type=Path, help="keep the downloaded sdists here")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    args, pytest_args = parser.parse_known_args(argv)
    suites = args.suite or list(SUITES)

    missing = sorted(
        {
            module
            for suite in suites
            for module in REQUIRED_MODULES[suite]
            if not _importable(module)
        }
    )
    if missing:
        print(f"run_greenlet_family: install first: {' '.join(missing)}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="awaitlet-greenlet-family-"))
    ok = True
    try:
        real_greenlet = None
        for suite in suites:
            sdist = fetch_sdist(suite, args.cache_dir or work / "download")
            passed, failed = run_suite(suite, sdist, work, args.expect_greenlet, pytest_args)
            if passed or not args.compare_real or suite == "greenlet":
                ok &= passed
                continue
            real_greenlet = real_greenlet or install_real_greenlet(work)
            _, real_failed = run_suite(
                suite, sdist, work, "real", pytest_args, real_greenlet=real_greenlet
            )
            ok &= compare_with_real(suite, failed, real_failed)
    finally:
        if args.keep:
            print(f"run_greenlet_family: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _importable(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
