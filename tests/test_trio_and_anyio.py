"""async_def/awaitlet on Trio, and through anyio on both of its backends (asyncio and Trio).

awaitlet's fibers know nothing of asyncio: the task that awaits ``async_def(fn)`` awaits
whatever ``fn`` passes to ``awaitlet()``, so any event loop that drives coroutines drives
them.  These tests check it where it matters: Trio's checkpoints and sleeps, its
cancellation scopes (``trio.Cancelled`` raised in the sync code at its ``awaitlet()``),
nurseries of many fibers, real sockets, and the same through anyio.
"""

from __future__ import annotations

import socket
import threading
import time
import traceback

import pytest
from awaitlet import async_def, awaitlet
from awaitlet.decorators import AwaitInEventLoopError, async_, await_

trio = pytest.importorskip("trio")
anyio = pytest.importorskip("anyio")


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (possibly nested) exception groups; 3.10 has no except*."""
    inner = getattr(error, "exceptions", None)
    if inner is None:
        return [error]
    return [leaf for member in inner for leaf in leaves(member)]


# -- Trio --------------------------------------------------------------------------------


def test_trio_awaitlet_of_sleeps_and_checkpoints():
    def sync_code(value):
        awaitlet(trio.sleep(0))
        awaitlet(trio.lowlevel.checkpoint())
        start = trio.current_time()
        awaitlet(trio.sleep(0.01))
        return value, trio.current_time() - start

    async def main():
        return await async_def(sync_code, "done")

    value, slept = trio.run(main)
    assert value == "done"
    assert slept >= 0.01


def test_trio_exception_from_the_awaitable_reaches_the_sync_code():
    async def fails():
        await trio.sleep(0)
        raise KeyError("from trio")

    def sync_code():
        with pytest.raises(KeyError, match="from trio") as caught:
            awaitlet(fails())
        return [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]

    async def main():
        return await async_def(sync_code)

    assert "fails" in trio.run(main)


def test_trio_exception_from_the_sync_code_reaches_the_task():
    def sync_code():
        awaitlet(trio.sleep(0))
        raise LookupError("from sync code")

    async def main():
        await async_def(sync_code)

    with pytest.raises(LookupError, match="from sync code") as caught:
        trio.run(main)
    names = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert names.index("main") < names.index("sync_code")


def test_trio_cancellation_reaches_the_sync_code_as_cancelled():
    events = []

    def sync_code():
        try:
            awaitlet(trio.sleep(60))
        except trio.Cancelled:
            events.append("cancelled at awaitlet()")
            raise
        finally:
            events.append("finally ran")

    async def main():
        with trio.move_on_after(0.02) as scope:
            await async_def(sync_code)
        return scope.cancelled_caught

    start = time.monotonic()
    assert trio.run(main) is True
    assert time.monotonic() - start < 5
    assert events == ["cancelled at awaitlet()", "finally ran"]


def test_trio_sync_code_can_shield_itself():
    def sync_code():
        with trio.CancelScope(shield=True):
            awaitlet(trio.sleep(0.03))
        return "finished under the shield"

    async def main():
        with trio.move_on_after(0.01):
            return await async_def(sync_code)

    assert trio.run(main) == "finished under the shield"


def test_trio_nursery_of_many_fibers():
    count = 200
    results = []

    def worker(n):
        awaitlet(trio.sleep(0.02))
        awaitlet(trio.sleep(0))
        results.append(n)

    async def main():
        async with trio.open_nursery() as nursery:
            for n in range(count):
                nursery.start_soon(async_def, worker, n)

    start = time.monotonic()
    trio.run(main)
    assert sorted(results) == list(range(count))
    assert time.monotonic() - start < 2  # concurrent: 200 x 20 ms one after another is 4 s


def test_trio_nursery_failure_cancels_the_other_fibers():
    cancelled = []

    def sleeper():
        try:
            awaitlet(trio.sleep(60))
        except trio.Cancelled:
            cancelled.append(True)
            raise

    def failer():
        awaitlet(trio.sleep(0.01))
        raise ValueError("one fiber failed")

    async def main():
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(async_def, sleeper)
            nursery.start_soon(async_def, failer)

    with pytest.raises(BaseException) as caught:  # noqa: B017  # an exception group
        trio.run(main)
    assert [type(leaf) for leaf in leaves(caught.value)] == [ValueError]
    assert cancelled == [True] * 5


def test_trio_memory_channel_between_sync_fibers():
    def producer(send_channel):
        with send_channel:
            for n in range(10):
                awaitlet(send_channel.send(n))

    def consumer(receive_channel, into):
        with receive_channel:
            while True:
                try:
                    into.append(awaitlet(receive_channel.receive()))
                except trio.EndOfChannel:
                    return

    async def main():
        received = []
        send_channel, receive_channel = trio.open_memory_channel(0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(async_def, producer, send_channel)
            nursery.start_soon(async_def, consumer, receive_channel, received)
        return received

    assert trio.run(main) == list(range(10))


def test_trio_sockets_from_sync_code():
    def client(port, message):
        stream = awaitlet(trio.open_tcp_stream("127.0.0.1", port))
        with stream.socket:
            awaitlet(stream.send_all(message))
            awaitlet(stream.send_eof())
            received = b""
            while chunk := awaitlet(stream.receive_some()):
                received += chunk
            return received

    async def echo_upper(stream):
        async with stream:
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
            await stream.send_all(data.upper())

    async def main():
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, echo_upper, 0)
            port = listeners[0].socket.getsockname()[1]
            results = {}

            async def one(n):
                results[n] = await async_def(client, port, f"client {n}".encode())

            async with trio.open_nursery() as clients:
                for n in range(5):
                    clients.start_soon(one, n)
            nursery.cancel_scope.cancel()
        return results

    assert trio.run(main) == {n: f"CLIENT {n}".encode() for n in range(5)}


def test_trio_with_the_decorators():
    @async_
    def sync_code(n):
        return await_(trio.sleep(0)) or n * 2

    async def plain_sync_call_from_a_trio_task():
        coroutine = trio.sleep(0)
        with pytest.raises(AwaitInEventLoopError, match="Trio"):
            await_(coroutine)

    async def main():
        await plain_sync_call_from_a_trio_task()
        return await sync_code(21)

    assert trio.run(main) == 42


# -- anyio, on both backends ------------------------------------------------------------------

BACKENDS = ["asyncio", "trio"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_anyio_sleep_and_result(backend):
    def sync_code(value):
        awaitlet(anyio.sleep(0))
        awaitlet(anyio.sleep(0.01))
        return value, anyio.get_current_task().name

    async def main():
        return await async_def(sync_code, "value")

    value, task_name = anyio.run(main, backend=backend)
    assert value == "value"
    assert task_name  # anyio knows which task the sync code runs in


@pytest.mark.parametrize("backend", BACKENDS)
def test_anyio_exceptions_both_ways(backend):
    async def fails():
        await anyio.sleep(0)
        raise KeyError("from async")

    def sync_code():
        with pytest.raises(KeyError, match="from async"):
            awaitlet(fails())
        raise LookupError("from sync")

    async def main():
        await async_def(sync_code)

    with pytest.raises(LookupError, match="from sync"):
        anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_anyio_cancellation_reaches_the_sync_code(backend):
    events = []

    def sync_code():
        try:
            awaitlet(anyio.sleep(60))
        except anyio.get_cancelled_exc_class():
            events.append("cancelled at awaitlet()")
            raise

    async def main():
        with anyio.move_on_after(0.02) as scope:
            await async_def(sync_code)
        return scope.cancelled_caught

    assert anyio.run(main, backend=backend) is True
    assert events == ["cancelled at awaitlet()"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_anyio_task_group_of_many_fibers(backend):
    count = 200
    results = []

    def worker(n):
        awaitlet(anyio.sleep(0.02))
        results.append(n)

    async def main():
        async with anyio.create_task_group() as group:
            for n in range(count):
                group.start_soon(async_def, worker, n)

    start = time.monotonic()
    anyio.run(main, backend=backend)
    assert sorted(results) == list(range(count))
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_anyio_to_thread_and_memory_streams_from_sync_code(backend):
    def producer(send_stream):
        with send_stream:
            for n in range(5):
                # Blocking work off the loop, then hand the result over.
                doubled = awaitlet(anyio.to_thread.run_sync(lambda n=n: n * 2))
                awaitlet(send_stream.send(doubled))

    def consumer(receive_stream, into):
        with receive_stream:
            while True:
                try:
                    into.append(awaitlet(receive_stream.receive()))
                except anyio.EndOfStream:
                    return

    async def main():
        received = []
        send_stream, receive_stream = anyio.create_memory_object_stream(0)
        async with anyio.create_task_group() as group:
            group.start_soon(async_def, producer, send_stream)
            group.start_soon(async_def, consumer, receive_stream, received)
        return received

    assert anyio.run(main, backend=backend) == [0, 2, 4, 6, 8]


class _UpperServer:
    """A blocking server on loopback, in a thread (no event loop): replies upper-cased."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                while data := connection.recv(1024):
                    connection.sendall(data.upper())

    def close(self):
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join()


@pytest.mark.parametrize("backend", BACKENDS)
def test_anyio_sockets_from_sync_code(backend):
    server = _UpperServer()

    def client(word):
        stream = awaitlet(anyio.connect_tcp("127.0.0.1", server.port))
        try:
            awaitlet(stream.send(word.encode()))
            return awaitlet(stream.receive()).decode()
        finally:
            awaitlet(stream.aclose())

    async def main():
        return [await async_def(client, word) for word in ("alpha", "beta")]

    try:
        assert anyio.run(main, backend=backend) == ["ALPHA", "BETA"]
    finally:
        server.close()
