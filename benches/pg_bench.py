#!/usr/bin/env python3
"""A database workload: many small queries on PostgreSQL through asyncpg, as raw asyncpg,
SQLAlchemy Core and SQLAlchemy ORM, at concurrency 1 and 50, with SQLAlchemy on awaitlet-rs's
greenlet facade and on the real greenlet.

The two greenlets need two environments (the facade is what ``import greenlet`` gives only
where greenlet is not installed): ``--ours`` is an interpreter with this package, SQLAlchemy
and asyncpg and no greenlet; ``--greenlet`` one with ``sqlalchemy[asyncio]`` (the real
greenlet) and asyncpg, at the same versions. A throwaway PostgreSQL server is started as the
tests start theirs (``tests/_postgres.py``: ``initdb`` and ``pg_ctl`` must be installed). Each
case runs in a fresh process per environment, in rounds that alternate the environments;
each process reports the queries per second of a few repeats, whose mean and coefficient of
variation the table shows, with the facade's gain over greenlet (and its noise: no verdict
where the noise exceeds the difference) and how many switches SQLAlchemy makes per query.

Usage::

    python benches/pg_bench.py --ours A/bin/python --greenlet B/bin/python [--rounds 2]
        [--queries 4000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHES))
sys.path.insert(0, str(BENCHES.parent / "tests"))
from verdict import compare, summarize  # noqa: E402

CASES = [(workload, c) for workload in ("asyncpg", "core", "orm") for c in (1, 50)]


def run_case(python: str, dsn: str, workload: str, concurrency: int, queries: int) -> dict:
    """One process running one workload; its JSON record."""
    cmd = [python, "pg.py", dsn, workload, str(concurrency), str(queries)]
    result = subprocess.run(cmd, cwd=BENCHES / "cases", capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    """Start the server, run every case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", required=True, help="interpreter without greenlet")
    parser.add_argument("--greenlet", required=True, help="interpreter with the real greenlet")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queries", type=int, default=4000, help="queries per repeat")
    args = parser.parse_args()
    import _postgres

    server = _postgres.start_postgres()
    try:
        dsn = f"postgresql://{server.user}@{_postgres.HOST}:{server.port}/{server.database}"
        setup = [args.ours, "pg.py", dsn, "asyncpg", "1", "10", "--setup"]
        subprocess.run(setup, cwd=BENCHES / "cases", check=True, capture_output=True)
        envs = {"facade": args.ours, "greenlet": args.greenlet}
        samples: dict[tuple[str, int, str], list[float]] = {}
        switches: dict[tuple[str, int, str], float] = {}
        for number in range(args.rounds):
            order = list(envs) if number % 2 == 0 else list(envs)[::-1]
            for workload, concurrency in CASES:
                for env in order:
                    if workload == "asyncpg" and env != "facade":
                        continue
                    record = run_case(envs[env], dsn, workload, concurrency, args.queries)
                    expected = "facade" if env == "facade" else "real"
                    if record["greenlet"] not in (None, expected):
                        raise SystemExit(f"{envs[env]} has greenlet {record['greenlet']!r}")
                    key = (workload, concurrency, env)
                    samples.setdefault(key, []).extend(record["qps"])
                    if "switches_per_query" in record:
                        switches[key] = record["switches_per_query"]
    finally:
        server.stop()
    print(
        "| workload | concurrency | raw asyncpg q/s (CV) | facade q/s (CV) | greenlet q/s (CV) "
        "| facade time / greenlet time | switches / query |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for workload, concurrency in CASES:
        if workload == "asyncpg":
            continue
        raw = summarize(samples[("asyncpg", concurrency, "facade")])
        ours = samples[(workload, concurrency, "facade")]
        theirs = samples[(workload, concurrency, "greenlet")]
        mine, other = summarize(ours), summarize(theirs)
        # Compared as times per query (1 / q/s): below 1 is the facade being faster.
        gain = compare([1 / q for q in ours], [1 / q for q in theirs]).text()
        print(
            f"| {workload} | {concurrency} | {raw.mean:,.0f} ({raw.cv:.1%}) "
            f"| {mine.mean:,.0f} ({mine.cv:.1%}) | {other.mean:,.0f} ({other.cv:.1%}) "
            f"| {gain} | {switches.get((workload, concurrency, 'facade'), 0):.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
