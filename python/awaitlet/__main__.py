"""A short tour of awaitlet: ``python -m awaitlet``.

Part 1 runs an ordinary synchronous function, written as blocking code, for several
clients of an asyncio echo server at once.  Only the small transport function under it
calls ``awaitlet()``; ``await async_def(fn, ...)`` runs each client's copy on its own
stack, so the clients overlap on one event loop.

Part 2 uses SQLAlchemy's asyncio ORM on an embedded SQLite database (through aiosqlite)
and shows which ``greenlet`` implementation it runs on.  It is skipped, with a hint on
how to install what it needs, when SQLAlchemy or aiosqlite cannot be imported.

Part 3 times ``awaitlet()`` and ``async_def()`` beside the same work written with native
``await`` (and, when the greenlet package is installed, the same calls on greenlet, the way
the original awaitlet makes them), in a fresh interpreter: about a second.

Everything stays on this machine: the echo server listens on 127.0.0.1 and the
database is a file in a temporary directory.  The exit status is 0 when every part
passes or is skipped, and 1 when one fails.
"""

import asyncio
import importlib
import importlib.util
import json
import platform
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from awaitlet import __version__, async_def, awaitlet

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
    from sqlalchemy.orm import Session

HOST = "127.0.0.1"
CLIENT_COUNT = 5
SERVER_DELAY_RANGE = (0.02, 0.08)  # seconds the echo server waits before each reply
PART_TIMEOUT = 30.0  # seconds; a part that takes longer counts as failed

# Part 2's data: author name -> [(book title, year published)].
CATALOG = {
    "Ursula K. Le Guin": [("A Wizard of Earthsea", 1968), ("The Left Hand of Darkness", 1969)],
    "Octavia E. Butler": [("Kindred", 1979)],
}
# Books that the sync layer adds later: (author name, book title, year published).
BOOK_FOR_RUN_SYNC = ("Octavia E. Butler", "Parable of the Sower", 1993)
BOOK_FOR_ASYNC_DEF = ("Ursula K. Le Guin", "The Dispossessed", 1974)
SQLALCHEMY_INSTALL = "pip install 'awaitlet-rs[sqlalchemy]'"


class DemoFailure(Exception):
    """Something the demo checks turned out wrong."""


class PartSkipped(Exception):
    """A part cannot run here; the message says what to install."""


def say(message: str) -> None:
    """Print one step of the demo, indented under its section header."""
    print(f"  {message}", flush=True)


def section(title: str) -> None:
    """Print a section header."""
    print(f"\n{title}", flush=True)


# --- Part 1: an unchanged sync middle layer -------------------------------------------


def fetch_greeting(client_name: str, send_and_receive: Callable[[str], str]) -> str:
    """The sync middle layer: blocking-style code that knows nothing about asyncio."""
    request = f"hello from {client_name}"
    say(f"{client_name} sends    {request!r}")
    reply = send_and_receive(request)
    say(f"{client_name} receives {reply!r}")
    if reply != request:
        raise DemoFailure(f"{client_name} sent {request!r} but got back {reply!r}")
    return reply


