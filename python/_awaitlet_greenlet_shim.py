"""Makes ``import greenlet`` give awaitlet's greenlet facade when greenlet is not installed.

Installed at interpreter start by ``awaitlet-greenlet-shim.pth`` (unless the environment
variable ``AWAITLET_GREENLET_SHIM`` is ``0``, which the ``.pth`` line checks before it imports
this module). It runs in every Python process of the environment, so it imports nothing the
interpreter has not already loaded at start-up: the finder is a plain class, and the import
machinery it needs is looked up only when ``greenlet`` is imported.
"""

import sys


class GreenletFacadeFinder:
    """A meta path finder and loader for ``greenlet`` as awaitlet's facade; it sits last on
    ``sys.meta_path``, so it is asked only when no other finder found the real package."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != "greenlet":
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec("greenlet", self, origin="awaitlet.greenlet")

    def create_module(self, spec: object) -> None:
        return None

    def exec_module(self, module: object) -> None:
        from awaitlet import greenlet as facade

        for name, value in vars(facade).items():
            if not name.startswith("__") or name in ("__all__", "__doc__", "__version__"):
                setattr(module, name, value)
        setattr(module, "__awaitlet_facade__", True)  # noqa: B010 - a module's attribute


def install() -> None:
    """Puts the finder last on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, GreenletFacadeFinder) for finder in sys.meta_path):
        sys.meta_path.append(GreenletFacadeFinder())
