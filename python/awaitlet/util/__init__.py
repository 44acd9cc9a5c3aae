"""Utilities that ship with ``awaitlet``; :mod:`awaitlet.util.testing` holds test helpers."""
