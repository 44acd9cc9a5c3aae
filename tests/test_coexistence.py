"""Installs in throwaway virtual environments. awaitlet-rs and the original ``awaitlet``
distribution in one environment, installed with pip in both orders: whichever came last,
``import awaitlet`` warns, naming both distributions and the fix, and the fix works. And an
editable install of this checkout (``pip install -e .``) has the greenlet hook too.

The original 0.0.1 wheel and its dependencies are downloaded once per test session (with
``pip download``; ``AWAITLET_TEST_DOWNLOADS`` names a directory to keep them in across runs).
awaitlet-rs is installed from a wheel packed from the distribution installed in this
environment (no build), or from the wheel ``AWAITLET_TEST_WHEEL`` names.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.machinery
import importlib.metadata
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

ORIGINAL = "awaitlet==0.0.1"
ORIGINAL_WHEEL = "awaitlet-0.0.1-py3-none-any.whl"
WARNING = "RuntimeWarning: the original 'awaitlet' distribution is installed beside 'awaitlet-rs'"
FIX = "run 'pip uninstall awaitlet', then 'pip install --force-reinstall awaitlet-rs'"
VERSION = "import awaitlet; print(awaitlet.__version__)"


def _pip(*args: str, python: Path | None = None) -> str:
    """Run this environment's pip, on the environment of ``python`` if given."""
    target = ["--python", str(python)] if python else []
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *target, *args]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the original awaitlet's wheel and its dependencies' wheels."""
    kept = os.environ.get("AWAITLET_TEST_DOWNLOADS")
    directory = Path(kept) if kept else tmp_path_factory.mktemp("downloads")
    if not (directory / ORIGINAL_WHEEL).is_file():
        directory.mkdir(parents=True, exist_ok=True)
        _pip("download", "--quiet", "--only-binary", ":all:", ORIGINAL, "-d", str(directory))
    return directory


def _record_line(path: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [path, f"sha256={digest}", str(len(data))]


@pytest.fixture(scope="session")
def our_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of awaitlet-rs: ``AWAITLET_TEST_WHEEL``, or the installed distribution's files
    packed into one."""
    if os.environ.get("AWAITLET_TEST_WHEEL"):
        return Path(os.environ["AWAITLET_TEST_WHEEL"])
    dist = importlib.metadata.distribution("awaitlet-rs")
    files = [file for file in dist.files or [] if "__pycache__" not in file.parts]
    if not any(file.as_posix() == "awaitlet/__init__.py" for file in files):
        pytest.skip("awaitlet-rs is not installed from a wheel here (an editable install?)")
    info = next(file.parts[0] for file in files if file.parts[0].endswith(".dist-info"))
    skipped = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    wheel_file = dist.read_text("WHEEL") or ""
    tag = next(line.split(":", 1)[1].strip() for line in wheel_file.splitlines() if "Tag:" in line)
    wheel = tmp_path_factory.mktemp("wheel") / f"awaitlet_rs-{dist.version}-{tag}.whl"
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            if file.parts[0] == info and file.name in skipped:
                continue
            data = Path(str(file.locate())).read_bytes()
            archive.writestr(file.as_posix(), data)
            writer.writerow(_record_line(file.as_posix(), data))
        writer.writerow([f"{info}/RECORD", "", ""])
        archive.writestr(f"{info}/RECORD", record.getvalue())
    return wheel


