"""The implementations of "call an awaitable from sync code" that this environment has.

Every case script imports this module and measures each implementation it finds, so the
same script serves both benchmark environments: the one with this package and no greenlet,
and the one with the real greenlet (SQLAlchemy, greenback, the original awaitlet 0.0.1).

Each implementation has two halves:

* ``spawn(fn, *args)`` returns an awaitable that runs the sync ``fn(*args)`` in a context
  where ``wait()`` works (``async_def``, ``greenlet_spawn``, ``with_portal_run_sync``);
* ``wait(awaitable)``, called from that sync code, waits for ``awaitable`` and returns its
  result (``awaitlet``, ``await_only``, ``greenback.await_``).

Native ``await`` has no such halves; the case scripts write it out by hand.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

#: Implementation ids, in the order the report lists them.
ORDER = (
    "native",
    "awaitlet-rs",
    "sqlalchemy-facade",
    "greenlet",
    "awaitlet-0.0.1",
    "greenback",
)

#: One-line descriptions of the ids, for tables and plots.
LABELS = {
    "native": "native await",
    "awaitlet-rs": "awaitlet-rs: async_def / awaitlet",
    "sqlalchemy-facade": "SQLAlchemy greenlet_spawn / await_only on awaitlet-rs's greenlet facade",
    "greenlet": "SQLAlchemy greenlet_spawn / await_only on greenlet",
    "awaitlet-0.0.1": "awaitlet 0.0.1 (PyPI) on greenlet",
    "greenback": "greenback with_portal_run_sync / await_ on greenlet",
}


@dataclass(frozen=True)
class Impl:
    """One way of running sync code that waits for awaitables."""

    name: str
    spawn: Callable[..., Awaitable[Any]]
    wait: Callable[[Awaitable[Any]], Any]


def greenlet_kind() -> str | None:
    """``"facade"`` if ``import greenlet`` gives awaitlet-rs's facade, ``"real"`` for the
    greenlet package, None if it cannot be imported."""
    try:
        import greenlet
    except ImportError:
        return None
    return "facade" if getattr(greenlet, "__awaitlet_facade__", False) else "real"


def awaitlet_kind() -> str | None:
    """``"awaitlet-rs"`` for this package, ``"awaitlet-0.0.1"`` for the original one on
    greenlet, None if ``awaitlet`` is not installed."""
    if importlib.util.find_spec("awaitlet") is None:
        return None
    if importlib.util.find_spec("awaitlet._awaitlet") is not None:
        return "awaitlet-rs"
    return "awaitlet-0.0.1"


def sqlalchemy_pair() -> tuple[Callable[..., Awaitable[Any]], Callable[[Awaitable[Any]], Any]]:
    """SQLAlchemy's ``greenlet_spawn`` and ``await_only`` (called ``await_`` since 2.1)."""
    from sqlalchemy import util

    wait = getattr(util, "await_", None) or util.await_only
    return util.greenlet_spawn, wait


def detect() -> dict[str, Impl]:
    """The implementations importable here (native excluded), by id."""
    found: dict[str, Impl] = {}
    # Ask about greenlet first: importing SQLAlchemy's asyncio parts would import it anyway.
    greenlet = greenlet_kind()
    awaitlet = awaitlet_kind()
    if awaitlet is not None:
        from awaitlet import async_def
        from awaitlet import awaitlet as wait

        found[awaitlet] = Impl(awaitlet, async_def, wait)
    if greenlet is not None and importlib.util.find_spec("sqlalchemy") is not None:
        name = "sqlalchemy-facade" if greenlet == "facade" else "greenlet"
        spawn, wait = sqlalchemy_pair()
        found[name] = Impl(name, spawn, wait)
    if greenlet == "real" and importlib.util.find_spec("greenback") is not None:
        import greenback

        found["greenback"] = Impl("greenback", greenback.with_portal_run_sync, greenback.await_)
    return found


def versions() -> dict[str, str]:
    """Versions of the packages that matter to the results, as installed here."""
    from importlib import metadata

    result = {}
    for distribution in (
        "awaitlet-rs",
        "awaitlet",
        "greenlet",
        "greenback",
        "sqlalchemy",
        "aiosqlite",
        "pyperf",
    ):
        try:
            result[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            pass
    return result
