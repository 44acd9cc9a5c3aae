"""Build and test awaitlet against every supported CPython.

    nox                    # all versions
    nox -s tests-3.12      # one version
    nox -s tests-3.12 -- -k contextvars   # extra arguments go to pytest (our own tests)
    nox -s soak-3.12 -- --minutes 30 --threads 4   # a long soak (arguments: tests/soak/run.py)
    nox -s valgrind-3.11   # the soak and fault scenarios under memcheck (CPython 3.11)
    nox -s typecheck       # mypy --strict, pyright (strict) and stubtest on the Python part
    nox -s lint            # ruff check, ruff format --check, cargo fmt --check
    nox -s rust            # cargo fmt --check, clippy and the Rust tests of the engine
    nox -s docs            # the documentation site, warnings as errors (into site/)
    nox -s wheels          # the release: six wheels and the sdist in dist/, checked
    nox -s sdist           # the sdist alone, and a build of it in an empty directory
    nox -s wheel_tests-3.12   # our tests on the 3.12 wheel in dist/ (no PostgreSQL)

Each ``tests`` session builds the release wheel for its interpreter, as published
(manylinux_2_28 on Linux, linked with zig, stripped, checked by auditwheel), installs it,
then, with no greenlet package installed (awaitlet's facade
stands in), runs this repository's tests, the original ``awaitlet`` 0.0.1 test
suite, SQLAlchemy's own asyncio tests (on SQLite and on a PostgreSQL server the
tests start), a short soak (tests/soak/run.py, one thread, then four), greenback's and
greenletio's own suites (compared with the real greenlet where some of their tests fail)
and greenlet's own Python-API tests (tests/upstream/run_greenlet_family.py); then, with
the real greenlet installed, the SQLAlchemy tests again.
PostgreSQL's server binaries must be installed (``apt-get install postgresql``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
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
TYPECHECK_PYTHON = "3.11"
# The checkers' versions, pinned so that a new release's new checks come in by a deliberate
# change here, not in the middle of an unrelated one.
MYPY = "mypy==2.4.1"
PYRIGHT = "pyright[nodejs]==1.1.414"  # the extra brings node.js as a wheel: no download
RUFF = "ruff==0.17.6"
LINTED = ["python", "tests", "benches", "noxfile.py", ".ci"]
# The interpreter the Rust tests embed, unless PYO3_PYTHON names another.
RUST_PYTHON = "3.11"
DOCS_PYTHON = "3.12"
# The interpreter of the sessions that only run tools (wheels, sdist).
TOOLS_PYTHON = "3.11"

# Linux wheels: this manylinux tag. zig links them against glibc 2.28's symbol versions,
# whatever the build machine's glibc; `auditwheel show` checks the result.
MANYLINUX = "manylinux_2_28"
WHEEL_TOOLS = ["maturin>=1.9,<2", "ziglang", "auditwheel"]
# What a wheel installed in a fresh environment must do: run sync code that awaits.
SMOKE_TEST = """
import asyncio, awaitlet
async def main():
    return await awaitlet.async_def(lambda: awaitlet.awaitlet(asyncio.sleep(0, "ok")))
assert asyncio.run(main()) == "ok"
print("awaitlet", awaitlet.__version__, "works from", awaitlet.__file__)
"""


def _cargo_env() -> dict[str, str]:
    # One target directory for every version, so the builds share the compiled
    # dependencies that do not depend on the interpreter.
    return {"CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))}


def _install(session: nox.Session, *build_args: str) -> None:
    """Builds and installs the package, then the test requirements."""
    config = [f"--config-settings=build-args={' '.join(build_args)}"] if build_args else []
    # --force-reinstall: a reused venv must get the freshly built extension.
    session.install("--force-reinstall", "--no-deps", ".", *config, env=_cargo_env())
    _install_test_requirements(session)


def _install_test_requirements(session: nox.Session) -> None:
    session.install("-r", "tests/requirements.txt", "typing-extensions")
    # The facade is under test: no greenlet package (SQLAlchemy 2.0 depends on it).
    session.run("python", "-m", "pip", "uninstall", "--yes", "--quiet", "greenlet")


def _build_wheel(session: nox.Session, python: str, out: Path) -> Path:
    """Builds the release wheel for the interpreter `python` into `out`, as published:
    stripped, and on Linux manylinux_2_28 (zig links it); returns it. The session needs
    WHEEL_TOOLS installed."""
    linux = sys.platform.startswith("linux")
    platform_args = ["--zig", "--compatibility", MANYLINUX] if linux else []
    built_before = set(out.glob("*.whl"))
    start = time.monotonic()
    with _build_lock():
        session.run(
            "maturin",
            "build",
            "--release",
            "--strip",
            *platform_args,
            "--interpreter",
            python,
            "--out",
            str(out),
            env=_cargo_env(),
        )
    built = sorted(set(out.glob("*.whl")) - built_before)
    if len(built) != 1:
        session.error(f"expected one new wheel in {out}, found {[w.name for w in built]}")
    session.log(f"built {built[0].name} in {time.monotonic() - start:.0f} s")
    return built[0]


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One wheel build at a time across concurrent nox runs (.ci/run runs two): cargo takes
    turns on the shared target directory anyway, and maturin's zig wrappers, which it writes
    before cargo starts, are shared files."""
    target = Path(_cargo_env()["CARGO_TARGET_DIR"])
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".awaitlet-wheel-build.lock", "w") as lock:
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _check_wheels(session: nox.Session, wheels: list[Path]) -> None:
    """Stripped, and on Linux as compatible as its tag says (auditwheel show)."""
    session.run("python", ".ci/check_wheel.py", *map(str, wheels))


