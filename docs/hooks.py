"""MkDocs hook: serve the published benchmark plots (benches/published/*.png) under
benchmarks/, so the docs show them without a second copy in docs/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

PUBLISHED = Path(__file__).resolve().parent.parent / "benches" / "published"


def on_files(files: Files, config: Any) -> Files:
    """Add each published plot as benchmarks/<name>.png."""
    for plot in sorted(PUBLISHED.glob("*.png")):
        files.append(File.generated(config, f"benchmarks/{plot.name}", abs_src_path=str(plot)))
    return files
