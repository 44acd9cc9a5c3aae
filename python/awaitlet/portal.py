"""Greenback-style portals on awaitlet's fibers.

``await ensure_portal()`` in an asyncio or Trio task gives that task a *portal*: from then
on, :func:`await_` works in synchronous code anywhere below the task, at any depth, with
no wrapper around the sync code.  This is the API of the ``greenback`` package, built on
:func:`~awaitlet.async_def` and :func:`~awaitlet.awaitlet` instead of greenlet.

How: the task's coroutine is replaced by an ``async_def()`` coroutine whose sync function
(:func:`_run_steps`) drives the original coroutine step by step (in the native
``_portal_drive``), on one fiber for the task's whole life.  Each value the original
coroutine yields to the event loop is handed to the task by suspending the fiber, and what
the task sends (or throws) back is sent into the original coroutine.  Sync code that the
original coroutine calls runs on that same fiber, so ``await_(aw)`` there steps ``aw`` the
same way, from where it is called.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import contextvars
import importlib
import sys
import types
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from typing import Any, NoReturn, TypeVar, cast

from ._awaitlet import _portal_drive, _TaskCoroField, async_def, awaitlet

__all__ = [
    "AutoPortalInstrument",
    "await_",
    "bestow_portal",
    "ensure_portal",
    "has_portal",
    "portals_for_children",
    "portals_for_tree",
    "with_portal_run",
    "with_portal_run_sync",
    "with_portal_run_tree",
]

_T = TypeVar("_T")

_NO_PORTAL_MESSAGE = (
    "You must create a portal for this task in order to use 'awaitlet.portal.await_()'. "
    "Try 'await awaitlet.portal.ensure_portal()' or "
    "'await awaitlet.portal.with_portal_run(some_fn, *args)'."
)


class _Portal:
    """One task's portal; ``active`` once its steps run on the portal's fiber."""

    __slots__ = ("active", "task")

    def __init__(self, task: object | None, active: bool) -> None:
        self.active = active
        # Weak: the portal runs inside the task, which must stay collectable.  None for a
        # portal made before its task (asyncio's portals for child tasks): it finds its task
        # when it first runs.
        self.task: weakref.ref[Any] | None = None if task is None else weakref.ref(task)

    def close(self) -> None:
        """The portal's fiber is done: its task has it no more."""
        self.active = False
        task = None if self.task is None else self.task()
        if task is not None and _portals.get(task) is self:
            del _portals[task]


# Task -> its portal.  Weak keys: a portal must not keep an abandoned task alive (asyncio
# holds pending tasks weakly, and reports the ones destroyed while pending).
_portals: weakref.WeakKeyDictionary[object, _Portal] = weakref.WeakKeyDictionary()
# The dict under it, for await_()'s lookup without WeakKeyDictionary's Python-level get().
_portal_refs: dict[weakref.ref[object], _Portal] = _portals.data  # type: ignore[attr-defined]

_weak = weakref.ref
_CoroutineType: type[Any] = types.CoroutineType
_CoroutineABC = collections.abc.Coroutine
_get_running_loop = asyncio._get_running_loop
_asyncio_current_task = asyncio.current_task
_py_current_task: Callable[..., Any] | None = getattr(asyncio.tasks, "_py_current_task", None)


def _current_task() -> Any:
    """The running asyncio task or Trio task; RuntimeError if there is none."""
    loop = _get_running_loop()
    if loop is not None:
        task = _asyncio_current_task(loop)
        if task is None and _py_current_task is not None:
            # A pure-Python Task is current only to the pure-Python bookkeeping on 3.14+.
            task = _py_current_task(loop)
        if task is not None:
            return task
    trio_lowlevel = sys.modules.get("trio.lowlevel")
    if trio_lowlevel is not None:
        try:
            return trio_lowlevel.current_task()
        except RuntimeError:
            pass
    if loop is not None:
        raise RuntimeError("No asyncio task is running (called from a callback?)")
    raise RuntimeError("awaitlet.portal needs a running asyncio or Trio task")


def _is_coroutine(candidate: object) -> bool:
    return isinstance(candidate, _CoroutineABC)


