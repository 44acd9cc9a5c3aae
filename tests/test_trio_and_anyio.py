"""async_def/awaitlet on Trio, and through anyio on both of its backends (asyncio and Trio).

awaitlet's fibers know nothing of asyncio: the task that awaits ``async_def(fn)`` awaits
whatever ``fn`` passes to ``awaitlet()``, so any event loop that drives coroutines drives
them.  These tests check it where it matters: Trio's checkpoints and sleeps, its
cancellation scopes (``trio.Cancelled`` raised in the sync code at its ``awaitlet()``),
nurseries of many fibers, real sockets, and the same through anyio.  The green standard
library (awaitlet.green) waits on Trio too: its tests are at the end.
"""

from __future__ import annotations

import socket
import threading
import time
import traceback

import pytest
from _support import (
    CERTIFICATE,
    PRIVATE_KEY,
    SLOW_HTTP_DELAY,
    UpperCaseServer,
    fresh_green_imports,
    lateness_percentile,
    serve_http,
)
from awaitlet import async_def, awaitlet
from awaitlet.decorators import AwaitInEventLoopError, async_, await_
from awaitlet.green import patch_blocking
from awaitlet.green import select as green_select
from awaitlet.green import selectors as green_selectors
from awaitlet.green import socket as green_socket
from awaitlet.green import threading as green_threading
from awaitlet.green import time as green_time

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


@pytest.mark.parametrize("backend", BACKENDS)
def test_anyio_sockets_from_sync_code(backend):
    server = UpperCaseServer()

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


# -- awaitlet.green on Trio (and anyio's trio backend) ------------------------------------

#: The ticker's period, and the most one of its wake-ups may be late while green calls wait
#: (a blocking call would make it at least SLOW_HTTP_DELAY late).
TICK = 0.005
MAX_LATENESS = 0.03


class Ticker:
    """A task that sleeps TICK seconds over and over and records how late each wake-up is.

    Written with anyio, so that it runs under ``trio.run`` and on both anyio backends.
    """

    def __init__(self):
        self.lateness = []
        self._since = time.perf_counter()
        self._group = None

    async def _run(self):
        while True:
            self._since = time.perf_counter()
            await anyio.sleep(TICK)
            self.lateness.append(time.perf_counter() - self._since - TICK)

    async def __aenter__(self):
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._run)
        await anyio.sleep(0)  # it is asleep now
        return self

    async def __aexit__(self, *exc_info):
        # A wake-up that is overdue but has not run yet counts too.
        self.lateness.append(time.perf_counter() - self._since - TICK)
        self._group.cancel_scope.cancel()
        return await self._group.__aexit__(*exc_info)

    @property
    def late(self):
        """How late its wake-ups were, at the 90th percentile (see ``lateness_percentile``)."""
        return lateness_percentile(self.lateness, 0.9)


@pytest.fixture(scope="module")
def green_http_client():
    """``http.client`` imported under ``patch_blocking()``, and a loopback HTTP server."""
    with fresh_green_imports("http.client"), serve_http() as address:
        with patch_blocking():
            import http.client
        yield http.client, address


