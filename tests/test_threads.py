import asyncio
import concurrent.futures
import random
import sys
import threading

import pytest
from _support import Yield, assert_script_succeeded, returns, run_script
from awaitlet import NoAwaitletContext, async_def, awaitlet

THREAD_COUNT = 4
TASKS_PER_THREAD = 300


def call_in_other_thread(function, *args):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(function, *args).result()


def outcome_of(function, *args):
    try:
        return ("returned", function(*args))
    except BaseException as error:
        return ("raised", error)


def sync_work(thread_index, task_index):
    total = 0
    for step in range(3):
        awaitlet(asyncio.sleep(random.uniform(0, 0.005)))
        total += awaitlet(returns(step))
    return (thread_index, task_index, total, threading.get_ident())


def run_event_loop_in_thread(thread_index):
    async def main():
        return await asyncio.gather(
            *(
                async_def(sync_work, thread_index, task_index)
                for task_index in range(TASKS_PER_THREAD)
            )
        )

    return asyncio.run(main()), threading.get_ident()


def test_threads_with_their_own_event_loops_run_many_tasks():
    with concurrent.futures.ThreadPoolExecutor(max_workers=THREAD_COUNT) as executor:
        futures = [
            executor.submit(run_event_loop_in_thread, index) for index in range(THREAD_COUNT)
        ]
        outcomes = [future.result(timeout=60) for future in futures]

    for thread_index, (results, thread_ident) in enumerate(outcomes):
        assert results == [
            (thread_index, task_index, 3, thread_ident) for task_index in range(TASKS_PER_THREAD)
        ]


def test_unstarted_coroutine_created_in_one_thread_runs_in_another():
    def fn():
        return awaitlet(asyncio.sleep(0.001, result=threading.get_ident()))

    coro = async_def(fn)
    ran_in = call_in_other_thread(asyncio.run, coro)
    assert ran_in != threading.get_ident()


def test_run_coroutine_threadsafe_with_a_coroutine_created_in_the_caller_thread():
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever)
    loop_thread.start()
    try:

        def fn(value):
            awaitlet(asyncio.sleep(0.001))
            return value, threading.get_ident()

        futures = [
            asyncio.run_coroutine_threadsafe(async_def(fn, index), loop) for index in range(20)
        ]
        results = [future.result(timeout=30) for future in futures]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join()
        loop.close()

    assert [value for value, _ in results] == list(range(20))
    assert {ident for _, ident in results} == {loop_thread.ident}


@pytest.mark.parametrize("method", ["send", "throw", "close"])
def test_resuming_a_suspended_coroutine_from_another_thread_raises_runtime_error(method):
    events = []

    def fn():
        try:
            result = awaitlet(Yield("suspended"))
            events.append(("resumed with", result))
            return result
        finally:
            events.append("finally")

    coro = async_def(fn)
    assert coro.send(None) == "suspended"
    arguments = {"send": ("from other thread",), "throw": (LookupError("x"),), "close": ()}[method]
    kind, error = call_in_other_thread(outcome_of, getattr(coro, method), *arguments)
    assert kind == "raised"
    assert isinstance(error, RuntimeError), repr(error)
    assert events == []

    with pytest.raises(StopIteration) as stop:
        coro.send("from owner thread")
    assert stop.value.value == "from owner thread"
    assert events == [("resumed with", "from owner thread"), "finally"]


def test_awaitlet_in_a_thread_started_by_sync_code_raises_no_awaitlet_context():
    def in_worker_thread():
        coro = returns("never awaited")
        try:
            awaitlet(coro)
        except NoAwaitletContext:
            return "no context"
        return "unexpected"

    def fn():
        awaitlet(asyncio.sleep(0))
        return awaitlet(asyncio.to_thread(in_worker_thread))

    async def main():
        return await async_def(fn)

    assert asyncio.run(main()) == "no context"


def test_worker_thread_started_by_sync_code_can_run_its_own_event_loop():
    def nested_sync(value):
        return awaitlet(asyncio.sleep(0.001, result=value * 2))

    def in_worker_thread(value):
        async def main():
            return await async_def(nested_sync, value)

        return asyncio.run(main())

    def fn():
        results = [awaitlet(asyncio.to_thread(in_worker_thread, value)) for value in range(5)]
        return results

    async def main():
        return await async_def(fn)

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]


@pytest.mark.parametrize(
    "scenario",
    [
        "drop_in_other_thread",
        "collect_in_other_thread",
        "drop_after_owner_thread_exited",
        "resume_after_owner_thread_exited",
    ],
)
def test_suspended_coroutines_crossing_threads_do_not_crash(scenario):
    result = run_script("coroutines_crossing_threads.py", scenario)
    assert_script_succeeded(result, [f"{scenario} OK"])


def cpu_bound_sync_work(thread_index, task_index):
    total = 0
    for step in range(5):
        for value in range(3000):
            total += value % (step + 2)
        awaitlet(asyncio.sleep(0))
    return thread_index, task_index, total


def test_threads_switching_sync_stacks_under_frequent_gil_handoffs():
    expected_total = sum(value % (step + 2) for step in range(5) for value in range(3000))

    def run_loop(thread_index):
        async def main():
            return await asyncio.gather(
                *(async_def(cpu_bound_sync_work, thread_index, index) for index in range(30))
            )

        return asyncio.run(main())

    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=THREAD_COUNT) as executor:
            futures = [executor.submit(run_loop, index) for index in range(THREAD_COUNT)]
            outcomes = [future.result(timeout=120) for future in futures]
    finally:
        sys.setswitchinterval(previous_interval)

    for thread_index, results in enumerate(outcomes):
        assert results == [(thread_index, index, expected_total) for index in range(30)]
