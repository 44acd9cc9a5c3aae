"""What the distribution says about itself agrees with what it is."""

import importlib.metadata
import json
import pathlib
import shutil
import subprocess

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