def _trio_lowlevel() -> Any:
    """trio.lowlevel, imported only when Trio is in use (and typed loosely: Trio is optional)."""
    return importlib.import_module("trio.lowlevel")


def _library_of(task: object) -> str:
    return "trio" if type(task).__module__.startswith("trio") else "asyncio"


# -- The step loop, on the portal's fiber -------------------------------------------------


@types.coroutine
def _hand_to_task(yielded: Any) -> Generator[Any, Any, Any]:
    """Yield ``yielded`` to the task once; return what it sends, raise what it throws."""
    return (yield yielded)


_READY = "awaitlet.portal ready"


class _DetachPortal(BaseException):
    """Thrown into a portal that is discarded when its task goes on without it."""


def _run_steps(
    portal: _Portal,
    coro: Coroutine[Any, Any, _T],
    primed: bool,
    value: Any = None,
    exception: BaseException | None = None,
) -> _T:
    """The portal's sync function: drive the task's coroutine (see the module doc).

    ``primed``: first yield a marker, so that the task's next send (which may be a value or
    an exception, unlike a coroutine's first send) can be taken as it comes.  Otherwise
    ``value`` or ``exception`` is what to resume ``coro`` with first.
    """
    if primed:
        try:
            value = awaitlet(_hand_to_task(_READY))
        except _DetachPortal:
            portal.close()
            raise
        except GeneratorExit:
            # Closed before its first step: close coro too (a no-op if it has finished).
            portal.close()
            coro.close()
            raise
        except BaseException as raised:
            exception = raised
    if portal.task is None:
        task = _current_task()
        portal.task = weakref.ref(task)
        _portals[task] = portal
        del task
    portal.active = True
    try:
        result: _T = _portal_drive(coro, value, exception, _DetachPortal)
        return result
    finally:
        portal.close()


@types.coroutine
def _next_resumption() -> Generator[Any, Any, tuple[Any, BaseException | None]]:
    """Yield a marker; then give what the task resumes with, sent or thrown."""
    try:
        value = yield _READY
    except (GeneratorExit, _DetachPortal):
        raise
    except BaseException as raised:
        return None, raised
    return value, None


async def _start_on_next_step(portal: _Portal, coro: Coroutine[Any, Any, _T]) -> _T:
    """A portal whose fiber starts at the task's next step, in the task's context.

    For a task whose Context cannot be read (asyncio's C Task before 3.12): a fiber takes
    the Context it is first resumed in, and only the task's own step runs in the task's.
    Costs one coroutine frame per step more than a primed portal.
    """
    value, exception = await _next_resumption()
    return await async_def(_run_steps, portal, coro, False, value, exception)


async def _as_coroutine(awaitable: Awaitable[_T]) -> _T:
    """A coroutine for an awaitable that is not one: the step loop needs send and throw."""
    return await awaitable


# -- Replacing a running task's coroutine -------------------------------------------------


class _InertLoop:
    """What Task.__init__ calls on its loop, for a Task whose step never runs."""

    def get_debug(self) -> bool:
        return False

    def call_soon(self, *args: Any, **kwargs: Any) -> None:
        return None


class _CTaskCoroField:
    """Where the C ``asyncio.Task`` keeps its coroutine (``task_coro``), found once.

    The field is private to asyncio's C module: the native ``_TaskCoroField`` finds its
    offset in a Task created for the purpose with a known coroutine, as the one
    pointer-sized word of the object that points to it, and replaces coroutines there.
    """

    field: _TaskCoroField | None = None
    why_not: str = ""

    @classmethod
    def locate(cls) -> None:
        task_type = asyncio.Task
        if task_type is getattr(asyncio.tasks, "_PyTask", None):
            cls.why_not = "asyncio.Task is the pure-Python Task"
            return

        async def probe() -> None:
            pass  # pragma: no cover - never run: only its identity matters

        coro = probe()
        try:
            task = task_type(coro, loop=_InertLoop())  # type: ignore[arg-type]
        except Exception as error:  # pragma: no cover - depends on the interpreter
            coro.close()
            cls.why_not = f"no Task could be created to find its coroutine field ({error!r})"
            return
        try:
            # A Task that never runs is not worth the "destroyed but pending" log.
            task._log_destroy_pending = False  # type: ignore[attr-defined]
            if task.get_coro() is not coro:  # pragma: no cover - depends on the interpreter
                cls.why_not = "Task.get_coro() does not give the Task's coroutine"
            else:
                cls.field = _TaskCoroField(task, coro)
        except RuntimeError as error:  # pragma: no cover - depends on the interpreter
            cls.why_not = str(error)
        finally:
            coro.close()
            del task

    @classmethod
    def replace(cls, task: Any, old: object, new: object) -> None:
        """Make ``task`` run ``new`` instead of ``old`` (its current coroutine)."""
        if cls.field is None:
            raise RuntimeError(f"cannot give this asyncio Task a portal: {cls.why_not}")
        cls.field.replace(task, old, new)


