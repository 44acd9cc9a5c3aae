"""Suspended async_def coroutines whose last reference goes away in another thread.

Usage: coroutines_crossing_threads.py SCENARIO
Prints "<scenario> OK" when the scenario finished; dropping a coroutine in a
thread other than its owner may leak it, but must not crash.
"""

import gc
import sys
import threading

from awaitlet import async_def, awaitlet


class Yield:
    def __await__(self):
        return (yield "suspended")


def sync_code():
    try:
        return awaitlet(Yield())
    finally:
        pass


def suspended_coroutines(count):
    coroutines = [async_def(sync_code) for _ in range(count)]
    for coro in coroutines:
        assert coro.send(None) == "suspended"
    return coroutines


def run_in_thread(function, *args):
    failures = []

    def target():
        try:
            function(*args)
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


def drop_in_other_thread():
    holder = [suspended_coroutines(50)]

    def drop():
        holder.clear()

    run_in_thread(drop)


def sync_code_in_a_cycle(holder):
    return awaitlet(Yield())


def collect_in_other_thread():
    coroutines = []
    for _ in range(50):
        holder = []
        coro = async_def(sync_code_in_a_cycle, holder)
        holder.append(coro)
        assert coro.send(None) == "suspended"
        coroutines.append(coro)
    holder = [coroutines]
    del coroutines, coro

    def drop_and_collect():
        holder.clear()
        gc.collect()

    run_in_thread(drop_and_collect)
    gc.collect()


def drop_after_owner_thread_exited():
    created = []
    run_in_thread(lambda: created.extend(suspended_coroutines(50)))
    created.clear()
    gc.collect()


def resume_after_owner_thread_exited():
    created = []
    run_in_thread(lambda: created.extend(suspended_coroutines(5)))
    for coro in created:
        for method, arguments in (("send", (None,)), ("throw", (LookupError("x"),))):
            try:
                getattr(coro, method)(*arguments)
            except RuntimeError:
                pass
            else:
                raise AssertionError(f"{method} from a thread that does not own it succeeded")
    created.clear()
    gc.collect()


SCENARIOS = {
    "drop_in_other_thread": drop_in_other_thread,
    "collect_in_other_thread": collect_in_other_thread,
    "drop_after_owner_thread_exited": drop_after_owner_thread_exited,
    "resume_after_owner_thread_exited": resume_after_owner_thread_exited,
}


if __name__ == "__main__":
    scenario = sys.argv[1]
    SCENARIOS[scenario]()
    print(f"{scenario} OK")
