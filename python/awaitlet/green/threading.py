"""Green :mod:`threading`: locks, events and conditions whose waits suspend the fiber.

Everything the standard :mod:`threading` module has is here under the same name; ``Lock``,
``RLock``, ``Condition``, ``Semaphore``, ``BoundedSemaphore``, ``Event`` and ``Barrier`` are
this module's.  A blocking ``acquire`` or ``wait`` made on a fiber with an event loop running
in this thread suspends the fiber (the loop runs other tasks) until the lock is released or
the condition notified, by a fiber or by any other thread; made anywhere else, it blocks as
the standard one does.  Non-blocking calls and timeouts behave as in the standard library.

On a fiber, the "thread" that owns an ``RLock`` (and so may acquire it again, and must be the
one to release it) is the asyncio or Trio task running the fiber: two tasks are two owners
even though they share one OS thread.  ``Thread``, ``local``, ``get_ident`` and ``current_thread``
are the standard ones: threads stay OS threads.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import threading as _std
import time as _time

# The drop-in module has every name of the standard one (type checkers see them here).
from threading import *  # noqa: F403  # pyright: ignore[reportWildcardImportFromLibrary]
from types import TracebackType
from typing import Any

from .. import awaitlet
from ._loop import GreenLoop, copy_standard_names, green_loop
from ._trio import TrioRun, TrioWaiter


def _set_result_once(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


class _FiberWaiter:
    """One fiber waiting for a wake-up; ``wake`` may be called from any thread, once or more."""

    __slots__ = ("future", "loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = _thread.get_ident()
        self.future: asyncio.Future[bool] = loop.create_future()

    def wake(self) -> None:
        if _thread.get_ident() == self.thread:
            _set_result_once(self.future, True)
        else:
            try:
                self.loop.call_soon_threadsafe(_set_result_once, self.future, True)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def wait(self, timeout: float | None) -> bool:
        """Suspend until woken (True) or ``timeout`` seconds pass (False)."""
        if timeout is not None and timeout <= 0:
            return self.future.done() and self.future.result()
        timer = None
        if timeout is not None:
            timer = self.loop.call_later(max(timeout, 0.0), _set_result_once, self.future, False)
        try:
            return bool(awaitlet(self.future))
        finally:
            if timer is not None:
                timer.cancel()


class _ThreadWaiter:
    """One OS thread (not on a fiber) waiting for a wake-up, on a lock it holds."""

    __slots__ = ("lock",)

    def __init__(self) -> None:
        self.lock = _thread.allocate_lock()
        self.lock.acquire()

    def wake(self) -> None:
        try:
            self.lock.release()
        except RuntimeError:  # woken already
            pass

    def wait(self, timeout: float | None) -> bool:
        if timeout is not None and timeout <= 0:
            return self.lock.acquire(False)
        return self.lock.acquire(True, -1 if timeout is None else timeout)


def _fiber_waiter(loop: GreenLoop) -> _FiberWaiter | TrioWaiter:
    if type(loop) is TrioRun:
        return loop.new_waiter()
    return _FiberWaiter(loop)


def _new_waiter() -> _FiberWaiter | TrioWaiter | _ThreadWaiter:
    loop = green_loop()
    return _ThreadWaiter() if loop is None else _fiber_waiter(loop)


def _checked_timeout(blocking: bool, timeout: float) -> float | None:
    """The standard lock's argument checks; the timeout in seconds, None for no limit."""
    if not blocking:
        if timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return 0.0
    if timeout < 0 and timeout != -1:
        raise ValueError("timeout value must be a non-negative number")
    return None if timeout == -1 else float(timeout)


