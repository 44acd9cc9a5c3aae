"""A daemon thread still blocked in sync code when the interpreter exits.

Usage: daemon_thread_at_exit.py fiber|greenlet|plain EXIT_STATUS

The daemon thread's blocking call releases the GIL; a slow finalizer keeps the main thread
finalizing long enough for the daemon to try to take the GIL back, which CPython answers by
ending the thread (3.10-3.13: pthread_exit) or parking it for good (3.14+). The process must
exit with EXIT_STATUS whether the blocking call runs on a fiber (fiber: in async_def's sync
code; greenlet: in a greenlet of awaitlet's facade) or on the thread's own stack (plain).
"""

import asyncio
import sys
import threading
import time

from awaitlet import async_def, awaitlet
from awaitlet.greenlet import greenlet

mode, status = sys.argv[1], int(sys.argv[2])
blocking = threading.Event()


def block_forever():
    blocking.set()
    while True:
        time.sleep(0.005)


def on_fiber():
    awaitlet(asyncio.sleep(0))
    block_forever()


def worker():
    if mode == "fiber":
        asyncio.run(async_def(on_fiber))
    elif mode == "greenlet":
        greenlet(block_forever).switch()
    else:
        block_forever()


threading.Thread(target=worker, daemon=True).start()
blocking.wait()


class SlowFinalizer:
    def __del__(self):
        time.sleep(0.2)


slow_to_finalize = SlowFinalizer()
print("exiting", flush=True)
sys.exit(status)
