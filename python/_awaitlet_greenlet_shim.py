"""Makes ``import greenlet`` give awaitlet's greenlet facade when greenlet is not installed.

``awaitlet-greenlet-shim.pth`` runs in every Python process of the environment, so it imports
nothing at start-up: unless the environment variable ``AWAITLET_GREENLET_SHIM`` is ``0``, it
puts a finder of its own, defined in its one line, last on ``sys.meta_path``; only when
``greenlet`` is imported and no other finder has it does that finder import this module and
ask :func:`facade_spec`. :func:`install` does the same from code.
"""

import sys
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType


class GreenletFacadeFinder:
    """A meta path finder and loader for ``greenlet`` as awaitlet's facade; it sits last on
    ``sys.meta_path``, so it is asked only when no other finder found the real package."""

    #: What the .pth hook's finder is marked with too: install() adds no second one.
    __awaitlet_greenlet_hook__ = True

    def find_spec(
        self,
        fullname: str,
        path: "Sequence[str] | None" = None,
        target: "ModuleType | None" = None,
    ) -> "ModuleSpec | None":
        """The facade's spec for ``greenlet``; None for any other module."""
        return facade_spec() if fullname == "greenlet" else None

    def create_module(self, spec: "ModuleSpec") -> None:
        """None: the import system creates the module object."""
        return None

    def exec_module(self, module: "ModuleType") -> None:
        """Fills ``module`` (``greenlet``) with the names of :mod:`awaitlet.greenlet`."""
        from awaitlet import greenlet as facade

        for name, value in vars(facade).items():
            if not name.startswith("__") or name in ("__all__", "__doc__", "__version__"):
                setattr(module, name, value)
        setattr(module, "__awaitlet_facade__", True)  # noqa: B010 - a module's attribute


def facade_spec() -> "ModuleSpec":
    """The module spec of ``greenlet`` as awaitlet's facade."""
    from importlib.machinery import ModuleSpec

    # The finder is its own loader (create_module, exec_module), by duck typing.
    loader = cast("Loader", GreenletFacadeFinder())
    return ModuleSpec("greenlet", loader, origin="awaitlet.greenlet")


def install() -> None:
    """Puts the finder last on ``sys.meta_path`` (unless the hook's is there already)."""
    if not any(getattr(finder, "__awaitlet_greenlet_hook__", False) for finder in sys.meta_path):
        sys.meta_path.append(GreenletFacadeFinder())