class _LockBase:
    """What ``Lock`` and ``RLock`` share: the context manager over ``acquire``/``release``."""

    __slots__ = ("__weakref__",)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class _Lock(_LockBase):
    """A primitive lock, as :class:`threading.Lock`; a blocking acquire on a fiber suspends it.

    It wraps a real lock, so fibers and OS threads can share it: a release from any of them
    wakes a waiting fiber (through its loop) or a waiting thread.
    """

    __slots__ = ("_fiber_waiters", "_lock")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._fiber_waiters: collections.deque[_FiberWaiter | TrioWaiter] = collections.deque()

    def __repr__(self) -> str:
        state = "locked" if self._lock.locked() else "unlocked"
        return f"<{type(self).__module__}.{type(self).__qualname__} object [{state}]>"

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire the lock; with ``blocking`` false or a ``timeout``, give up and return False."""
        seconds = _checked_timeout(blocking, timeout)
        if self._lock.acquire(False):
            return True
        if seconds == 0.0:
            return False
        loop = green_loop()
        if loop is None:
            return self._lock.acquire(True, -1 if seconds is None else seconds)
        deadline = None if seconds is None else _time.monotonic() + seconds
        while True:
            waiter = _fiber_waiter(loop)
            # Queued before the second try, so that a release in between wakes it.
            self._fiber_waiters.append(waiter)
            if self._lock.acquire(False):
                self._forget(waiter)
                return True
            remaining = None if deadline is None else deadline - _time.monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    woken = False
                else:
                    woken = waiter.wait(remaining)
            except BaseException:
                self._leave(waiter)
                raise
            if not self._forget(waiter):
                continue  # a release chose this waiter: try again
            if not woken:
                return False

    def _forget(self, waiter: _FiberWaiter | TrioWaiter) -> bool:
        """Take ``waiter`` off the queue; False if a release had already taken it (and woken it)."""
        try:
            self._fiber_waiters.remove(waiter)
        except ValueError:
            return False
        return True

    def _leave(self, waiter: _FiberWaiter | TrioWaiter) -> None:
        """A waiter gives up: if a release had chosen it, the wake-up goes to the next one."""
        if not self._forget(waiter):
            self._wake_one()

    def release(self) -> None:
        """Release the lock and wake one fiber waiting for it; RuntimeError if it is unlocked."""
        self._lock.release()
        self._wake_one()

    def _wake_one(self) -> None:
        try:
            waiter = self._fiber_waiters.popleft()
        except IndexError:
            return
        waiter.wake()

    def locked(self) -> bool:
        """Whether the lock is held."""
        return self._lock.locked()

    def _at_fork_reinit(self) -> None:
        self._lock = _thread.allocate_lock()
        self._fiber_waiters.clear()

    acquire_lock = acquire
    release_lock = release
    locked_lock = locked


def _owner() -> object:
    """Who owns an RLock acquired here: the asyncio or Trio task on a fiber, else the OS thread."""
    loop = green_loop()
    if type(loop) is TrioRun:
        return loop.current_task()
    if loop is not None:
        task = asyncio.current_task(loop)
        if task is not None:
            return task
    return _thread.get_ident()


class _RLock(_LockBase):
    """A reentrant lock, as :class:`threading.RLock`; on a fiber its owner is the task."""

    __slots__ = ("_block", "_count", "_owner")

    def __init__(self) -> None:
        self._block = _Lock()
        self._owner: object = None
        self._count = 0

    def __repr__(self) -> str:
        state = "locked" if self._block.locked() else "unlocked"
        return (
            f"<{state} {type(self).__module__}.{type(self).__qualname__} object "
            f"owner={self._owner!r} count={self._count}>"
        )

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire the lock, or count one more acquisition if the caller owns it already."""
        me = _owner()
        if self._owner == me:
            self._count += 1
            return True
        acquired = self._block.acquire(blocking, timeout)
        if acquired:
            self._owner = me
            self._count = 1
        return acquired

    def release(self) -> None:
        """Undo one acquisition; RuntimeError if the caller does not own the lock."""
        if self._owner != _owner():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if not self._count:
            self._owner = None
            self._block.release()

    def locked(self) -> bool:
        """Whether some owner holds the lock."""
        return self._block.locked()

    def _is_owned(self) -> bool:
        return self._owner == _owner()

    def _recursion_count(self) -> int:
        return self._count if self._is_owned() else 0

    def _release_save(self) -> tuple[int, object]:
        if not self._count:
            raise RuntimeError("cannot release un-acquired lock")
        state = (self._count, self._owner)
        self._count, self._owner = 0, None
        self._block.release()
        return state

    def _acquire_restore(self, state: tuple[int, object]) -> None:
        self._block.acquire()
        self._count, self._owner = state

    def _at_fork_reinit(self) -> None:
        self._block = _Lock()
        self._owner, self._count = None, 0


