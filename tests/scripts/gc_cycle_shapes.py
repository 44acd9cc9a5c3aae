"""Cycles through suspended sync stacks, in every place a stack can hold a reference.

For each shape, the sync code running in an asyncio task keeps a ``Holder`` (which refers
to the task, so there is a cycle) in one particular place, and suspends on a future the
holder keeps too. The only reference from outside is one the collector cannot see: a
``Py_IncRef`` through ctypes, as a C extension's would be.

1. Kept: with that reference, ``gc.collect()`` must leave everything alone. Had the
   collector been shown one reference too many anywhere on the way back to the holder, the
   holder's count would drop to zero and the task would be finalized while in use. Then the
   future completes, the sync code resumes and checks that what it holds is intact.
2. Collected: without that reference, one ``gc.collect()`` must find the cycle and finish
   the sync code (its ``finally`` runs) and free the task and the holder.

Prints one line per shape, "<shape>: kept collected", or what went wrong.
"""

import asyncio
import contextvars
import ctypes
import gc
import sys
import weakref

from awaitlet import async_def, awaitlet

incref = ctypes.pythonapi.Py_IncRef
incref.argtypes = [ctypes.py_object]
incref.restype = None
decref = ctypes.pythonapi.Py_DecRef
decref.argtypes = [ctypes.py_object]
decref.restype = None


class Holder:
    """What the sync code keeps: its own task (a cycle) and the future it waits for."""

    def __init__(self, future, finished, shape):
        self.future = future
        self.finished = finished
        self.shape = shape
        self.task = None
        self.payload = list(range(10))

    def __await__(self):
        # Not a generator: what is awaited must not refer back to the holder.
        return self.future.__await__()

    def check(self, resumed_with):
        """Run by the resumed sync code: everything it kept is as it left it."""
        assert resumed_with == "resume", resumed_with
        assert self.task is asyncio.current_task(), (self.task, asyncio.current_task())
        assert self.payload == list(range(10)), self.payload
        return "intact"


class Carrier(Exception):
    def __init__(self, holder):
        super().__init__("carries a holder")
        self.holder = holder


def adopt(holder):
    holder.task = asyncio.current_task()
    return holder


SHAPES = {}


def shape(fn):
    SHAPES[fn.__name__] = fn
    return fn


# Each shape is `start(box) -> coroutine`: `box` is a list holding the holder, which the sync
# code takes out, so that the holder is referenced from the one place the shape is about.


@shape
def local_of_the_suspended_frame(box):
    def sync(box):
        holder = adopt(box.pop())
        try:
            return holder.check(awaitlet(holder.future))
        finally:
            holder.finished.append(holder.shape)

    return async_def(sync, box)


FUTURE = contextvars.ContextVar("future")


def wait_for_the_future(_):
    # It finds the future in the task's context, so that nothing in the value stacks of the
    # frames below refers to it: before 3.11, and on 3.11-3.13 for a frame in a call of C code,
    # those stacks are not known while the sync code is suspended, so what they refer to
    # counts as referenced from outside.
    return awaitlet(FUTURE.get())


@shape
def local_of_a_calling_frame(box):
    def sync(box):
        holder = adopt(box.pop())
        FUTURE.set(holder.future)
        try:
            resumed = wait_for_the_future(None)
            return holder.check(resumed)
        finally:
            holder.finished.append(holder.shape)

    return async_def(sync, box)


@shape
def local_of_a_frame_calling_through_c(box):
    def sync(box):
        holder = adopt(box.pop())
        FUTURE.set(holder.future)
        try:
            (resumed,) = map(wait_for_the_future, [None])
            return holder.check(resumed)
        finally:
            holder.finished.append(holder.shape)

    return async_def(sync, box)


@shape
def closure_cell(box):
    def sync(box):
        finished, name = box[0].finished, box[0].shape
        holder = adopt(box.pop())

        # The holder is in a cell of this frame, which the function below shares.
        def check(resumed):
            return holder.check(resumed)

        try:
            return check(awaitlet(holder.future))
        finally:
            finished.append(name)

    return async_def(sync, box)


@shape
def value_stack_of_the_suspended_frame(box):
    def sync(box):
        future, finished, name = box[0].future, box[0].finished, box[0].shape
        try:
            # The holder is only on the value stack, below the call's arguments.
            held, resumed = [adopt(box.pop()), awaitlet(future)]
            return held.check(resumed)
        finally:
            finished.append(name)

    return async_def(sync, box)


@shape
def value_stack_of_a_calling_frame(box):
    def wait(future):
        return awaitlet(future)

    def sync(box):
        future, finished, name = box[0].future, box[0].finished, box[0].shape
        try:
            # The holder is only on the value stack of this frame, which calls Python code.
            held, resumed = [adopt(box.pop()), wait(future)]
            return held.check(resumed)
        finally:
            finished.append(name)

    return async_def(sync, box)


@shape
def argument_of_awaitlet(box):
    def sync(box):
        finished, name = box[0].finished, box[0].shape
        try:
            # The holder is the awaitable, held only as the call's argument.
            resumed = awaitlet(adopt(box.pop()))
            assert resumed == "resume", resumed
            return "intact"
        finally:
            finished.append(name)

    return async_def(sync, box)


@shape
def keyword_argument_of_awaitlet(box):
    def sync(box):
        finished, name = box[0].finished, box[0].shape
        try:
            resumed = awaitlet(awaitable=adopt(box.pop()))
            assert resumed == "resume", resumed
            return "intact"
        finally:
            finished.append(name)

    return async_def(sync, box)