def _fetch(client, address, path):
    connection = client.HTTPConnection(address, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _requests_at_once(run, open_group, client, address, prefix):
    """20 green HTTP requests, each in a task of a group from ``open_group()`` (a Trio
    nursery or an anyio task group), under ``run``: all answered, together, with the run
    responsive meanwhile."""
    count = 20

    async def main():
        results = {}

        async def one(index):
            results[index] = await async_def(_fetch, client, address, f"/slow/{prefix}{index}")

        async with Ticker() as ticker:
            start = time.perf_counter()
            async with open_group() as group:
                for index in range(count):
                    group.start_soon(one, index)
            elapsed = time.perf_counter() - start
        return results, elapsed, ticker.late

    results, elapsed, late = run(main)
    expected = {i: (200, f"you asked for /slow/{prefix}{i}".encode()) for i in range(count)}
    assert results == expected
    # One after the other they would take count * SLOW_HTTP_DELAY = 1 s.
    assert elapsed < count * SLOW_HTTP_DELAY / 3, elapsed
    assert late < MAX_LATENESS, late


def test_trio_green_http_requests_at_once_keep_the_run_responsive(green_http_client):
    client, address = green_http_client
    _requests_at_once(trio.run, trio.open_nursery, client, address, "")


@pytest.mark.parametrize("backend", BACKENDS)
def test_anyio_green_http_requests_at_once(green_http_client, backend):
    client, address = green_http_client

    def run(main):
        return anyio.run(main, backend=backend)

    _requests_at_once(run, anyio.create_task_group, client, address, "a")


def test_trio_green_socket_echo_large_transfer_and_timeout():
    payload = bytes(range(256)) * 8_000  # 2 MB: far more than the socket buffers hold

    def writer(sock):
        with sock:
            sock.sendall(payload)

    def reader(sock):
        with sock, sock.makefile("rb") as stream:
            return stream.read()

    def times_out(sock):
        sock.settimeout(0.1)
        start = time.perf_counter()
        with pytest.raises(TimeoutError, match="timed out"):
            sock.recv(10)
        return time.perf_counter() - start

    async def main():
        left, right = green_socket.socketpair()
        received = []

        async def read():
            received.append(await async_def(reader, left))

        async with Ticker() as ticker:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                nursery.start_soon(async_def, writer, right)
            quiet, other = green_socket.socketpair()
            with quiet, other:
                waited = await async_def(times_out, quiet)
        return received[0], waited, ticker.late

    received, waited, late = trio.run(main)
    assert received == payload
    assert 0.09 < waited < 1.0, waited
    assert late < MAX_LATENESS, late


def test_trio_green_tls_handshake_echo_and_timeout(tmp_path):
    from awaitlet.green import ssl as green_ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text(CERTIFICATE)
    key.write_text(PRIVATE_KEY)
    server_context = green_ssl.SSLContext(green_ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(cert), str(key))
    clients = 8

    def serve(server):
        for _ in range(clients):
            connection, _ = server.accept()
            with connection:
                connection.sendall(connection.recv(100).upper())
        # One more client, which the server keeps waiting for its answer.
        connection, _ = server.accept()
        with connection:
            connection.recv(100)
            green_time.sleep(0.5)

    def client(port, index):
        context = green_ssl.create_default_context(cafile=str(cert))
        raw = green_socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(f"client {index}".encode())
            return tls.recv(100)

    def impatient_client(port):
        context = green_ssl.create_default_context(cafile=str(cert))
        raw = green_socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.settimeout(0.1)
            tls.sendall(b"anyone?")
            with pytest.raises(TimeoutError) as caught:
                tls.recv(100)
            return str(caught.value)

    async def main():
        results = {}

        async def one(index):
            results[index] = await async_def(client, port, index)

        with green_socket.create_server(("127.0.0.1", 0)) as plain:
            port = plain.getsockname()[1]
            with server_context.wrap_socket(plain, server_side=True) as server:
                async with Ticker() as ticker:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(async_def, serve, server)
                        async with trio.open_nursery() as client_nursery:
                            for index in range(clients):
                                client_nursery.start_soon(one, index)
                        results["timeout"] = await async_def(impatient_client, port)
        return results, ticker.late

    results, late = trio.run(main)
    assert results == {
        **{index: f"CLIENT {index}".encode() for index in range(clients)},
        "timeout": "The read operation timed out",
    }
    assert late < MAX_LATENESS, late


def test_trio_green_select_poll_and_selectors_with_timeouts():
    def wait_each_way(left, other):
        start = time.perf_counter()
        nothing = green_select.select([left, other], [], [], 0.1)
        waited = time.perf_counter() - start
        # Several descriptors, reading and writing: the first ready one ends the wait.
        readable, _, _ = green_select.select([other, left], [], [], 5)
        left.recv(10)
        _, writable, _ = green_select.select([left, other], [left], [], 5)
        poller = green_select.poll()
        poller.register(left, green_select.POLLIN)
        poller.register(other, green_select.POLLIN)
        start = time.perf_counter()
        polled_nothing = poller.poll(100)
        polled_waited = time.perf_counter() - start
        polled = poller.poll(5000)
        left.recv(10)
        selector = green_selectors.DefaultSelector()
        selector.register(left, green_selectors.EVENT_READ, "left")
        selector.register(other, green_selectors.EVENT_READ, "other")
        start = time.perf_counter()
        selected_nothing = selector.select(0.1)
        selected_waited = time.perf_counter() - start
        events = selector.select(5)
        selector.close()
        return (
            (nothing, waited),
            (readable == [left], writable == [left]),
            (polled_nothing, polled_waited, polled),
            (selected_nothing, selected_waited, [(key.data, mask) for key, mask in events]),
        )

    async def main():
        left, right = green_socket.socketpair()
        other, other_peer = green_socket.socketpair()
        result = []

        async def run_it():
            result.append(await async_def(wait_each_way, left, other))

        with left, right, other, other_peer:
            async with Ticker() as ticker:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run_it)
                    for pause in (0.25, 0.25, 0.25):
                        await trio.sleep(pause)
                        right.send(b"ping")
        return result[0], ticker.late

    selected, late = trio.run(main)
    (nothing, waited), (readable, writable), polls, selections = selected
    assert nothing == ([], [], [])
    assert 0.09 < waited < 0.2, waited
    assert readable and writable
    polled_nothing, polled_waited, polled = polls
    assert polled_nothing == []
    assert 0.09 < polled_waited < 0.2, polled_waited
    assert [events for _, events in polled] == [green_select.POLLIN]
    selected_nothing, selected_waited, events = selections
    assert selected_nothing == []
    assert 0.09 < selected_waited < 0.2, selected_waited
    assert events == [("left", green_selectors.EVENT_READ)]
    assert late < MAX_LATENESS, late


