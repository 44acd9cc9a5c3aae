"""What the green modules share: where a call may wait on the loop, and how it waits.

Private to :mod:`awaitlet.green`; the names here are public only to its modules.
"""

from __future__ import annotations

import asyncio
import sys
import types
import weakref
from collections.abc import Iterable
from typing import Any, TypeAlias

from .. import awaitlet
from .._awaitlet import in_async_def
from ._trio import TRIO_RUN, TrioRun, trio_task_running

#: Directions a socket call waits for.
READ = 0
WRITE = 1


#: What :func:`green_loop` gives: an asyncio loop, or the running Trio run.
GreenLoop: TypeAlias = asyncio.AbstractEventLoop | TrioRun


def green_loop() -> GreenLoop | None:
    """The loop to wait on, or ``None`` when a blocking call here must simply block.

    Waiting on the loop needs both a fiber to suspend (``in_async_def()``) and a loop running
    in this thread to do the waiting: an asyncio loop, or a Trio run (:data:`TRIO_RUN`).
    """
    if not in_async_def():
        return None
    loop = _get_running_loop()
    # Once Trio is imported, a fiber that no asyncio task runs may be a Trio task's, even
    # with an asyncio loop running (Trio in guest mode steps in the loop's callbacks).
    if (
        _TRIO_MODULE in _modules
        and (loop is None or _current_task(loop) is None)
        and trio_task_running()
    ):
        return TRIO_RUN
    if loop is None:
        return None
    if _PROACTOR is not None and isinstance(loop, _PROACTOR):
        return None  # it cannot watch descriptors (no add_reader): the standard call blocks
    return loop


# Windows' default loop, which has no add_reader/add_writer.
_PROACTOR: type[asyncio.AbstractEventLoop] | None = getattr(asyncio, "ProactorEventLoop", None)
# No RuntimeError to raise and catch when no loop runs.
_get_running_loop = asyncio.events._get_running_loop
_current_task = asyncio.current_task
_modules = sys.modules
_TRIO_MODULE = "trio.lowlevel"


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


def wait_fds(
    loop: GreenLoop,
    readable: Iterable[int],
    writable: Iterable[int],
    timeout: float | None,
) -> bool:
    """Suspend the fiber until one of the descriptors is ready or ``timeout`` passes.

    Returns true when woken by a descriptor, false on timeout.  Readiness is only a hint: the
    caller retries its non-blocking call and waits again if it still would block.
    """
    if type(loop) is TrioRun:
        return loop.wait_fds(readable, writable, timeout)
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


def sleep_on_loop(loop: GreenLoop, seconds: float) -> None:
    """Suspend the fiber for ``seconds`` while the loop runs other tasks."""
    if type(loop) is TrioRun:
        loop.sleep(seconds)
    else:
        awaitlet(asyncio.sleep(seconds))


def rebind_functions(
    standard: types.ModuleType, module_name: str, overrides: dict[str, Any], names: Iterable[str]
) -> dict[str, Any]:
    """Copies of ``standard``'s functions ``names`` that see ``overrides`` as their globals.

    The green modules use this for the standard helpers (``create_connection``,
    ``create_default_context``, ...) that construct a module's classes by their global name:
    their copies run the running Python's own code, but find the green classes under those
    names.  The copies share one namespace: the standard module's, with ``overrides`` and the
    copies themselves in it.  Returns every name of that namespace bound to a copy, aliases
    (``ssl._create_default_https_context``) included.
    """
    namespace = dict(vars(standard))
    namespace.update(overrides)
    copies: dict[int, types.FunctionType] = {}
    for name in names:
        function = getattr(standard, name, None)
        if not isinstance(function, types.FunctionType):
            continue
        copy = types.FunctionType(
            function.__code__,
            namespace,
            function.__name__,
            function.__defaults__,
            function.__closure__,
        )
        copy.__kwdefaults__ = function.__kwdefaults__
        copy.__doc__ = function.__doc__
        copy.__qualname__ = function.__qualname__
        copy.__module__ = module_name
        copy.__annotations__ = dict(getattr(function, "__annotations__", {}))
        copies[id(function)] = copy
    rebound = {key: copies[id(value)] for key, value in namespace.items() if id(value) in copies}
    namespace.update(rebound)
    return rebound


def copy_standard_names(standard: types.ModuleType, namespace: dict[str, Any]) -> None:
    """Copy the names of ``standard`` that ``namespace`` does not define yet (dunders aside).

    Public names are those of the module's ``__all__`` if it has one, every one otherwise.
    Private names come along too: code written against a standard module sometimes reaches
    for them (``socket._GLOBAL_DEFAULT_TIMEOUT``, ``threading._register_atexit``), and the
    standard functions rebound to ``namespace`` look their helpers up there.
    """
    public: Any = getattr(standard, "__all__", None)
    for name, value in vars(standard).items():
        if name.startswith("__") and name.endswith("__"):
            continue
        if public is not None and not name.startswith("_") and name not in public:
            continue  # imported into the module (errno.EAGAIN in socket), not its API
        namespace.setdefault(name, value)
