import asyncio
import contextvars
import random
import sys

import pytest
from awaitlet import async_def, awaitlet

variable = contextvars.ContextVar("variable", default="default")


def run(coroutine_function, *args):
    return asyncio.run(coroutine_function(*args))


async def read_variable_after_sleep():
    await asyncio.sleep(0.001)
    return variable.get()


async def set_variable(value):
    await asyncio.sleep(0)
    variable.set(value)


def test_sync_code_sees_the_task_value():
    def fn():
        before = variable.get()
        awaitlet(asyncio.sleep(0))
        return before, variable.get()

    async def main():
        variable.set("task value")
        return await async_def(fn)

    assert run(main) == ("task value", "task value")


def context_is_entered(context):
    try:
        context.run(lambda: None)
    except RuntimeError:
        return True
    return False


@pytest.mark.skipif(sys.version_info < (3, 11), reason="create_task(context=) is new in 3.11")
def test_sync_code_runs_in_the_task_context_object():
    def fn(context):
        before = context_is_entered(context)
        awaitlet(asyncio.sleep(0))
        return before, context_is_entered(context)

    async def main():
        context = contextvars.copy_context()
        entered_in_sync_code = await asyncio.create_task(async_def(fn, context), context=context)
        return entered_in_sync_code, context_is_entered(context)

    assert run(main) == ((True, True), False)


def test_set_in_sync_code_is_visible_in_the_task_afterwards():
    def fn():
        variable.set("set before switch")
        awaitlet(asyncio.sleep(0))
        seen_by_task_side = awaitlet(read_variable_after_sleep())
        variable.set("set after switch")
        return seen_by_task_side

    async def main():
        seen_by_task_side = await async_def(fn)
        return seen_by_task_side, variable.get()

    assert run(main) == ("set before switch", "set after switch")


def test_set_in_an_awaited_coroutine_is_visible_in_the_sync_code():
    def fn():
        awaitlet(set_variable("set by coroutine"))
        return variable.get()

    async def main():
        return await async_def(fn)

    assert run(main) == "set by coroutine"


def test_reset_with_a_token_works_across_a_switch():
    def fn():
        token = variable.set("temporary")
        awaitlet(asyncio.sleep(0.001))
        variable.reset(token)
        return variable.get()

    async def main():
        variable.set("task value")
        return await async_def(fn), variable.get()

    assert run(main) == ("task value", "task value")


def test_token_from_the_task_can_be_reset_in_sync_code():
    def fn(token):
        awaitlet(asyncio.sleep(0))
        variable.reset(token)

    async def main():
        token = variable.set("task value")
        await async_def(fn, token)
        return variable.get()

    assert run(main) == "default"


def test_context_run_in_sync_code_keeps_its_values_across_a_switch():
    def inside_context():
        variable.set("inside context run")
        before = variable.get()
        seen_by_task_side = awaitlet(read_variable_after_sleep())
        return before, seen_by_task_side, variable.get()

    def fn():
        result = contextvars.copy_context().run(inside_context)
        return result, variable.get()

    async def main():
        variable.set("task value")
        result, after_run = await async_def(fn)
        return result, after_run, variable.get()

    (before, seen_by_task_side, after_switch), after_run, task_value = run(main)
    assert before == "inside context run"
    assert after_switch == "inside context run"
    assert seen_by_task_side == "task value"
    assert after_run == "task value"
    assert task_value == "task value"


def test_context_run_in_interleaved_tasks_keeps_every_value_separate():
    failures = []

    def inside_context(index):
        variable.set(f"context {index}")
        for _ in range(5):
            seen_by_task_side = awaitlet(read_variable_after_sleep())
            if seen_by_task_side != f"task {index}":
                failures.append(("task side", index, seen_by_task_side))
            awaitlet(asyncio.sleep(random.uniform(0, 0.002)))
            if variable.get() != f"context {index}":
                failures.append(("context run", index, variable.get()))

    def fn(index):
        contextvars.copy_context().run(inside_context, index)
        return variable.get()

    async def task(index):
        variable.set(f"task {index}")
        after_run = await async_def(fn, index)
        return after_run, variable.get()

    async def main():
        return await asyncio.gather(task(0), task(1), task(2), task(3))

    results = run(main)
    assert results == [(f"task {index}", f"task {index}") for index in range(4)]
    assert failures == []


def test_nested_context_runs_across_switches():
    def innermost():
        variable.set("innermost")
        awaitlet(asyncio.sleep(0.001))
        return variable.get()

    def middle():
        variable.set("middle")
        awaitlet(asyncio.sleep(0))
        innermost_value = contextvars.copy_context().run(innermost)
        awaitlet(asyncio.sleep(0))
        return innermost_value, variable.get()

    def fn():
        middle_values = contextvars.copy_context().run(middle)
        return middle_values, variable.get()

    async def main():
        variable.set("task value")
        return await async_def(fn)

    assert run(main) == (("innermost", "middle"), "task value")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="create_task(context=) is new in 3.11")
def test_task_created_with_an_explicit_context_runs_sync_code_in_that_context():
    def fn():
        awaitlet(asyncio.sleep(0))
        variable.set("set by sync code")
        return variable.get()

    async def main():
        variable.set("task value")
        context = contextvars.copy_context()
        result = await asyncio.create_task(async_def(fn), context=context)
        return result, context[variable], variable.get()

    assert run(main) == ("set by sync code", "set by sync code", "task value")


def test_task_created_from_a_copied_context_does_not_leak_into_the_creator():
    def fn():
        awaitlet(asyncio.sleep(0))
        variable.set("set by sync code")
        return variable.get()

    async def main():
        variable.set("creator value")
        result = await asyncio.create_task(async_def(fn))
        return result, variable.get()

    assert run(main) == ("set by sync code", "creator value")


def test_many_concurrent_tasks_keep_their_own_values():
    concurrency = 300

    def fn(value):
        if awaitlet(read_variable_after_sleep()) != value:
            return None
        variable.set(value + concurrency)
        if awaitlet(read_variable_after_sleep()) != value + concurrency:
            return None
        awaitlet(set_variable(value + 2 * concurrency))
        return variable.get()

    async def task(value):
        await asyncio.sleep(random.uniform(0, 0.005))
        variable.set(value)
        result = await async_def(fn, value)
        return result, variable.get()

    async def main():
        return await asyncio.gather(*(task(value) for value in range(concurrency)))

    results = run(main)
    expected_value = [value + 2 * concurrency for value in range(concurrency)]
    assert results == [(value, value) for value in expected_value]