def test_trio_green_time_sleep_runs_concurrently_and_blocks_off_a_fiber():
    async def main():
        async with Ticker() as ticker:
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(async_def, green_time.sleep, SLOW_HTTP_DELAY)
            elapsed = time.perf_counter() - start
        # In a Trio task but not on a fiber: nothing to suspend, the standard time.sleep.
        start = time.perf_counter()
        green_time.sleep(0.02)
        blocked = time.perf_counter() - start
        return elapsed, ticker.late, blocked

    elapsed, late, blocked = trio.run(main)
    assert SLOW_HTTP_DELAY <= elapsed < 0.3, elapsed
    assert late < MAX_LATENESS, late
    assert blocked >= 0.02

    async def bad_sleep(value):
        await async_def(green_time.sleep, value)

    with pytest.raises(ValueError):
        trio.run(bad_sleep, -1)


def test_trio_two_fibers_wait_on_one_socket():
    """Trio lets one task wait for a descriptor: the green calls share that wait."""

    def read(sock, into):
        into.append(sock.recv(10))

    def select(sock, into):
        ready, _, _ = green_select.select([sock], [], [], 5)
        into.append(("selected", len(ready)))

    def peek(sock, into):
        into.append(sock.recv(10, socket.MSG_PEEK))  # leaves the data for select() to see

    async def main():
        left, right = green_socket.socketpair()
        with left, right:
            received = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(async_def, read, left, received)
                nursery.start_soon(async_def, read, left, received)
                await trio.sleep(0.05)
                right.send(b"one")
                await trio.sleep(0.05)
                right.send(b"two")
            mixed = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(async_def, select, left, mixed)
                nursery.start_soon(async_def, peek, left, mixed)
                await trio.sleep(0.05)
                right.send(b"three")
            left.recv(10)
            # The fiber that waits is cancelled: the other one takes over the wait.
            taken_over = []
            async with trio.open_nursery() as nursery:
                first = trio.CancelScope()

                async def cancellable():
                    with first:
                        await async_def(read, left, taken_over)

                nursery.start_soon(cancellable)
                await trio.sleep(0.02)
                nursery.start_soon(async_def, read, left, taken_over)
                await trio.sleep(0.02)
                first.cancel()
                await trio.sleep(0.02)
                right.send(b"four")
            return received, mixed, taken_over, first.cancelled_caught

    received, mixed, taken_over, cancelled = trio.run(main)
    assert sorted(received) == [b"one", b"two"]
    assert sorted(mixed, key=str) == [("selected", 1), b"three"]
    assert taken_over == [b"four"]
    assert cancelled


