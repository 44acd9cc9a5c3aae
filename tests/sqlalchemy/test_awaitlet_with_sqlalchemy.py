"""awaitlet and SQLAlchemy's greenlet layer, used together, on SQLite and PostgreSQL.

* the plain sync SQLAlchemy API (``Session``, ``Engine``) on an async driver,
  run by ``await async_def(fn)`` (awaitlet's main use case);
* ``awaitlet()`` inside SQLAlchemy's sync context (``run_sync``);
* SQLAlchemy's ``await_only`` / ``await_`` inside ``async_def``;
* mixtures of the two under concurrency and cancellation.
"""

from __future__ import annotations

import asyncio

import pytest
from _sqla_support import (
    LIBRARY,
    Author,
    Book,
    check_greenlet,
    library_titles,
    new_engine,
    seed,
    sqlalchemy_await_functions,
)
from awaitlet import NoAwaitletContext, async_def, awaitlet
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError, MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

greenlet = check_greenlet()

SQLALCHEMY_AWAIT = sqlalchemy_await_functions()


async def count_authors(engine) -> int:
    async with AsyncSession(engine) as session:
        return await session.scalar(select(func.count()).select_from(Author))


async def echo_later(value):
    await asyncio.sleep(0)
    return value


async def fail_later(message):
    await asyncio.sleep(0)
    raise LookupError(message)


# --- which greenlet SQLAlchemy uses --------------------------------------------------------


async def test_sqlalchemy_sync_context_is_a_greenlet_of_the_expected_module(sqlite_url):
    def probe(sync_connection):
        current = greenlet.getcurrent()
        return (
            isinstance(current, greenlet.greenlet),
            getattr(current, "__sqlalchemy_greenlet_provider__", False),
            sync_connection.scalar(text("SELECT 1")),
        )

    async with new_engine(sqlite_url) as engine, engine.connect() as connection:
        assert await connection.run_sync(probe) == (True, True, 1)


# --- the sync API inside async_def ---------------------------------------------------------


async def test_sync_session_inside_async_def(async_url):
    def library_work(sync_engine):
        with Session(sync_engine) as session:
            authors = session.scalars(select(Author).order_by(Author.id)).all()
            titles = {a.name: [b.title for b in a.books] for a in authors}  # lazy loads
            solaris = session.scalars(select(Book).where(Book.title == "Solaris")).one()
            assert solaris.author.name == "Lem"
            session.add(Author(name="Sync", books=[Book(title="Written synchronously")]))
            session.commit()

            session.add(Author(name="Lem"))
            with pytest.raises(IntegrityError):
                session.commit()
            session.rollback()
            count = session.scalar(select(func.count()).select_from(Author))
        return titles, count

    async with new_engine(async_url) as engine:
        await seed(engine)
        titles, count = await async_def(library_work, engine.sync_engine)
        assert titles == library_titles()
        assert count == len(LIBRARY) + 1
        async with AsyncSession(engine) as session:
            sync_author = await session.scalar(select(Author).where(Author.name == "Sync"))
            assert [b.title for b in await sync_author.awaitable_attrs.books] == [
                "Written synchronously"
            ]


async def test_sync_engine_connection_and_transactions_inside_async_def(async_url):
    def connection_work(sync_engine):
        with sync_engine.begin() as connection:
            connection.execute(insert(Author), [{"name": "one"}, {"name": "two"}])
        with sync_engine.connect() as connection:
            connection.execute(insert(Author).values(name="never committed"))
            connection.rollback()
            with connection.begin():
                connection.execute(insert(Author).values(name="three"))
                savepoint = connection.begin_nested()
                connection.execute(insert(Author).values(name="savepoint, rolled back"))
                savepoint.rollback()
            streamed = [
                row.name
                for row in connection.execution_options(yield_per=1).execute(
                    select(Author.name).order_by(Author.id)
                )
            ]
        return streamed

    async with new_engine(async_url) as engine:
        assert await async_def(connection_work, engine.sync_engine) == ["one", "two", "three"]


