"""Deallocation chains deep enough for CPython's trashcan that finish suspended fibers.

Dropping a suspended async_def coroutine switches into its fiber to run the sync code's
``finally`` blocks. When that happens deep inside a chain of deallocations, the trashcan's
per-stack nesting state (3.10-3.12) must follow the switch, or objects are freed twice,
late, or never.
"""

import gc

from _support import Yield
from awaitlet import async_def, awaitlet


def _suspended_coroutines(count, cleanup, payload_depth=0):
    def sync_code(index):
        # A structure deep enough to go through the trashcan when the fiber drops it.
        payload = None
        for _ in range(payload_depth):
            payload = [payload]
        try:
            awaitlet(Yield(index))
        finally:
            del payload
            cleanup.append(index)

    coroutines = []
    for index in range(count):
        coroutine = async_def(sync_code, index)
        assert coroutine.send(None) == index
        coroutines.append(coroutine)
    return coroutines


def test_suspended_fibers_finished_from_deep_inside_a_deallocation_chain():
    cleanup = []
    coroutines = _suspended_coroutines(300, cleanup, payload_depth=5_000)
    nested = None
    for coroutine in coroutines:
        # 20 plain levels between two coroutines: the chain is 6,000 levels deep.
        for _ in range(20):
            nested = [nested]
        nested = [coroutine, nested]
    del coroutines, coroutine
    del nested
    gc.collect()
    assert sorted(cleanup) == list(range(300))


def test_deep_deallocation_inside_sync_code_across_switches():
    def sync_code():
        results = []
        for round_number in range(20):
            nested = None
            for _ in range(20_000):
                nested = [nested]
            results.append(awaitlet(Yield(round_number)) if round_number % 2 else round_number)
            del nested
        return results

    coroutine = async_def(sync_code)
    value = coroutine.send(None)
    sent = []
    try:
        while True:
            sent.append(value)
            value = coroutine.send(value)
    except StopIteration as stop:
        assert stop.value == list(range(20))
    assert sent == list(range(1, 20, 2))
