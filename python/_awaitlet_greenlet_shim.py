"""Makes ``import greenlet`` give awaitlet's greenlet facade when greenlet is not installed.

``awaitlet-greenlet-shim.pth`` runs in every Python process of the environment, so it imports
nothing at start-up: unless the environment variable ``AWAITLET_GREENLET_SHIM`` is ``0``, it
puts a finder of its own, defined in its one line, last on ``sys.meta_path``; only when
``greenlet`` is imported and no other finder has it does that finder import this module and
ask :func:`facade_spec`. :func:`install` does the same from code.
"""

import sys


class GreenletFacadeFinder:
    """A meta path finder and loader for ``greenlet`` as awaitlet's facade; it sits last on
    ``sys.meta_path``, so it is asked only when no other finder found the real package."""

    #: What the .pth hook's finder is marked with too: install() adds no second one.
    __awaitlet_greenlet_hook__ = True

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        return facade_spec() if fullname == "greenlet" else None

    def create_module(self, spec: object) -> None:
        return None

    def exec_module(self, module: object) -> None:
        from awaitlet import greenlet as facade

        for name, value in vars(facade).items():
            if not name.startswith("__") or name in ("__all__", "__doc__", "__version__"):
                setattr(module, name, value)
        setattr(module, "__awaitlet_facade__", True)  # noqa: B010 - a module's attribute
        # greenlet's extension module, which some code imports by name: the facade itself.
        setattr(module, "_greenlet", facade)  # noqa: B010 - a module's attribute
        sys.modules.setdefault("greenlet._greenlet", facade)


def facade_spec() -> object:
    """The module spec of ``greenlet`` as awaitlet's facade."""
    from importlib.machinery import ModuleSpec

    return ModuleSpec("greenlet", GreenletFacadeFinder(), origin="awaitlet.greenlet")


def install() -> None:
    """Puts the finder last on ``sys.meta_path`` (unless the hook's is there already)."""
    if not any(getattr(finder, "__awaitlet_greenlet_hook__", False) for finder in sys.meta_path):
        sys.meta_path.append(GreenletFacadeFinder())
