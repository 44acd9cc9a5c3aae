"""Fork while async_def coroutines are suspended; parent and child both resume them.

Prints "parent resumed 20" and "child resumed 20" (from the child, before the
parent's lines) and "fork_with_suspended_coroutines OK".
"""

import asyncio
import os
import sys

from awaitlet import async_def, awaitlet


class Yield:
    def __await__(self):
        return (yield "suspended")


async def immediate(value):
    return value


def sync_code(index):
    first = awaitlet(Yield())
    second = awaitlet(immediate(index))
    return first, second


def resume_all(coroutines, label):
    results = []
    for coro in coroutines:
        try:
            coro.send(label)
        except StopIteration as stop:
            results.append(stop.value)
            continue
        raise AssertionError("coroutine did not finish")
    assert results == [(label, index) for index in range(len(coroutines))], results
    return len(results)


def run_more_in_a_fresh_loop():
    async def main():
        awaitables = [asyncio.sleep(0, result=index) for index in range(20)]
        return await asyncio.gather(*(async_def(awaitlet, awaitable) for awaitable in awaitables))

    assert asyncio.run(main()) == list(range(20))


if __name__ == "__main__":
    coroutines = [async_def(sync_code, index) for index in range(20)]
    for coro in coroutines:
        assert coro.send(None) == "suspended"
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        exit_code = 1
        try:
            count = resume_all(coroutines, "child")
            run_more_in_a_fresh_loop()
            print(f"child resumed {count}")
            sys.stdout.flush()
            exit_code = 0
        finally:
            os._exit(exit_code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    count = resume_all(coroutines, "parent")
    run_more_in_a_fresh_loop()
    print(f"parent resumed {count}")
    print("fork_with_suspended_coroutines OK")
