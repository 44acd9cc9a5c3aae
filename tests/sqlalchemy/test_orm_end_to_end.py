"""The ORM through ``AsyncSession``, end to end, on SQLite (aiosqlite) and PostgreSQL (asyncpg).

Every database call below goes through SQLAlchemy's greenlet layer, so these
tests exercise whichever ``greenlet`` the run has (see ``_sqla_support``).
"""

from __future__ import annotations

import asyncio
import gc

import pytest
from _sqla_support import (
    LIBRARY,
    Author,
    Book,
    Review,
    check_greenlet,
    library_titles,
    new_engine,
    seed,
    sessionmaker,
)
from sqlalchemy import func, select
from sqlalchemy.exc import (
    IntegrityError,
    InvalidRequestError,
    MissingGreenlet,
    StatementError,
    TimeoutError,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

greenlet = check_greenlet()

BOOK_TITLES = [title for books in LIBRARY.values() for title in books]


def library_of(authors) -> dict[str, dict[str, list[int]]]:
    return {a.name: {b.title: [r.stars for r in b.reviews] for b in a.books} for a in authors}


async def author_names(engine) -> list[str]:
    async with AsyncSession(engine) as session:
        return list(await session.scalars(select(Author.name).order_by(Author.name)))


# --- loading -------------------------------------------------------------------------------


async def test_selectinload_loads_collections_in_advance(async_url):
    async with new_engine(async_url) as engine:
        await seed(engine)
        async with AsyncSession(engine) as session:
            query = (
                select(Author)
                .options(selectinload(Author.books).selectinload(Book.reviews))
                .order_by(Author.id)
            )
            authors = (await session.scalars(query)).all()
            assert library_of(authors) == LIBRARY


async def test_joinedload_loads_many_to_one_and_collections(async_url):
    async with new_engine(async_url) as engine:
        await seed(engine)
        async with AsyncSession(engine) as session:
            query = select(Book).options(joinedload(Book.author)).order_by(Book.id)
            books = (await session.scalars(query)).all()
            assert [(b.title, b.author.name) for b in books] == [
                (title, name) for name, books in LIBRARY.items() for title in books
            ]

        async with AsyncSession(engine) as session:
            query = (
                select(Author)
                .options(joinedload(Author.books).joinedload(Book.reviews))
                .order_by(Author.id)
            )
            # Joined eager loading of collections repeats parent rows: unique() is required.
            authors = (await session.execute(query)).unique().scalars().all()
            assert library_of(authors) == LIBRARY


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
async def test_implicit_lazy_load_outside_sync_context_raises_missing_greenlet(async_url):
    async with new_engine(async_url) as engine:
        await seed(engine)
        async with AsyncSession(engine) as session:
            author = await session.scalar(select(Author).where(Author.name == "Lem"))
            # aiosqlite's adapter lets SQLAlchemy wrap it in a StatementError.
            with pytest.raises((MissingGreenlet, StatementError)) as excinfo:
                author.books  # noqa: B018
            error = excinfo.value
            if not isinstance(error, MissingGreenlet):
                error = error.orig
            assert isinstance(error, MissingGreenlet)
            assert "greenlet_spawn has not been called" in str(error)
            # The driver may leave a never-awaited coroutine behind, referenced from the
            # exception's traceback: drop those references and collect it here, where its
            # warning is expected, not in a later test or at exit.
            del error, excinfo
            gc.collect()


async def test_lazy_raise_refuses_to_load_even_when_awaited(async_url):
    async with new_engine(async_url) as engine:
        await seed(engine)
        async with AsyncSession(engine) as session:
            book = await session.scalar(select(Book).where(Book.title == "Solaris"))
            with pytest.raises(InvalidRequestError, match="lazy='raise'"):
                book.reviews  # noqa: B018
            with pytest.raises(InvalidRequestError, match="lazy='raise'"):
                await book.awaitable_attrs.reviews
            # An explicit eager load still works.
            book = await session.scalar(
                select(Book)
                .where(Book.title == "Solaris")
                .options(selectinload(Book.reviews))
                .execution_options(populate_existing=True)
            )
            assert [r.stars for r in book.reviews] == LIBRARY["Lem"]["Solaris"]


async def test_awaitable_attrs_lazy_load_both_directions(async_url):
    async with new_engine(async_url) as engine:
        await seed(engine)
        async with AsyncSession(engine) as session:
            authors = (await session.scalars(select(Author).order_by(Author.id))).all()
            titles = {}
            for author in authors:
                books = await author.awaitable_attrs.books
                titles[author.name] = [b.title for b in books]
                for book in books:
                    assert await book.awaitable_attrs.author is author
            assert titles == library_titles()

        async with AsyncSession(engine) as session:
            # Many-to-one whose target is not in the session yet: this one emits SQL.
            book = await session.scalar(select(Book).where(Book.title == "Kindred"))
            author = await book.awaitable_attrs.author
            assert author.name == "Butler"


async def test_lazy_loading_inside_session_run_sync(async_url):
    def walk_the_library(sync_session):
        authors = sync_session.scalars(select(Author).order_by(Author.id)).all()
        titles = {a.name: [b.title for b in a.books] for a in authors}  # lazy loads
        book = authors[1].books[0]
        with pytest.raises(InvalidRequestError, match="lazy='raise'"):
            book.reviews  # noqa: B018
        return titles, book.author.name, authors

    async with new_engine(async_url) as engine:
        await seed(engine)
        async with AsyncSession(engine) as session:
            titles, author_of_solaris, authors = await session.run_sync(walk_the_library)
            assert titles == library_titles()
            assert author_of_solaris == "Lem"
            # What was loaded there stays loaded out here: no IO needed to read it.
            author = await session.scalar(select(Author).where(Author.name == "Le Guin"))
            assert author is authors[0]
            assert [b.title for b in author.books] == list(LIBRARY["Le Guin"])


# --- streaming -----------------------------------------------------------------------------


async def test_session_stream_and_stream_scalars(async_url):
    async with new_engine(async_url) as engine:
        await seed(engine)
        async with AsyncSession(engine) as session:
            result = await session.stream(select(Book).order_by(Book.id))
            titles = []
            async for row in result:
                titles.append(row.Book.title)
                await asyncio.sleep(0)
            assert titles == BOOK_TITLES

            scalars = await session.stream_scalars(
                select(Review.stars).order_by(Review.id).execution_options(yield_per=2)
            )
            stars = [value async for value in scalars]
            expected_stars = [s for books in LIBRARY.values() for s in books.values()]
            assert stars == [s for group in expected_stars for s in group]


async def test_connection_stream_partitions_and_early_close(async_url):
    async with new_engine(async_url) as engine:
        await seed(engine)
        async with engine.connect() as connection:
            result = await connection.stream(
                select(Book.title).order_by(Book.id).execution_options(yield_per=2)
            )
            partitions = [[row.title for row in part] async for part in result.partitions()]
            assert partitions == [BOOK_TITLES[0:2], BOOK_TITLES[2:4], BOOK_TITLES[4:]]

            # Stop after one row; the connection stays usable.
            result = await connection.stream(select(Book.title).order_by(Book.id))
            async for row in result:
                assert row.title == BOOK_TITLES[0]
                break
            await result.close()
            count = await connection.scalar(select(func.count()).select_from(Book))
            assert count == len(BOOK_TITLES)


async def test_two_streams_consumed_concurrently(async_url):
    async def titles(engine, descending):
        order = Book.id.desc() if descending else Book.id
        async with engine.connect() as connection:
            result = await connection.stream(
                select(Book.title).order_by(order).execution_options(yield_per=1)
            )
            out = []
            async for row in result:
                out.append(row.title)
                await asyncio.sleep(0)
            return out

    async with new_engine(async_url) as engine:
        await seed(engine)
        forward, backward = await asyncio.gather(titles(engine, False), titles(engine, True))
        assert forward == BOOK_TITLES
        assert backward == BOOK_TITLES[::-1]


# --- transactions --------------------------------------------------------------------------


async def test_commit_and_rollback(async_url):
    async with new_engine(async_url) as engine:
        make_session = sessionmaker(engine)
        async with make_session() as session:
            session.add(Author(name="committed"))
            await session.commit()
            session.add(Author(name="rolled back"))
            await session.flush()
            assert await session.scalar(select(func.count()).select_from(Author)) == 2
            await session.rollback()
        assert await author_names(engine) == ["committed"]

        with pytest.raises(RuntimeError, match="abandon"):
            async with make_session.begin() as session:
                session.add(Author(name="abandoned"))
                await session.flush()
                raise RuntimeError("abandon")
        async with make_session.begin() as session:
            session.add(Author(name="begin() commits"))
        assert await author_names(engine) == ["begin() commits", "committed"]


async def test_savepoints_roll_back_only_their_part(async_url):
    async with new_engine(async_url) as engine:
        async with AsyncSession(engine) as session:
            async with session.begin():
                session.add(Author(name="outer"))
                async with session.begin_nested():
                    session.add(Author(name="released savepoint"))

                savepoint = await session.begin_nested()
                session.add(Author(name="rolled back savepoint"))
                await session.flush()
                await savepoint.rollback()

                with pytest.raises(ValueError, match="inner"):
                    async with session.begin_nested():
                        session.add(Author(name="failed savepoint"))
                        await session.flush()
                        raise ValueError("inner")

                session.add(Author(name="after savepoints"))
        assert await author_names(engine) == ["after savepoints", "outer", "released savepoint"]


async def test_integrity_error_inside_savepoint_keeps_outer_transaction(async_url):
    async with new_engine(async_url) as engine:
        await seed(engine)
        async with AsyncSession(engine) as session:
            async with session.begin():
                session.add(Author(name="before"))
                with pytest.raises(IntegrityError):
                    async with session.begin_nested():
                        session.add(Author(name="Lem"))  # already there
                # The outer transaction goes on (PostgreSQL needs the savepoint for that).
                session.add(Author(name="after"))
        names = await author_names(engine)
        assert names == sorted([*LIBRARY, "before", "after"])


async def test_integrity_error_then_rollback_leaves_session_usable(async_url):
    async with new_engine(async_url) as engine:
        await seed(engine)
        async with AsyncSession(engine) as session:
            session.add(Author(name="Butler"))  # unique name taken
            with pytest.raises(IntegrityError) as excinfo:
                await session.commit()
            assert "unique" in str(excinfo.value.orig).lower()
            with pytest.raises(InvalidRequestError, match="rolled back"):
                await session.execute(select(Author))
            await session.rollback()

            session.add(Author(name="Butler, Octavia E."))
            await session.commit()
            assert await session.scalar(select(func.count()).select_from(Author)) == 4
        assert "Butler, Octavia E." in await author_names(engine)


async def test_pool_timeout_error_has_no_unrelated_exception_context(async_url):
    # The pool catches the awaited asyncio.TimeoutError and raises its own error
    # after leaving the except block, inside SQLAlchemy's greenlet: that error
    # must not pick up an exception the driving task was handling at the time.
    async with new_engine(async_url, pool_size=1, max_overflow=0, pool_timeout=0) as engine:
        async with engine.connect():
            with pytest.raises(TimeoutError) as excinfo:
                await engine.connect()
    error = excinfo.value
    assert "QueuePool limit of size 1 overflow 0 reached" in str(error)
    assert error.__context__ is None or error.__context__ is error.__cause__, (
        f"{error!r} has __context__ {error.__context__!r} without it being its cause"
    )


# --- concurrency ---------------------------------------------------------------------------

SESSIONS = 50


async def test_many_concurrent_sessions(async_url):
    # Fewer connections than sessions: most sessions wait for the pool inside
    # SQLAlchemy's sync code.  On SQLite, BEGIN IMMEDIATE serializes the writers
    # instead of letting them fail on lock upgrades.
    async def work(make_session, index):
        name = f"author {index:02d}"
        async with make_session() as session, session.begin():
            books = [Book(title=f"{name}, book {n}") for n in range(3)]
            session.add(Author(name=name, books=books))
        await asyncio.sleep(0)
        async with make_session() as session:
            author = await session.scalar(select(Author).where(Author.name == name))
            titles = await session.run_sync(lambda _: [b.title for b in author.books])
            count = await session.scalar(select(func.count()).select_from(Author))
        return author.id, titles, count

    async with new_engine(
        async_url, pool_size=10, max_overflow=0, pool_timeout=60, sqlite_begin="BEGIN IMMEDIATE"
    ) as engine:
        make_session = sessionmaker(engine)
        results = await asyncio.gather(*(work(make_session, i) for i in range(SESSIONS)))

        ids = [author_id for author_id, _, _ in results]
        assert len(set(ids)) == SESSIONS
        for index, (_, titles, count) in enumerate(results):
            assert titles == [f"author {index:02d}, book {n}" for n in range(3)]
            assert 1 <= count <= SESSIONS
        async with AsyncSession(engine) as session:
            assert await session.scalar(select(func.count()).select_from(Book)) == 3 * SESSIONS