def _session_python(session: nox.Session) -> str:
    bin_dir = "Scripts" if sys.platform == "win32" else "bin"
    return str(Path(session.virtualenv.location) / bin_dir / "python")


def _install_wheel(session: nox.Session) -> None:
    """Builds the release wheel for the session's interpreter, checks it, installs it, then
    the test requirements."""
    session.install(*WHEEL_TOOLS)
    out = Path(session.create_tmp()).resolve() / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    wheel = _build_wheel(session, _session_python(session), out)
    _check_wheels(session, [wheel])
    # --force-reinstall: a reused venv must get the freshly built extension.
    session.install("--force-reinstall", "--no-deps", str(wheel))
    _install_test_requirements(session)


def _soak_command(*args: str) -> list[str]:
    seed = os.environ.get("AWAITLET_SOAK_SEED")
    return ["python", "tests/soak/run.py", *args, *(["--seed", seed] if seed else [])]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Build, check and install the release wheel, then run every suite on the greenlet
    facade (and the SQLAlchemy ones on the real greenlet too)."""
    _install_wheel(session)
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

    # greenback's and greenletio's own suites on the facade, each also on the real greenlet
    # when something fails (a few seconds each; on 3.14+ some of their tests fail on the real
    # greenlet too: the run passes if the facade fails no test the real greenlet passes),
    # and greenlet's own Python-API tests on the facade (every applicable one must pass).
    session.install(*GREENLET_FAMILY_DEPS)
    run_suite(
        "greenback's, greenletio's and greenlet's suites (facade)",
        [
            "python",
            "tests/upstream/run_greenlet_family.py",
            "--expect-greenlet",
            "facade",
            "--compare-real",
            "--cache-dir",
            str(cache / "greenlet-family"),
        ],
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


@nox.session(python=[TYPECHECK_PYTHON])
def typecheck(session: nox.Session) -> None:
    """mypy --strict and pyright (strict, as configured in pyproject.toml) on the Python part
    and tests/typing, then stubtest: the stubs and annotations against the built package,
    with stubtest-allowlist.txt."""
    env = {"CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))}
    session.install("--force-reinstall", "--no-deps", ".", env=env)
    # SQLAlchemy for the demo (__main__), greenlet's stubs for _real_greenlet; no greenlet
    # itself, so that stubtest imports the facade for it, as the tests run.
    session.install(MYPY, PYRIGHT, "types-greenlet", "typing-extensions", "sqlalchemy>=2.1")
    session.run("python", "-m", "pip", "uninstall", "--yes", "--quiet", "greenlet")
    session.run("mypy", "--strict")
    # PYRIGHT_PYTHON_IGNORE_WARNINGS: no look-up of the newest pyright release.
    python = shutil.which("python", path=session.bin)
    session.run("pyright", "--pythonpath", str(python), env={"PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"})
    session.run(
        "python",
        "-m",
        "mypy.stubtest",
        "awaitlet",
        "_awaitlet_greenlet_shim",
        "--mypy-config-file",
        "pyproject.toml",
        "--allowlist",
        "stubtest-allowlist.txt",
    )


@nox.session(python=[TYPECHECK_PYTHON])
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check on the Python files, cargo fmt --check on the Rust
    ones (clippy is part of the build checks)."""
    session.install(RUFF)
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)
    session.run("cargo", "fmt", "--check", external=True)


@nox.session(python=False)
def rust(session: nox.Session) -> None:
    """``cargo fmt --check``, clippy (the benchmark too) and ``cargo test``: the engine's Rust
    tests, some of which embed CPython (``PYO3_PYTHON``, default python3.11). That
    interpreter needs a shared libpython; its directory goes on the loader's path."""
    python = os.environ.get("PYO3_PYTHON") or shutil.which(f"python{RUST_PYTHON}")
    if not python:
        session.error(f"python{RUST_PYTHON} is not on PATH (or set PYO3_PYTHON)")
    config = session.run(
        python,
        "-c",
        "import sysconfig; print(sysconfig.get_config_var('LIBDIR')); "
        "print(sysconfig.get_config_var('Py_ENABLE_SHARED'))",
        silent=True,
        external=True,
    )
    libdir, shared = config.split()
    if shared != "1":
        session.error(f"{python} has no shared libpython to embed (built without --enable-shared)")
    # The embedded interpreter must be this one: a libpython of the same version in a system
    # directory (a distribution's python3.X beside pyenv's) would be found first otherwise.
    loader_path = "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"
    env = {
        "PYO3_PYTHON": python,
        loader_path: os.pathsep.join(filter(None, [libdir, os.environ.get(loader_path)])),
        "CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")),
    }
    session.run("cargo", "fmt", "--check", external=True)
    session.run(
        "cargo",
        "clippy",
        "--all-targets",
        "--features",
        "bench",
        "--",
        "-D",
        "warnings",
        env=env,
        external=True,
    )
    session.run("cargo", "test", env=env, external=True)


