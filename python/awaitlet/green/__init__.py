"""Green standard library: blocking calls that wait on the event loop when made on a fiber.

:mod:`awaitlet.green.socket`, :mod:`~awaitlet.green.ssl`, :mod:`~awaitlet.green.select`,
:mod:`~awaitlet.green.selectors`, :mod:`~awaitlet.green.threading` and
:mod:`~awaitlet.green.time` have the public names of the standard modules they are named
after.  Their blocking calls check where they run: below :func:`awaitlet.async_def`, with an
event loop running in this thread, they suspend the fiber while the loop waits (for a socket
to become readable or writable, for a timer, for a lock's release); anywhere else they are
the standard blocking calls.

:func:`patch_blocking` makes code imported inside it see these modules in place of the
standard ones, so that an unmodified synchronous library (an HTTP client, a database
driver) stops blocking the loop when it is called through :func:`awaitlet.async_def`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
import threading as _std_threading
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .. import awaitlet
from .._awaitlet import in_async_def

__all__ = ["GREEN_MODULES", "patch_blocking"]

#: The standard modules that have a green counterpart in this package, in the order
#: :func:`patch_blocking` installs them.
GREEN_MODULES: tuple[str, ...] = ("socket", "select", "selectors", "ssl", "threading", "time")

_F = TypeVar("_F", bound=Callable[..., Any])


def _green_loop() -> asyncio.AbstractEventLoop | None:
    """The loop to wait on, or ``None`` when a blocking call here must simply block.

    Waiting on the loop needs both a fiber to suspend (``in_async_def()``) and a loop running
    in this thread to do the waiting.
    """
    if not in_async_def():
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if _PROACTOR is not None and isinstance(loop, _PROACTOR):
        return None  # it cannot watch descriptors (no add_reader): the standard call blocks
    return loop


# Windows' default loop, which has no add_reader/add_writer.
_PROACTOR: type[asyncio.AbstractEventLoop] | None = getattr(asyncio, "ProactorEventLoop", None)


class _FdWaiters:
    """The futures that wait for one file descriptor to be readable (or writable) on a loop.

    The loop keeps one callback per descriptor and direction, so two fibers waiting for the
    same socket (one in ``recv``, one in ``select``) share one registration that wakes both.
    """

    __slots__ = ("futures", "registered")

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[bool]] = []
        self.registered = False


# loop -> ({fd: readers}, {fd: writers}); a closed loop's entry goes with the loop.
_registrations: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[dict[int, _FdWaiters], dict[int, _FdWaiters]]
] = weakref.WeakKeyDictionary()


def _wake_all(waiters: _FdWaiters) -> None:
    for future in waiters.futures:
        if not future.done():
            future.set_result(True)


def _set_result_once(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _wait_fds(
    loop: asyncio.AbstractEventLoop,
    readable: Iterable[int],
    writable: Iterable[int],
    timeout: float | None,
) -> bool:
    """Suspend the fiber until one of the descriptors is ready or ``timeout`` passes.

    Returns true when woken by a descriptor, false on timeout.  Readiness is only a hint: the
    caller retries its non-blocking call and waits again if it still would block.
    """
    readers, writers = _registrations.setdefault(loop, ({}, {}))
    future: asyncio.Future[bool] = loop.create_future()
    entries: list[tuple[dict[int, _FdWaiters], int, _FdWaiters]] = []
    timer: asyncio.TimerHandle | None = None
    try:
        for table, fds, add in (
            (readers, readable, loop.add_reader),
            (writers, writable, loop.add_writer),
        ):
            for fd in fds:
                waiters = table.get(fd)
                if waiters is None:
                    waiters = table[fd] = _FdWaiters()
                waiters.futures.append(future)
                entries.append((table, fd, waiters))
                if not waiters.registered:
                    add(fd, _wake_all, waiters)
                    waiters.registered = True
        if timeout is not None:
            timer = loop.call_later(max(timeout, 0.0), _set_result_once, future, False)
        return bool(awaitlet(future))
    finally:
        if timer is not None:
            timer.cancel()
        for table, fd, waiters in entries:
            waiters.futures.remove(future)
            if not waiters.futures:
                if table.get(fd) is waiters:
                    del table[fd]
                if waiters.registered:
                    if table is readers:
                        loop.remove_reader(fd)
                    else:
                        loop.remove_writer(fd)


def _sleep_on_loop(seconds: float) -> None:
    """Suspend the fiber for ``seconds`` while the loop runs other tasks."""
    awaitlet(asyncio.sleep(seconds))


def _rebind(function: _F, namespace: dict[str, Any]) -> _F:
    """A copy of the standard library's ``function`` that looks its globals up in ``namespace``.

    The green modules use this for the standard helpers (``create_connection``,
    ``create_default_context``, ...) that construct a module's classes by their global name:
    rebound to the green module's namespace, they build green sockets and contexts, with the
    running Python's own code.
    """
    code = function.__code__
    copy = types.FunctionType(
        code,
        namespace,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__doc__ = function.__doc__
    copy.__qualname__ = function.__qualname__
    copy.__module__ = namespace.get("__name__", function.__module__)
    copy.__annotations__ = dict(getattr(function, "__annotations__", {}))
    return copy  # type: ignore[return-value]


def _copy_public_and_private(standard: types.ModuleType, namespace: dict[str, Any]) -> None:
    """Copy every name of ``standard`` that ``namespace`` does not define yet (dunders aside).

    Private names come along too: code written against a standard module sometimes reaches
    for them (``socket._GLOBAL_DEFAULT_TIMEOUT``, ``threading._register_atexit``).
    """
    for name, value in vars(standard).items():
        if name.startswith("__") and name.endswith("__"):
            continue
        namespace.setdefault(name, value)


# Nesting depth of patch_blocking() blocks, across threads: only the outermost one swaps
# sys.modules entries, as in greenletio.
_patch_lock = _std_threading.Lock()
_patch_depth = 0


@contextlib.contextmanager
def patch_blocking(modules: Iterable[str] | None = None) -> Iterator[None]:
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
