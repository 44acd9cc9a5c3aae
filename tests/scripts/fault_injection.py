"""Faults from outside delivered while sync code runs on, or is suspended in, a fiber.

Usage: fault_injection.py SCENARIO [VARIANT]
Prints what the scenario observed, one line per event, then "<scenario> OK" where it
gets that far. Scenarios with a VARIANT run the same program with the sync code on
awaitlet's fibers ("awaitlet") or as plain coroutines ("native"), so a test can check
that a fiber changes nothing a thread would see.
"""

import asyncio
import gc
import os
import signal
import sys
import threading
import time
import traceback
import warnings

from _memory import address_space_in_use
from awaitlet import async_def, awaitlet

MiB = 1024 * 1024
events = []
kept_alive = []


class Yield:
    def __await__(self):
        return (yield "suspended")


def say(*parts):
    print(*parts, flush=True)


# --- address space: RLIMIT_AS ------------------------------------------------------------


def _limit_address_space(headroom):
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (address_space_in_use() + headroom, hard))


def _unlimit_address_space():
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _sleeps_and_returns(value):
    awaitlet(asyncio.sleep(0))
    return value


def address_space_too_small_for_the_first_stack():
    """No fiber stack exists yet, and there is no room for one: MemoryError, then, with
    room again, everything works."""
    loop = asyncio.new_event_loop()
    # Warm up everything the attempt needs except a fiber stack.
    loop.run_until_complete(asyncio.sleep(0))
    _limit_address_space(2 * MiB)
    try:
        loop.run_until_complete(async_def(_sleeps_and_returns, "unreachable"))
    except MemoryError:
        outcome = "MemoryError"
    else:
        outcome = "no error"
    finally:
        _unlimit_address_space()
    say(f"with no room: {outcome}")
    say(f"with room again: {loop.run_until_complete(async_def(_sleeps_and_returns, 42))}")
    loop.close()


def _suspends(index):
    try:
        return (index, awaitlet(Yield()))
    finally:
        events.append(index)


def address_space_runs_out_while_stacks_are_suspended():
    """Suspended fibers use up what the address-space limit allows: the next one raises
    MemoryError; the suspended ones still finish, and their stacks serve new fibers."""
    first = async_def(_suspends, -1)
    first.send(None)  # the first region of stacks exists now
    suspended = [first]
    _limit_address_space(48 * MiB)
    error = None
    try:
        for index in range(1_000_000):
            coro = async_def(_suspends, index)
            coro.send(None)
            suspended.append(coro)
    except MemoryError as raised:
        error = raised
    finally:
        _unlimit_address_space()
    say(f"ran out: {type(error).__name__}")
    # The coroutine whose start failed is finished (its sync code never ran).
    finished = 0
    for coro in suspended:
        try:
            coro.send("resumed")
        except StopIteration:
            finished += 1
    say(f"every suspended one finished: {finished == len(suspended) and finished > 1}")
    say(f"every finally ran once: {sorted(events) == list(range(-1, len(suspended) - 1))}")
    suspended.clear()

    async def more():
        return await asyncio.gather(*(async_def(_sleeps_and_returns, i) for i in range(500)))

    say(f"new stacks after that: {asyncio.run(more()) == list(range(500))}")


# --- SIGINT ------------------------------------------------------------------------------


def _send_sigint_when(ready, delay=0.05):
    def send():
        if ready.wait(60):
            time.sleep(delay)
            os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


