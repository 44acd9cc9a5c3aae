"""Makes ``import greenlet`` give awaitlet's greenlet facade when greenlet is not installed.

``awaitlet-greenlet-shim.pth`` runs in every Python process of the environment, so it imports
nothing at start-up: unless the environment variable ``AWAITLET_GREENLET_SHIM`` is ``0``, it
puts a finder of its own, defined in its one line, last on ``sys.meta_path``; only when
``greenlet`` is imported and no other finder has it does that finder import this module and
ask :func:`facade_spec`. :func:`install` does the same from code.

The same line looks out for the original ``awaitlet`` distribution (on greenlet), which
installs the same ``awaitlet`` package: with one stat, of a file only the original ships. If
it is there, the line puts a second finder of its own first on ``sys.meta_path``, which finds
nothing but calls :func:`warn_original_awaitlet` at the first ``import awaitlet``, whichever of
the two distributions was installed last (when the original was, its ``awaitlet/__init__.py``
replaced ours, and this hook is all of ours that still runs). awaitlet's ``__init__`` makes
the same check, for when the hook is turned off.
"""

import os
import sys
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import FrameType, ModuleType

#: A file that the original ``awaitlet`` distribution (0.0.1) installs and awaitlet-rs does
#: not; finding it in our package means both distributions wrote into it. The .pth line and
#: awaitlet's ``__init__`` look for it.
ORIGINAL_ONLY_FILE = "awaitlet/util/typing.py"


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
        # greenlet's extension module, which some code imports by name: the facade itself.
        setattr(module, "_greenlet", facade)  # noqa: B010 - a module's attribute
        sys.modules.setdefault("greenlet._greenlet", facade)


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


def coexistence_message(site_dir: str) -> str:
    """The warning for an environment where both distributions are installed."""
    return (
        f"the original 'awaitlet' distribution is installed beside 'awaitlet-rs' (in {site_dir}):"
        " both install the 'awaitlet' package, so the one installed last overwrote the other's"
        " files, and uninstalling either breaks the other. They cannot coexist; to keep"
        " awaitlet-rs, run 'pip uninstall awaitlet', then"
        " 'pip install --force-reinstall awaitlet-rs'."
    )


_warned = False


def warn_original_awaitlet(site_dir: str) -> None:
    """Warn, once per process, that both distributions are installed in ``site_dir``."""
    global _warned
    if _warned:
        return
    _warned = True
    import warnings

    warnings.warn(coexistence_message(site_dir), RuntimeWarning, stacklevel=_importer_level())


def _importer_level() -> int:
    """The ``stacklevel`` that points a warning at the code importing awaitlet: past the
    caller of :func:`warn_original_awaitlet` and awaitlet's ``__init__``; ``warnings`` itself
    does not count the frames of the import machinery."""
    init = os.path.join("awaitlet", "__init__.py")
    # 0: this function, 1: warn_original_awaitlet, 2: its caller.
    frame: FrameType | None = sys._getframe(2)  # pyright: ignore[reportPrivateUsage]
    level = 2
    while frame is not None:
        frame = frame.f_back
        if frame is None or _is_import_machinery(frame):
            continue
        level += 1
        if not frame.f_code.co_filename.endswith(init):
            break
    return level


def _is_import_machinery(frame: "FrameType") -> bool:
    filename = frame.f_code.co_filename
    return "importlib" in filename and "_bootstrap" in filename
