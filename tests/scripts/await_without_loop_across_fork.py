"""Fork after await_() made the thread's own loop; the child uses await_() and exits normally.

The child must get a loop of its own (the parent's shares its epoll instance and wake-up
pipe with the parent), and its exit must not undo the parent's loop's registrations: after
it, another thread still wakes the parent's loop at once.

Prints "child: own loop, woken", then "parent: same loop, woken" and
"await_without_loop_across_fork OK".
"""

import asyncio
import os
import sys
import threading
import time

from awaitlet.decorators import await_, close_thread_loop


async def current_loop():
    return asyncio.get_running_loop()


async def woken_by_another_thread():
    """Waits for another thread to wake the loop; returns the seconds that took."""
    loop = asyncio.get_running_loop()
    woken = loop.create_future()
    started = time.monotonic()

    def wake():
        time.sleep(0.05)
        loop.call_soon_threadsafe(woken.set_result, None)

    waker = threading.Thread(target=wake)
    waker.start()
    try:
        # A lost wake-up shows as the timeout of this wait.
        await asyncio.wait_for(asyncio.shield(woken), 3)
    except asyncio.TimeoutError:
        pass
    waker.join()
    return time.monotonic() - started


def main():
    parents_loop = await_(current_loop())
    assert await_(woken_by_another_thread()) < 1
    pid = os.fork()
    if pid == 0:
        try:
            own = await_(current_loop()) is not parents_loop
            took = await_(woken_by_another_thread())
            print(f"child: {'own' if own else 'SHARED'} loop, {'woken' if took < 1 else took}")
            sys.stdout.flush()
        except BaseException as exc:
            print(f"child failed: {exc!r}", flush=True)
            os._exit(1)
        # What a careful child may do, then a normal exit (finalizers run): neither may
        # close the parent's loop for real.
        close_thread_loop()
        parents_loop.close()
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    same = await_(current_loop()) is parents_loop
    took = await_(woken_by_another_thread())
    print(f"parent: {'same' if same else 'NEW'} loop, {'woken' if took < 1 else took}")
    print("await_without_loop_across_fork OK")


main()
