"""The soak's tasks: random plans, the sync code that runs them, the drivers that await
them, and the model of what each must produce.

A *plan* is drawn from a seeded ``random.Random`` and names everything a task does: how
deep its sync code recurses before working, each step (an ``awaitlet()`` of a sleep, a
future, a queue, a lock, a nested ``async_def``, a generator or context manager that
switches, ...), how it ends (returns, raises on either side, blocks until cancelled or
timed out, suppresses the cancellation and goes on) and how the driver awaits it (plain
``await``, a Task, ``Task.cancel``, ``asyncio.timeout``, ``wait_for``, or abandoning the
suspended coroutine). :func:`model` computes, from the plan alone, the tokens the sync
code must record and the outcome; :func:`drive` runs the plan and compares. Every frame
the sync code enters is counted when it leaves, so a ``finally`` that runs twice or never
is reported too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from awaitlet import async_def, awaitlet

HAS_TIMEOUT = sys.version_info >= (3, 11)

#: Nesting levels of ``async_def`` inside ``async_def`` (0: the task's own).
MAX_LEVEL = 2
#: A sleep that only a cancellation ends.
BLOCK_SECONDS = 3600.0
#: A timeout that must not fire (the awaited work takes milliseconds).
GENEROUS_TIMEOUT = 120.0
ABANDON_POINT = "abandon point"

#: One context variable per nesting level: each level's sync code sets its own.
LEVEL_VARS = [contextvars.ContextVar(f"soak_level_{level}") for level in range(MAX_LEVEL + 2)]
#: Set by coroutines the sync code awaits, read back by the sync code.
BACK_VAR: contextvars.ContextVar[int] = contextvars.ContextVar("soak_back")


class SoakError(Exception):
    """Raised on purpose by a plan (an ``Exception``)."""


class SoakBaseError(BaseException):
    """Raised on purpose by a plan (a ``BaseException`` that is not an ``Exception``)."""


ERRORS: dict[str, type[BaseException]] = {"SoakError": SoakError, "SoakBaseError": SoakBaseError}

# Steps that complete without the event loop (usable before an abandon point).
IMMEDIATE_KINDS = ("immediate", "raise_caught")
PLAIN_KINDS = (
    "sleep",
    "sleep0",
    "future",
    "future_error",
    "queue",
    "lock",
    "immediate",
    "raise_caught",
    "generator",
    "cm",
    "cm_gen",
    "agen",
    "ctxvar",
)
NESTED_KINDS = ("nested", "coro_nested", "abandon")
# Steps that run a timeout of their own; on 3.10 and 3.11 ``wait_for`` can lose a
# cancellation that arrives as its inner task completes (a CPython bug), so plans that
# an outer cancellation may hit at any moment leave these out.
TIMEOUT_KINDS = ("timeout_fires", "timeout_ok", "wait_for_fires", "wait_for_ok")

# How the driver awaits the task, and the ends a plan of that mode can have.
MODE_ENDS: dict[str, tuple[str, ...]] = {
    "await": ("return", "return", "raise_uncaught", "sync_raise"),
    "task": ("return", "return", "raise_uncaught", "sync_raise"),
    "timeout_ok": ("return", "raise_uncaught", "sync_raise"),
    "wait_for_ok": ("return", "raise_uncaught", "sync_raise"),
    "cancel_at_block": ("block", "block_suppress"),
    "timeout_at_block": ("block", "block_suppress"),
    "wait_for_block": ("block", "block_suppress"),
    "cancel_random": ("return", "raise_uncaught", "sync_raise"),
    "abandon": ("abandon",),
}
MODE_WEIGHTS = {
    "await": 20,
    "task": 15,
    "timeout_ok": 6,
    "wait_for_ok": 6,
    "cancel_at_block": 12,
    "timeout_at_block": 10,
    "wait_for_block": 8,
    "cancel_random": 13,
    "abandon": 10,
}
#: Modes whose outcome the plan decides alone (the others race a timer against the work).
DETERMINISTIC_MODES = {"await", "task", "timeout_ok", "wait_for_ok", "cancel_at_block"} | (
    {"timeout_at_block"} if HAS_TIMEOUT else set()
)
#: Modes where a cancellation may land anywhere in the sync code.
INTERRUPTED_ANYWHERE = {"cancel_random", "wait_for_block"} | (
    set() if HAS_TIMEOUT else {"timeout_at_block"}
)


@dataclass(frozen=True)
class Spec:
    """What one sync function does: recurse ``depth`` frames, run ``steps``, then end."""

    depth: int
    steps: tuple[Step, ...]
    end: str  # return | raise_uncaught | sync_raise | block | block_suppress | abandon
    value: int
    error: str = "SoakError"
    # After a suppressed cancellation: steps the sync code goes on with.
    tail: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Step:
    kind: str
    value: int
    count: int = 0
    delay: float = 0.0
    child: Spec | None = None


@dataclass(frozen=True)
class Plan:
    mode: str
    spec: Spec
    # cancel_random: seconds until the cancel; wait_for_block: the timeout.
    delay: float = 0.0


# --- drawing plans ---------------------------------------------------------------------


def make_plan(rng: random.Random) -> Plan:
    mode = rng.choices(list(MODE_WEIGHTS), weights=list(MODE_WEIGHTS.values()))[0]
    allow_timeouts = mode not in {"cancel_random", "wait_for_block", "timeout_at_block"}
    end = rng.choice(MODE_ENDS[mode])
    if end == "abandon":
        spec = _abandon_spec(rng, depth=rng.randint(0, 20))
    else:
        spec = _spec(rng, 0, end, allow_timeouts, max_depth=24)
    delay = 0.0
    if mode == "cancel_random":
        delay = rng.uniform(0.0, 0.03)
    elif mode == "wait_for_block":
        delay = rng.uniform(0.001, 0.03)
    return Plan(mode, spec, delay)


def _spec(
    rng: random.Random, level: int, end: str, allow_timeouts: bool, max_depth: int = 6
) -> Spec:
    steps = tuple(_step(rng, level, allow_timeouts) for _ in range(rng.randint(0, 6)))
    tail: tuple[Step, ...] = ()
    if end == "block_suppress":
        tail = tuple(_step(rng, level, False) for _ in range(rng.randint(0, 3)))
    return Spec(
        depth=rng.randint(0, max_depth),
        steps=steps,
        end=end,
        value=rng.randrange(1 << 30),
        error=rng.choice(list(ERRORS)),
        tail=tail,
    )


def _abandon_spec(rng: random.Random, depth: int) -> Spec:
    steps = tuple(
        Step(rng.choice(IMMEDIATE_KINDS), rng.randrange(1 << 30)) for _ in range(rng.randint(0, 3))
    )
    return Spec(depth=depth, steps=steps, end="abandon", value=rng.randrange(1 << 30))


def _step(rng: random.Random, level: int, allow_timeouts: bool) -> Step:
    kinds = list(PLAIN_KINDS)
    if level < MAX_LEVEL:
        kinds += NESTED_KINDS
        if allow_timeouts:
            kinds += TIMEOUT_KINDS
    kind = rng.choice(kinds)
    value = rng.randrange(1 << 30)
    if kind in ("nested", "coro_nested"):
        end = rng.choice(("return", "return", "raise_uncaught", "sync_raise"))
        return Step(kind, value, child=_spec(rng, level + 1, end, allow_timeouts))
    if kind in ("timeout_fires", "wait_for_fires"):
        child = Spec(depth=rng.randint(0, 6), steps=(), end="block", value=value)
        return Step(kind, value, delay=rng.uniform(0.0005, 0.005), child=child)
    if kind in ("timeout_ok", "wait_for_ok"):
        return Step(kind, value, child=_spec(rng, level + 1, "return", allow_timeouts))
    if kind == "abandon":
        return Step(kind, value, child=_abandon_spec(rng, depth=rng.randint(0, 6)))
    if kind in ("generator", "agen"):
        total = rng.randint(0, 4)
        return Step(kind, value, count=total, delay=float(rng.randint(0, total)))
    return Step(kind, value, delay=rng.choice((0.0, 0.0, 0.0005, 0.002, 0.005)))


# --- the model -------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    tokens: tuple[Any, ...]
    outcome: str  # return | raise | block (ends only by a cancellation)


def model(spec: Spec) -> Expected:
    tokens = [_step_token(step) for step in spec.steps]
    if spec.end == "block_suppress":
        tokens.append(("suppressed", spec.value))
        tokens.extend(_step_token(step) for step in spec.tail)
        return Expected(tuple(tokens), "return")
    outcome = {
        "return": "return",
        "raise_uncaught": "raise",
        "sync_raise": "raise",
        "block": "block",
        "abandon": "block",
    }[spec.end]
    return Expected(tuple(tokens), outcome)


def _step_token(step: Step) -> Any:
    kind, value = step.kind, step.value
    if kind in ("future_error", "raise_caught"):
        return ("caught", kind, value)
    if kind == "generator":
        return (kind, value, sum(range(int(step.delay))))
    if kind == "agen":
        return (kind, value, sum(range(step.count)))
    if kind in ("nested", "coro_nested"):
        assert step.child is not None
        child = model(step.child)
        if child.outcome == "raise":
            return (kind + "_raised", value, step.child.error, step.child.value, child.tokens)
        return (kind, value, child.tokens)
    if kind in ("timeout_fires", "wait_for_fires"):
        return (kind, value)
    if kind in ("timeout_ok", "wait_for_ok"):
        assert step.child is not None
        return (kind, value, model(step.child).tokens)
    if kind == "abandon":
        assert step.child is not None
        return (kind, value, model(step.child).tokens)
    return (kind, value)


# --- shared state ----------------------------------------------------------------------


@dataclass
class RoundState:
    """What the tasks of one round (one event loop) share."""

    lock: asyncio.Lock
    lock_holder: object = None
    background: set[asyncio.Future[Any]] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    ops: int = 0
    # --inject: a deliberate fault, to show that the checks catch it.
    inject: str = ""


@dataclass
class TaskState:
    """One task's record: what its sync code did, checked against the model."""

    round: RoundState
    label: str
    tokens: list[Any] = field(default_factory=list)
    # How many times each entered frame (or generator, context manager) finished.
    finals: list[int] = field(default_factory=list)
    raised: BaseException | None = None
    ctx_value: int | None = None
    reached: Callable[[], None] | None = None
    generator_exits: int = 0
    corrupt: bool = False

    def fail(self, message: str) -> None:
        self.round.failures.append(f"{self.label}: {message}")

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.fail(message)

    def enter(self) -> int:
        self.finals.append(0)
        return len(self.finals) - 1

    def leave(self, frame: int) -> None:
        if self.corrupt and self.round.inject == "skip-finally":
            return
        self.finals[frame] += 1