@nox.session(python=[DOCS_PYTHON])
def docs(session: nox.Session) -> None:
    """Build the documentation site with MkDocs (``mkdocs build --strict``: any warning fails);
    arguments go to ``mkdocs build`` (``-d DIR`` for another output directory than site/).
    The API reference reads the sources and the stubs: nothing is compiled."""
    session.install("-r", "docs/requirements.txt")
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=TOOLS_PYTHON)
def wheels(session: nox.Session) -> None:
    """The release artifacts in dist/: the wheel of every supported CPython (python3.10 ...
    python3.15 on PATH) and the sdist, checked (stripped, auditwheel, twine check); each
    wheel is installed in a fresh environment of its interpreter and run, and the sdist is
    built in an empty directory."""
    session.install(*WHEEL_TOOLS, "twine", "virtualenv")
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir()
    built = {version: _build_wheel(session, f"python{version}", dist) for version in PYTHONS}
    _check_wheels(session, list(built.values()))
    venvs = Path(session.create_tmp()).resolve() / "venvs"
    for version, wheel in built.items():
        venv = venvs / version
        shutil.rmtree(venv, ignore_errors=True)
        session.run("python", "-m", "virtualenv", "--quiet", "-p", f"python{version}", str(venv))
        python = str(venv / "bin" / "python")
        install = [python, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)]
        session.run(*install, external=True)
        # From an empty directory, so that the checkout's python/ is not what is imported.
        with session.chdir(venv):
            session.run(python, "-c", SMOKE_TEST, external=True)
    sdist = _build_sdist(session, dist)
    session.run("twine", "check", "--strict", *map(str, [*built.values(), sdist]))
    session.log("dist/: " + ", ".join(sorted(path.name for path in dist.iterdir())))


@nox.session(python=PYTHONS)
def wheel_tests(session: nox.Session) -> None:
    """Our tests on the wheel in dist/ for the session's interpreter (from ``nox -s wheels``
    or a CI build job), less those that start a PostgreSQL server; arguments go to pytest.
    """
    session.install(
        "--force-reinstall",
        "--no-deps",
        "--no-index",
        "--only-binary",
        ":all:",
        "--find-links",
        str(ROOT / "dist"),
        "awaitlet-rs",
    )
    _install_test_requirements(session)
    session.run("python", "-c", SMOKE_TEST)
    session.run(
        "python",
        "-m",
        "pytest",
        "tests",
        "-p",
        "no:cacheprovider",
        "-m",
        "not postgresql",
        *session.posargs,
        env={"AWAITLET_EXPECT_GREENLET": "facade"},
    )


@nox.session(python=TOOLS_PYTHON)
def sdist(session: nox.Session) -> None:
    """The sdist, built into dist/, then built into a wheel and installed in an empty
    directory, away from the checkout."""
    session.install("maturin>=1.9,<2", "twine")
    dist = ROOT / "dist"
    dist.mkdir(exist_ok=True)
    _build_sdist(session, dist)


def _build_sdist(session: nox.Session, dist: Path) -> Path:
    for old in dist.glob("*.tar.gz"):
        old.unlink()
    session.run("maturin", "sdist", "--out", str(dist))
    (sdist,) = dist.glob("*.tar.gz")
    session.run("twine", "check", "--strict", str(sdist))
    # The sdist alone: pip builds it in an isolated environment, from an empty directory.
    empty = Path(session.create_tmp()).resolve() / "sdist-build"
    shutil.rmtree(empty, ignore_errors=True)
    empty.mkdir()
    with session.chdir(empty):
        session.run(
            "python",
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--wheel-dir",
            ".",
            str(sdist),
            env=_cargo_env(),
        )
        (wheel,) = empty.glob("*.whl")
        session.install("--force-reinstall", "--no-deps", str(wheel))
        session.run("python", "-c", SMOKE_TEST)
    return sdist


# What the greenlet-family suites need besides the packages under test (installed with
# --no-deps from their sdists by the runner, so that no greenlet comes with them).
# (psycopg2-binary: greenletio's test_patch_psycopg2 imports psycopg2.)
GREENLET_FAMILY_LIBRARY_DEPS = ("outcome", "sniffio", "trio", "anyio", "psycopg2-binary")
GREENLET_FAMILY_DEPS = (*GREENLET_FAMILY_LIBRARY_DEPS, "psutil", "objgraph")
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