async def test_sync_code_mixes_sync_sqlalchemy_and_awaitlet(async_url):
    def mixed(engine):
        with Session(engine.sync_engine) as session:
            before = session.scalar(select(func.count()).select_from(Author))
            # An asyncio coroutine, and async SQLAlchemy on another connection.
            assert awaitlet(echo_later("echo")) == "echo"
            counted_async = awaitlet(count_authors(engine))
            session.add(Author(name="mixed"))
            session.commit()
            after = awaitlet(count_authors(engine))
        with pytest.raises(LookupError, match="from a coroutine"):
            awaitlet(fail_later("from a coroutine"))
        return before, counted_async, after

    async with new_engine(async_url) as engine:
        await seed(engine)
        result = await async_def(mixed, engine, assert_await_occurs=True)
        assert result == (len(LIBRARY), len(LIBRARY), len(LIBRARY) + 1)


async def test_concurrent_async_def_sync_sessions_share_a_small_pool(async_url):
    workers = 20

    def insert_and_read(sync_engine, index):
        name = f"worker {index:02d}"
        with Session(sync_engine) as session:
            session.add(Author(name=name, books=[Book(title=f"{name}'s book")]))
            session.commit()
        awaitlet(asyncio.sleep(0))
        with Session(sync_engine) as session:
            author = session.scalars(select(Author).where(Author.name == name)).one()
            return [b.title for b in author.books]

    async with new_engine(
        async_url, pool_size=4, max_overflow=0, pool_timeout=60, sqlite_begin="BEGIN IMMEDIATE"
    ) as engine:
        results = await asyncio.gather(
            *(async_def(insert_and_read, engine.sync_engine, i) for i in range(workers))
        )
        assert results == [[f"worker {i:02d}'s book"] for i in range(workers)]
        assert await count_authors(engine) == workers


# --- awaitlet inside SQLAlchemy's sync context -----------------------------------------


async def test_awaitlet_inside_connection_run_sync(async_url):
    def in_sqlalchemy_context(sync_connection, engine):
        before = sync_connection.scalar(select(func.count()).select_from(Author))
        echoed = awaitlet(echo_later("from run_sync"))
        sync_connection.execute(insert(Author).values(name="added in run_sync"))
        # Another connection, used asynchronously from inside this sync context.
        counted_elsewhere = awaitlet(count_authors(engine))
        with pytest.raises(LookupError, match="raised"):
            awaitlet(fail_later("raised"))
        after = sync_connection.scalar(select(func.count()).select_from(Author))
        return before, echoed, counted_elsewhere, after

    async with new_engine(async_url) as engine:
        await seed(engine)
        async with engine.connect() as connection:
            result = await connection.run_sync(in_sqlalchemy_context, engine)
            await connection.rollback()
        # The insert was not committed when the other connection counted.
        assert result == (len(LIBRARY), "from run_sync", len(LIBRARY), len(LIBRARY) + 1)
        assert await count_authors(engine) == len(LIBRARY)


async def test_awaitlet_inside_session_run_sync_with_lazy_loads(async_url):
    def in_session(sync_session):
        out = {}
        for author in sync_session.scalars(select(Author).order_by(Author.id)):
            out[author.name] = [awaitlet(echo_later(b.title)) for b in author.books]
        return out

    async with new_engine(async_url) as engine:
        await seed(engine)
        async with AsyncSession(engine) as session:
            assert await session.run_sync(in_session) == library_titles()


async def test_exception_state_of_sync_code_is_its_own_in_run_sync(sqlite_url):
    # greenlet gives every greenlet its own "exception being handled"; SQLAlchemy
    # resumes sync code from inside an except block when an awaitable failed.
    def sync_code(sync_connection):
        try:
            awaitlet(fail_later("handled in sync code"))
        except LookupError:
            pass
        raise ValueError("raised after the except block")

    async with new_engine(sqlite_url) as engine, engine.connect() as connection:
        with pytest.raises(ValueError, match="after the except block") as excinfo:
            await connection.run_sync(sync_code)
    assert excinfo.value.__context__ is None


