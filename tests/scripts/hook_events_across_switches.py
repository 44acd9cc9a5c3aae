"""Check that a C-level trace or profile function sees calls and returns that nest.

Usage: hook_events_across_switches.py trace|profile
Installs a hook with PyEval_SetTrace or PyEval_SetProfile (through ctypes, so that it is a
C-level hook as coverage.py's C tracer and cProfile before 3.12 are), runs sync code that
switches (awaitlet() in several tasks, greenlets of the facade), and checks that every
"return" event is for the frame on top of a stack its "call" events built, as a tracer's
shadow stack expects.  Prints "<kind> OK".
"""

import asyncio
import ctypes
import sys

from awaitlet import async_def, awaitlet
from awaitlet.greenlet import getcurrent, greenlet

PyTrace_CALL, PyTrace_EXCEPTION, PyTrace_LINE, PyTrace_RETURN = 0, 1, 2, 3
PyTrace_C_CALL, PyTrace_C_EXCEPTION, PyTrace_C_RETURN = 4, 5, 6

# int hook(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg); `obj` and `arg`
# may be NULL, and `arg` is compared by address only.
HOOK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.py_object, ctypes.c_int, ctypes.c_void_p
)

stack = []
problems = []
seen = set()


def describe(frame_or_function):
    code = getattr(frame_or_function, "f_code", None)
    return code.co_name if code is not None else repr(frame_or_function)


def c_function(frame, address):
    """What identifies the call of a C function, as cProfile keys it: the function's name and
    kind (each call of a method makes a new bound method object)."""
    function = ctypes.cast(address, ctypes.py_object).value
    return (frame, type(function), function.__name__)


def on_event(_object, frame, what, arg):
    if what in (PyTrace_CALL, PyTrace_C_CALL):
        key = frame if what == PyTrace_CALL else c_function(frame, arg)
        stack.append(key)
        seen.add(describe(frame))
    elif what in (PyTrace_RETURN, PyTrace_C_RETURN, PyTrace_C_EXCEPTION):
        key = frame if what == PyTrace_RETURN else c_function(frame, arg)
        if not stack or (stack[-1] is not key and stack[-1] != key):
            if len(problems) < 5:
                top = describe(stack[-1]) if stack else "nothing"
                problems.append(f"return of {describe(frame)} with {top} on top")
        else:
            stack.pop()
    return 0


c_hook = HOOK(on_event)


async def fetch(value):
    await asyncio.sleep(0)
    return value


def inner(value):
    return awaitlet(fetch(value)) + 1


def sync_work(count):
    total = 0
    for index in range(count):
        total += awaitlet(fetch(index))
        total += inner(index)
    return total


def child(first):
    received = getcurrent().parent.switch(first)
    return received * 2


def greenlets():
    spawned = greenlet(child, getcurrent())
    value = spawned.switch(1)
    return spawned.switch(value + 1)


async def main():
    results = await asyncio.gather(*(async_def(sync_work, n) for n in range(1, 4)))
    assert results == [1, 4, 9], results
    assert greenlets() == 4
    return "done"


def run(kind):
    name = "PyEval_SetTrace" if kind == "trace" else "PyEval_SetProfile"
    setter = getattr(ctypes.pythonapi, name)
    setter.argtypes = [HOOK, ctypes.c_void_p]
    setter.restype = None
    clear = HOOK()
    setter(c_hook, None)
    try:
        result = asyncio.run(main())
    finally:
        setter(clear, None)
    assert result == "done"
    assert not problems, problems
    for name in ("sync_work", "inner", "fetch", "child"):
        assert name in seen, (name, sorted(seen))
    print(f"{kind} OK")


if __name__ == "__main__":
    run(sys.argv[1])