class _Condition:
    """A condition variable, as :class:`threading.Condition`; ``wait`` on a fiber suspends it.

    Fibers and OS threads may wait on the same condition; ``notify`` wakes either kind.
    """

    def __init__(self, lock: Any = None) -> None:
        if lock is None:
            lock = _RLock()
        self._lock = lock
        self.acquire = lock.acquire
        self.release = lock.release
        for name in ("_release_save", "_acquire_restore", "_is_owned"):
            if hasattr(lock, name):
                setattr(self, name, getattr(lock, name))
        self._waiters: collections.deque[_FiberWaiter | TrioWaiter | _ThreadWaiter] = (
            collections.deque()
        )

    def __repr__(self) -> str:
        return f"<Condition({self._lock!r}, {len(self._waiters)})>"

    def __enter__(self) -> Any:
        return self._lock.__enter__()

    def __exit__(self, *exc_info: object) -> Any:
        return self._lock.__exit__(*exc_info)

    def _release_save(self) -> Any:
        self._lock.release()

    def _acquire_restore(self, state: Any) -> None:
        self._lock.acquire()

    def _is_owned(self) -> bool:
        # As the standard Condition does for a lock it knows nothing of.
        if self._lock.acquire(False):
            self._lock.release()
            return False
        return True

    def _reacquire(self, state: Any) -> None:
        """Take the lock back after a wait, even through a cancellation (raised afterwards)."""
        loop = green_loop()
        if type(loop) is TrioRun:
            # A Trio cancellation stays raised at every wait until its scope exits: shielded,
            # the lock is waited for; the cancellation comes at the next checkpoint.
            with loop.shielded():
                self._acquire_restore(state)
            return
        interrupted: BaseException | None = None
        while True:
            try:
                self._acquire_restore(state)
                break
            except asyncio.CancelledError as error:
                interrupted = error
        if interrupted is not None:
            raise interrupted

    def _forget(self, waiter: _FiberWaiter | TrioWaiter | _ThreadWaiter) -> bool:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return False
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, wait for a notification or ``timeout``, and take the lock back.

        Returns False if the timeout passed without a notification.
        """
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = _new_waiter()
        self._waiters.append(waiter)
        state = self._release_save()
        try:
            notified = waiter.wait(timeout)
        except BaseException:
            self._reacquire(state)
            if not self._forget(waiter):
                # Notified, but leaving with an exception: the notification goes on.
                self.notify(1)
            raise
        self._reacquire(state)
        if not notified and not self._forget(waiter):
            notified = True  # notified as the timeout expired
        return notified

    def wait_for(self, predicate: Any, timeout: float | None = None) -> Any:
        """Wait until ``predicate()`` is true, or ``timeout`` passes; return its last value."""
        end_time = None
        wait_time = timeout
        result = predicate()
        while not result:
            if wait_time is not None:
                if end_time is None:
                    end_time = _time.monotonic() + wait_time
                else:
                    wait_time = end_time - _time.monotonic()
                    if wait_time <= 0:
                        break
            self.wait(wait_time)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters (fibers or threads); the lock must be held."""
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        for _ in range(min(n, len(self._waiters))):
            try:
                waiter = self._waiters.popleft()
            except IndexError:
                break
            waiter.wake()

    def notify_all(self) -> None:
        """Wake every waiter; the lock must be held."""
        self.notify(len(self._waiters))

    def notifyAll(self) -> None:  # noqa: N802  (the standard deprecated alias)
        """Deprecated alias of :meth:`notify_all`."""
        import warnings

        warnings.warn(
            "notifyAll() is deprecated, use notify_all() instead", DeprecationWarning, stacklevel=2
        )
        self.notify_all()


