"""How the green modules wait under Trio: descriptors, sleeps and wake-ups on the running run.

Private to :mod:`awaitlet.green`.  Nothing here imports Trio: the code runs only once
:func:`awaitlet.green._loop.green_loop` has seen a Trio task running, so Trio is in
``sys.modules`` by then, and is typed loosely (Trio is an optional dependency).

Trio lets one task at a time wait for a descriptor in each direction
(``trio.BusyResourceError`` for a second one), where the green calls may have several fibers
(each on its own task) waiting for one socket.  So, per run, the first task to wait for a
descriptor and direction does the ``wait_readable``/``wait_writable`` and the others park
until it returns; if it leaves cancelled, one of them takes over.
"""

from __future__ import annotations

import _thread
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, final

from .. import awaitlet


def _trio() -> Any:
    return sys.modules["trio"]


class _FdWatch:
    """One task's wait for a descriptor in one direction, which other tasks may share."""

    __slots__ = ("lot", "ready")

    def __init__(self) -> None:
        # Made by the first task to share the wait: most waits have no one to share with.
        self.lot: Any = None
        # Whether the tasks parked here may return: false when the waiting task was cancelled.
        self.ready = False


# (descriptor -> watch for reading, descriptor -> watch for writing), per Trio run.
_Tables = tuple[dict[int, _FdWatch], dict[int, _FdWatch]]
_tables_var: Any = None
# Runs in two threads may make it at once: only one RunVar may hold their tables.
_tables_var_lock = _thread.allocate_lock()


def _tables() -> _Tables:
    global _tables_var
    if _tables_var is None:
        with _tables_var_lock:
            if _tables_var is None:
                _tables_var = _trio().lowlevel.RunVar("awaitlet.green descriptor waits")
    tables: _Tables | None = _tables_var.get(None)
    if tables is None:
        tables = ({}, {})
        _tables_var.set(tables)
    return tables


async def _wait_one(
    table: dict[int, _FdWatch], fd: int, wait: Callable[[int], Awaitable[None]]
) -> None:
    """Return when ``fd`` is ready (as ``wait`` sees it), sharing the wait with other tasks."""
    while True:
        watch = table.get(fd)
        if watch is None:
            watch = table[fd] = _FdWatch()
            # Unless cancelled: a wait that fails lets the others retry their calls (and
            # see the error themselves) rather than wait on.
            watch.ready = True
            try:
                await wait(fd)
            except _trio().Cancelled:
                watch.ready = False
                raise
            finally:
                del table[fd]
                if watch.lot is not None:
                    watch.lot.unpark_all()
            return
        if watch.lot is None:
            watch.lot = _trio().lowlevel.ParkingLot()
        await watch.lot.park()
        if watch.ready:
            return
        # The task that waited was cancelled: this one (or another woken with it) waits now.


class _Outcome:
    """What the tasks watching several descriptors for one wait found."""

    __slots__ = ("error", "ready")

    def __init__(self) -> None:
        self.ready = False
        self.error: Exception | None = None


async def _watch(
    table: dict[int, _FdWatch],
    fd: int,
    wait: Callable[[int], Awaitable[None]],
    scope: Any,
    outcome: _Outcome,
) -> None:
    try:
        await _wait_one(table, fd, wait)
    except _trio().Cancelled:
        # Another descriptor was first, the timeout passed, or the waiting task is
        # cancelled: the caller raises that cancellation itself, not in an exception group.
        return
    except Exception as error:
        if outcome.error is None:
            outcome.error = error
    else:
        outcome.ready = True
    scope.cancel()


async def _wait_first(waits: list[tuple[dict[int, _FdWatch], int, Any]]) -> bool:
    trio = _trio()
    if not waits:
        await trio.sleep_forever()
    if len(waits) == 1:
        await _wait_one(*waits[0])
        return True
    # A task can wait for one descriptor only: a task per descriptor, the first to return
    # ends the others.
    outcome = _Outcome()
    async with trio.open_nursery() as nursery:
        for table, fd, wait in waits:
            nursery.start_soon(_watch, table, fd, wait, nursery.cancel_scope, outcome)
    if outcome.error is not None:
        raise outcome.error
    # The watching tasks swallowed any cancellation of this one: raise it here.
    await trio.lowlevel.checkpoint_if_cancelled()
    return outcome.ready


