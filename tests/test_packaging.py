"""What the distribution says about itself agrees with what it is."""

import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys

import awaitlet
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_version_is_the_distributions():
    assert awaitlet.__version__ == importlib.metadata.version("awaitlet-rs")


def test_license_is_declared_and_shipped():
    metadata = importlib.metadata.metadata("awaitlet-rs")
    assert metadata["License-Expression"] == "MIT"
    files = importlib.metadata.files("awaitlet-rs") or []
    assert any(file.name == "LICENSE" for file in files)


def _version_tuple(text):
    return tuple(int(part) for part in text.split("."))


def test_rust_version_is_at_least_every_dependencys():
    cargo = shutil.which("cargo")
    if cargo is None or not (ROOT / "Cargo.toml").exists():
        pytest.skip("needs cargo and a source checkout")
    metadata = json.loads(
        subprocess.run(
            [cargo, "metadata", "--format-version", "1", "--locked", "--offline"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    packages = {package["id"]: package for package in metadata["packages"]}
    ours = next(package for package in packages.values() if package["name"] == "awaitlet-rs")
    # The dependencies a build of the extension uses (not the benchmark's).
    resolve = {node["id"]: node for node in metadata["resolve"]["nodes"]}
    needed, pending = set(), [ours["id"]]
    while pending:
        node = resolve[pending.pop()]
        for dependency in node["deps"]:
            kinds = {kind["kind"] for kind in dependency["dep_kinds"]}
            if kinds != {"dev"} and dependency["pkg"] not in needed:
                needed.add(dependency["pkg"])
                pending.append(dependency["pkg"])
    declared = {
        packages[package]["name"]: packages[package]["rust_version"]
        for package in needed
        if packages[package]["rust_version"]
    }
    newest = max(declared.values(), key=_version_tuple)
    assert _version_tuple(ours["rust_version"]) >= _version_tuple(newest), declared


def test_source_build_without_internal_headers_says_what_to_install(tmp_path):
    """A source build where the interpreter's internal headers are missing (a development
    package without them, or none) stops with one sentence naming what to install."""
    cargo = shutil.which("cargo")
    if cargo is None or not (ROOT / "build.rs").exists():
        pytest.skip("needs cargo and a source checkout")
    include = tmp_path / "include"
    include.mkdir()
    (include / "Python.h").write_text("/* the public headers, without internal/ */\n")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = {
        **os.environ,
        "PYO3_PYTHON": sys.executable,
        "AWAITLET_PYTHON_INCLUDE": str(include),
        "CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")),
        "CARGO_TERM_COLOR": "never",
        "RUST_BACKTRACE": "1",
    }
    result = subprocess.run(
        [cargo, "check", "--lib", "--locked", "--offline", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    messages = [line.strip() for line in result.stderr.splitlines() if "awaitlet-rs" in line]
    ours = [line for line in messages if line.startswith("error: awaitlet-rs ")]
    assert len(ours) == 1, result.stderr
    sentence = ours[0]
    assert str(include) in sentence
    assert f"install Python {version}'s development headers, internal ones included" in sentence
    assert f"apt-get install python{version}-dev" in sentence
    assert sentence.count(". ") == 0 and sentence.endswith("source"), sentence
    assert "panicked" not in result.stderr and "stack backtrace" not in result.stderr
