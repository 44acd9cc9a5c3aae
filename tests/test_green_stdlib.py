"""awaitlet.green: the socket, ssl, select, selectors, threading and time modules, and
patch_blocking(), with real I/O on loopback.

Sync code runs on fibers (`async_def`) while the event loop stays responsive: a ticker task
records how late its `asyncio.sleep(0.005)` wake-ups come, and the tests assert that no
wake-up was late by anything close to the time one blocking call takes.  The same modules
used outside a loop (or outside a fiber) behave like the standard library.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket as std_socket
import sys
import threading as std_threading
import time as std_time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _support import (
    CERTIFICATE,
    PRIVATE_KEY,
    SLOW_HTTP_DELAY,
    fresh_green_imports,
    lateness_percentile,
    serve_http,
)
from awaitlet import async_def, awaitlet
from awaitlet.green import patch_blocking
from awaitlet.green import select as green_select
from awaitlet.green import selectors as green_selectors
from awaitlet.green import socket as green_socket
from awaitlet.green import threading as green_threading
from awaitlet.green import time as green_time

#: How long the test HTTP server takes to answer /slow.  A request that blocked the loop
#: would make the ticker at least this late.
DELAY = SLOW_HTTP_DELAY
TICK = 0.005
#: The most a ticker wake-up may be late while green calls wait: well under DELAY.
MAX_LATENESS = 0.03


# -- helpers ---------------------------------------------------------------------------


class Ticker:
    """A task that sleeps TICK seconds over and over and records how late each wake-up is."""

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self._since = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self._since = std_time.perf_counter()
            await asyncio.sleep(TICK)
            self.lateness.append(std_time.perf_counter() - self._since - TICK)

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.sleep(0)  # it is asleep now
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        # A wake-up that is overdue but has not run yet counts too.
        self.lateness.append(std_time.perf_counter() - self._since - TICK)
        self._task.cancel()

    @property
    def late(self) -> float:
        """How late its wake-ups were, at the 90th percentile: a call that blocks the loop
        makes nearly all of them late, a busy machine only a few (the maximum would be one
        scheduling hiccup away from a failure)."""
        return lateness_percentile(self.lateness, 0.9)


async def gather_sync(fn: Callable[..., Any], *arg_lists: tuple[Any, ...]) -> list[Any]:
    """Run ``fn(*args)`` for each args tuple, each on its own fiber, all at once."""
    return await asyncio.gather(*(async_def(fn, *args) for args in arg_lists))


def run(coro: Any, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> Any:
    """Run ``coro`` to completion on a new loop (asyncio's, or ``loop_factory()``'s)."""
    loop = (loop_factory or asyncio.new_event_loop)()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(None, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # no uvloop on Windows
        pass
    else:
        factories.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return factories


#: The loops the I/O tests run on: asyncio's own, and uvloop (libuv) where it exists.
LOOPS = _loop_factories()


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    """A threaded HTTP server on loopback, independent of the loops under test."""
    with serve_http() as address:
        yield address


@pytest.fixture(scope="module")
def green_http() -> Iterator[tuple[Any, Any]]:
    """``http.client`` and ``urllib.request``, imported under ``patch_blocking()``."""
    with fresh_green_imports("http.client", "urllib.request"):
        with patch_blocking():
            import http.client
            import urllib.request
        yield http.client, urllib.request


@pytest.fixture
def listener() -> Iterator[std_socket.socket]:
    """A listening TCP socket on loopback that accepts nothing by itself."""
    with std_socket.create_server(("127.0.0.1", 0), backlog=64) as sock:
        yield sock


# -- patch_blocking --------------------------------------------------------------------


def test_patch_blocking_swaps_the_modules_for_the_block_and_restores_them() -> None:
    with fresh_green_imports("socketserver"):
        with patch_blocking():
            assert sys.modules["socket"] is green_socket
            assert sys.modules["threading"] is green_threading
            assert sys.modules["time"] is green_time
            assert sys.modules["select"] is green_select
            assert sys.modules["selectors"] is green_selectors
            import socketserver

            assert socketserver.socket is green_socket
            assert socketserver.selectors is green_selectors
            assert socketserver.threading is green_threading
        assert sys.modules["socket"] is std_socket
        assert sys.modules["threading"] is std_threading
        assert sys.modules["time"] is std_time
        # Imported first inside the block, so dropped again: the next import is standard.
        assert "socketserver" not in sys.modules
        import socketserver as again

        assert again is not socketserver
        assert again.socket is std_socket
        assert socketserver.socket is green_socket  # the name bound in the block stays green


def test_patch_blocking_partial_and_nested() -> None:
    with fresh_green_imports("socketserver"):
        with patch_blocking(["socket"]):
            assert sys.modules["socket"] is green_socket
            assert sys.modules["threading"] is std_threading
            with patch_blocking():
                # Only the outermost block patches.
                assert sys.modules["threading"] is std_threading
                import socketserver

                assert socketserver.socket is green_socket
            assert "socketserver" not in sys.modules
            assert sys.modules["socket"] is green_socket
        assert sys.modules["socket"] is std_socket


def test_patch_blocking_restores_after_an_exception_and_rejects_unknown_modules() -> None:
    with pytest.raises(KeyError, match="boom"):
        with patch_blocking():
            raise KeyError("boom")
    assert sys.modules["socket"] is std_socket
    with pytest.raises(ValueError, match="'os'"):
        with patch_blocking(["socket", "os"]):
            pass  # pragma: no cover
    assert sys.modules["socket"] is std_socket


def test_green_modules_are_drop_in() -> None:
    for name in std_socket.__all__:
        assert hasattr(green_socket, name), name
    for name in std_threading.__all__:
        assert hasattr(green_threading, name), name
    assert green_socket._GLOBAL_DEFAULT_TIMEOUT is std_socket._GLOBAL_DEFAULT_TIMEOUT
    assert green_socket.timeout is std_socket.timeout
    assert issubclass(green_socket.socket, std_socket.socket)
    assert green_time.monotonic is std_time.monotonic


# -- HTTP clients ------------------------------------------------------------------------


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_many_http_client_requests_at_once_keep_the_loop_responsive(
    http_server: str, green_http: tuple[Any, Any], loop_factory: Any
) -> None:
    client, _ = green_http
    count = 20

    def fetch(index: int) -> tuple[int, bytes]:
        connection = client.HTTPConnection(http_server, timeout=10)
        try:
            connection.request("GET", f"/slow/{index}")
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    async def main() -> tuple[list[Any], float, float]:
        async with Ticker() as ticker:
            start = std_time.perf_counter()
            results = await gather_sync(fetch, *((index,) for index in range(count)))
            elapsed = std_time.perf_counter() - start
        return results, elapsed, ticker.late

    results, elapsed, late = run(main(), loop_factory)
    assert results == [(200, f"you asked for /slow/{i}".encode()) for i in range(count)]
    # One after the other they would take count * DELAY = 1 s.
    assert elapsed < count * DELAY / 3, elapsed
    assert late < MAX_LATENESS, late


def test_many_urllib_requests_at_once(http_server: str, green_http: tuple[Any, Any]) -> None:
    _, request = green_http
    count = 10

    def fetch(index: int) -> bytes:
        with request.urlopen(f"http://{http_server}/slow/u{index}", timeout=10) as response:
            body: bytes = response.read()
            return body

    async def main() -> tuple[list[Any], float, float]:
        async with Ticker() as ticker:
            start = std_time.perf_counter()
            results = await gather_sync(fetch, *((index,) for index in range(count)))
            elapsed = std_time.perf_counter() - start
        return results, elapsed, ticker.late

    results, elapsed, late = run(main())
    assert results == [f"you asked for /slow/u{i}".encode() for i in range(count)]
    assert elapsed < count * DELAY / 2, elapsed
    assert late < MAX_LATENESS, late


def test_green_http_client_outside_a_loop_is_the_blocking_client(
    http_server: str, green_http: tuple[Any, Any]
) -> None:
    client, request = green_http
    connection = client.HTTPConnection(http_server, timeout=10)
    connection.request("GET", "/plain")
    assert connection.getresponse().read() == b"you asked for /plain"
    assert isinstance(connection.sock, green_socket.socket)
    assert connection.sock.gettimeout() == 10
    connection.close()
    with request.urlopen(f"http://{http_server}/sync", timeout=10) as response:
        assert response.read() == b"you asked for /sync"


def test_a_blocking_call_in_a_coroutine_not_on_a_fiber_blocks_as_the_stdlib(
    http_server: str, green_http: tuple[Any, Any]
) -> None:
    client, _ = green_http

    async def main() -> bytes:
        # On the loop, but not on a fiber: nothing to suspend, so the call blocks.
        connection = client.HTTPConnection(http_server, timeout=10)
        connection.request("GET", "/in-coroutine")
        body: bytes = connection.getresponse().read()
        connection.close()
        return body

    assert run(main()) == b"you asked for /in-coroutine"


# -- sockets -----------------------------------------------------------------------------


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_recv_timeout_raises_socket_timeout_on_the_fiber_with_a_traceback(
    listener: std_socket.socket, loop_factory: Any
) -> None:
    port = listener.getsockname()[1]

    def wait_for_silence() -> None:
        sock = green_socket.create_connection(("127.0.0.1", port), timeout=0.2)
        with sock:
            sock.recv(10)

    async def main() -> tuple[BaseException, float, float]:
        async with Ticker() as ticker:
            start = std_time.perf_counter()
            with pytest.raises(std_socket.timeout) as caught:
                await async_def(wait_for_silence)
            elapsed = std_time.perf_counter() - start
        return caught.value, elapsed, ticker.late

    error, elapsed, late = run(main(), loop_factory)
    assert isinstance(error, TimeoutError)
    assert str(error) == "timed out"
    assert 0.18 < elapsed < 1.0, elapsed
    assert late < MAX_LATENESS, late
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert "wait_for_silence" in frames
    assert "recv" in frames


def test_timeout_semantics_are_the_users_not_the_descriptors(
    listener: std_socket.socket,
) -> None:
    port = listener.getsockname()[1]

    def on_fiber() -> tuple[Any, ...]:
        sock = green_socket.socket()
        sock.settimeout(0.1)
        sock.connect(("127.0.0.1", port))
        seen = (sock.gettimeout(), sock.getblocking(), sock.timeout)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        after = (sock.gettimeout(), sock.getblocking())
        sock.settimeout(0.05)
        return sock, seen, after

    sock, seen, after = run(async_def(on_fiber))
    assert seen == (0.1, True, 0.1)
    assert after == (0.0, False)
    # Back outside any fiber: the standard call, with the user's timeout.
    start = std_time.perf_counter()
    with pytest.raises(TimeoutError):
        sock.recv(1)
    assert 0.04 < std_time.perf_counter() - start < 1.0
    sock.settimeout(None)
    assert sock.gettimeout() is None and sock.getblocking()

    def wait_then_detach(sock: green_socket.socket) -> int:
        sock.settimeout(0.01)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(None)
        return sock.detach()

    # Detached after waiting on the loop, the descriptor is in the user's (blocking) mode.
    fd = run(async_def(wait_then_detach, sock))
    assert os.get_blocking(fd)
    os.close(fd)
    with pytest.raises(ValueError):
        sock.settimeout(-1)
    with pytest.raises(TypeError):
        sock.settimeout("soon")
    sock.close()


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_socketpair_makefile_and_large_sendall_between_fibers(loop_factory: Any) -> None:
    payload = bytes(range(256)) * 20_000  # 5 MB: far more than the socket buffers hold

    def writer(sock: green_socket.socket) -> None:
        with sock, sock.makefile("wb") as stream:
            stream.write(b"first line\n")
            stream.write(b"second line\n")
            stream.flush()
            sock.sendall(payload)

    def reader(sock: green_socket.socket) -> tuple[bytes, bytes, bytes]:
        with sock, sock.makefile("rb") as stream:
            first = stream.readline()
            second = stream.readline()
            rest = stream.read()
        return first, second, rest

    async def main() -> tuple[Any, float]:
        left, right = green_socket.socketpair()
        assert isinstance(left, green_socket.socket)
        async with Ticker() as ticker:
            results = await asyncio.gather(async_def(reader, left), async_def(writer, right))
        return results[0], ticker.late

    (first, second, rest), _ = run(main(), loop_factory)
    assert (first, second) == (b"first line\n", b"second line\n")
    assert rest == payload


def test_sendfile_sendmsg_recvmsg_and_recv_into_between_fibers(tmp_path: Any) -> None:
    payload = bytes(range(256)) * 8_000  # 2 MB through sendfile
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)

    def sender(sock: green_socket.socket) -> int:
        with sock:
            sock.sendmsg([b"head", b"er"])
            with source.open("rb") as file:
                return sock.sendfile(file)

    def receiver(sock: green_socket.socket) -> tuple[bytes, bytes]:
        with sock:
            header, _, _, _ = sock.recvmsg(6)
            received = bytearray()
            chunk = bytearray(65536)
            while count := sock.recv_into(chunk):
                received += chunk[:count]
        return header, bytes(received)

    async def main() -> list[Any]:
        left, right = green_socket.socketpair()
        return await asyncio.gather(async_def(sender, left), async_def(receiver, right))

    sent, (header, received) = run(main())
    assert header == b"header"
    assert sent == len(payload)
    assert received == payload


def test_accept_connect_send_recv_and_a_closed_peer_on_fibers() -> None:
    def serve(server: green_socket.socket) -> list[bytes]:
        connection, _ = server.accept()
        assert isinstance(connection, green_socket.socket)
        received = []
        with connection:
            while data := connection.recv(4):
                received.append(data)
                connection.sendall(data.upper())
        return received

    def client(port: int) -> bytes:
        with green_socket.socket() as sock:
            sock.connect(("127.0.0.1", port))
            sock.send(b"hello")
            echoed = b""
            while len(echoed) < 5:
                echoed += sock.recv(10)
        return echoed

    async def main() -> list[Any]:
        server = green_socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        with server:
            return await asyncio.gather(async_def(serve, server), async_def(client, port))

    received, echoed = run(main())
    assert b"".join(received) == b"hello"
    assert echoed == b"HELLO"


def test_peer_closing_gives_eof_then_errors_on_send(listener: std_socket.socket) -> None:
    port = listener.getsockname()[1]

    def talk_to_a_closed_peer() -> tuple[bytes, BaseException]:
        with green_socket.create_connection(("127.0.0.1", port)) as sock:
            peer, _ = listener.accept()
            peer.setsockopt(std_socket.SOL_SOCKET, std_socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            peer.close()  # linger 0: a reset
            try:
                eof = sock.recv(10)
            except ConnectionResetError:
                eof = b"<reset>"
            with pytest.raises(OSError) as caught:
                for _ in range(100):
                    sock.sendall(b"x" * 65536)
        return eof, caught.value

    eof, error = run(async_def(talk_to_a_closed_peer))
    assert eof in (b"", b"<reset>")
    assert isinstance(error, (BrokenPipeError, ConnectionResetError))


def test_connection_refused_on_a_fiber() -> None:
    with std_socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused

        def connect() -> int:
            with green_socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
                sock2 = green_socket.socket()
                with sock2, pytest.raises(ConnectionRefusedError):
                    sock2.connect(("127.0.0.1", port))
            return 0

        assert run(async_def(connect)) == 0


def test_udp_sendto_recvfrom_on_fibers() -> None:
    def server(sock: green_socket.socket) -> None:
        data, address = sock.recvfrom(100)
        sock.sendto(data[::-1], address)

    def client(port: int) -> bytes:
        with green_socket.socket(green_socket.AF_INET, green_socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(b"stressed", ("127.0.0.1", port))
            data, _ = sock.recvfrom(100)
        return data

    async def main() -> list[Any]:
        with green_socket.socket(green_socket.AF_INET, green_socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            return await asyncio.gather(async_def(server, sock), async_def(client, port))

    assert run(main())[1] == b"desserts"


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_cancelling_the_task_reaches_sync_code_blocked_in_recv(
    listener: std_socket.socket, loop_factory: Any
) -> None:
    port = listener.getsockname()[1]
    seen: list[str] = []

    def blocked_reader(sock: green_socket.socket) -> bytes:
        try:
            return sock.recv(10)
        except asyncio.CancelledError:
            seen.append("cancelled in recv")
            raise

    async def main() -> tuple[bool, bytes]:
        loop = asyncio.get_running_loop()
        sock = green_socket.create_connection(("127.0.0.1", port))
        peer, _ = listener.accept()
        with sock, peer:
            task = asyncio.ensure_future(async_def(blocked_reader, sock))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Its wait on the loop is gone, and the socket works for the next reader.
            still_registered = loop.remove_reader(sock.fileno())
            peer.sendall(b"later")
            data = await async_def(sock.recv, 10)
        return still_registered, data

    still_registered, data = run(main(), loop_factory)
    assert seen == ["cancelled in recv"]
    assert not still_registered
    assert data == b"later"


def test_two_fibers_waiting_on_one_socket_are_both_woken() -> None:
    def wait_readable(sock: green_socket.socket) -> list[Any]:
        readable, _, _ = green_select.select([sock], [], [], 5)
        return readable

    async def main() -> list[Any]:
        left, right = green_socket.socketpair()
        with left, right:
            waiters = [asyncio.ensure_future(async_def(wait_readable, left)) for _ in range(2)]
            await asyncio.sleep(0.02)
            right.send(b"x")
            results = await asyncio.gather(*waiters)
        return [[sock is left for sock in result] for result in results]

    assert run(main()) == [[True], [True]]


# -- ssl ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_text(CERTIFICATE)
    key.write_text(PRIVATE_KEY)
    return str(cert), str(key)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_tls_handshake_and_echo_between_fibers(
    tls_files: tuple[str, str], loop_factory: Any
) -> None:
    from awaitlet.green import ssl as green_ssl

    cert, key = tls_files
    clients = 8

    def serve(server: Any) -> None:
        for _ in range(clients):
            connection, _ = server.accept()
            assert isinstance(connection, green_ssl.SSLSocket)
            with connection:
                connection.sendall(connection.recv(100).upper())

    def client(port: int, index: int) -> bytes:
        context = green_ssl.create_default_context(cafile=cert)
        assert isinstance(context, green_ssl.SSLContext)
        raw = green_socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert isinstance(tls, green_ssl.SSLSocket)
            assert tls.gettimeout() == 10
            tls.sendall(f"hello {index}".encode())
            reply: bytes = tls.recv(100)
            return reply

    async def main() -> tuple[list[Any], float]:
        context = green_ssl.SSLContext(green_ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        async with Ticker() as ticker:
            with green_socket.create_server(("127.0.0.1", 0), backlog=64) as plain:
                port = plain.getsockname()[1]
                with context.wrap_socket(plain, server_side=True) as server:
                    results = await asyncio.gather(
                        async_def(serve, server),
                        *(async_def(client, port, index) for index in range(clients)),
                    )
        return results[1:], ticker.late

    replies, late = run(main(), loop_factory)
    assert replies == [f"HELLO {index}".encode() for index in range(clients)]
    assert late < MAX_LATENESS, late


def test_tls_read_timeout_on_a_fiber(tls_files: tuple[str, str]) -> None:
    from awaitlet.green import ssl as green_ssl

    cert, key = tls_files

    def silent_server(server: Any) -> None:
        connection, _ = server.accept()  # handshakes, then says nothing
        with connection:
            green_time.sleep(0.5)

    def client(port: int) -> BaseException:
        context = green_ssl.create_default_context(cafile=cert)
        raw = green_socket.create_connection(("127.0.0.1", port), timeout=0.1)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            with pytest.raises(TimeoutError) as caught:
                tls.recv(10)
        return caught.value

    async def main() -> BaseException:
        context = green_ssl.SSLContext(green_ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        with green_socket.create_server(("127.0.0.1", 0)) as plain:
            port = plain.getsockname()[1]
            with context.wrap_socket(plain, server_side=True) as server:
                _, error = await asyncio.gather(
                    async_def(silent_server, server), async_def(client, port)
                )
        return error  # type: ignore[no-any-return]

    error = run(main())
    assert "timed out" in str(error)


def test_green_ssl_outside_a_loop(tls_files: tuple[str, str]) -> None:
    import ssl as std_ssl

    from awaitlet.green import ssl as green_ssl

    cert, key = tls_files
    server_context = std_ssl.SSLContext(std_ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    with std_socket.create_server(("127.0.0.1", 0)) as plain:
        port = plain.getsockname()[1]

        def serve() -> None:
            connection, _ = plain.accept()
            with server_context.wrap_socket(connection, server_side=True) as tls:
                tls.sendall(tls.recv(100)[::-1])

        thread = std_threading.Thread(target=serve)
        thread.start()
        context = green_ssl.create_default_context(cafile=cert)
        with context.wrap_socket(
            green_socket.create_connection(("127.0.0.1", port), timeout=5),
            server_hostname="localhost",
        ) as tls:
            tls.sendall(b"abc")
            assert tls.recv(100) == b"cba"
        thread.join()


# -- select and selectors ----------------------------------------------------------------


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_select_poll_and_selectors_wait_on_the_loop(loop_factory: Any) -> None:
    def wait_each_way(sock: green_socket.socket) -> tuple[Any, ...]:
        start = std_time.perf_counter()
        nothing = green_select.select([sock], [], [], 0.1)
        waited = std_time.perf_counter() - start
        readable, _, _ = green_select.select([sock], [], [], 5)
        sock.recv(10)
        _, writable, _ = green_select.select([], [sock], [], 5)
        poller = green_select.poll()
        poller.register(sock, green_select.POLLIN)
        polled = poller.poll(5000)
        sock.recv(10)
        selector = green_selectors.DefaultSelector()
        selector.register(sock, green_selectors.EVENT_READ, "data")
        events = selector.select(5)
        selector.close()
        return nothing, waited, readable, writable, polled, [(k.data, e) for k, e in events]

    async def main() -> tuple[Any, float]:
        left, right = green_socket.socketpair()
        async with Ticker() as ticker:
            with left, right:
                task = asyncio.ensure_future(async_def(wait_each_way, left))
                for pause in (0.25, 0.15, 0.15):
                    await asyncio.sleep(pause)
                    right.send(b"ping")
                result = await task
        return result, ticker.late

    (nothing, waited, readable, writable, polled, events), late = run(main(), loop_factory)
    assert nothing == ([], [], [])
    assert 0.09 < waited < 0.2
    assert len(readable) == 1 and len(writable) == 1
    assert [events for _, events in polled] == [green_select.POLLIN]
    assert events == [("data", green_selectors.EVENT_READ)]
    assert late < MAX_LATENESS, late


def test_select_outside_a_loop_is_the_standard_select() -> None:
    left, right = green_socket.socketpair()
    with left, right:
        assert green_select.select([left], [], [], 0) == ([], [], [])
        right.send(b"x")
        assert green_select.select([left], [], [], 1) == ([left], [], [])
        with pytest.raises(ValueError):
            green_select.select([left], [], [], -1)
        selector = green_selectors.DefaultSelector()
        selector.register(left, green_selectors.EVENT_READ)
        assert len(selector.select(1)) == 1
        selector.close()


# -- time --------------------------------------------------------------------------------


def test_time_sleep_on_fibers_runs_concurrently() -> None:
    async def main() -> tuple[float, float]:
        async with Ticker() as ticker:
            start = std_time.perf_counter()
            await gather_sync(green_time.sleep, *((DELAY,) for _ in range(20)))
            elapsed = std_time.perf_counter() - start
        return elapsed, ticker.late

    elapsed, late = run(main())
    assert DELAY <= elapsed < 0.3, elapsed
    assert late < MAX_LATENESS, late
    start = std_time.perf_counter()
    green_time.sleep(0.02)  # outside a loop: time.sleep
    assert std_time.perf_counter() - start >= 0.02
    with pytest.raises(ValueError):
        run(async_def(green_time.sleep, -1))
    with pytest.raises(TypeError):
        run(async_def(green_time.sleep, "1"))


# -- threading ---------------------------------------------------------------------------


def test_lock_serialises_fibers_without_blocking_the_loop() -> None:
    lock = green_threading.Lock()
    holders = 0
    most = 0

    def critical() -> None:
        nonlocal holders, most
        with lock:
            holders += 1
            most = max(most, holders)
            green_time.sleep(0.01)
            holders -= 1

    async def main() -> tuple[float, float]:
        async with Ticker() as ticker:
            start = std_time.perf_counter()
            await gather_sync(critical, *(() for _ in range(10)))
            elapsed = std_time.perf_counter() - start
        return elapsed, ticker.late

    elapsed, late = run(main())
    assert most == 1
    assert elapsed >= 0.1
    assert late < MAX_LATENESS, late
    assert not lock.locked()


def test_lock_timeout_and_non_blocking_on_a_fiber_and_off_it() -> None:
    lock = green_threading.Lock()
    lock.acquire()

    def try_it() -> tuple[bool, bool, float]:
        start = std_time.perf_counter()
        timed = lock.acquire(timeout=0.1)
        waited = std_time.perf_counter() - start
        return lock.acquire(False), timed, waited

    immediate, timed, waited = run(async_def(try_it))
    assert (immediate, timed) == (False, False)
    assert 0.09 < waited < 0.5
    assert lock.acquire(False) is False
    with pytest.raises(ValueError):
        lock.acquire(False, 1)
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


def test_lock_shared_with_an_os_thread() -> None:
    lock = green_threading.Lock()
    held = std_threading.Event()

    def thread_holds_it() -> None:
        with lock:
            held.set()
            std_time.sleep(0.15)

    def fiber_waits() -> float:
        start = std_time.perf_counter()
        with lock:
            return std_time.perf_counter() - start

    async def main() -> tuple[float, float]:
        thread = std_threading.Thread(target=thread_holds_it)
        thread.start()
        await asyncio.get_running_loop().run_in_executor(None, held.wait)
        async with Ticker() as ticker:
            waited = await async_def(fiber_waits)
        thread.join()
        return waited, ticker.late

    waited, late = run(main())
    assert 0.05 < waited < 1.0
    assert late < MAX_LATENESS, late


def test_event_set_from_another_thread_wakes_fibers() -> None:
    event = green_threading.Event()

    async def main() -> tuple[list[Any], float]:
        async with Ticker() as ticker:
            waiters = gather_sync(event.wait, *((5,) for _ in range(5)))
            timer = std_threading.Timer(0.1, event.set)
            timer.start()
            results = await waiters
            timer.join()
        return results, ticker.late

    results, late = run(main())
    assert results == [True] * 5
    assert late < MAX_LATENESS, late
    event.clear()
    assert run(async_def(event.wait, 0.05)) is False
    assert event.wait(0.01) is False  # outside a loop


def test_condition_producer_consumer_between_fibers() -> None:
    condition = green_threading.Condition()
    items: list[int] = []

    def consumer() -> list[int]:
        taken = []
        while len(taken) < 10:
            with condition:
                condition.wait_for(lambda: items, timeout=5)
                taken.extend(items)
                items.clear()
        return taken

    def producer() -> None:
        for value in range(10):
            green_time.sleep(0.005)
            with condition:
                items.append(value)
                condition.notify()

    async def main() -> list[Any]:
        return await asyncio.gather(async_def(consumer), async_def(producer))

    taken, _ = run(main())
    assert taken == list(range(10))
    with pytest.raises(RuntimeError, match="un-acquired"):
        condition.notify()


def test_semaphore_limits_concurrency_of_fibers() -> None:
    semaphore = green_threading.BoundedSemaphore(3)
    inside = 0
    most = 0

    def work() -> None:
        nonlocal inside, most
        with semaphore:
            inside += 1
            most = max(most, inside)
            green_time.sleep(0.02)
            inside -= 1

    run(gather_sync(work, *(() for _ in range(12))))
    assert most == 3
    with pytest.raises(ValueError, match="too many"):
        semaphore.release()


def test_rlock_is_owned_per_task_on_fibers() -> None:
    rlock = green_threading.RLock()

    def owner(release: green_threading.Event) -> int:
        with rlock:
            with rlock:  # reentrant in the same task
                release.wait(5)
        return 1

    def other() -> tuple[bool, BaseException | None]:
        error = None
        try:
            rlock.release()
        except RuntimeError as caught:
            error = caught
        return rlock.acquire(timeout=0.05), error

    async def main() -> tuple[Any, Any]:
        release = green_threading.Event()
        holder = asyncio.ensure_future(async_def(owner, release))
        await asyncio.sleep(0.01)
        attempt = await async_def(other)
        release.set()
        return attempt, await holder

    (acquired, error), _ = run(main())
    assert acquired is False
    assert isinstance(error, RuntimeError)
    assert not rlock.locked()


def test_cancelled_lock_waiter_does_not_swallow_the_wake_up() -> None:
    lock = green_threading.Lock()
    order: list[str] = []

    def waiter(name: str) -> None:
        try:
            with lock:
                order.append(name)
        except asyncio.CancelledError:
            order.append(f"{name} cancelled")
            raise

    async def main() -> None:
        lock.acquire()
        first = asyncio.ensure_future(async_def(waiter, "first"))
        second = asyncio.ensure_future(async_def(waiter, "second"))
        await asyncio.sleep(0.01)
        lock.release()  # wakes "first"...
        first.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 2)

    run(main())
    assert order == ["first cancelled", "second"]
    assert not lock.locked()


def test_queue_imported_under_patch_blocking_hands_items_between_fibers() -> None:
    with fresh_green_imports("queue"):
        with patch_blocking():
            import queue
    assert queue.threading is green_threading
    channel = queue.Queue(maxsize=2)

    def produce() -> None:
        for item in range(10):
            channel.put(item)  # blocks (suspends) while the queue is full

    def consume() -> tuple[list[int], bool]:
        items = [channel.get() for _ in range(10)]
        try:
            channel.get(timeout=0.05)
        except queue.Empty:
            return items, True
        return items, False

    async def main() -> tuple[list[Any], float]:
        async with Ticker() as ticker:
            results = await asyncio.gather(async_def(consume), async_def(produce))
        return results, ticker.late

    ((items, empty), _), late = run(main())
    assert items == list(range(10))
    assert empty
    assert late < MAX_LATENESS, late


def test_barrier_on_fibers() -> None:
    barrier = green_threading.Barrier(4, timeout=5)
    assert run(gather_sync(barrier.wait, *(() for _ in range(4)))) is not None
    assert sorted(run(gather_sync(barrier.wait, *(() for _ in range(4))))) == [0, 1, 2, 3]


# -- a sync database driver --------------------------------------------------------------


@pytest.mark.postgresql
def test_pg8000_queries_from_many_fibers_at_once(postgres_server: Any) -> None:
    with fresh_green_imports("pg8000"):
        with patch_blocking():
            import pg8000.native
    connections = 20

    def sleep_in_the_database(index: int) -> int:
        connection = pg8000.native.Connection(
            postgres_server.user,
            host="127.0.0.1",
            port=postgres_server.port,
            database=postgres_server.database,
            timeout=10,
        )
        try:
            connection.run("SELECT 1")  # connected before the timed part
            connected.append(index)
            awaitlet(ready.wait())
            rows = connection.run("SELECT pg_sleep(:delay), :index::int", delay=DELAY, index=index)
            return int(rows[0][1])
        finally:
            connection.close()

    connected: list[int] = []
    ready = asyncio.Event()

    async def main() -> tuple[list[Any], float, float]:
        loop = asyncio.get_running_loop()
        tasks = [
            asyncio.ensure_future(async_def(sleep_in_the_database, index))
            for index in range(connections)
        ]
        while len(connected) < connections and not any(task.done() for task in tasks):
            await asyncio.sleep(0.01)
        async with Ticker() as ticker:
            start = loop.time()
            ready.set()
            results = await asyncio.gather(*tasks)
            elapsed = loop.time() - start
        return results, elapsed, ticker.late

    results, elapsed, late = run(main())
    assert results == list(range(connections))
    # One after the other: connections * DELAY = 1 s.
    assert DELAY <= elapsed < 0.25, elapsed
    assert late < MAX_LATENESS, late


def test_green_threading_between_os_threads_is_the_standard_behaviour() -> None:
    condition = green_threading.Condition()
    semaphore = green_threading.Semaphore(0)
    items: list[int] = []

    def producer() -> None:
        for value in range(5):
            with condition:
                items.append(value)
                condition.notify()
            semaphore.release()

    thread = std_threading.Thread(target=producer)
    thread.start()
    for _ in range(5):
        assert semaphore.acquire(timeout=5)
    with condition:
        assert condition.wait_for(lambda: len(items) == 5, timeout=5)
    thread.join()
    assert items == list(range(5))
    assert semaphore.acquire(timeout=0.01) is False