async def _wait_fds(reads: list[int], writes: list[int], timeout: float | None) -> bool:
    trio = _trio()
    readers, writers = _tables()
    waits = [(readers, fd, trio.lowlevel.wait_readable) for fd in reads]
    waits += [(writers, fd, trio.lowlevel.wait_writable) for fd in writes]
    if timeout is None:
        return await _wait_first(waits)
    ready = False  # unless the wait ends before the timeout
    with trio.move_on_after(max(timeout, 0.0)):
        ready = await _wait_first(waits)
    return ready


async def _wait_event(event: Any, timeout: float | None) -> bool:
    if timeout is None:
        await event.wait()
        return True
    woken = False  # unless woken before the timeout
    with _trio().move_on_after(max(timeout, 0.0)):
        await event.wait()
        woken = True
    return woken


class TrioWaiter:
    """One fiber of a Trio run waiting for a wake-up; ``wake`` may be called from any thread."""

    __slots__ = ("event", "thread", "token")

    def __init__(self) -> None:
        trio = _trio()
        self.event: Any = trio.Event()
        self.token: Any = trio.lowlevel.current_trio_token()
        self.thread = _thread.get_ident()

    def wake(self) -> None:
        if _thread.get_ident() == self.thread:
            try:
                self.event.set()
            except RuntimeError:  # the run is over: nobody is waiting any more
                pass
        else:
            try:
                self.token.run_sync_soon(self.event.set)
            except _trio().RunFinishedError:
                pass

    def wait(self, timeout: float | None) -> bool:
        """Suspend until woken (True) or ``timeout`` seconds pass (False)."""
        if timeout is not None and timeout <= 0:
            return bool(self.event.is_set())
        return bool(awaitlet(_wait_event(self.event, timeout)))


@final
class TrioRun:
    """What :func:`~awaitlet.green._loop.green_loop` gives on a fiber of a Trio task.

    It stands for the running Trio run, with the calls the green modules make on a loop.
    """

    __slots__ = ()

    def time(self) -> float:
        """The run's clock (``trio.current_time()``), which its timeouts count in."""
        return float(_trio().current_time())

    def wait_fds(
        self, readable: Iterable[int], writable: Iterable[int], timeout: float | None
    ) -> bool:
        """Suspend the fiber until a descriptor is ready (True) or ``timeout`` passes (False)."""
        # A descriptor named twice is waited for once (its second wait would be the first's).
        reads = list(dict.fromkeys(readable))
        writes = list(dict.fromkeys(writable))
        return bool(awaitlet(_wait_fds(reads, writes, timeout)))

    def sleep(self, seconds: float) -> None:
        """Suspend the fiber for ``seconds`` (``trio.sleep``)."""
        awaitlet(_trio().sleep(seconds))

    def new_waiter(self) -> TrioWaiter:
        """A waiter for a lock's or condition's wake-up."""
        return TrioWaiter()

    def current_task(self) -> object:
        """The Trio task running the fiber."""
        return _trio().lowlevel.current_task()

    def shielded(self) -> Any:
        """A cancel scope that shields what runs inside it from cancellation."""
        return _trio().CancelScope(shield=True)


#: The one instance: it holds nothing, every call asks the running run.
TRIO_RUN = TrioRun()


def trio_task_running() -> bool:
    """Whether a Trio task is running in this thread (Trio imported, its run in progress).

    A task, not just a run: in guest mode, asyncio callbacks run between the Trio run's steps.
    """
    lowlevel = sys.modules.get("trio.lowlevel")
    if lowlevel is None:
        return False
    in_trio_task: Callable[[], bool] | None = getattr(lowlevel, "in_trio_task", None)
    if in_trio_task is not None:
        return in_trio_task()
    try:  # Trio before 0.26
        lowlevel.current_task()
    except RuntimeError:
        return False
    return True
