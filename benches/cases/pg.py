"""Many small queries on PostgreSQL through asyncpg: raw asyncpg, SQLAlchemy Core, SQLAlchemy
ORM, at a given concurrency. Run by ``benches/pg_bench.py`` in each benchmark environment
(SQLAlchemy then runs on awaitlet-rs's greenlet facade or on the real greenlet, whichever
``import greenlet`` gives there).

Usage: ``python pg.py DSN WORKLOAD CONCURRENCY QUERIES [--setup]``, where DSN is
``postgresql://user@host:port/database`` and WORKLOAD one of ``asyncpg``, ``core``, ``orm``.
Prints one JSON line: the workload, the greenlet kind, queries per second of each of a few
repeats, and (for the SQLAlchemy workloads) how many times SQLAlchemy's ``await_`` switched
out of the sync code per query. ``--setup`` creates and fills the table first.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from impls import greenlet_kind

ROWS = 1000
REPEATS = 5


async def setup(dsn: str) -> None:
    """The table the queries read: ROWS rows of (id, name, value)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS items")
        await conn.execute("CREATE TABLE items (id integer PRIMARY KEY, name text, value float8)")
        await conn.executemany(
            "INSERT INTO items VALUES ($1, $2, $3)",
            [(i, f"item {i}", i / 7) for i in range(ROWS)],
        )
    finally:
        await conn.close()


async def run_asyncpg(dsn: str, concurrency: int, queries: int) -> float:
    """Seconds for ``queries`` fetchrow calls, spread over ``concurrency`` connections."""
    import asyncpg

    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)

    async def worker(first: int, count: int) -> None:
        async with pool.acquire() as conn:
            for i in range(first, first + count):
                row = await conn.fetchrow(
                    "SELECT id, name, value FROM items WHERE id = $1", i % ROWS
                )
                assert row is not None

    try:
        return await timed(worker, concurrency, queries)
    finally:
        await pool.close()


async def timed(worker: Any, concurrency: int, queries: int) -> float:
    """Runs ``concurrency`` workers that share ``queries``; returns the seconds taken."""
    share = queries // concurrency
    start = time.perf_counter()
    await asyncio.gather(*(worker(n * share, share) for n in range(concurrency)))
    return time.perf_counter() - start


def sqlalchemy_parts(dsn: str, concurrency: int) -> tuple[Any, Any, Any]:
    """An engine with a pool of ``concurrency`` connections, the Core table, the ORM class."""
    from sqlalchemy import Column, Float, Integer, MetaData, String, Table
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.orm import DeclarativeBase

    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url, pool_size=concurrency, max_overflow=0)
    metadata = MetaData()
    items = Table(
        "items",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("name", String),
        Column("value", Float),
    )

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __table__ = items

    return engine, items, Item


async def run_core(dsn: str, concurrency: int, queries: int) -> float:
    """Seconds for ``queries`` Core selects by primary key, one connection per worker."""
    from sqlalchemy import select

    engine, items, _ = sqlalchemy_parts(dsn, concurrency)
    stmt = select(items).where(items.c.id == __import__("sqlalchemy").bindparam("id"))

    async def worker(first: int, count: int) -> None:
        async with engine.connect() as conn:
            for i in range(first, first + count):
                result = await conn.execute(stmt, {"id": i % ROWS})
                assert result.first() is not None

    try:
        return await timed(worker, concurrency, queries)
    finally:
        await engine.dispose()


async def run_orm(dsn: str, concurrency: int, queries: int) -> float:
    """Seconds for ``queries`` ORM selects of one object, one session per worker (expunged
    after each, so that every query reaches the database and builds its object)."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncSession

    engine, _, item_class = sqlalchemy_parts(dsn, concurrency)

    async def worker(first: int, count: int) -> None:
        async with AsyncSession(engine) as session:
            for i in range(first, first + count):
                result = await session.execute(select(item_class).where(item_class.id == i % ROWS))
                assert result.scalar_one().id == i % ROWS
                session.expunge_all()

    try:
        return await timed(worker, concurrency, queries)
    finally:
        await engine.dispose()


WORKLOADS = {"asyncpg": run_asyncpg, "core": run_core, "orm": run_orm}


def count_switches(dsn: str, workload: str) -> float:
    """How many times SQLAlchemy's asyncpg adapter awaits (each a switch out of the sync code
    and back) per query, counted over a short run at concurrency 1."""
    import sqlalchemy.dialects.postgresql.asyncpg as adapter

    calls = 0
    original = adapter.await_

    def counting(awaitable: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(awaitable)

    queries = 200
    adapter.await_ = counting
    try:
        asyncio.run(WORKLOADS[workload](dsn, 1, queries))
        calls = 0
        asyncio.run(WORKLOADS[workload](dsn, 1, queries))
    finally:
        adapter.await_ = original
    return calls / queries


def main() -> None:
    """Run one workload REPEATS times; print the JSON line."""
    dsn, workload, concurrency, queries = sys.argv[1:5]
    if "--setup" in sys.argv:
        asyncio.run(setup(dsn))
    run = WORKLOADS[workload]
    # Warm-up, as long as a measured repeat: caches (SQLAlchemy's compiled statements,
    # asyncpg's prepared ones, the server's) fill in the first run.
    asyncio.run(run(dsn, int(concurrency), int(queries)))
    seconds = [asyncio.run(run(dsn, int(concurrency), int(queries))) for _ in range(REPEATS)]
    record: dict[str, Any] = {
        "workload": workload,
        "concurrency": int(concurrency),
        "greenlet": greenlet_kind() if workload != "asyncpg" else None,
        "qps": [int(queries) // int(concurrency) * int(concurrency) / s for s in seconds],
    }
    if workload != "asyncpg":
        record["switches_per_query"] = count_switches(dsn, workload)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