def stream_transport(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Callable[[str], str]:
    """Make a blocking-style send_and_receive() over an asyncio stream.

    This is the only code in part 1 that calls awaitlet().
    """

    def send_and_receive(message: str) -> str:
        writer.write(message.encode() + b"\n")
        awaitlet(writer.drain())
        line = awaitlet(reader.readline())
        return line.decode().removesuffix("\n")

    return send_and_receive


class EchoServer:
    """Echoes each line back after a short random delay; remembers the delays."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.handlers: set[asyncio.Task[Any]] = set()

    async def handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Echo every line of one connection, each after a short random delay."""
        handler = asyncio.current_task()
        if handler is not None:
            self.handlers.add(handler)
        try:
            while line := await reader.readline():
                delay = random.uniform(*SERVER_DELAY_RANGE)
                self.delays.append(delay)
                await asyncio.sleep(delay)
                writer.write(line)
                await writer.drain()
        except ConnectionError:
            pass  # the client left early; there is nobody to answer
        finally:
            writer.close()

    async def wait_for_handlers(self) -> None:
        """Wait until every connection's handler has finished."""
        await asyncio.gather(*self.handlers, return_exceptions=True)


async def run_client(client_name: str, port: int) -> str:
    """Connect, then run the sync middle layer for this client on its own stack."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        return await async_def(fetch_greeting, client_name, stream_transport(reader, writer))
    finally:
        writer.close()
        await writer.wait_closed()


async def run_clients(names: list[str], port: int) -> list[str]:
    """Run every client at once; if one fails, cancel the others and wait for them."""
    tasks = [asyncio.ensure_future(run_client(name, port)) for name in names]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_part_one() -> None:
    """Serve echoes on loopback, run the clients concurrently, check every reply."""
    echo = EchoServer()
    server = await asyncio.start_server(echo.handle_connection, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    say(f"echo server listening on {HOST}:{port}")
    say(f"{CLIENT_COUNT} clients each run fetch_greeting() via async_def(), all at once")
    started = time.perf_counter()
    try:
        names = [f"client-{number}" for number in range(1, CLIENT_COUNT + 1)]
        replies = await run_clients(names, port)
    finally:
        server.close()
        await echo.wait_for_handlers()
        await server.wait_closed()
    elapsed = time.perf_counter() - started
    say(f"{len(replies)}/{CLIENT_COUNT} echoes correct in {elapsed:.2f} s")
    say(f"one client after another would take at least {sum(echo.delays):.2f} s")
    say("echo server closed")


# --- Part 2: SQLAlchemy ORM on SQLite without greenlet --------------------------------


class Models(NamedTuple):
    """The ORM classes of part 2 (declared only when SQLAlchemy is installed)."""

    Base: Any
    Author: Any
    Book: Any


def declare_models() -> Models:
    """Declare two ORM models: an Author has many Books."""
    from sqlalchemy import ForeignKey
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = "author"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]
        books: Mapped[list["Book"]] = relationship(back_populates="author", order_by="Book.year")

    class Book(Base):
        __tablename__ = "book"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]
        year: Mapped[int]
        author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
        author: Mapped[Author] = relationship(back_populates="books")

    return Models(Base, Author, Book)


def missing_sqlalchemy_requirement() -> str | None:
    """Say what part 2 lacks (SQLAlchemy 2 or aiosqlite), or None if nothing."""
    missing: list[str] = []
    for name in ("sqlalchemy", "aiosqlite"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        return " and ".join(missing) + (" is" if len(missing) == 1 else " are") + " not installed"
    import sqlalchemy

    if int(sqlalchemy.__version__.split(".")[0]) < 2:
        return f"SQLAlchemy 2.0 or newer is needed, found {sqlalchemy.__version__}"
    return None


def greenlet_is_awaitlet_facade() -> bool:
    """Import greenlet as SQLAlchemy does; say whether that gave awaitlet's facade."""
    try:
        greenlet = importlib.import_module("greenlet")
    except ImportError as error:
        raise DemoFailure(
            f"'import greenlet' failed ({error}); SQLAlchemy's asyncio extension needs"
            " greenlet (pip install greenlet)"
        ) from error
    on_facade = greenlet.__name__ == "awaitlet.greenlet" or bool(
        getattr(greenlet, "__awaitlet_facade__", False)
    )
    if on_facade:
        say("greenlet in use: awaitlet's facade (awaitlet.greenlet), no greenlet package")
    else:
        version = getattr(greenlet, "__version__", "(version unknown)")
        say(f"greenlet in use: the greenlet package {version}")
    return on_facade


async def create_tables(engine: "AsyncEngine", models: Models) -> None:
    """Create the models' tables; create_all() is sync code, run through run_sync()."""
    async with engine.begin() as connection:
        await connection.run_sync(models.Base.metadata.create_all)
    say("created tables: " + ", ".join(models.Base.metadata.tables))


async def insert_catalog(sessions: "async_sessionmaker[AsyncSession]", models: Models) -> None:
    """Insert the authors and books of CATALOG with an AsyncSession."""
    async with sessions() as session, session.begin():
        session.add_all(
            models.Author(name=name, books=[models.Book(title=t, year=y) for t, y in books])
            for name, books in CATALOG.items()
        )
    book_count = sum(len(books) for books in CATALOG.values())
    say(f"AsyncSession: inserted {len(CATALOG)} authors and {book_count} books")


def add_book(session: "Session", models: Models, author_name: str, title: str, year: int) -> int:
    """Ordinary sync ORM code, as in a sync code base: no await, lazy loading allowed."""
    from sqlalchemy import select

    query = select(models.Author).where(models.Author.name == author_name)
    author = session.scalars(query).one()
    author.books.append(models.Book(title=title, year=year))  # lazy-loads author.books
    session.flush()
    return len(author.books)


def add_book_in_own_session(
    sync_engine: "Engine", models: Models, author_name: str, title: str, year: int
) -> int:
    """Sync code that opens its own Session on a sync Engine, as a sync code base does."""
    from sqlalchemy.orm import Session

    with Session(sync_engine) as session, session.begin():
        return add_book(session, models, author_name, title, year)


async def add_book_via_run_sync(
    sessions: "async_sessionmaker[AsyncSession]", models: Models
) -> None:
    """SQLAlchemy's own route: AsyncSession.run_sync() hands add_book() a sync Session."""
    author_name, title, year = BOOK_FOR_RUN_SYNC
    async with sessions() as session, session.begin():
        count = await session.run_sync(add_book, models, author_name, title, year)
    say(f"sync Session code via run_sync(): added {title!r} ({author_name}: {count} books)")


async def add_book_via_async_def(engine: "AsyncEngine", models: Models, on_facade: bool) -> None:
    """awaitlet's route: async_def() runs sync code using a Session on engine.sync_engine."""
    author_name, title, year = BOOK_FOR_ASYNC_DEF
    route = "sync Session code via async_def()"
    if not on_facade:
        say(f"{route}: skipped (works only on awaitlet's greenlet facade)")
        return
    args = (engine.sync_engine, models, author_name, title, year)
    count = await async_def(add_book_in_own_session, *args)
    say(f"{route}: added {title!r} ({author_name}: {count} books)")


async def list_authors(sessions: "async_sessionmaker[AsyncSession]", models: Models) -> None:
    """Query authors with their books loaded eagerly by selectinload()."""
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    Author = models.Author
    query = select(Author).options(selectinload(Author.books)).order_by(Author.name)
    async with sessions() as session:
        for author in await session.scalars(query):
            titles = ", ".join(book.title for book in author.books)
            say(f"selectinload: {author.name}: {titles}")


async def stream_books(sessions: "async_sessionmaker[AsyncSession]", models: Models) -> None:
    """Stream rows one at a time with AsyncSession.stream()."""
    from sqlalchemy import select

    Book = models.Book
    async with sessions() as session:
        result = await session.stream(select(Book.year, Book.title).order_by(Book.year))
        async for year, title in result:
            say(f"stream: {year} {title}")


def summarize_catalog(session: "AsyncSession", models: Models) -> str:
    """Plain sync code that waits on AsyncSession calls with awaitlet()."""
    from sqlalchemy import func, select

    Book = models.Book
    count = awaitlet(session.scalar(select(func.count()).select_from(Book)))
    first, last = awaitlet(session.execute(select(func.min(Book.year), func.max(Book.year)))).one()
    return f"{count} books published {first}-{last}"


async def run_awaitlet_layer(sessions: "async_sessionmaker[AsyncSession]", models: Models) -> None:
    """Run summarize_catalog(), a sync function, on its own stack with async_def()."""
    async with sessions() as session:
        summary = await async_def(summarize_catalog, session, models)
    say(f"sync code via async_def() + awaitlet(): {summary}")


async def run_part_two() -> None:
    """Use the async ORM on a temporary SQLite file, or explain what to install."""
    missing = missing_sqlalchemy_requirement()
    if missing:
        say(f"skipped: {missing}")
        say(f"to run it: {SQLALCHEMY_INSTALL}")
        say("(or, from a source checkout: pip install '.[sqlalchemy]')")
        raise PartSkipped(f"{missing}; {SQLALCHEMY_INSTALL}")
    on_facade = greenlet_is_awaitlet_facade()  # before SQLAlchemy's asyncio extension needs it
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    models = declare_models()
    with tempfile.TemporaryDirectory() as directory:
        engine = create_async_engine(f"sqlite+aiosqlite:///{Path(directory) / 'demo.db'}")
        say("engine: sqlite+aiosqlite, a database file in a temporary directory")
        try:
            sessions = async_sessionmaker(engine, expire_on_commit=False)
            await create_tables(engine, models)
            await insert_catalog(sessions, models)
            await add_book_via_run_sync(sessions, models)
            await add_book_via_async_def(engine, models, on_facade)
            await list_authors(sessions, models)
            await stream_books(sessions, models)
            await run_awaitlet_layer(sessions, models)
        finally:
            await engine.dispose()


# --- Part 3: speed ---------------------------------------------------------------------

SPEED_ROUNDS = 5  # each timing is the best of this many rounds


async def returns_at_once() -> int:
    """A coroutine that completes without suspending."""
    return 1


def sync_returns_at_once() -> int:
    """A sync function that never waits."""
    return 1


def wait_ready(count: int) -> None:
    """Sync code: awaitlet() of a coroutine that completes at once, ``count`` times."""
    for _ in range(count):
        awaitlet(returns_at_once())


def wait_sleep0(count: int) -> None:
    """Sync code: awaitlet(asyncio.sleep(0)), one trip through the event loop, ``count`` times."""
    for _ in range(count):
        awaitlet(asyncio.sleep(0))


async def await_ready(count: int) -> None:
    """The native counterpart of wait_ready() (and of spawn_sync())."""
    for _ in range(count):
        await returns_at_once()


async def await_sleep0(count: int) -> None:
    """The native counterpart of wait_sleep0()."""
    for _ in range(count):
        await asyncio.sleep(0)


def awaitlet_ready(count: int) -> Awaitable[None]:
    """wait_ready() under async_def()."""
    return async_def(wait_ready, count)


def awaitlet_sleep0(count: int) -> Awaitable[None]:
    """wait_sleep0() under async_def()."""
    return async_def(wait_sleep0, count)


async def spawn_sync(count: int) -> None:
    """``await async_def(f)`` of a sync ``f`` that never waits, ``count`` times."""
    for _ in range(count):
        await async_def(sync_returns_at_once)


class SpeedCase(NamedTuple):
    """One operation timed natively and with awaitlet."""

    label: str
    operations: int  # per round
    native: Callable[[int], Awaitable[None]]
    with_awaitlet: Callable[[int], Awaitable[None]]


SPEED_CASES = [
    SpeedCase(
        "awaitlet() of a coroutine that returns at once",
        20_000,
        await_ready,
        awaitlet_ready,
    ),
    SpeedCase(
        "awaitlet(asyncio.sleep(0)): a trip through the loop",
        2_000,
        await_sleep0,
        awaitlet_sleep0,
    ),
    SpeedCase("await async_def(f), f never waits", 5_000, await_ready, spawn_sync),
]


async def best_times(
    runs: dict[str, tuple[Callable[[int], Awaitable[None]], int]],
) -> dict[str, float]:
    """Seconds per operation of each ``run(count)``: the best of SPEED_ROUNDS rounds, after a
    short warm-up; the runs take turns in each round, so a change in the machine's load
    touches them all alike."""
    best = dict.fromkeys(runs, float("inf"))
    for run, count in runs.values():
        await run(count // 10)
    for _ in range(SPEED_ROUNDS):
        for key, (run, count) in runs.items():
            started = time.perf_counter()
            await run(count)
            best[key] = min(best[key], (time.perf_counter() - started) / count)
    return best


def real_greenlet_installed() -> bool:
    """Whether the greenlet package itself (not awaitlet's facade) can be imported."""
    spec = importlib.util.find_spec("greenlet")
    return spec is not None and spec.origin != "awaitlet.greenlet"


async def measure_speed() -> dict[str, dict[str, float]]:
    """Time every case natively and with awaitlet; then, if the greenlet package is
    installed, import it and time the awaitlet calls again: once it is imported, async_def()
    runs sync code in its greenlets (as SQLAlchemy needs), the way the original awaitlet does."""
    runs: dict[str, tuple[Callable[[int], Awaitable[None]], int]] = {}
    for case in SPEED_CASES:
        runs[f"{case.label}\0native"] = (case.native, case.operations)
        runs[f"{case.label}\0awaitlet-rs"] = (case.with_awaitlet, case.operations)
    timings = await best_times(runs)
    if real_greenlet_installed():
        importlib.import_module("greenlet")
        on_greenlet = {
            f"{case.label}\0greenlet": (case.with_awaitlet, case.operations) for case in SPEED_CASES
        }
        timings.update(await best_times(on_greenlet))
    results: dict[str, dict[str, float]] = {case.label: {} for case in SPEED_CASES}
    for key, seconds in timings.items():
        label, implementation = key.split("\0")
        results[label][implementation] = seconds
    return results


def print_speed_measurements() -> None:
    """Measure in this process (which must not have imported greenlet) and print JSON."""
    print(json.dumps(asyncio.run(measure_speed())))


def format_duration(seconds: float) -> str:
    """A duration per operation in ns or µs."""
    nanoseconds = seconds * 1e9
    if nanoseconds < 10_000:
        return f"{nanoseconds:,.0f} ns"
    return f"{nanoseconds / 1000:,.1f} µs"


async def run_part_three() -> None:
    """Time the cases in a fresh interpreter (part 2 may have imported greenlet here, which
    would put async_def() on it) and print them side by side."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from awaitlet.__main__ import print_speed_measurements; print_speed_measurements()",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    output, errors = await child.communicate()
    if child.returncode != 0:
        raise DemoFailure(f"the timing process failed:\n{errors.decode(errors='replace')}")
    results = json.loads(output.decode().splitlines()[-1])
    on_greenlet = all("greenlet" in timings for timings in results.values())
    say(f"time per operation, best of {SPEED_ROUNDS} rounds (lower is better; a quick look,")
    say("noisy on a busy machine: benches/ in the source repository has careful numbers)")
    header = f"{'':52} {'native await':>13} {'awaitlet-rs':>12}"
    say(header + (f" {'on greenlet':>12}" if on_greenlet else ""))
    for case in SPEED_CASES:
        timings = results[case.label]
        row = f"{case.label:52} {format_duration(timings['native']):>13}"
        row += f" {format_duration(timings['awaitlet-rs']):>12}"
        if on_greenlet:
            row += f" {format_duration(timings['greenlet']):>12}"
        say(row)
    if on_greenlet:
        say("on greenlet: the same calls once the greenlet package is imported, which puts")
        say("async_def() on its greenlets, as the original awaitlet does")
    else:
        say("greenlet is not installed, so there is no greenlet column (pip install greenlet")
        say("adds one; SQLAlchemy then runs on greenlet too, until it is uninstalled)")


# --- Running the parts ----------------------------------------------------------------

PARTS: list[tuple[str, Callable[[], Awaitable[None]]]] = [
    ("Part 1: an unchanged sync middle layer", run_part_one),
    ("Part 2: SQLAlchemy ORM on SQLite without greenlet", run_part_two),
    ("Part 3: speed", run_part_three),
]


def report_failure(title: str, error: BaseException) -> None:
    """Explain on stderr why a part failed."""
    if isinstance(error, asyncio.TimeoutError):
        reason = f"it did not finish within {PART_TIMEOUT:.0f} s"
    elif isinstance(error, DemoFailure):
        reason = str(error)
    else:
        traceback.print_exception(type(error), error, error.__traceback__)
        reason = f"{type(error).__name__}: {error}"
    print(f"\nFAILED: {title}: {reason}", file=sys.stderr, flush=True)


async def main() -> int:
    """Run each part in turn; return the exit status (0 if all passed, 1 if one failed)."""
    print(f"awaitlet {__version__} demo, Python {platform.python_version()}", flush=True)
    skipped: list[str] = []
    for number, (title, run_part) in enumerate(PARTS, 1):
        section(title)
        try:
            await asyncio.wait_for(run_part(), PART_TIMEOUT)
        except PartSkipped as skip:
            skipped.append(f"part {number} skipped ({skip})")
        except Exception as error:
            report_failure(title, error)
            return 1
    if skipped:
        print(f"\nThe other parts passed; {'; '.join(skipped)}.", flush=True)
    else:
        print("\nAll parts passed.", flush=True)
    return 0


def keep_package_directory_off_path() -> None:
    """Run as a file (python .../awaitlet/__main__.py), Python puts this package's own
    directory first on sys.path, where awaitlet's greenlet.py would shadow the top-level
    greenlet module; drop that entry.  ``python -m awaitlet`` does not add it."""
    here = Path(__file__).resolve().parent
    if not __package__ and sys.path and Path(sys.path[0] or ".").resolve() == here:
        del sys.path[0]


if __name__ == "__main__":
    keep_package_directory_off_path()
    sys.exit(asyncio.run(main()))