class _Semaphore:
    """A counting semaphore, as :class:`threading.Semaphore`; a wait on a fiber suspends it."""

    def __init__(self, value: int = 1) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._cond = _Condition(_Lock())
        self._value: int = value

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} object value={self._value}>"

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take one unit, waiting for a release if none is left; False if that times out."""
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        acquired = False
        end_time = None
        with self._cond:
            while self._value == 0:
                if not blocking:
                    break
                if timeout is not None:
                    if end_time is None:
                        end_time = _time.monotonic() + timeout
                    else:
                        timeout = end_time - _time.monotonic()
                        if timeout <= 0:
                            break
                self._cond.wait(timeout)
            else:
                self._value -= 1
                acquired = True
        return acquired

    def release(self, n: int = 1) -> None:
        """Give back ``n`` units, waking up to ``n`` waiters."""
        if n < 1:
            raise ValueError("n must be one or more")
        with self._cond:
            self._value += n
            self._cond.notify(n)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class _BoundedSemaphore(_Semaphore):
    """A semaphore that may not be released above its initial value, as the standard one."""

    def __init__(self, value: int = 1) -> None:
        super().__init__(value)
        self._initial_value = value

    def __repr__(self) -> str:
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} object "
            f"value={self._value}/{self._initial_value}>"
        )

    def release(self, n: int = 1) -> None:
        """Give back ``n`` units; ValueError if that exceeds the initial value."""
        if n < 1:
            raise ValueError("n must be one or more")
        with self._cond:
            if self._value + n > self._initial_value:
                raise ValueError("Semaphore released too many times")
            self._value += n
            self._cond.notify(n)


class _Event:
    """An event flag, as :class:`threading.Event`; ``wait`` on a fiber suspends it."""

    def __init__(self) -> None:
        self._cond = _Condition(_Lock())
        self._flag = False

    def __repr__(self) -> str:
        state = "set" if self._flag else "unset"
        return f"<{type(self).__module__}.{type(self).__qualname__} object [{state}]>"

    def _at_fork_reinit(self) -> None:
        self._cond = _Condition(_Lock())

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._flag

    def isSet(self) -> bool:  # noqa: N802  (the standard deprecated alias)
        """Deprecated alias of :meth:`is_set`."""
        import warnings

        warnings.warn(
            "isSet() is deprecated, use is_set() instead", DeprecationWarning, stacklevel=2
        )
        return self.is_set()

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def clear(self) -> None:
        """Clear the flag."""
        with self._cond:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set or ``timeout`` passes; return the flag."""
        with self._cond:
            signaled = self._flag
            if not signaled:
                signaled = self._cond.wait(timeout)
            return signaled


class _Barrier(_std.Barrier):
    """The standard :class:`threading.Barrier`, on this module's ``Condition``."""

    def __init__(self, parties: int, action: Any = None, timeout: float | None = None) -> None:
        super().__init__(parties, action, timeout)
        self._cond = _Condition(_Lock())


# The public names, bound to this module's classes (to type checkers they are the standard ones,
# whose interface they have).
for _public in (_Lock, _RLock, _Condition, _Semaphore, _BoundedSemaphore, _Event, _Barrier):
    _public.__name__ = _public.__qualname__ = _public.__name__.lstrip("_")
Lock = _Lock  # type: ignore[misc, assignment]
RLock = _RLock  # type: ignore[misc, assignment]
Condition = _Condition  # type: ignore[misc, assignment]
Semaphore = _Semaphore  # type: ignore[misc, assignment]
BoundedSemaphore = _BoundedSemaphore  # type: ignore[misc, assignment]
Event = _Event  # type: ignore[misc, assignment]
Barrier = _Barrier  # type: ignore[misc]
del _public

copy_standard_names(_std, globals())
