"""What the benchmarks against the original libraries share (``bridge_*.py``,
``greenlet_family.py``): the command line, timing helpers, the ``pip install --target``
directory of the originals, the run of each side in a fresh interpreter, and the Markdown
table.

Each side runs in a child process of the benchmark's own script (``--child KIND``), so that
ours runs with no greenlet importable and the originals on the real one, put first on
``PYTHONPATH``.  The child prints its results as JSON, on its last line of output.

Only the standard library is used: the children import this module too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


def argument_parser(
    doc: str | None, directory_option: str, directory_help: str, kinds: tuple[str, str]
) -> argparse.ArgumentParser:
    """The options every such benchmark has: ``directory_option``, a ``pip install --target``
    directory of the originals; ``--repeat N``; and the hidden ``--child KIND`` that runs one
    side (``kinds``: ours, then the originals)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument(directory_option, type=Path, help=directory_help)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", choices=kinds, help=argparse.SUPPRESS)
    return parser


def best(run: Callable[[int], object], loops: int, repeat: int) -> float:
    """Best time per loop, in ns, of ``run(loops)`` over ``repeat`` runs."""
    result = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        run(loops)
        result = min(result, (time.perf_counter_ns() - start) / loops)
    return result


async def best_async(run: Callable[[int], Awaitable[object]], loops: int, repeat: int) -> float:
    """Best time per loop, in ns, of ``await run(loops)`` over ``repeat`` runs, on one loop."""
    result = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        await run(loops)
        result = min(result, (time.perf_counter_ns() - start) / loops)
    return result


@contextlib.contextmanager
def installed(given: Path | None, requirements: Sequence[str], package: str) -> Iterator[Path]:
    """A ``pip install --target`` directory of ``requirements``: ``given`` if it holds
    ``package`` already, else one installed there or, with none given, in a temporary
    directory removed on leaving."""
    with tempfile.TemporaryDirectory(prefix=f"awaitlet-bench-{package}-") as tmp:
        target = given or Path(tmp) / "originals"
        if not (target / package).is_dir():
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target)]
                + list(requirements),
                check=True,
            )
        yield target


def _run_child(
    script: str, kind: str, repeat: int, pythonpath: Path | None, *extra: str
) -> dict[str, Any]:
    """The results of ``script --child KIND --repeat N [extra]``, run in a fresh interpreter
    with ``pythonpath`` as its only ``PYTHONPATH`` (none: no ``PYTHONPATH``)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    command = [sys.executable, script, "--child", kind, "--repeat", str(repeat), *extra]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    results: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return results


def run_sides(
    script: str, kinds: tuple[str, str], repeat: int, originals: Path, *extra: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The results of ours, then of the originals (from the directory ``originals``): each
    side of ``script`` run in a fresh interpreter by :func:`_run_child`."""
    ours = _run_child(script, kinds[0], repeat, None, *extra)
    return ours, _run_child(script, kinds[1], repeat, originals, *extra)


def print_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A Markdown table: the first column (the case) left-aligned, the figures right-aligned."""
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join(["---", *["---:"] * (len(header) - 1)]) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def compared(
    ours: dict[str, float], theirs: dict[str, float], figure: str
) -> Iterator[tuple[str, str, str, str]]:
    """Table rows: each case, our figure and theirs (formatted as ``figure``), and the ratio
    of theirs over ours (infinite where ours is not above zero: a difference of two times may
    come out so)."""
    for case, value in ours.items():
        ratio = theirs[case] / value if value > 0 else float("inf")
        yield case, format(value, figure), format(theirs[case], figure), f"{ratio:.2f}x"
