"""Makes ``import greenlet`` give awaitlet's greenlet facade when greenlet is not installed.

Installed at interpreter start by ``awaitlet-greenlet-shim.pth``; kept free of imports of
the ``awaitlet`` package so that starting Python costs nothing until greenlet is imported.
Set ``AWAITLET_GREENLET_SHIM=0`` to turn it off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType

ENVIRONMENT_VARIABLE = "AWAITLET_GREENLET_SHIM"


class GreenletFacadeFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``greenlet`` as awaitlet's facade; it sits last on ``sys.meta_path``, so it is
    asked only when no other finder found the real package."""

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname != "greenlet":
            return None
        return importlib.machinery.ModuleSpec("greenlet", self, origin="awaitlet.greenlet")

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return None

    def exec_module(self, module: ModuleType) -> None:
        from awaitlet import greenlet as facade

        for name, value in vars(facade).items():
            if not name.startswith("__") or name in ("__all__", "__doc__", "__version__"):
                setattr(module, name, value)
        setattr(module, "__awaitlet_facade__", True)  # noqa: B010 - a module's attribute


def install() -> None:
    """Puts the finder last on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, GreenletFacadeFinder) for finder in sys.meta_path):
        sys.meta_path.append(GreenletFacadeFinder())


def install_from_pth() -> None:
    """What the ``.pth`` file runs at interpreter start: install unless turned off."""
    if os.environ.get(ENVIRONMENT_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off"):
        install()
