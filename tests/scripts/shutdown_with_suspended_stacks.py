"""Event loops and interpreters that stop while sync code is suspended in awaitlet().

Usage: shutdown_with_suspended_stacks.py SCENARIO
Prints what the scenario observed, then "<scenario> OK".
"""

import asyncio
import gc
import os
import signal
import sys
import threading
import time

from awaitlet import async_def, awaitlet

SUSPENDED_COUNT = 50

finally_count = 0
kept_alive = []


class Yield:
    def __await__(self):
        return (yield "suspended")


def sleeps_long():
    global finally_count
    try:
        awaitlet(asyncio.sleep(100))
    finally:
        finally_count += 1


def suspends_on_yield():
    try:
        awaitlet(Yield())
    finally:
        pass


async def start_suspended_tasks():
    tasks = [asyncio.create_task(async_def(sleeps_long)) for _ in range(SUSPENDED_COUNT)]
    await asyncio.sleep(0.01)
    return tasks


def asyncio_run_returns():
    asyncio.run(start_suspended_tasks())
    print(f"finally ran {finally_count}")


def loop_closed_with_pending_tasks():
    loop = asyncio.new_event_loop()
    tasks = loop.run_until_complete(start_suspended_tasks())
    loop.close()
    del tasks
    gc.collect()


def loop_closed_and_tasks_kept_until_exit():
    loop = asyncio.new_event_loop()
    kept_alive.extend(loop.run_until_complete(start_suspended_tasks()))
    loop.close()


def loop_left_open_at_exit():
    loop = asyncio.new_event_loop()
    kept_alive.extend(loop.run_until_complete(start_suspended_tasks()))
    kept_alive.append(loop)


def coroutines_in_globals_at_exit():
    for _ in range(SUSPENDED_COUNT):
        coro = async_def(suspends_on_yield)
        coro.send(None)
        kept_alive.append(coro)


def coroutines_in_globals_at_sys_exit():
    coroutines_in_globals_at_exit()
    print("coroutines_in_globals_at_sys_exit OK")
    sys.stdout.flush()
    sys.exit(0)


def sys_exit_inside_sync_code():
    def exits():
        awaitlet(asyncio.sleep(0))
        sys.exit(0)

    async def main():
        kept_alive.extend(await start_suspended_tasks())
        await async_def(exits)

    try:
        asyncio.run(main())
    except SystemExit as exit_request:
        print(f"SystemExit({exit_request.code}) left asyncio.run")
    print(f"finally ran {finally_count}")


def keyboard_interrupt_raised_in_sync_code():
    def interrupts():
        awaitlet(asyncio.sleep(0))
        raise KeyboardInterrupt

    async def main():
        kept_alive.extend(await start_suspended_tasks())
        await async_def(interrupts)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("KeyboardInterrupt left asyncio.run")
    print(f"finally ran {finally_count}")


def sigint_while_sync_code_runs():
    # A process started in the background by a shell inherits SIGINT ignored, and Python
    # then keeps it ignored: install Python's own handler, as an interactive run has.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    events = []

    def interrupted():
        try:
            awaitlet(asyncio.sleep(0))
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                awaitlet(asyncio.sleep(0.01))
        finally:
            events.append("sync finally")

    async def main():
        await async_def(interrupted)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("KeyboardInterrupt left asyncio.run")
    print(f"events {events}")


def daemon_thread_holding_suspended_coroutines():
    ready = threading.Event()

    def hold():
        for _ in range(SUSPENDED_COUNT):
            coro = async_def(suspends_on_yield)
            coro.send(None)
            kept_alive.append(coro)
        ready.set()
        time.sleep(60)

    threading.Thread(target=hold, daemon=True).start()
    ready.wait()


SCENARIOS = {
    "asyncio_run_returns": asyncio_run_returns,
    "loop_closed_with_pending_tasks": loop_closed_with_pending_tasks,
    "loop_closed_and_tasks_kept_until_exit": loop_closed_and_tasks_kept_until_exit,
    "loop_left_open_at_exit": loop_left_open_at_exit,
    "coroutines_in_globals_at_exit": coroutines_in_globals_at_exit,
    "coroutines_in_globals_at_sys_exit": coroutines_in_globals_at_sys_exit,
    "sys_exit_inside_sync_code": sys_exit_inside_sync_code,
    "keyboard_interrupt_raised_in_sync_code": keyboard_interrupt_raised_in_sync_code,
    "sigint_while_sync_code_runs": sigint_while_sync_code_runs,
    "daemon_thread_holding_suspended_coroutines": daemon_thread_holding_suspended_coroutines,
}


if __name__ == "__main__":
    scenario = sys.argv[1]
    SCENARIOS[scenario]()
    print(f"{scenario} OK")