# --- the sync code ---------------------------------------------------------------------


def run_spec(task: TaskState, spec: Spec, level: int, tokens: list[Any]) -> tuple[Any, ...]:
    """The sync function each ``async_def`` runs: recurse, then do the steps."""
    frame = task.enter()
    try:
        if spec.depth > 0:
            return run_spec(task, _shallower(spec), level, tokens)
        return _run_steps(task, spec, level, tokens)
    finally:
        task.leave(frame)


def _shallower(spec: Spec) -> Spec:
    return Spec(spec.depth - 1, spec.steps, spec.end, spec.value, spec.error, spec.tail)


def run_top(task: TaskState, spec: Spec) -> tuple[Any, ...]:
    return run_spec(task, spec, 0, task.tokens)


def _run_steps(task: TaskState, spec: Spec, level: int, tokens: list[Any]) -> tuple[Any, ...]:
    for step in spec.steps:
        tokens.append(_run_step(task, step, level))
        task.round.ops += 1
    if spec.end == "return":
        return tuple(tokens)
    if spec.end == "raise_uncaught":
        error = ERRORS[spec.error](spec.value)
        task.raised = error
        awaitlet(_raiser(error))
        task.fail("awaitlet() of a raising coroutine returned")
        return tuple(tokens)
    if spec.end == "sync_raise":
        error = ERRORS[spec.error](spec.value)
        task.raised = error
        raise error
    if spec.end == "abandon":
        try:
            awaitlet(_AbandonPoint())
        except GeneratorExit:
            task.generator_exits += 1
            raise
        task.fail("an abandoned coroutine was resumed")
        return tuple(tokens)
    # block / block_suppress: only a cancellation ends the sleep.
    if task.reached is not None and level == 0:
        task.reached()
    try:
        awaitlet(asyncio.sleep(BLOCK_SECONDS))
    except asyncio.CancelledError:
        if spec.end != "block_suppress":
            raise
        tokens.append(("suppressed", spec.value))
    else:
        task.fail("a blocking sleep returned")
    for step in spec.tail:
        tokens.append(_run_step(task, step, level))
        task.round.ops += 1
    return tuple(tokens)