_CTaskCoroField.locate()


_PY_TASK: type[Any] | None = getattr(asyncio.tasks, "_PyTask", None)
_ASYNCIO_TASK_TYPES: tuple[type[Any], ...] = (asyncio.Task,) + (
    (_PY_TASK,) if _PY_TASK is not None else ()
)


def _set_task_coro(task: Any, old: object, new: object) -> None:
    if _library_of(task) == "trio":
        task.coro = new
        if task.coro is not new:  # pragma: no cover - a Trio that ignores the assignment
            raise RuntimeError("cannot give this Trio task a portal: its coro did not change")
        return
    if _PY_TASK is not None and isinstance(task, _PY_TASK):
        task._coro = new
    elif isinstance(task, asyncio.Task):
        _CTaskCoroField.replace(task, old, new)
    else:  # pragma: no cover - guarded by the caller
        raise RuntimeError(f"cannot give a portal to a task of type {type(task).__qualname__}")
    if task.get_coro() is not new:  # pragma: no cover - guarded by replace()
        raise RuntimeError("replacing the asyncio Task's coroutine failed")


# -- The public API ----------------------------------------------------------------------


def bestow_portal(task: object) -> None:
    """Give ``task`` (an :class:`asyncio.Task` or a Trio task) a portal, as if it had called
    :func:`ensure_portal` itself.

    If ``task`` is the running task, the portal works from its next step on: after it next
    yields to the event loop (``await asyncio.sleep(0)``).  A task that has a portal keeps
    it; calling this again does nothing.

    Raises:
        RuntimeError: ``task`` has finished (an eager task can finish inside
            ``create_task()``), or is of a type whose coroutine cannot be replaced.
    """
    if task in _portals:
        return
    # Typed loosely: an asyncio or Trio task, checked below.
    target: Any = task
    original: Any
    if _library_of(target) == "trio":
        if not isinstance(target, _trio_lowlevel().Task):
            raise RuntimeError(f"cannot give a portal to {target!r}: not a Trio task")
        original = target.coro
    else:
        if not isinstance(target, _ASYNCIO_TASK_TYPES):
            raise RuntimeError(
                f"cannot give a portal to {target!r}: not an asyncio.Task or a Trio task"
            )
        if target.done():
            raise RuntimeError(f"cannot give a portal to {target!r}: it has finished")
        original = target.get_coro()
        if not _is_coroutine(original):
            raise RuntimeError(f"cannot give a portal to {target!r}: it runs no coroutine")
    portal = _Portal(task, active=False)
    # The fiber takes the Context it is first resumed in: that must be the task's.
    try:
        running = _current_task() is task
    except RuntimeError:
        running = False
    context = None if running else _task_context(task)
    replacement: Coroutine[Any, Any, Any]
    if running or context is not None:
        replacement = async_def(_run_steps, portal, original, True)
        # Start it now: it runs up to its first hand-off and takes the task's next resumption.
        first = replacement.send(None) if context is None else context.run(replacement.send, None)
    else:
        replacement = _start_on_next_step(portal, original)
        first = replacement.send(None)
    if first != _READY:  # pragma: no cover - both yield it first
        raise RuntimeError("portal did not start")
    try:
        _set_task_coro(task, original, replacement)
    except BaseException:
        # Detach without closing `original`, which the task still runs.
        with contextlib.suppress(_DetachPortal):
            replacement.throw(_DetachPortal())
        raise
    _portals[task] = portal


