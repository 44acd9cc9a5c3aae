"""Shared pieces of the SQLAlchemy tests: the greenlet check, the models, engines and data.

``AWAITLET_EXPECT_GREENLET`` says which ``greenlet`` the run must see:

* ``facade`` (the default): no ``greenlet`` distribution is installed and
  ``import greenlet`` gives awaitlet's facade, ``awaitlet.greenlet``;
* ``real``: the real ``greenlet`` package is installed and imported, and
  awaitlet has to work next to it.

:func:`check_greenlet` asserts that; every test module calls it when it is imported.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

from sqlalchemy import ForeignKey, String, event, util
from sqlalchemy.ext.asyncio import (
    AsyncAttrs,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

EXPECT_ENV = "AWAITLET_EXPECT_GREENLET"
EXPECT_CHOICES = ("facade", "real")


def expected_greenlet() -> str:
    """Return ``facade`` or ``real``, from ``AWAITLET_EXPECT_GREENLET`` (default ``facade``)."""
    expect = os.environ.get(EXPECT_ENV, "facade").strip().lower() or "facade"
    if expect not in EXPECT_CHOICES:
        raise RuntimeError(f"{EXPECT_ENV}={expect!r}; expected one of {EXPECT_CHOICES}")
    return expect


def is_facade(module: ModuleType) -> bool:
    """Whether ``module`` is awaitlet's greenlet facade."""
    return module.__name__ == "awaitlet.greenlet" or bool(
        getattr(module, "__awaitlet_facade__", False)
    )


def _greenlet_distribution() -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution("greenlet")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_greenlet() -> ModuleType:
    """Assert that ``import greenlet`` gives what ``AWAITLET_EXPECT_GREENLET`` says; return it."""
    expect = expected_greenlet()
    distribution = _greenlet_distribution()
    try:
        import greenlet
    except ImportError as error:
        raise AssertionError(
            f"{EXPECT_ENV}={expect}, but `import greenlet` failed: {error!r}. "
            + (
                "awaitlet's facade should have answered it (see awaitlet.install_greenlet_shim)."
                if expect == "facade"
                else "Install the real greenlet package for this run."
            )
        ) from error

    where = getattr(greenlet, "__file__", None)
    if expect == "facade":
        assert is_facade(greenlet), (
            f"{EXPECT_ENV}=facade, but `import greenlet` gave {greenlet.__name__!r} from {where}"
        )
        assert distribution is None, (
            f"{EXPECT_ENV}=facade, but the real greenlet {distribution.version} is installed; "
            "the facade is meant for environments without it"
        )
    else:
        assert not is_facade(greenlet), (
            f"{EXPECT_ENV}=real, but `import greenlet` gave awaitlet's facade from {where}"
        )
        assert distribution is not None, (
            f"{EXPECT_ENV}=real, but no greenlet distribution is installed"
        )
        files = {Path(str(distribution.locate_file(f))).resolve() for f in distribution.files or ()}
        assert where is not None and Path(where).resolve() in files, (
            f"greenlet was imported from {where}, which is not a file of the installed "
            f"greenlet {distribution.version}"
        )
    return greenlet


def greenlet_description() -> str:
    """One line naming the greenlet module in use, for the pytest header."""
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return "greenlet: not imported"
    kind = "awaitlet facade" if is_facade(greenlet) else "real package"
    version = getattr(greenlet, "__version__", "?")
    spec = getattr(greenlet, "__spec__", None)
    where = getattr(greenlet, "__file__", None) or getattr(spec, "origin", None)
    return f"greenlet: {kind} {greenlet.__name__} {version} from {where}"


def sqlalchemy_await_functions() -> dict[str, object]:
    """SQLAlchemy's own "await inside a greenlet" functions that this version has.

    2.0 has ``await_only``; 2.1 has ``await_`` and keeps ``await_only`` as an old name.
    """
    names = ("await_only", "await_")
    found = {name: getattr(util, name) for name in names if hasattr(util, name)}
    assert found, "sqlalchemy.util has neither await_only nor await_"
    return found


# --- models --------------------------------------------------------------------------------


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # One-to-many, loaded lazily (lazy="select", the default) when first accessed.
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "book"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    # Many-to-one, loaded lazily.
    author: Mapped[Author] = relationship(back_populates="books")
    # One-to-many that must be loaded eagerly: lazy="raise" refuses implicit loads.
    reviews: Mapped[list[Review]] = relationship(
        back_populates="book", lazy="raise", order_by="Review.id"
    )


class Review(Base):
    __tablename__ = "review"

    id: Mapped[int] = mapped_column(primary_key=True)
    stars: Mapped[int]
    book_id: Mapped[int] = mapped_column(ForeignKey("book.id"))
    book: Mapped[Book] = relationship(back_populates="reviews", lazy="raise")


#: The data :func:`seed` inserts: author -> book title -> review stars.
LIBRARY: dict[str, dict[str, list[int]]] = {
    "Le Guin": {"A Wizard of Earthsea": [5, 4], "The Dispossessed": [5]},
    "Lem": {"Solaris": [4, 3, 5]},
    "Butler": {"Kindred": [], "Dawn": [4]},
}


def library_titles() -> dict[str, list[str]]:
    """Author name -> book titles, in insertion order."""
    return {author: list(books) for author, books in LIBRARY.items()}


async def seed(engine: AsyncEngine) -> None:
    """Insert :data:`LIBRARY` in one transaction."""
    async with AsyncSession(engine) as session, session.begin():
        for name, books in LIBRARY.items():
            author = Author(name=name)
            for title, stars in books.items():
                author.books.append(Book(title=title, reviews=[Review(stars=s) for s in stars]))
            session.add(author)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded state after commit, as async code usually wants."""
    return async_sessionmaker(engine, expire_on_commit=False)


def _sqlite_transactions_begin_explicitly(engine: AsyncEngine, begin: str) -> None:
    # SQLite's driver starts transactions on its own and not before SAVEPOINT;
    # SQLAlchemy's documented recipe hands that to SQLAlchemy, so begin_nested()
    # works.  Both hooks run inside SQLAlchemy's greenlet context.
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection, connection_record):  # noqa: ARG001
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql(begin)


@contextlib.asynccontextmanager
async def new_engine(
    url: str, *, sqlite_begin: str = "BEGIN", **kwargs
) -> AsyncIterator[AsyncEngine]:
    """An engine on ``url`` with freshly created (empty) tables; disposed on exit.

    On SQLite, transactions start with ``sqlite_begin``: ``BEGIN IMMEDIATE`` takes
    the write lock up front, for tests with many concurrent writers.
    """
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _sqlite_transactions_begin_explicitly(engine, sqlite_begin)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.drop_all)
            await connection.run_sync(Base.metadata.create_all)
        yield engine
    finally:
        await engine.dispose()
