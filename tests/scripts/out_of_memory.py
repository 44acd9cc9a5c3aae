"""Fibers created and run while the process is out of address space.

Usage: out_of_memory.py ROUNDS

The address-space limit (RLIMIT_AS) is set just above what the process uses, then coroutines
are started until something fails, at many levels of squeeze, so that the failure lands on
every allocation a fiber's creation and first steps make (Python objects, the interpreter
state a fiber keeps, awaitlet's own records, the frames' memory, a new stack region). Every
failure must be a MemoryError: the process never aborts. Prints a summary line at the end.
"""

import asyncio
import ctypes
import gc
import resource
import sys

from _memory import address_space_in_use
from awaitlet import async_def, awaitlet


class Yield:
    def __await__(self):
        return (yield None)


def deep(depth):
    if depth:
        return deep(depth - 1)
    return awaitlet(Yield())


libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


BLOCKS = (ctypes.c_void_p * 1_000_000)()


def exhaust_malloc():
    """Takes every block malloc can still hand out, large to small, into BLOCKS (allocated
    before the squeeze); returns how many."""
    count = 0
    for size in (65536, 4096, 512, 128, 64, 32, 16):
        while count < len(BLOCKS):
            block = libc.malloc(size)
            if not block:
                break
            BLOCKS[count] = block
            count += 1
    return count


def free_blocks(start, stop):
    for index in range(start, stop):
        libc.free(BLOCKS[index])


def start_until_memory_error(held):
    """Starts suspended coroutines (with some filler objects between them) until
    MemoryError; returns where it happened."""
    while True:
        try:
            coroutine = async_def(deep, len(held) % 40)
            held.append(coroutine)
            coroutine.send(None)
        except MemoryError:
            return "MemoryError"


def finish(held):
    for item in held:
        if hasattr(item, "close"):
            try:
                item.close()
            except MemoryError:
                pass
    held.clear()
    gc.collect()


def main(rounds):
    # Warm up: regions, pools and caches exist before the squeeze.
    asyncio.run(async_def(lambda: awaitlet(asyncio.sleep(0))))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    failures = 0
    for round_index in range(rounds):
        held = []
        resource.setrlimit(resource.RLIMIT_AS, (address_space_in_use(), hard))
        count = exhaust_malloc()
        kept = max(0, count - round_index % 32)
        try:
            # Give a little back, a different amount each round, so the failure lands on a
            # different allocation each time.
            free_blocks(kept, count)
            if start_until_memory_error(held) == "MemoryError":
                failures += 1
        finally:
            free_blocks(0, kept)
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            finish(held)
    # Everything works again once memory is back.
    result = asyncio.run(async_def(lambda: awaitlet(asyncio.sleep(0, "recovered"))))
    print(f"{failures} of {rounds} rounds ended in MemoryError; {result}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