def _task_context(task: Any) -> contextvars.Context | None:
    """The Context ``task`` runs its steps in, where it can be read."""
    if _library_of(task) == "trio":
        context: contextvars.Context = task.context
        return context
    get_context = getattr(task, "get_context", None)  # 3.12+
    if get_context is not None:
        context = get_context()
        return context
    return getattr(task, "_context", None)  # the pure-Python Task


async def ensure_portal() -> None:
    """Give the running task a portal, so that :func:`await_` works in sync code below it.

    A task that already has one keeps it.  Like ``await asyncio.sleep(0)`` (or Trio's
    ``checkpoint()``), this always yields to the event loop once, which is a cancellation
    point: the portal is in use when it returns.
    """
    task = _current_task()
    if task not in _portals:
        bestow_portal(task)
    if _library_of(task) == "trio":
        await _trio_lowlevel().checkpoint()
    else:
        await asyncio.sleep(0)


def has_portal(task: object = None) -> bool:
    """Whether ``task`` (an asyncio or Trio task; by default the running one) can use
    :func:`await_`.

    A portal bestowed on the running task does not count until its next step; one bestowed
    on another task counts at once (it is in use before that task runs again).
    """
    try:
        running = _current_task()
    except RuntimeError:
        running = None
    if task is None:
        task = running
        if task is None:
            return False
    portal = _portals.get(task)
    if portal is None:
        return False
    return portal.active or task is not running


def _check_portal_or_refuse(aw: Awaitable[Any]) -> None:
    """await_()'s other cases: Trio, pure-Python tasks, and no usable portal (raise)."""
    try:
        portal = _portals.get(_current_task())
        if portal is None or not portal.active:
            _refuse(portal)
    except BaseException:
        if isinstance(aw, _CoroutineABC):
            aw.close()  # it will never run: no "never awaited" warning
        raise


def _refuse(portal: _Portal | None) -> NoReturn:
    if portal is not None:
        library = _library_of(_current_task())
        raise RuntimeError(
            f"You must yield to the event loop (try 'await {library}.sleep(0)') after "
            "calling 'awaitlet.portal.bestow_portal()' on the current task before using "
            "the portal"
        )
    raise RuntimeError(_NO_PORTAL_MESSAGE)


def await_(aw: Awaitable[_T]) -> _T:
    """Wait for ``aw`` from sync code in a task that has a portal, and return its result.

    ``await_(coro())`` does what ``await coro()`` would, but in an ordinary function, at any
    depth below a task that called :func:`ensure_portal` (or runs under
    :func:`with_portal_run`, :func:`with_portal_run_sync` or :func:`bestow_portal`).
    Exceptions propagate as from ``await``; cancelling the task raises
    :class:`asyncio.CancelledError` (or Trio's ``Cancelled``) here.

    Raises:
        RuntimeError: the running task has no portal (or one bestowed on it that is not in
            use until its next step), or no asyncio or Trio task is running.
    """
    # asyncio's common case first, inline; no reference to the task is kept in this frame,
    # which may wait inside that task.
    loop = _get_running_loop()
    task = None if loop is None else _asyncio_current_task(loop)
    portal = None if task is None else _portal_refs.get(_weak(task))
    task = None
    if portal is None or not portal.active:
        _check_portal_or_refuse(aw)
    # The exact type first: the ABC check is slower, and most awaitables are coroutines.
    adapted = type(aw) is not _CoroutineType and not isinstance(aw, _CoroutineABC)
    coro: Coroutine[Any, Any, _T] = _as_coroutine(aw) if adapted else aw  # type: ignore[assignment]
    # Stepped here, on the portal's fiber, as the task's own coroutine is.
    if not adapted:
        result: _T = _portal_drive(coro, None, None, _DetachPortal)
        return result
    try:
        result = _portal_drive(coro, None, None, _DetachPortal)
    except BaseException as error:
        # Leave _as_coroutine's frame out: the traceback goes from here to `aw`.
        here = error.__traceback__
        if here is None or here.tb_next is None or here.tb_next.tb_next is None:
            raise
        raise error.with_traceback(here.tb_next.tb_next)  # noqa: B904 - the same exception
    return result


