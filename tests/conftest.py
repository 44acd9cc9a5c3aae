"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import _postgres
import pytest


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster on loopback for the whole session
    (``tests/_postgres.py``), started on first use and stopped at the end."""
    server = _postgres.start_postgres()
    try:
        yield server
    finally:
        server.stop()
