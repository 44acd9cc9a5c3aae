"""Fetching the pinned sdists whose test suites the runners of this directory run."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_pinned_sdist(spec: str, name: str, want: str, dest: Path, runner: str) -> Path:
    """Make sure ``dest`` holds the sdist ``name`` of ``spec`` (``package==version``) with the
    SHA-256 ``want``, downloading it with pip if needed; return its path. A download with
    another digest is deleted and stops the run. ``runner`` prefixes the messages."""
    sdist = dest / name
    if sdist.is_file() and sha256(sdist) == want:
        print(f"{runner}: using cached {sdist}", flush=True)
        return sdist
    dest.mkdir(parents=True, exist_ok=True)
    sdist.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps"]
    cmd += ["--no-binary", ":all:", spec, "-d", str(dest)]
    print(f"{runner}: " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    actual = sha256(sdist)
    if actual != want:
        sdist.unlink()
        raise SystemExit(f"{runner}: {name} has sha256 {actual}, want {want}")
    return sdist