async def with_portal_run(
    async_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
) -> _T:
    """``await async_fn(*args, **kwargs)`` with a portal for its duration.

    If the running task has a portal already, this just awaits ``async_fn(...)``.  It adds
    no checkpoint of its own.
    """
    task = _current_task()
    if task in _portals:
        return await async_fn(*args, **kwargs)
    awaitable = async_fn(*args, **kwargs)
    coro = (
        cast(Coroutine[Any, Any, _T], awaitable)
        if isinstance(awaitable, _CoroutineABC)
        else _as_coroutine(awaitable)
    )
    portal = _Portal(task, active=False)
    _portals[task] = portal
    try:
        return await async_def(_run_steps, portal, coro, False)
    finally:
        portal.close()


async def with_portal_run_sync(sync_fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """Call ``sync_fn(*args, **kwargs)`` so that it can use :func:`await_`; give its result.

    If the running task has a portal already, this just calls ``sync_fn``.  It adds no
    checkpoint beyond those of the :func:`await_` calls inside ``sync_fn``.
    """
    task = _current_task()
    if task in _portals:
        return sync_fn(*args, **kwargs)
    portal = _portals[task] = _Portal(task, active=True)
    try:
        return await async_def(sync_fn, *args, **kwargs)
    finally:
        portal.close()


# -- Portals for child tasks (Trio) -------------------------------------------------------


class AutoPortalInstrument:
    """A Trio instrument that gives new tasks a portal where one was asked for.

    :func:`portals_for_children` and :func:`with_portal_run_tree` install it.  Passed to
    ``trio.run(..., instruments=[AutoPortalInstrument()])`` it gives every task of the run
    (system tasks too) a portal.
    """

    def __init__(self) -> None:
        """An instrument that portalizes nothing until told which tasks' children to."""
        # Task -> how many of its child nurseries predate the request: children spawned
        # into those (opened outside the portals_for_children() block) get no portal.
        self.tasks: dict[Any, int] = {}
        self.refs = 0

    def before_run(self) -> None:
        """Passed to ``trio.run()``: portalize the whole run."""
        self.refs = 1
        _instrument_holder().set(self)

    def task_spawned(self, task: Any) -> None:
        """Give ``task`` a portal if its parent asked for its children to have one."""
        nursery = task.parent_nursery
        if nursery is None:  # the init task: seen only when the whole run is portalized
            bestow_portal(task)
            self.tasks[task] = 0
            return
        parent = nursery.parent_task
        depth = self.tasks.get(parent)
        if depth is not None and parent.child_nurseries.index(nursery) >= depth:
            bestow_portal(task)
            self.tasks[task] = 0

    def task_exited(self, task: Any) -> None:
        """Forget ``task``."""
        self.tasks.pop(task, None)


_instrument_run_var: Any = None


def _instrument_holder() -> Any:
    """The Trio RunVar holding the run's AutoPortalInstrument, if one is installed."""
    global _instrument_run_var
    if _instrument_run_var is None:
        _instrument_run_var = _trio_lowlevel().RunVar("awaitlet_portal_instrument", default=None)
    return _instrument_run_var


@contextlib.contextmanager
def portals_for_children() -> Generator[None, None, None]:
    """Give a portal to every task started inside this block, recursively.

    The task that enters it gets none (which is why it is a sync context manager).  Under
    Trio: the tasks spawned into nurseries opened inside the block, and their children.
    Under asyncio: the tasks created inside the block (they inherit its Context), and
    theirs; their coroutine runs inside a portal from its first step, eager tasks included.
    For asyncio this installs a task factory on the loop (wrapping the one it had) for the
    block's duration.

    Raises:
        RuntimeError: neither Trio nor an asyncio loop is running.
    """
    try:
        trio_lowlevel = _trio_lowlevel()
        this_task = trio_lowlevel.current_task()
    except (ImportError, RuntimeError):
        loop = _get_running_loop()
        if loop is None:
            raise RuntimeError(
                "This function is only supported when running under Trio or asyncio"
            ) from None
        with _asyncio_portals_for_children(loop):
            yield
        return
    holder = _instrument_holder()
    instrument: AutoPortalInstrument | None = holder.get()
    if instrument is None:
        instrument = AutoPortalInstrument()
        trio_lowlevel.add_instrument(instrument)
        holder.set(instrument)
    elif this_task in instrument.tasks:
        yield  # an enclosing block already asked for this task's children
        return
    instrument.tasks[this_task] = len(this_task.child_nurseries)
    instrument.refs += 1
    try:
        yield
    finally:
        del instrument.tasks[this_task]
        instrument.refs -= 1
        if instrument.refs == 0:
            holder.set(None)
            trio_lowlevel.remove_instrument(instrument)


# Set (in a Context) inside portals_for_children() on asyncio: tasks created where it is set
# start inside a portal.
_children_get_portals: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "awaitlet.portal children get portals", default=False
)