def test_trio_cancellation_reaches_the_sync_code_blocked_in_recv():
    seen = []

    def blocked_reader(sock):
        try:
            return sock.recv(10)
        except trio.Cancelled:
            seen.append("cancelled in recv")
            raise
        finally:
            seen.append("finally ran")

    def blocked_select(sock, other):
        try:
            return green_select.select([sock, other], [], [])
        except trio.Cancelled:  # bare, not in an exception group
            seen.append("cancelled in select")
            raise

    async def main():
        left, right = green_socket.socketpair()
        other, other_peer = green_socket.socketpair()
        with left, right, other, other_peer:
            start = time.perf_counter()
            with trio.move_on_after(0.05) as scope:
                await async_def(blocked_reader, left)
            elapsed = time.perf_counter() - start
            with trio.move_on_after(0.05) as select_scope:
                await async_def(blocked_select, left, other)
            # The waits are gone: the next reader waits (no BusyResourceError) and gets data.
            right.send(b"after")
            again = await async_def(blocked_reader, left)
        return scope.cancelled_caught, select_scope.cancelled_caught, elapsed, again

    cancelled, select_cancelled, elapsed, again = trio.run(main)
    assert cancelled and select_cancelled
    assert elapsed < 1.0
    assert seen == [
        "cancelled in recv",
        "finally ran",
        "cancelled in select",
        "finally ran",
    ]
    assert again == b"after"


@pytest.mark.parametrize("backend", BACKENDS)
def test_anyio_cancellation_reaches_a_pending_green_recv(backend):
    seen = []

    def blocked_reader(sock):
        try:
            return sock.recv(10)
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled in recv")
            raise

    async def main():
        left, right = green_socket.socketpair()
        with left, right:
            with anyio.move_on_after(0.05) as scope:
                await async_def(blocked_reader, left)
            right.send(b"next")
            return scope.cancelled_caught, await async_def(blocked_reader, left)

    assert anyio.run(main, backend=backend) == (True, b"next")
    assert seen == ["cancelled in recv"]


def test_trio_green_threading_primitives():
    lock = green_threading.Lock()
    holders = 0
    most = 0

    def critical():
        nonlocal holders, most
        with lock:
            holders += 1
            most = max(most, holders)
            green_time.sleep(0.01)
            holders -= 1

    event = green_threading.Event()
    condition = green_threading.Condition()
    items = []

    def consumer():
        taken = []
        while len(taken) < 5:
            with condition:
                condition.wait_for(lambda: items, timeout=5)
                taken.extend(items)
                items.clear()
        return taken

    def producer():
        for value in range(5):
            green_time.sleep(0.005)
            with condition:
                items.append(value)
                condition.notify()

    rlock = green_threading.RLock()

    def owner(release):
        with rlock, rlock:  # reentrant in the same task
            release.wait(5)

    def other():
        with pytest.raises(RuntimeError):
            rlock.release()
        return rlock.acquire(timeout=0.05)

    semaphore = green_threading.BoundedSemaphore(3)
    inside = 0
    most_inside = 0

    def limited():
        nonlocal inside, most_inside
        with semaphore:
            inside += 1
            most_inside = max(most_inside, inside)
            green_time.sleep(0.01)
            inside -= 1

    barrier = green_threading.Barrier(4, timeout=5)
    with fresh_green_imports("queue"):
        with patch_blocking():
            import queue
    channel = queue.Queue(maxsize=2)

    def put_all():
        for item in range(6):
            channel.put(item)  # suspends while the queue is full

    def get_all():
        return [channel.get(timeout=5) for _ in range(6)]

    async def main():
        out = {}
        async with Ticker() as ticker:
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(async_def, critical)
            out["lock elapsed"] = time.perf_counter() - start
            # Set from an OS thread: the fibers' Trio run is woken through its token.
            woken = []

            async def wait_event():
                woken.append(await async_def(event.wait, 5))

            timer = threading.Timer(0.05, event.set)
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(wait_event)
                timer.start()
            timer.join()
            out["woken"] = woken
            out["event timeout"] = await async_def(green_threading.Event().wait, 0.05)

            async def consume():
                out["consumed"] = await async_def(consumer)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                nursery.start_soon(async_def, producer)

            release = green_threading.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(async_def, owner, release)
                await trio.sleep(0.01)
                out["other acquired"] = await async_def(other)
                release.set()

            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(async_def, limited)
            out["most inside"] = most_inside

            passed = []

            async def pass_barrier():
                passed.append(await async_def(barrier.wait))

            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(pass_barrier)
            out["barrier"] = sorted(passed)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(async_def, put_all)
                out["queue"] = await async_def(get_all)
        out["late"] = ticker.late
        return out

    out = trio.run(main)
    assert most == 1 and out["lock elapsed"] >= 0.05
    assert out["woken"] == [True] * 3
    assert out["event timeout"] is False
    assert out["consumed"] == list(range(5))
    assert out["other acquired"] is False
    assert out["most inside"] == 3
    assert out["barrier"] == [0, 1, 2, 3]
    assert out["queue"] == list(range(6))
    assert not lock.locked() and not rlock.locked()
    assert out["late"] < MAX_LATENESS, out["late"]