class Venv:
    """A throwaway virtual environment, without pip of its own (this one's pip serves it)."""

    def __init__(self, path: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
        self.python = path / "bin" / "python"

    def pip(self, *args: str) -> str:
        return _pip(*args, python=self.python)

    def run(self, code: str, **environment: str) -> subprocess.CompletedProcess[str]:
        """Run ``python -c code`` there, in a clean environment plus ``environment``."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("PYTHON", "AWAITLET_"))
        }
        return subprocess.run(
            [str(self.python), "-c", code],
            capture_output=True,
            text=True,
            env={**env, **environment},
            cwd=self.python.parent,
        )


@pytest.fixture
def venv(tmp_path: Path) -> Venv:
    if sys.platform == "win32":
        pytest.skip("awaitlet-rs does not support Windows")
    pip_version = tuple(int(part) for part in importlib.metadata.version("pip").split(".")[:2])
    if pip_version < (22, 3):
        pytest.skip("needs pip 22.3 or newer here (pip --python)")
    return Venv(tmp_path / "venv")


def install_original(venv: Venv, downloads: Path) -> None:
    """``pip install awaitlet==0.0.1``, with its dependencies (greenlet, typing-extensions)."""
    venv.pip("install", "--quiet", "--no-index", "--find-links", str(downloads), ORIGINAL)


def install_ours(venv: Venv, wheel: Path, *options: str) -> None:
    venv.pip("install", "--quiet", "--no-index", "--no-deps", *options, str(wheel))


def assert_warns_once(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(WARNING) == 1, result.stderr
    assert FIX in result.stderr
    # Attributed to the line that imports awaitlet, not to the import machinery.
    assert result.stderr.startswith("<string>:1: RuntimeWarning"), result.stderr


def assert_fixed(venv: Venv, wheel: Path) -> None:
    """Follow the warning's advice; then awaitlet is ours again, and nothing warns."""
    venv.pip("uninstall", "--yes", "--quiet", "awaitlet")
    install_ours(venv, wheel, "--force-reinstall")
    result = venv.run(f"import warnings; warnings.simplefilter('error'); {VERSION}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == importlib.metadata.version("awaitlet-rs")
    assert result.stderr == ""


def test_ours_alone_does_not_warn(venv: Venv, our_wheel: Path) -> None:
    install_ours(venv, our_wheel)
    result = venv.run(f"import warnings; warnings.simplefilter('error'); {VERSION}")
    assert (result.returncode, result.stderr) == (0, "")


def test_original_then_ours(venv: Venv, downloads: Path, our_wheel: Path) -> None:
    install_original(venv, downloads)
    install_ours(venv, our_wheel)
    ours = importlib.metadata.version("awaitlet-rs")
    # Our files replaced the original's: the package is ours, and it warns, with the .pth
    # hook on or off (the hook's watcher and awaitlet's __init__ warn only once between them).
    for environment in ({}, {"AWAITLET_GREENLET_SHIM": "0"}):
        result = venv.run(VERSION, **environment)
        assert_warns_once(result)
        assert result.stdout.strip() == ours
    assert venv.run("pass").stderr == ""  # only the import of awaitlet warns

    # Uninstalling the original removes the files the two share: ours, now.
    venv.pip("uninstall", "--yes", "--quiet", "awaitlet")
    broken = venv.run("from awaitlet import async_def")
    assert broken.returncode != 0
    assert "ImportError" in broken.stderr
    install_ours(venv, our_wheel, "--force-reinstall")
    assert venv.run(VERSION).stdout.strip() == ours


def test_ours_then_original(venv: Venv, downloads: Path, our_wheel: Path) -> None:
    install_ours(venv, our_wheel)
    install_original(venv, downloads)
    # The original's __init__.py replaced ours; the .pth hook still runs and warns.
    result = venv.run(VERSION)
    assert_warns_once(result)
    assert result.stdout.strip() == "0.0.1"
    assert venv.run("pass").stderr == ""
    # Finding the original costs the start-up no import: the watcher is defined in the line.
    modules = "import sys; print(sorted(sys.modules))"
    assert venv.run(modules).stdout == venv.run(modules, AWAITLET_GREENLET_SHIM="0").stdout
    # With the hook turned off, nothing of ours runs at all.
    assert venv.run(VERSION, AWAITLET_GREENLET_SHIM="0").stderr == ""
    assert_fixed(venv, our_wheel)


def test_original_then_ours_fixed(venv: Venv, downloads: Path, our_wheel: Path) -> None:
    install_original(venv, downloads)
    install_ours(venv, our_wheel)
    assert_fixed(venv, our_wheel)


def test_editable_install_has_the_greenlet_hook(venv: Venv) -> None:
    """``pip install -e .`` builds the extension into python/awaitlet (with the target
    directory of the other builds, CARGO_TARGET_DIR or ./target, so it costs a link when the
    same interpreter's release build is there) and installs the .pth hook as wheel data."""
    if not (ROOT / "Cargo.toml").is_file():
        pytest.skip("needs a source checkout")
    # The extension this interpreter's build writes into the source tree: removed afterwards
    # unless it was there before (other interpreters' builds may come and go meanwhile).
    built = ROOT / "python" / "awaitlet" / f"_awaitlet{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    existed = built.exists()
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    command += ["--python", str(venv.python), "install", "--quiet", "--no-deps", "-e", str(ROOT)]
    try:
        build = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "CARGO_TARGET_DIR": target}
        )
        assert build.returncode == 0, build.stdout + build.stderr
        result = venv.run(
            "import awaitlet, greenlet; print(awaitlet.__file__); "
            "print(greenlet.__awaitlet_facade__)"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            str(ROOT / "python" / "awaitlet" / "__init__.py"),
            "True",
        ]
    finally:
        if not existed:
            built.unlink(missing_ok=True)