def _run_step(task: TaskState, step: Step, level: int) -> Any:
    kind, value = step.kind, step.value
    if task.corrupt and task.round.inject == "wrong-result":
        value += 1
    if kind == "sleep":
        return (kind, awaitlet(asyncio.sleep(step.delay, result=value)))
    if kind == "sleep0":
        return (kind, awaitlet(asyncio.sleep(0, result=value)))
    if kind == "immediate":
        return (kind, awaitlet(_returns(value)))
    if kind == "future":
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(step.delay, _resolve, future, value)
        return (kind, awaitlet(future))
    if kind == "future_error":
        future = asyncio.get_running_loop().create_future()
        error = SoakError(value)
        asyncio.get_running_loop().call_later(step.delay, _reject, future, error)
        try:
            awaitlet(future)
        except SoakError as caught:
            task.check(caught is error, "a future's exception arrived as another object")
            return ("caught", kind, caught.args[0])
        task.fail("awaitlet() of a failed future returned")
        return None
    if kind == "raise_caught":
        error = SoakError(value)
        try:
            awaitlet(_raiser(error))
        except SoakError as caught:
            task.check(caught is error, "a coroutine's exception arrived as another object")
            return ("caught", kind, caught.args[0])
        task.fail("awaitlet() of a raising coroutine returned")
        return None
    if kind == "queue":
        queue: asyncio.Queue[int] = asyncio.Queue()
        producer = asyncio.ensure_future(_produce(queue, value, step.delay))
        task.round.background.add(producer)
        producer.add_done_callback(task.round.background.discard)
        return (kind, awaitlet(queue.get()))
    if kind == "lock":
        return (kind, _locked_step(task, value))
    if kind == "generator":
        return (kind, value, _consume_generator(task, step))
    if kind == "agen":
        return (kind, value, _consume_async_generator(task, step.count))
    if kind == "cm":
        with _SwitchingContextManager(task) as entered:
            task.check(entered.task is task, "__enter__ returned another object")
            awaitlet(asyncio.sleep(step.delay))
        return (kind, value)
    if kind == "cm_gen":
        with _switching_context(task, value) as entered:
            awaitlet(asyncio.sleep(step.delay))
        return (kind, entered)
    if kind == "ctxvar":
        return (kind, _context_step(task, level, value))
    if kind in ("nested", "coro_nested"):
        return _nested_step(task, step, level)
    if kind in TIMEOUT_KINDS:
        return _timeout_step(task, step, level)
    if kind == "abandon":
        return _abandon_step(task, step, level)
    raise AssertionError(f"unknown step {kind}")


