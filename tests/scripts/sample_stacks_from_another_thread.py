"""A sampling thread walks the main thread's stack while it runs and suspends sync code.

Prints "sampled sync frames" when a sample caught the main thread inside sync code,
then "sample_stacks_from_another_thread OK".
"""

import asyncio
import faulthandler
import os
import sys
import threading
import time
import traceback

from awaitlet import async_def, awaitlet

DURATION_SECONDS = 1.0

main_thread_id = threading.get_ident()
stop_sampling = threading.Event()
sampled_names = set()
sample_count = 0


def sample_main_thread():
    global sample_count
    with open(os.devnull, "w") as sink:
        while not stop_sampling.is_set():
            frame = sys._current_frames().get(main_thread_id)
            depth = 0
            while frame is not None and depth < 10_000:
                sampled_names.add((frame.f_code.co_name, frame.f_lineno)[0])
                frame = frame.f_back
                depth += 1
            main_frame = sys._current_frames().get(main_thread_id)
            if main_frame is not None:
                traceback.extract_stack(main_frame)
            faulthandler.dump_traceback(sink, all_threads=True)
            sample_count += 1
            time.sleep(0.0005)


def busy_sync_function(index):
    total = 0
    deadline = time.monotonic() + DURATION_SECONDS
    while time.monotonic() < deadline:
        # Longer than the switch interval, so that the sampler gets the GIL while sync code
        # runs and not only while the loop waits for I/O.
        for value in range(20_000):
            total += value % (index + 1)
        awaitlet(asyncio.sleep(0))
    return index


async def main():
    return await asyncio.gather(*(async_def(busy_sync_function, index) for index in range(4)))


if __name__ == "__main__":
    sys.setswitchinterval(0.0005)
    sampler = threading.Thread(target=sample_main_thread)
    sampler.start()
    try:
        results = asyncio.run(main())
    finally:
        stop_sampling.set()
        sampler.join()
    assert results == [0, 1, 2, 3], results
    assert sample_count > 0
    if "busy_sync_function" in sampled_names:
        print("sampled sync frames")
    print("sample_stacks_from_another_thread OK")