def test_trio_cancelled_condition_wait_takes_the_lock_back():
    condition = green_threading.Condition()
    seen = []

    def waiter():
        with condition:
            try:
                condition.wait()
            except trio.Cancelled:
                # Cancelled while another fiber held the lock: it is ours again all the same.
                seen.append(("cancelled, lock owned", condition._is_owned()))
                raise

    def holder():
        with condition:
            green_time.sleep(0.1)

    async def main():
        async with trio.open_nursery() as nursery:

            async def cancelled_waiter():
                with trio.move_on_after(0.03):
                    await async_def(waiter)

            nursery.start_soon(cancelled_waiter)
            await trio.sleep(0.01)
            nursery.start_soon(async_def, holder)

    trio.run(main)
    assert seen == [("cancelled, lock owned", True)]
    assert not condition._lock.locked()


def test_trio_guest_mode_green_calls_wait_on_the_task_that_runs_them():
    """Trio in guest mode on an asyncio loop: Trio's fibers wait on Trio, asyncio's on asyncio."""
    import asyncio

    def sleep_and_read(sock):
        green_time.sleep(0.02)
        return sock.recv(10)

    async def trio_main():
        left, right = green_socket.socketpair()
        with left, right:
            async with trio.open_nursery() as nursery:

                async def send_later():
                    await trio.sleep(0.05)
                    right.send(b"guest")

                nursery.start_soon(send_later)
                return await async_def(sleep_and_read, left)

    async def asyncio_main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        trio.lowlevel.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=done.set_result,
            host_uses_signal_set_wakeup_fd=True,
        )
        left, right = green_socket.socketpair()
        with left, right:
            loop.call_later(0.05, right.send, b"host")
            host = await async_def(sleep_and_read, left)
        return (await done).unwrap(), host

    assert asyncio.run(asyncio_main()) == (b"guest", b"host")


@pytest.mark.postgresql
def test_trio_pg8000_queries_from_many_fibers_at_once(postgres_server):
    """A sync PostgreSQL driver, unchanged, on 20 fibers of one Trio run."""
    with fresh_green_imports("pg8000"):
        with patch_blocking():
            import pg8000.native
    connections = 20
    delay = 0.05

    def connect():
        return pg8000.native.Connection(
            postgres_server.user,
            host="127.0.0.1",
            port=postgres_server.port,
            database=postgres_server.database,
            timeout=10,
        )

    def sleep_in_the_database(connection, index):
        rows = connection.run("SELECT pg_sleep(:delay), :index::int", delay=delay, index=index)
        return int(rows[0][1])

    async def main():
        opened = [await async_def(connect) for _ in range(connections)]
        results = {}

        async def one(index):
            results[index] = await async_def(sleep_in_the_database, opened[index], index)

        try:
            async with Ticker() as ticker:
                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for index in range(connections):
                        nursery.start_soon(one, index)
                elapsed = time.perf_counter() - start
        finally:
            for connection in opened:
                await async_def(connection.close)
        return results, elapsed, ticker.late

    results, elapsed, late = trio.run(main)
    assert results == {index: index for index in range(connections)}
    # One after the other: connections * delay = 1 s.
    assert delay <= elapsed < 0.4, elapsed
    assert late < MAX_LATENESS, late