async def test_awaitlet_outside_any_context_still_refuses(sqlite_url):
    coroutine = echo_later("never")
    with pytest.raises(NoAwaitletContext):
        awaitlet(coroutine)
    async with new_engine(sqlite_url) as engine:
        assert await count_authors(engine) == 0


# --- SQLAlchemy's await inside async_def -----------------------------------------------


@pytest.mark.parametrize("name", sorted(SQLALCHEMY_AWAIT))
async def test_sqlalchemy_await_inside_async_def(name):
    sqlalchemy_await = SQLALCHEMY_AWAIT[name]

    def sync_code():
        value = sqlalchemy_await(echo_later("awaited by SQLAlchemy"))
        with pytest.raises(LookupError, match="SQLAlchemy"):
            sqlalchemy_await(fail_later("SQLAlchemy"))
        return value, awaitlet(echo_later("awaited by awaitlet"))

    assert await async_def(sync_code) == ("awaited by SQLAlchemy", "awaited by awaitlet")


@pytest.mark.parametrize("name", sorted(SQLALCHEMY_AWAIT))
async def test_sqlalchemy_await_outside_any_context_raises_missing_greenlet(name):
    with pytest.raises(MissingGreenlet):
        SQLALCHEMY_AWAIT[name](echo_later("never"))


async def test_sqlalchemy_await_inside_async_def_drives_the_async_api(async_url):
    sqlalchemy_await = next(iter(SQLALCHEMY_AWAIT.values()))

    def sync_code(engine):
        return sqlalchemy_await(count_authors(engine))

    async with new_engine(async_url) as engine:
        await seed(engine)
        assert await async_def(sync_code, engine) == len(LIBRARY)


@pytest.mark.parametrize("name", sorted(SQLALCHEMY_AWAIT))
async def test_decorators_pass_every_argument_through_on_this_greenlet(name, async_url):
    """awaitlet.decorators' async_ and spawn hand their arguments to the sync function
    unchanged (a keyword named like async_def's own `assert_await_occurs` included), on the
    facade and on the real greenlet alike, and the function can use SQLAlchemy's await."""
    from awaitlet.decorators import async_, spawn

    sqlalchemy_await = SQLALCHEMY_AWAIT[name]

    def sync_code(engine, label, *, assert_await_occurs, suffix="!"):
        return (label, assert_await_occurs, sqlalchemy_await(count_authors(engine)), suffix)

    async with new_engine(async_url) as engine:
        await seed(engine)
        expected = ("async_", "kept", len(LIBRARY), "!")
        assert await async_(sync_code)(engine, "async_", assert_await_occurs="kept") == expected
        spawned = spawn(sync_code, engine, "spawn", assert_await_occurs=None, suffix="?")
        assert await spawned == ("spawn", None, len(LIBRARY), "?")


# --- cancellation --------------------------------------------------------------------------


async def test_cancelling_a_task_suspended_in_run_sync_releases_the_connection(async_url):
    entered = asyncio.Event()
    raised_in_sync_code = []

    def wait_forever(sync_connection):
        sync_connection.execute(insert(Author).values(name="cancelled"))
        entered.set()
        try:
            awaitlet(asyncio.Event().wait())
        except BaseException as error:
            raised_in_sync_code.append(type(error))
            raise

    async def job(engine):
        async with engine.connect() as connection:
            await connection.run_sync(wait_forever)

    async with new_engine(async_url, pool_size=1, max_overflow=0) as engine:
        task = asyncio.ensure_future(job(engine))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert raised_in_sync_code == [asyncio.CancelledError]
        # The only pooled connection came back, rolled back.
        assert await count_authors(engine) == 0
