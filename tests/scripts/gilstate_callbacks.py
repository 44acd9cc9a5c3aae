"""Fibers started in a callback from a native thread, used by later callbacks.

Usage: gilstate_callbacks.py HELPER_LIBRARY

The helper (tests/native/gilstate_callbacks.c) calls `callback(i)` from one native thread,
each call under a new PyThreadState (PyGILState_Ensure/Release). A fiber started in one
call belongs to a thread state that is gone in the next: resuming or closing it must raise
RuntimeError, and dropping it must neither run it nor crash.
"""

import ctypes
import gc
import sys
import weakref

from awaitlet import async_def, awaitlet
from awaitlet.greenlet import greenlet


class Yield:
    def __await__(self):
        return (yield "suspended")


finally_ran = []


def sync_code():
    try:
        awaitlet(Yield())
    finally:
        finally_ran.append("sync code")


def greenlet_body():
    try:
        greenlet.getcurrent().parent.switch("suspended")
    finally:
        finally_ran.append("greenlet")


kept = {}


def outcome(call):
    try:
        call()
    except RuntimeError as error:
        return f"RuntimeError: {error}"
    except Exception as error:  # the facade raises greenlet.error
        return f"{type(error).__name__}: {error}"
    return "no error"


def callback(index):
    if index == 0:
        coroutine = async_def(sync_code)
        print("started:", coroutine.send(None), flush=True)
        spawned = greenlet(greenlet_body)
        print("started:", spawned.switch(), flush=True)
        kept.update(coroutine=coroutine, greenlet=spawned)
    elif index == 1:
        coroutine = kept["coroutine"]
        print("send:", outcome(lambda: coroutine.send(None)), flush=True)
        print("throw:", outcome(lambda: coroutine.throw(ValueError)), flush=True)
        print("close:", outcome(coroutine.close), flush=True)
        print("switch:", outcome(kept["greenlet"].switch), flush=True)
    elif index == 2:
        # Dropped under yet another thread state: nothing may run them any more.
        refs = [weakref.ref(kept.pop("coroutine")), weakref.ref(kept.pop("greenlet"))]
        gc.collect()
        print("dropped:", [ref() is None for ref in refs], flush=True)


library = ctypes.CDLL(sys.argv[1])
library.run_callbacks.argtypes = [ctypes.py_object, ctypes.c_int]
library.run_callbacks.restype = ctypes.c_int
failures = library.run_callbacks(callback, 3)
print("failed callbacks:", failures, flush=True)
# The main thread has yet another thread state.
print("finally ran:", finally_ran, flush=True)
