"""What the fast path of the facade's switch() must do as the general way does, checked in a
fresh interpreter (where no other fiber is suspended, so that PyO3 counts the thread as
attached only inside its own calls: the fast path is entered without that count).

Usage: fast_switch_hazards.py release | hooks-midway trace|profile

- release: a greenlet resumed by a fast switch finishes; the arguments of its call are
  released in the greenlet, before it switches back (a `__del__` sees it as the current
  greenlet), not later. Prints "release OK".
- hooks-midway KIND: a C-level trace or profile function (PyEval_SetTrace/SetProfile through
  ctypes, as coverage.py's C tracer and cProfile before 3.12 install theirs) is installed
  while greenlets are suspended in fast switches; they are resumed, switch back and forth and
  finish; every "return" event must be for the frame on top of the stack its "call" events
  built. Prints "<KIND> OK".
"""

import ctypes
import gc
import sys

from awaitlet.greenlet import getcurrent, greenlet


def release():
    seen = []

    class Argument:
        def __del__(self):
            seen.append(getcurrent())

    main = getcurrent()

    def run(argument):
        main.switch()

    gc.disable()
    child = greenlet(run)
    child.switch(Argument())  # starts it (the general way); it switches back (the fast way)
    child.switch()  # resumed the fast way, it returns: its call's arguments go
    assert seen == [child], seen
    print("release OK")


PyTrace_CALL, PyTrace_RETURN = 0, 3
PyTrace_C_CALL, PyTrace_C_EXCEPTION, PyTrace_C_RETURN = 4, 5, 6
HOOK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.py_object, ctypes.c_int, ctypes.c_void_p
)


def hooks_midway(kind):
    stack = []
    problems = []

    def c_function(frame, address):
        # As cProfile keys the call of a C function: each call of a method may make a new
        # bound method object.
        function = ctypes.cast(address, ctypes.py_object).value
        return (frame, type(function), function.__name__)

    def on_event(_object, frame, what, arg):
        if what in (PyTrace_CALL, PyTrace_C_CALL):
            stack.append(frame if what == PyTrace_CALL else c_function(frame, arg))
        elif what in (PyTrace_RETURN, PyTrace_C_RETURN, PyTrace_C_EXCEPTION):
            key = frame if what == PyTrace_RETURN else c_function(frame, arg)
            if stack and (stack[-1] is key or stack[-1] == key):
                stack.pop()
            elif len(problems) < 5:
                problems.append(f"return of {frame.f_code.co_name} with {len(stack)} on the stack")
        return 0

    c_hook = HOOK(on_event)
    setter = getattr(
        ctypes.pythonapi, "PyEval_SetTrace" if kind == "trace" else "PyEval_SetProfile"
    )
    setter.argtypes = [HOOK, ctypes.c_void_p]
    setter.restype = None

    main = getcurrent()

    def leaf(value, to):
        return to.switch(value)

    def child(count, to):
        # Switches back to `to`, the greenlet that resumed it, `count` times.
        total = 0
        for index in range(count):
            total += leaf(index, to)
        return total

    def nested(count):
        me = getcurrent()
        inner = greenlet(child)
        value = inner.switch(count, me)
        while not inner.dead:
            main.switch(value)
            value = inner.switch(value)
        return value

    first, second = greenlet(child), greenlet(nested)
    # Each suspends in a fast switch back to the greenlet that resumed it.
    assert first.switch(3, main) == 0
    assert second.switch(3) == 0
    setter(c_hook, None)
    try:
        value = first.switch(10)
        while not first.dead:
            value = first.switch(value + 1)
        while not second.dead:
            value = second.switch(value)
    finally:
        setter(HOOK(), None)
    assert not problems, problems
    print(f"{kind} OK")


if __name__ == "__main__":
    if sys.argv[1] == "release":
        release()
    else:
        hooks_midway(sys.argv[2])
