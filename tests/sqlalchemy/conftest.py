"""Fixtures for the SQLAlchemy tests: database URLs for SQLite and a throwaway PostgreSQL.

* ``sqlite_url``: ``sqlite+aiosqlite`` on a file in the test's ``tmp_path``, so
  several connections share one database;
* ``postgres_url``: on the one PostgreSQL cluster of the session (``postgres_server``
  in ``tests/conftest.py``, started on first use); the tests fail if the server
  binaries are missing (``apt-get install postgresql``);
* ``async_url``: parametrized over both.

Tests that use PostgreSQL carry the ``postgresql`` marker. If any is selected and the
server programs are missing, the run stops at once with one message saying what to install
or to deselect them with ``-m "not postgresql"``.

``async def`` tests are run here with :func:`asyncio.run`, one event loop per test.
Each test module checks ``AWAITLET_EXPECT_GREENLET`` when imported (see ``_sqla_support``).
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from pathlib import Path

import pytest

# _postgres.py lives in tests/, which pytest only puts on sys.path for tests/test_*.py.
_TESTS_DIR = str(Path(__file__).resolve().parent.parent)
if _TESTS_DIR not in sys.path:
    sys.path.append(_TESTS_DIR)

try:
    import sqlalchemy.ext.asyncio
except ImportError as error:
    raise ImportError(
        "tests/sqlalchemy needs SQLAlchemy, aiosqlite and asyncpg: "
        "pip install -r tests/requirements.txt"
    ) from error

import _postgres  # noqa: E402
import _sqla_support  # noqa: E402

#: Backend id -> name of the fixture giving its URL.
BACKENDS = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}
_backends_used: set[str] = set()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    _backends_used.add("sqlite")
    return f"sqlite+aiosqlite:///{tmp_path / 'library.db'}"


@pytest.fixture
def postgres_url(postgres_server) -> str:
    _backends_used.add("postgresql")
    return postgres_server.async_url


@pytest.fixture(params=list(BACKENDS))
def async_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(BACKENDS[request.param])


def _uses_postgresql(item: pytest.Item) -> bool:
    fixtures = getattr(item, "fixturenames", ())
    if "postgres_url" in fixtures or "postgres_server" in fixtures:
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("async_url") == "postgresql"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the tests that use PostgreSQL (before ``-m`` deselects any)."""
    for item in items:
        if _uses_postgresql(item):
            item.add_marker(pytest.mark.postgresql)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stops the run with one message if selected tests need PostgreSQL and it is missing."""
    if not any(item.get_closest_marker("postgresql") for item in session.items):
        return
    try:
        _postgres.find_bindir()
    except _postgres.PostgresUnavailable as error:
        pytest.exit(
            f"{error}\nOr run without the PostgreSQL tests: pytest -m 'not postgresql'",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Run ``async def`` tests to completion on a new event loop."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    argnames = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in argnames}))
    return True


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.write_line(
        f"SQLAlchemy {sqlalchemy.__version__}; {_sqla_support.greenlet_description()}; "
        f"backends used: {', '.join(sorted(_backends_used)) or 'none'}"
    )