def spin(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def _where(error):
    return traceback.extract_tb(error.__traceback__)[-1].name


def _record(name, body):
    """Runs body(), logging how it ended as a thread's code would see it."""
    events.append(f"{name} started")
    try:
        body()
        events.append(f"{name} returned")
    except KeyboardInterrupt as error:
        events.append(f"KeyboardInterrupt in {name}, raised in {_where(error)}")
        raise
    except asyncio.CancelledError:
        events.append(f"CancelledError in {name}")
        raise
    finally:
        events.append(f"{name} finally")


# The same code twice: sync functions on fibers, and coroutines.


def busy_sync(ready):
    def body():
        awaitlet(asyncio.sleep(0))
        ready.set()
        spin(60)  # until SIGINT arrives, which is much sooner

    _record("busy code", body)


async def busy_native(ready):
    events.append("busy code started")
    try:
        await asyncio.sleep(0)
        ready.set()
        spin(60)  # until SIGINT arrives, which is much sooner
        events.append("busy code returned")
    except KeyboardInterrupt as error:
        events.append(f"KeyboardInterrupt in busy code, raised in {_where(error)}")
        raise
    finally:
        events.append("busy code finally")


def outer_sync(inner, ready):
    _record("outer code", lambda: awaitlet(async_def(inner, ready)))


async def outer_native(inner, ready):
    events.append("outer code started")
    try:
        await inner(ready)
        events.append("outer code returned")
    except KeyboardInterrupt as error:
        events.append(f"KeyboardInterrupt in outer code, raised in {_where(error)}")
        raise
    finally:
        events.append("outer code finally")


def waits_sync(ready):
    def body():
        asyncio.get_running_loop().call_soon(ready.set)
        awaitlet(asyncio.sleep(30))

    _record("waiting code", body)


async def waits_native(ready):
    events.append("waiting code started")
    try:
        asyncio.get_running_loop().call_soon(ready.set)
        await asyncio.sleep(30)
        events.append("waiting code returned")
    except asyncio.CancelledError:
        events.append("CancelledError in waiting code")
        raise
    finally:
        events.append("waiting code finally")


def _program(kind, variant, ready):
    """The coroutine to run: kind is busy, nested_busy or waiting."""
    if variant == "awaitlet":
        if kind == "busy":
            return async_def(busy_sync, ready)
        if kind == "nested_busy":
            return async_def(outer_sync, busy_sync, ready)
        return async_def(waits_sync, ready)
    if kind == "busy":
        return busy_native(ready)
    if kind == "nested_busy":
        return outer_native(busy_native, ready)
    return waits_native(ready)


def _sigint_with_run_until_complete(kind, variant):
    # A process started in the background inherits SIGINT ignored: install Python's own
    # handler, which raises KeyboardInterrupt in whatever code the main thread runs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    task = loop.create_task(_program(kind, variant, ready))
    _send_sigint_when(ready)
    try:
        loop.run_until_complete(task)
    except KeyboardInterrupt as error:
        events.append(f"KeyboardInterrupt left the loop, raised in {_where(error)}")
    # What asyncio.run does on the way out: cancel what is left and let it finish.
    if not task.done():
        task.cancel()
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            events.append("the task was cancelled")
    elif not task.cancelled() and task.exception() is not None:
        events.append(f"the task failed with {type(task.exception()).__name__}")
    loop.close()
    for event in events:
        say(event)


def sigint_while_sync_code_runs(variant):
    _sigint_with_run_until_complete("busy", variant)


def sigint_while_nested_sync_code_runs(variant):
    _sigint_with_run_until_complete("nested_busy", variant)


def sigint_while_sync_code_is_suspended(variant):
    _sigint_with_run_until_complete("waiting", variant)


def sigint_while_sync_code_is_suspended_in_asyncio_run(variant):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ready = threading.Event()

    async def main():
        await _program("waiting", variant, ready)

    _send_sigint_when(ready)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        events.append("KeyboardInterrupt left asyncio.run")
    for event in events:
        say(event)


# --- sys.exit() ----------------------------------------------------------------------------


def _report_at_exit():
    say(f"at exit: {sorted(events)}")


def sys_exit_from_nested_sync_code_ends_the_process():
    """Nobody catches it: the process exits with the code, after every finally ran."""
    import atexit

    atexit.register(_report_at_exit)

    def sleeps_long(index):
        try:
            awaitlet(asyncio.sleep(100))
        finally:
            events.append(f"other {index} finally")

    def inner():
        try:
            awaitlet(asyncio.sleep(0))
            sys.exit(3)
        finally:
            events.append("inner finally")

    def outer():
        try:
            awaitlet(async_def(inner))
        finally:
            events.append("outer finally")

    async def main():
        others = [asyncio.ensure_future(async_def(sleeps_long, index)) for index in range(3)]
        await asyncio.sleep(0.01)
        kept_alive.append(others)
        await async_def(outer)

    asyncio.run(main())
    say("not reached")


def sys_exit_on_a_fiber_ends_only_its_thread():
    """SystemExit out of a thread's function ends the thread quietly, fiber or not."""

    def exits():
        try:
            awaitlet(asyncio.sleep(0))
            sys.exit(5)
        finally:
            events.append("sync finally")

    def thread_main():
        events.append("thread started")
        asyncio.run(async_def(exits))
        events.append("not reached")

    thread = threading.Thread(target=thread_main)
    thread.start()
    thread.join()
    say(f"thread events: {events}")

    async def main():
        return await async_def(_sleeps_and_returns, "still works")

    say(f"main thread: {asyncio.run(main())}")


# --- fork ----------------------------------------------------------------------------------


def _gathered(count):
    async def main():
        return await asyncio.gather(*(async_def(_sleeps_and_returns, i) for i in range(count)))

    return main()


def fork_from_sync_code_on_a_fiber():
    """The child starts life on a fiber's stack, with other fibers suspended; it runs a new
    event loop with fibers of its own from there."""

    def forks():
        awaitlet(asyncio.sleep(0))
        sys.stdout.flush()
        child = os.fork()
        if child == 0:
            code = 1
            try:
                # Leave the parent's loop behind (3.12+ does this in its fork handler).
                asyncio.events._set_running_loop(None)
                loop = asyncio.new_event_loop()
                results = loop.run_until_complete(_gathered(20))
                loop.close()
                say(f"child on a fiber: {results == list(range(20))}")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        awaitlet(asyncio.sleep(0))
        return os.waitstatus_to_exitcode(status)

    async def main():
        others = [asyncio.ensure_future(async_def(_sleeps_and_returns, i)) for i in range(10)]
        code = await async_def(forks)
        return code, await asyncio.gather(*others)

    code, others = asyncio.run(main())
    say(f"parent: child exit code {code}, others {others == list(range(10))}")


def fork_while_another_thread_holds_suspended_fibers():
    """The thread that owns the suspended fibers does not exist in the child: the child
    drops them (they cannot be finished there), uses asyncio and fibers itself, and exits
    normally."""
    ready = threading.Event()
    loop_box = []
    task_box = []

    def thread_main():
        for index in range(20):
            coro = async_def(_suspends, index)
            coro.send(None)
            kept_alive.append(coro)

        async def hold():
            loop_box.append(asyncio.get_running_loop())
            tasks = [asyncio.ensure_future(async_def(_sleeps_long)) for _ in range(20)]
            task_box.extend(tasks)
            await asyncio.sleep(0)
            ready.set()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(hold())

    thread = threading.Thread(target=thread_main)
    thread.start()
    assert ready.wait(60)
    sys.stdout.flush()
    with warnings.catch_warnings():
        # 3.12+: "This process is multi-threaded, use of fork() may lead to deadlocks".
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:
        kept_alive.clear()
        gc.collect()
        say(f"child: {asyncio.run(_gathered(20)) == list(range(20))}")
        # Exit normally, with the other thread's tasks and fibers still in memory.
        raise SystemExit(0)
    _, status = os.waitpid(child, 0)
    say(f"parent: child exit code {os.waitstatus_to_exitcode(status)}")
    # Finish the thread's work: its tasks are cancelled, its hand-driven coroutines
    # resumed from their own thread.
    loop = loop_box[0]
    loop.call_soon_threadsafe(lambda: [task.cancel() for task in task_box])
    thread.join(60)
    say(f"parent: thread finished: {not thread.is_alive()}")


def _sleeps_long():
    try:
        awaitlet(asyncio.sleep(100))
    finally:
        events.append("long sleep finally")


# --- interpreter exit with fibers in several threads ------------------------------------------

THREADS = 4


def _start_threads(target):
    ready = threading.Barrier(THREADS + 1)
    for index in range(THREADS):
        threading.Thread(target=target, args=(index, ready), daemon=True).start()
    ready.wait(60)


def exit_while_daemon_threads_run_sync_code(activity):
    """Daemon threads are inside sync code on a fiber when the interpreter exits: blocked
    in time.sleep() with the GIL released, or spinning; other fibers of theirs are
    suspended. Such threads end (3.10-3.13) or hang (3.14+) when they next want the GIL."""

    def sync_code(ready):
        awaitlet(asyncio.sleep(0))
        ready.wait(60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if activity == "sleeping":
                time.sleep(0.01)
            else:
                spin(0.01)

    def thread_main(index, ready):
        async def main():
            others = [asyncio.ensure_future(async_def(_sleeps_long)) for _ in range(20)]
            await asyncio.sleep(0)
            kept_alive.append(others)
            await async_def(sync_code, ready)

        asyncio.run(main())

    _start_threads(thread_main)
    time.sleep(0.05)


def exit_while_daemon_threads_wait_in_their_loops():
    """Daemon threads' event loops wait for I/O, every task suspended in sync code."""

    def thread_main(index, ready):
        async def main():
            tasks = [asyncio.ensure_future(async_def(_sleeps_long)) for _ in range(50)]
            await asyncio.sleep(0)
            ready.wait(60)
            await asyncio.gather(*tasks)

        asyncio.run(main())

    _start_threads(thread_main)
    time.sleep(0.05)


def exit_after_threads_ended_leaving_suspended_fibers():
    """Threads that ended long ago left suspended coroutines in globals, hand-driven ones
    and tasks of loops they closed; the main thread exits with them."""

    def thread_main(index):
        for _ in range(20):
            coro = async_def(_suspends, index)
            coro.send(None)
            kept_alive.append(coro)
        loop = asyncio.new_event_loop()
        tasks = [loop.create_task(async_def(_sleeps_long)) for _ in range(20)]
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
        kept_alive.append(tasks)

    threads = [threading.Thread(target=thread_main, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


SCENARIOS = {
    "address_space_too_small_for_the_first_stack": address_space_too_small_for_the_first_stack,
    "address_space_runs_out_while_stacks_are_suspended": (
        address_space_runs_out_while_stacks_are_suspended
    ),
    "sigint_while_sync_code_runs": sigint_while_sync_code_runs,
    "sigint_while_nested_sync_code_runs": sigint_while_nested_sync_code_runs,
    "sigint_while_sync_code_is_suspended": sigint_while_sync_code_is_suspended,
    "sigint_while_sync_code_is_suspended_in_asyncio_run": (
        sigint_while_sync_code_is_suspended_in_asyncio_run
    ),
    "sys_exit_from_nested_sync_code_ends_the_process": (
        sys_exit_from_nested_sync_code_ends_the_process
    ),
    "sys_exit_on_a_fiber_ends_only_its_thread": sys_exit_on_a_fiber_ends_only_its_thread,
    "fork_from_sync_code_on_a_fiber": fork_from_sync_code_on_a_fiber,
    "fork_while_another_thread_holds_suspended_fibers": (
        fork_while_another_thread_holds_suspended_fibers
    ),
    "exit_while_daemon_threads_run_sync_code": exit_while_daemon_threads_run_sync_code,
    "exit_while_daemon_threads_wait_in_their_loops": exit_while_daemon_threads_wait_in_their_loops,
    "exit_after_threads_ended_leaving_suspended_fibers": (
        exit_after_threads_ended_leaving_suspended_fibers
    ),
}


if __name__ == "__main__":
    scenario = sys.argv[1]
    SCENARIOS[scenario](*sys.argv[2:])
    say(f"{scenario} OK")