async def _returns(value: Any) -> Any:
    return value


async def _raiser(error: BaseException) -> None:
    raise error


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _reject(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


async def _produce(queue: asyncio.Queue[int], value: int, delay: float) -> None:
    await asyncio.sleep(delay)
    await queue.put(value)


def _locked_step(task: TaskState, value: int) -> int:
    state = task.round
    awaitlet(state.lock.acquire())
    try:
        task.check(state.lock_holder is None, "two tasks inside one asyncio.Lock")
        state.lock_holder = task
        awaitlet(asyncio.sleep(0))
        task.check(state.lock_holder is task, "another task entered a held asyncio.Lock")
    finally:
        state.lock_holder = None
        state.lock.release()
    return value


def _switching_generator(task: TaskState, count: int) -> Iterator[int]:
    frame = task.enter()
    try:
        for index in range(count):
            yield awaitlet(asyncio.sleep(0, result=index))
    finally:
        task.leave(frame)


def _consume_generator(task: TaskState, step: Step) -> int:
    """Takes some of a generator's items, switching while it is suspended, then closes it."""
    generator = _switching_generator(task, step.count)
    total = 0
    try:
        for _ in range(int(step.delay)):
            total += next(generator)
            awaitlet(asyncio.sleep(0))
    finally:
        generator.close()
    return total


async def _async_generator(task: TaskState, count: int) -> Any:
    frame = task.enter()
    try:
        for index in range(count):
            await asyncio.sleep(0)
            yield index
    finally:
        task.leave(frame)


def _consume_async_generator(task: TaskState, count: int) -> int:
    generator = _async_generator(task, count)
    total = 0
    try:
        for _ in range(count):
            total += awaitlet(generator.__anext__())
        try:
            awaitlet(generator.__anext__())
        except StopAsyncIteration:
            pass
        else:
            task.fail("an async generator yielded too many items")
    finally:
        awaitlet(generator.aclose())
    return total


class _SwitchingContextManager:
    def __init__(self, task: TaskState) -> None:
        self.task = task
        self.frame = -1

    def __enter__(self) -> _SwitchingContextManager:
        self.frame = self.task.enter()
        try:
            awaitlet(asyncio.sleep(0))
        except BaseException:
            self.task.leave(self.frame)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            awaitlet(asyncio.sleep(0))
        finally:
            self.task.leave(self.frame)


@contextlib.contextmanager
def _switching_context(task: TaskState, value: int) -> Iterator[int]:
    frame = task.enter()
    try:
        awaitlet(asyncio.sleep(0))
        yield value
        awaitlet(asyncio.sleep(0))
    finally:
        task.leave(frame)


def _context_step(task: TaskState, level: int, value: int) -> int:
    """A context variable set on one side is seen on the other, both ways."""
    LEVEL_VARS[level].set(value)
    if level == 0:
        task.ctx_value = value
    seen = awaitlet(_see_and_set(LEVEL_VARS[level], value))
    task.check(seen == value, f"the awaited coroutine saw {seen!r}, not {value!r}")
    back = BACK_VAR.get(None)
    task.check(back == value + 1, f"the sync code saw {back!r} set by the coroutine")
    return value


async def _see_and_set(var: contextvars.ContextVar[int], value: int) -> int | None:
    await asyncio.sleep(0)
    BACK_VAR.set(value + 1)
    return var.get(None)


async def _await_child(task: TaskState, spec: Spec, level: int, tokens: list[Any]) -> Any:
    await asyncio.sleep(0)
    return await async_def(run_spec, task, spec, level, tokens)


def _nested_step(task: TaskState, step: Step, level: int) -> Any:
    assert step.child is not None
    tokens: list[Any] = []
    if step.kind == "nested":
        awaitable = async_def(run_spec, task, step.child, level + 1, tokens)
    else:
        awaitable = _await_child(task, step.child, level + 1, tokens)
    try:
        return (step.kind, step.value, awaitlet(awaitable))
    except (SoakError, SoakBaseError) as caught:
        task.check(caught is task.raised, f"a nested async_def raised another object: {caught!r}")
        return (
            step.kind + "_raised",
            step.value,
            type(caught).__name__,
            caught.args[0],
            tuple(tokens),
        )


async def _with_timeout(kind: str, seconds: float, awaitable: Any) -> Any:
    if kind.startswith("timeout") and HAS_TIMEOUT:
        async with asyncio.timeout(seconds):  # type: ignore[attr-defined]
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


def _timeout_step(task: TaskState, step: Step, level: int) -> Any:
    assert step.child is not None
    if step.kind.endswith("_fires"):
        try:
            child = async_def(run_spec, task, step.child, level + 1, [])
            awaitlet(_with_timeout(step.kind, step.delay, child))
        except asyncio.TimeoutError:
            return (step.kind, step.value)
        task.fail(f"{step.kind}: the timeout did not fire")
        return None
    awaitable = async_def(run_spec, task, step.child, level + 1, [])
    return (step.kind, step.value, awaitlet(_with_timeout(step.kind, GENEROUS_TIMEOUT, awaitable)))


class _AbandonPoint:
    """Hands :data:`ABANDON_POINT` to whoever drives the coroutine by hand."""

    def __await__(self) -> Any:
        return (yield ABANDON_POINT)


def _abandon_step(task: TaskState, step: Step, level: int) -> Any:
    """Starts a coroutine by hand from the sync code, then drops it while it is suspended."""
    assert step.child is not None
    tokens: list[Any] = []
    first_frame = len(task.finals)
    exits = task.generator_exits
    coro = async_def(run_spec, task, step.child, level + 1, tokens)
    yielded = coro.send(None)
    task.check(yielded == ABANDON_POINT, f"an abandoned coroutine yielded {yielded!r}")
    del coro  # the last reference: the coroutine is closed now, not by the collector
    _check_abandoned(task, first_frame, exits)
    return (step.kind, step.value, tuple(tokens))


def _check_abandoned(task: TaskState, first_frame: int, exits: int) -> None:
    task.check(
        task.generator_exits == exits + 1,
        "dropping a suspended coroutine did not raise GeneratorExit in its sync code once",
    )
    unfinished = [count for count in task.finals[first_frame:] if count != 1]
    task.check(
        not unfinished, f"dropping a suspended coroutine ran finally blocks {unfinished} times"
    )


# --- drivers ---------------------------------------------------------------------------


async def _in_task(task: TaskState, spec: Spec) -> Any:
    """Awaits the sync code from the task's own coroutine, then checks the context the two
    shared."""
    try:
        return await async_def(run_top, task, spec)
    finally:
        seen = LEVEL_VARS[0].get(None)
        task.check(
            seen == task.ctx_value,
            f"after the sync code set {task.ctx_value!r} the task sees {seen!r}",
        )


async def drive(state: RoundState, label: str, plan: Plan, corrupt: bool = False) -> None:
    """Runs one plan and records every disagreement with the model in ``state.failures``."""
    task = TaskState(state, label, corrupt=corrupt)
    try:
        outcome, payload = await _run_mode(task, plan)
    except BaseException as error:  # noqa: BLE001 - a soak failure, reported below
        task.fail(f"driver raised {error!r}")
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        return
    state.ops += 1
    _verify(task, plan, outcome, payload)


async def _run_mode(task: TaskState, plan: Plan) -> tuple[str, Any]:
    mode, spec = plan.mode, plan.spec
    loop = asyncio.get_running_loop()
    if mode == "abandon":
        return _abandon_from_the_loop(task, spec)
    if mode == "await":
        return await _outcome(_in_task(task, spec))
    if mode == "task":
        return await _outcome(asyncio.ensure_future(_in_task(task, spec)))
    if mode == "timeout_ok":
        return await _outcome(_with_timeout("timeout", GENEROUS_TIMEOUT, _in_task(task, spec)))
    if mode == "wait_for_ok":
        return await _outcome(asyncio.wait_for(_in_task(task, spec), GENEROUS_TIMEOUT))
    if mode == "cancel_at_block":
        reached = asyncio.Event()
        task.reached = reached.set
        running = asyncio.ensure_future(_in_task(task, spec))
        waiter = asyncio.ensure_future(reached.wait())
        await asyncio.wait({running, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not reached.is_set():
            waiter.cancel()
            task.fail("the task finished before it reached its blocking sleep")
        running.cancel()
        return await _outcome(running)
    if mode == "timeout_at_block" and HAS_TIMEOUT:
        try:
            async with asyncio.timeout(None) as timeout:  # type: ignore[attr-defined]
                task.reached = lambda: timeout.reschedule(loop.time() + 0.001)
                return await _outcome(_in_task(task, spec), inside_timeout=True)
        except TimeoutError:
            return ("timeout", None)
    if mode in ("timeout_at_block", "wait_for_block"):
        return await _outcome(asyncio.wait_for(_in_task(task, spec), plan.delay or 0.005))
    if mode == "cancel_random":
        running = asyncio.ensure_future(_in_task(task, spec))
        loop.call_later(plan.delay, running.cancel)
        return await _outcome(running)
    raise AssertionError(f"unknown mode {mode}")


async def _outcome(awaitable: Any, inside_timeout: bool = False) -> tuple[str, Any]:
    """What awaiting ``awaitable`` gave: ("return", value), ("raise", error), ("cancelled",
    None) or ("timeout", None)."""
    try:
        return ("return", await awaitable)
    except asyncio.TimeoutError:
        return ("timeout", None)
    except asyncio.CancelledError:
        if inside_timeout:
            # Inside asyncio.timeout: the block turns this into TimeoutError on its exit.
            raise
        if isinstance(awaitable, asyncio.Future) and awaitable.cancelled():
            return ("cancelled", None)
        raise
    except (SoakError, SoakBaseError) as error:
        return ("raise", error)


def _abandon_from_the_loop(task: TaskState, spec: Spec) -> tuple[str, Any]:
    """Starts the coroutine by hand on the thread's own stack and drops it suspended."""
    coro = async_def(run_top, task, spec)
    yielded = coro.send(None)
    task.check(yielded == ABANDON_POINT, f"an abandoned coroutine yielded {yielded!r}")
    del coro  # the last reference: the coroutine is closed now, not by the collector
    _check_abandoned(task, 0, 0)
    return ("abandoned", None)


def _verify(task: TaskState, plan: Plan, outcome: str, payload: Any) -> None:
    expected = model(plan.spec)
    tokens = tuple(task.tokens)
    unfinished = [index for index, count in enumerate(task.finals) if count != 1]
    task.check(
        not unfinished,
        f"{len(unfinished)} of {len(task.finals)} frames did not finish exactly once "
        f"(counts {[task.finals[index] for index in unfinished[:5]]})",
    )
    if plan.mode == "abandon":
        task.check(tokens == expected.tokens, f"tokens {tokens!r}, expected {expected.tokens!r}")
        return
    interrupted = _interrupted_outcome(plan.mode)
    if _matches_completion(task, plan.spec, expected, interrupted, outcome, payload, tokens):
        return
    if plan.mode in DETERMINISTIC_MODES or outcome != interrupted:
        task.fail(
            f"mode {plan.mode}: got {outcome} {payload!r} with tokens {tokens!r}; "
            f"expected {_describe(expected, plan.mode)} with tokens {expected.tokens!r}"
        )
        return
    # Interrupted before the work was done: what ran must be the start of the plan.
    suppressed = ("suppressed", plan.spec.value)
    task.check(
        tokens == expected.tokens[: len(tokens)] and suppressed not in tokens,
        f"mode {plan.mode}: interrupted with tokens {tokens!r}, not a start of {expected.tokens!r}",
    )


def _matches_completion(
    task: TaskState,
    spec: Spec,
    expected: Expected,
    interrupted: str,
    outcome: str,
    payload: Any,
    tokens: tuple[Any, ...],
) -> bool:
    """Whether the task ended exactly as the plan says when nothing interrupts it early."""
    if tokens != expected.tokens:
        return False
    if expected.outcome == "return":
        return outcome == "return" and payload == expected.tokens
    if expected.outcome == "raise":
        return (
            outcome == "raise"
            and payload is task.raised
            and type(payload).__name__ == spec.error
            and payload.args == (spec.value,)
            and payload.__context__ is None
        )
    # A blocking end: only the driver's cancellation or timeout ends it.
    return outcome == interrupted


def _interrupted_outcome(mode: str) -> str:
    return "cancelled" if mode in ("cancel_at_block", "cancel_random") else "timeout"


def _describe(expected: Expected, mode: str) -> str:
    return _interrupted_outcome(mode) if expected.outcome == "block" else expected.outcome
