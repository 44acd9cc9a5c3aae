"""Merge one run's raw results into a Markdown table, a JSON file and a plot.

Usage: ``python report.py RAW_DIR RESULTS_DIR``, run by ``benches/run.py`` in the
awaitlet-rs environment (it needs pyperf and matplotlib). ``RAW_DIR`` holds the pyperf files
of the case scripts (``micro-<env>.json``, ``orm-<env>.json``) and ``run.json`` (setup,
scale results, failures). Writes ``latest.md``, ``latest.json`` and ``latest.png`` to
``RESULTS_DIR``, a copy of each named after the date and interpreter, and prints the
Markdown.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "cases"))
from impls import LABELS as IMPL_LABELS  # noqa: E402
from impls import ORDER  # noqa: E402
from verdict import against_target, compare, summarize  # noqa: E402

#: The second native measurement, taken in the greenlet environment (a noise gauge).
NATIVE_AGAIN = "native-greenlet-env"
LABELS = {**IMPL_LABELS, NATIVE_AGAIN: "native await, measured again in the greenlet environment"}
#: Short names for the plot.
SHORT = {
    "native": "native await",
    "awaitlet-rs": "awaitlet-rs",
    "sqlalchemy-facade": "SQLAlchemy on awaitlet-rs facade",
    "greenlet": "SQLAlchemy on greenlet",
    "awaitlet-0.0.1": "awaitlet 0.0.1 on greenlet",
    "greenback": "greenback on greenlet",
    NATIVE_AGAIN: "native await (greenlet env)",
}
ROW_ORDER = (*ORDER, NATIVE_AGAIN)
NATIVE, GREENLET = "native", "greenlet"

MICRO_CASES = {
    "wait_ready": (
        "1. awaitlet() on a coroutine that completes without suspending",
        "In a loop inside one `async_def` (greenlet: `await_only` inside one `greenlet_spawn`;"
        " greenback: `await_` inside one portal; native: `await coro()` in a loop).",
    ),
    "spawn_no_wait": (
        "2. await async_def(f) where f never waits",
        "`await async_def(f)` (greenlet: `await greenlet_spawn(f)`; greenback:"
        " `await with_portal_run_sync(f)`; native: `await` of an `async def` that does nothing).",
    ),
    "wait_sleep0": (
        "3. awaitlet(asyncio.sleep(0)) in a loop",
        "One trip through the event loop per operation (native: `await asyncio.sleep(0)`).",
    ),
}
#: The README's targets: (part, case or None for every case of the part, candidate,
#: reference, largest ratio of candidate to reference, wording).
TARGETS = (
    ("micro", "wait_ready", "awaitlet-rs", NATIVE, 2.0, "≤ 2× native await"),
    ("micro", "spawn_no_wait", "awaitlet-rs", GREENLET, 0.2, "≥ 5× faster than greenlet"),
    ("micro", "wait_sleep0", "awaitlet-rs", NATIVE, 1.10, "≤ 1.10× native await"),
    ("orm", None, "sqlalchemy-facade", GREENLET, 1.0, "≥ greenlet's throughput"),
)
ORM_CASES = {
    "orm_bulk_insert": "2,000 rows (200 parents × 9 children, keys given): one flush, commit",
    "orm_insert_returning": "200 rows, keys generated: one INSERT … RETURNING round trip each",
    "orm_select": "20 queries of 10 parents each, children loaded with selectinload",
}
COLORS = {
    "native": "#7f7f7f",
    "awaitlet-rs": "#d62728",
    "sqlalchemy-facade": "#ff9896",
    "greenlet": "#1f77b4",
    "awaitlet-0.0.1": "#aec7e8",
    "greenback": "#2ca02c",
    NATIVE_AGAIN: "#c7c7c7",
}


def machine() -> dict[str, Any]:
    """CPU model, core count and OS of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def load_pyperf(raw: Path, prefix: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``{case: {impl: stats}}`` from the pyperf files ``<prefix>-<env>.json``."""
    # Imported here: the rest of the module (the tables and verdicts) is unit-tested
    # without pyperf.
    import pyperf

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(raw.glob(f"{prefix}-*.json")):
        env = path.stem.split("-", 1)[1]
        for bench in pyperf.BenchmarkSuite.load(str(path)).get_benchmarks():
            metadata = bench.get_metadata()
            impl = metadata["impl"]
            if impl == NATIVE and env != "awaitlet-rs":
                impl = NATIVE_AGAIN
            values = bench.get_values()
            summary = summarize(values)
            results.setdefault(metadata["case"], {})[impl] = {
                "env": env,
                "mean_s": bench.mean(),
                "stdev_s": bench.stdev() if len(values) > 1 else 0.0,
                "cv": summary.cv,
                "median_s": bench.median(),
                "values": len(values),
                "samples": list(values),
                "loops": bench.get_loops() if hasattr(bench, "get_loops") else None,
            }
    return results


def ordered(impls: dict[str, Any]) -> list[str]:
    """Implementation ids in report order."""
    return sorted(impls, key=lambda impl: ROW_ORDER.index(impl) if impl in ROW_ORDER else 99)


def record_key(record: dict[str, Any]) -> tuple[int, int]:
    """Sort key of a scale record: by task count, then in report order."""
    impl = record["impl"]
    return record["tasks"], ROW_ORDER.index(impl) if impl in ROW_ORDER else 99


def ratio(value: float, reference: float | None) -> str:
    """``value / reference`` as ``1.23×``, or a dash."""
    if not reference:
        return "–"
    return f"{value / reference:.2f}×"


def versus(stats: dict[str, Any], reference: dict[str, Any] | None) -> str:
    """The ratio of two implementations' means with its noise, and "faster" or "slower" only
    where the noise allows (see ``verdict.py``); a dash without a reference."""
    if reference is None or stats is reference:
        return "–"
    return compare(stats["samples"], reference["samples"]).text()


def cv(stats: dict[str, Any]) -> str:
    """The coefficient of variation of an implementation's samples, as a percentage."""
    return f"{stats['cv']:.1%}" if stats["values"] > 1 else "–"


def target_lines(data: dict[str, Any]) -> list[str]:
    """One line per target of the README that this run measured: met, missed, or undecided
    when the noise is larger than the margin."""
    lines = []
    for part, only, candidate, reference, target, wording in TARGETS:
        for case, results in data[part].items():
            if only is not None and case != only:
                continue
            if candidate not in results or reference not in results:
                continue
            verdict = against_target(
                results[candidate]["samples"], results[reference]["samples"], target
            )
            lines.append(
                f"- `{case}`, target {wording}: {SHORT.get(candidate, candidate)} / "
                f"{SHORT.get(reference, reference)} = {verdict.text()}"
            )
    return lines


def ns(seconds: float) -> str:
    """Seconds as whole nanoseconds with separators."""
    return f"{seconds * 1e9:,.0f} ns"


def timing_table(
    results: dict[str, dict[str, Any]], unit: str, scale: float, digits: int
) -> list[str]:
    """A Markdown table of one case: time per operation and ratios."""
    native = results.get(NATIVE)
    greenlet = results.get(GREENLET)
    lines = [
        f"| implementation | {unit} | ± std dev | CV | vs native | vs greenlet |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for impl in ordered(results):
        stats = results[impl]
        mean, stdev = stats["mean_s"], stats["stdev_s"]
        label = LABELS.get(impl, impl)
        if impl in (NATIVE, GREENLET):
            label = f"**{label}**"
        lines.append(
            f"| {label} | {mean * scale:,.{digits}f} | {stdev * scale:,.{digits}f} "
            f"| {cv(stats)} | {versus(stats, native)} | {versus(stats, greenlet)} |"
        )
    return lines


def scale_table(records: list[dict[str, Any]]) -> list[str]:
    """A Markdown table of the scale runs, failures included."""
    lines = [
        "| implementation | tasks | result | peak RSS / task | vs native | vs greenlet "
        "| mappings / task | start all | total |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    per_task = {
        (record["impl"], record["tasks"]): record.get("peak_rss_per_task_bytes")
        for record in records
        if record.get("ok")
    }
    for record in sorted(records, key=record_key):
        impl, tasks = record["impl"], record["tasks"]
        if record.get("ok"):
            value = record["peak_rss_per_task_bytes"]
            mappings = record.get("mappings_per_task")
            lines.append(
                f"| {LABELS.get(impl, impl)} | {tasks:,} | ok | {value / 1024:,.1f} KiB "
                f"| {ratio(value, per_task.get((NATIVE, tasks)))} "
                f"| {ratio(value, per_task.get((GREENLET, tasks)))} "
                f"| {'–' if mappings is None else f'{mappings:.2f}'} "
                f"| {record['start_seconds']:.2f} s | {record['total_seconds']:.2f} s |"
            )
        else:
            error = record.get("error", "failed").splitlines()[0]
            if len(error) > 120:
                error = error[:117] + "…"
            lines.append(
                f"| {LABELS.get(impl, impl)} | {tasks:,} | **failed**: {error} "
                "| – | – | – | – | – | – |"
            )
    return lines


def markdown(data: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    meta = data["meta"]
    versions = ", ".join(f"{name} {version}" for name, version in sorted(meta["versions"].items()))
    out = [
        f"# awaitlet-rs benchmarks, CPython {meta['python']}",
        "",
        f"- date: {meta['date']}",
        f"- CPython {meta['python']} ({meta['implementation']})",
        f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"{meta['machine']['os']}",
        f"- awaitlet-rs commit: {meta['commit']}",
        f"- packages: {versions}",
        f"- pyperf quality: {meta['quality']} (mean ± standard deviation over processes"
        " and values)",
        "",
        "Ratios: time (or memory) divided by native `await`'s and by SQLAlchemy's"
        " `greenlet_spawn`/`await_only` on the real greenlet's (the algorithm of the original"
        " awaitlet). Below 1 is faster (smaller). CV: coefficient of variation (standard"
        " deviation / mean) of an implementation's samples; the ± of a ratio is both sides'"
        " CVs combined, and a verdict (faster, slower, target met or missed) is given only"
        " where the ratio is further from the threshold than that noise, else it is"
        " *undecided* (see `benches/verdict.py`).",
    ]
    targets = target_lines(data)
    if targets:
        out += ["", "## Targets", "", *targets]
    for case, (title, description) in MICRO_CASES.items():
        if case not in data["micro"]:
            continue
        out += ["", f"## {title}", "", description, ""]
        out += timing_table(data["micro"][case], "ns / op", 1e9, 0)
    if data["scale"]:
        depth = data["scale"][0].get("depth")
        out += [
            "",
            f"## 4. Scale: concurrent tasks suspended {depth} frames deep",
            "",
            "Each row is a fresh process: peak RSS (`ru_maxrss`) after the tasks completed,"
            " minus the peak before they started, per task. Mappings: memory mappings per task"
            " while all were suspended (`vm.max_map_count` limits a process's total). Start all:"
            " seconds until every task was suspended; total: until every task had completed.",
            "",
        ]
        out += scale_table(data["scale"])
        failures = [record for record in data["scale"] if not record.get("ok")]
        if failures:
            out += ["", "Failed scale runs, with their error output:", ""]
            for record in failures:
                out += [
                    f"- {LABELS.get(record['impl'], record['impl'])}, {record['tasks']:,} tasks:",
                    "",
                    "  ```text",
                    *(f"  {line}" for line in record.get("error", "").splitlines()),
                    "  ```",
                ]
    if data["orm"]:
        out += ["", "## 5. SQLAlchemy ORM on aiosqlite", ""]
        out += [f"- `{case}`: {description}" for case, description in ORM_CASES.items()]
        out += [
            "",
            "| workload | implementation | ms / workload | ± std dev | CV | workloads / s "
            "| vs greenlet |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for case in ORM_CASES:
            results = data["orm"].get(case, {})
            greenlet = results.get(GREENLET)
            for impl in ordered(results):
                stats = results[impl]
                out.append(
                    f"| `{case}` | {LABELS.get(impl, impl)} "
                    f"| {stats['mean_s'] * 1e3:,.1f} | {stats['stdev_s'] * 1e3:,.1f} "
                    f"| {cv(stats)} | {1 / stats['mean_s']:,.1f} | {versus(stats, greenlet)} |"
                )
    if data["failures"] or data["notes"]:
        out += ["", "## Failed steps", ""]
        for failure in data["failures"]:
            out += [f"- {failure['step']}:", "", "  ```text"]
            out += [f"  {line}" for line in failure["error"].splitlines()]
            out += ["  ```"]
        out += [f"- {note}" for note in data["notes"]]
    return "\n".join(out) + "\n"


def bar_panel(axis: Any, results: dict[str, Any], title: str, scale: float, unit: str) -> None:
    """Horizontal bars, one per implementation, with their values written beside them."""
    impls = ordered(results)[::-1]
    values = [results[impl]["mean_s"] * scale for impl in impls]
    errors = [results[impl]["stdev_s"] * scale for impl in impls]
    axis.barh(
        [SHORT.get(impl, impl) for impl in impls],
        values,
        xerr=errors,
        color=[COLORS.get(impl, "#333333") for impl in impls],
    )
    axis.set_xscale("log")
    axis.set_xlabel(unit)
    axis.set_title(title, fontsize=10)
    for index, (value, error) in enumerate(zip(values, errors, strict=True)):
        axis.text(
            value + error,
            index,
            f" {value:,.0f}" if value >= 10 else f" {value:.1f}",
            va="center",
            fontsize=8,
        )
    axis.margins(x=0.25)


def plot(data: dict[str, Any], path: Path) -> None:
    """The PNG: one panel per micro case, the ORM workloads, and the scale runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = data["meta"]
    figure, axes = plt.subplots(3, 2, figsize=(15, 14))
    panels = list(axes.flat)
    for axis, (case, (title, _)) in zip(panels, MICRO_CASES.items(), strict=False):
        if case in data["micro"]:
            bar_panel(axis, data["micro"][case], title, 1e9, "ns per operation (log)")
        else:
            axis.set_visible(False)

    orm_axis = panels[3]
    orm_bars = [
        (
            f"{case}\n{SHORT.get(impl, impl)}",
            stats["mean_s"] * 1e3,
            stats["stdev_s"] * 1e3,
            COLORS.get(impl),
        )
        for case, results in data["orm"].items()
        for impl, stats in sorted(results.items())
    ]
    if orm_bars:
        labels, values, errors, colors = zip(*orm_bars, strict=True)
        orm_axis.barh(labels, values, xerr=errors, color=colors)
        for index, (value, error) in enumerate(zip(values, errors, strict=True)):
            orm_axis.text(value + error, index, f" {value:,.1f}", va="center", fontsize=8)
        orm_axis.set_xlabel("ms per workload")
        orm_axis.set_title("5. SQLAlchemy ORM on aiosqlite", fontsize=10)
        orm_axis.margins(x=0.2)
        orm_axis.tick_params(axis="y", labelsize=8)
    else:
        orm_axis.set_visible(False)

    scale_axis = panels[4]
    records = sorted(data["scale"], key=record_key)
    if records:
        labels = [f"{SHORT.get(r['impl'], r['impl'])}, {r['tasks']:,}" for r in records][::-1]
        values = [r["peak_rss_per_task_bytes"] / 1024 if r.get("ok") else 0 for r in records][::-1]
        colors = [COLORS.get(r["impl"], "#333333") for r in records][::-1]
        scale_axis.barh(labels, values, color=colors)
        for index, record in enumerate(records[::-1]):
            text = f" {values[index]:,.1f}" if record.get("ok") else " failed"
            scale_axis.text(values[index], index, text, va="center", fontsize=8)
        scale_axis.set_xlabel("peak RSS per task, KiB")
        depth = records[0].get("depth")
        scale_axis.set_title(f"4. Scale: tasks suspended {depth} frames deep", fontsize=10)
        scale_axis.margins(x=0.2)
        scale_axis.tick_params(axis="y", labelsize=8)
    else:
        scale_axis.set_visible(False)

    info_axis = panels[5]
    info_axis.axis("off")
    info = [
        f"date: {meta['date']}",
        f"CPython {meta['python']}",
        f"CPU: {meta['machine']['cpu']}",
        f"cores: {meta['machine']['cores']}",
        f"awaitlet-rs commit: {meta['commit']}",
        f"pyperf quality: {meta['quality']}",
        "",
        *(f"{name} {version}" for name, version in sorted(meta["versions"].items())),
        "",
        "bars: mean, whiskers: std dev",
    ]
    failed = [f"failed: {r['impl']}, {r['tasks']:,} tasks" for r in records if not r.get("ok")]
    failed += [f"failed step: {failure['step']}" for failure in data["failures"]]
    info_axis.text(0, 1, "\n".join(info + [""] + failed), va="top", fontsize=9, family="monospace")
    figure.suptitle(
        f"awaitlet-rs benchmarks — CPython {meta['python']} — {meta['machine']['cpu']}, "
        f"{meta['machine']['cores']} cores — {meta['date']}",
        fontsize=12,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    """Read RAW_DIR, write RESULTS_DIR/latest.* and a dated copy, print the Markdown."""
    raw, results_dir = Path(sys.argv[1]), Path(sys.argv[2])
    run_info = json.loads((raw / "run.json").read_text())
    versions: dict[str, str] = {}
    for env_versions in run_info.get("versions", {}).values():
        versions.update(env_versions)
    now = datetime.datetime.now(datetime.timezone.utc)
    data = {
        "meta": {
            "date": now.strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "machine": machine(),
            "commit": run_info.get("commit", "unknown"),
            "quality": run_info.get("quality"),
            "versions": versions,
            "seconds": run_info.get("seconds"),
        },
        "micro": load_pyperf(raw, "micro"),
        "orm": load_pyperf(raw, "orm"),
        "scale": run_info.get("scale", []),
        "failures": run_info.get("failures", []),
        "notes": run_info.get("notes", []),
        "versions_by_environment": run_info.get("versions", {}),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(data)
    stem = f"{now.strftime('%Y%m%d-%H%M%S')}-{run_info['python']['tag']}"
    (results_dir / "latest.md").write_text(text, encoding="utf-8")
    (results_dir / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    plot(data, results_dir / "latest.png")
    for suffix in ("md", "json", "png"):
        shutil.copyfile(results_dir / f"latest.{suffix}", results_dir / f"{stem}.{suffix}")
    print(text, end="")


if __name__ == "__main__":
    main()