class _PortalTaskFactory:
    """An asyncio task factory that runs the coroutines of tasks created inside
    portals_for_children() in a portal, then hands them to the loop's previous factory."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.blocks = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        context = kwargs.get("context")
        wanted = (
            context.get(_children_get_portals, False)
            if context is not None
            else _children_get_portals.get()
        )
        if wanted and isinstance(coro, _CoroutineABC):
            coro = async_def(_run_steps, _Portal(None, active=False), coro, False)
        if self.previous is not None:
            return self.previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)


@contextlib.contextmanager
def _asyncio_portals_for_children(
    loop: asyncio.AbstractEventLoop,
) -> Generator[None, None, None]:
    current = loop.get_task_factory()
    factory = current if isinstance(current, _PortalTaskFactory) else _PortalTaskFactory(current)
    if factory is not current:
        loop.set_task_factory(factory)
    factory.blocks += 1
    token = _children_get_portals.set(True)
    try:
        yield
    finally:
        _children_get_portals.reset(token)
        factory.blocks -= 1
        # Put the previous factory back unless someone replaced ours meanwhile.
        if factory.blocks == 0 and loop.get_task_factory() is factory:
            loop.set_task_factory(factory.previous)


@contextlib.asynccontextmanager
async def portals_for_tree() -> AsyncGenerator[None, None]:
    """Give this task, and the tasks spawned into nurseries opened inside, a portal.

    Entering and leaving are schedule points but not cancellation points.  The task's
    portal goes when the block ends (if this block made it).

    Raises:
        RuntimeError: not running under Trio (asyncio cannot take a task's portal away).
    """
    try:
        _trio_lowlevel().current_task()
    except (ImportError, RuntimeError):
        raise RuntimeError("This function is only supported when running under Trio") from None
    with portals_for_children():
        trio_lowlevel = _trio_lowlevel()
        this_task = trio_lowlevel.current_task()
        original = this_task.coro
        portal_is_new = this_task not in _portals
        if portal_is_new:
            bestow_portal(this_task)
        replacement = this_task.coro
        try:
            await trio_lowlevel.cancel_shielded_checkpoint()
            yield
        finally:
            if portal_is_new and this_task.coro is replacement:
                # Put the original back; after this checkpoint the task runs it directly
                # and the portal's fiber, no longer in use, is let go without closing it.
                this_task.coro = original
                await trio_lowlevel.cancel_shielded_checkpoint()
                with contextlib.suppress(_DetachPortal):
                    replacement.throw(_DetachPortal())
            else:
                await trio_lowlevel.cancel_shielded_checkpoint()


async def with_portal_run_tree(
    async_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
) -> _T:
    """``await async_fn(*args, **kwargs)`` with a portal, as are all tasks it spawns.

    Under Trio, tasks spawned into nurseries that ``async_fn`` opens (recursively) get a
    portal too: ``trio.run(with_portal_run_tree, main)`` portalizes a whole run but its
    system tasks.  Under asyncio, the tasks ``async_fn`` creates (recursively) do, as
    :func:`portals_for_children` describes.

    Raises:
        RuntimeError: neither Trio nor an asyncio loop is running.
    """
    with portals_for_children():
        return await with_portal_run(async_fn, *args, **kwargs)
