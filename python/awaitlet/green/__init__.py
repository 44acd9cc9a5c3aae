"""Green standard library: blocking calls that wait on the event loop when made on a fiber.

:mod:`awaitlet.green.socket`, :mod:`~awaitlet.green.ssl`, :mod:`~awaitlet.green.select`,
:mod:`~awaitlet.green.selectors`, :mod:`~awaitlet.green.threading` and
:mod:`~awaitlet.green.time` have the public names of the standard modules they are named
after.  Their blocking calls check where they run: below :func:`awaitlet.async_def`, with an
event loop running in this thread (an asyncio loop, or a Trio run: the library of the task
that runs the fiber), they suspend the fiber while the loop waits (for a socket to become
readable or writable, for a timer, for a lock's release); anywhere else they are the
standard blocking calls.

:func:`patch_blocking` makes code imported inside it see these modules in place of the
standard ones, so that an unmodified synchronous library (an HTTP client, a database
driver) stops blocking the loop when it is called through :func:`awaitlet.async_def`.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading as _std_threading
import types
from collections.abc import Generator, Iterable

__all__ = ["GREEN_MODULES", "patch_blocking"]

#: The standard modules that have a green counterpart in this package, in the order
#: :func:`patch_blocking` installs them.
GREEN_MODULES: tuple[str, ...] = ("socket", "select", "selectors", "ssl", "threading", "time")

# Nesting depth of patch_blocking() blocks, across threads: only the outermost one swaps
# sys.modules entries, as in greenletio.
_patch_lock = _std_threading.Lock()
_patch_depth = 0


@contextlib.contextmanager
def patch_blocking(modules: Iterable[str] | None = None) -> Generator[None, None, None]:
    """Make modules imported inside the block see the green modules in place of the standard ones.

    ::

        from awaitlet.green import patch_blocking

        with patch_blocking():
            import http.client   # its `socket` and `ssl` are awaitlet.green's

    While the block runs, ``sys.modules`` maps ``socket``, ``select``, ``selectors``, ``ssl``,
    ``threading`` and ``time`` (or only those named in ``modules``) to the green modules, so
    an ``import`` inside it binds them.  On exit the standard modules are put back, and every
    module first imported inside the block is dropped from ``sys.modules`` again (the names
    bound by the block's imports keep them), so that code imported later outside the block
    gets the standard library.  Nested blocks only patch once; an inner block's exit drops
    what was first imported inside it.

    Modules already imported before the block are not imported again, and keep the standard
    modules they bound: import the library you want green for the first time inside the
    block.  ``sys.modules`` is one for the whole interpreter: another thread importing
    while the block runs sees the green modules too.

    Args:
        modules: names of the standard modules to replace, a subset of
            :data:`GREEN_MODULES`; ``None`` for all of them.

    Raises:
        ValueError: a name in ``modules`` has no green counterpart.
    """
    global _patch_depth
    names = GREEN_MODULES if modules is None else tuple(modules)
    unknown = [name for name in names if name not in GREEN_MODULES]
    if unknown:
        raise ValueError(f"no green module for {', '.join(map(repr, unknown))}")
    # Imported before the snapshot, so that they stay in sys.modules after the block.
    green = {name: importlib.import_module(f"{__name__}.{name}") for name in names}
    already_imported = set(sys.modules)
    saved: dict[str, types.ModuleType | None] = {}
    with _patch_lock:
        outermost = _patch_depth == 0
        _patch_depth += 1
        if outermost:
            for name, module in green.items():
                saved[name] = sys.modules.get(name)
                sys.modules[name] = module
    try:
        yield
    finally:
        with _patch_lock:
            _patch_depth -= 1
            for name, original in saved.items():
                if original is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = original
            for name in [name for name in sys.modules if name not in already_imported]:
                if name not in saved:
                    del sys.modules[name]