@shape
def argument_of_async_def(box):
    holder = box.pop()

    def sync(*args):
        # The holder is only in the arguments async_def() was given.
        current = adopt(args[0])
        future, finished, name = current.future, current.finished, current.shape
        del args, current
        try:
            resumed = awaitlet(future)
            return "intact" if resumed == "resume" else resumed
        finally:
            finished.append(name)

    return async_def(sync, holder)


@shape
def keyword_argument_of_async_def(box):
    holder = box.pop()

    def sync(**kwargs):
        current = adopt(kwargs["holder"])
        future, finished, name = current.future, current.finished, current.shape
        del kwargs, current
        try:
            resumed = awaitlet(future)
            return "intact" if resumed == "resume" else resumed
        finally:
            finished.append(name)

    return async_def(sync, holder=holder)


@shape
def exception_being_handled(box):
    def sync(box):
        future, finished, name = box[0].future, box[0].finished, box[0].shape
        try:
            raise Carrier(adopt(box.pop()))
        except Carrier:
            # The holder is only in the exception being handled (sys.exc_info()).
            try:
                resumed = awaitlet(future)
                return sys.exc_info()[1].holder.check(resumed)
            finally:
                finished.append(name)

    return async_def(sync, box)


@shape
def frame_below_a_running_generator(box):
    def values():
        yield awaitlet(FUTURE.get())

    def sync(box):
        holder = adopt(box.pop())
        FUTURE.set(holder.future)
        try:
            for resumed in values():
                return holder.check(resumed)
        finally:
            holder.finished.append(holder.shape)

    return async_def(sync, box)


@shape
def local_of_a_running_generator(box):
    def values(box):
        holder = adopt(box.pop())
        try:
            yield holder.check(awaitlet(holder.future))
        finally:
            holder.finished.append(holder.shape)

    def sync(box):
        for result in values(box):
            return result

    return async_def(sync, box)


@shape
def nested_async_def(box):
    def inner(box):
        holder = adopt(box.pop())
        try:
            return holder.check(awaitlet(holder.future))
        finally:
            holder.finished.append(holder.shape)

    async def middle(box):
        return await async_def(inner, box)

    def outer(box):
        return awaitlet(middle(box))

    return async_def(outer, box)


def launch(loop, name, finished):
    """Starts the shape's task; returns the holder's and the task's weak references, the
    holder being kept alive only by a reference the collector does not know of."""
    holder = Holder(loop.create_future(), finished, name)
    incref(holder)
    task = loop.create_task(SHAPES[name]([holder]))
    return weakref.ref(holder), weakref.ref(task)


async def kept(name):
    loop = asyncio.get_running_loop()
    finished = []
    holder_ref, task_ref = launch(loop, name, finished)
    await asyncio.sleep(0)  # the task runs until the sync code suspends
    gc.collect()
    holder = holder_ref()
    if finished or holder is None or task_ref() is None:
        return "finalized while referenced"
    holder.future.set_result("resume")
    result = await holder.task
    decref(holder)
    return "kept" if result == "intact" and finished == [name] else f"resumed wrongly: {result}"


async def collected(name):
    loop = asyncio.get_running_loop()
    finished = []
    holder_ref, task_ref = launch(loop, name, finished)
    await asyncio.sleep(0)
    holder = holder_ref()
    decref(holder)
    del holder
    gc.collect()
    if finished != [name]:
        return "not finished"
    if holder_ref() is not None or task_ref() is not None:
        return "finished, not freed"
    return "collected"


def greenlet_shape():
    """The same with a greenlet of the facade, which keeps the holder in a local of its
    function while it is switched out; the holder refers to the greenlet."""
    from awaitlet.greenlet import GreenletExit, getcurrent, greenlet

    def run(box):
        holder = box.pop()
        try:
            # (Before 3.14 the value stack of a frame that calls switch() is not known: it must
            # hold nothing that leads to the holder.)
            resumed = getcurrent().parent.switch("suspended")
            return holder.check_greenlet(resumed)
        except GreenletExit:
            holder.finished.append("GreenletExit")
            raise
        finally:
            holder.finished.append(holder.shape)

    def launch_greenlet(finished):
        holder = Holder(None, finished, "greenlet_local")
        holder.check_greenlet = lambda value: (
            value == "resume" and holder.payload == list(range(10))
        )
        holder.task = greenlet(run)
        incref(holder)
        assert holder.task.switch([holder]) == "suspended"
        return weakref.ref(holder), weakref.ref(holder.task)

    finished = []
    holder_ref, greenlet_ref = launch_greenlet(finished)
    gc.collect()
    holder = holder_ref()
    if finished or holder is None or greenlet_ref() is None:
        kept = "finalized while referenced"
    else:
        result = holder.task.switch("resume")
        kept = "kept" if result is True and finished == ["greenlet_local"] else "resumed wrongly"
        decref(holder)
        del holder

    finished = []
    holder_ref, greenlet_ref = launch_greenlet(finished)
    decref(holder_ref())
    gc.collect()
    if finished != ["GreenletExit", "greenlet_local"]:
        collected = "not finished"
    elif holder_ref() is not None or greenlet_ref() is not None:
        collected = "finished, not freed"
    else:
        collected = "collected"
    print(f"greenlet_local: {kept} {collected}", flush=True)


async def main():
    reports = []
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: reports.append(context["message"])
    )
    for name in SHAPES:
        print(f"{name}: {await kept(name)} {await collected(name)}", flush=True)
    # Each collected task was destroyed while pending, which asyncio reports.
    assert set(reports) <= {"Task was destroyed but it is pending!"}, reports
    print(f"reports: {len(reports)}")


greenlet_shape()
asyncio.run(main())
