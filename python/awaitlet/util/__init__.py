"""Utilities that ship with ``awaitlet``; :mod:`awaitlet.util.testing` holds test helpers."""

from __future__ import annotations

from .._awaitlet import in_async_def

__all__ = ["in_async_def"]
