"""Time awaitlet.green against greenletio's green modules on the real greenlet, in one run.

    python benches/bridge_green.py [--greenlet-dir DIR] [--repeat N]

A small HTTP/1.1 server (asyncio, keep-alive) runs in a process of its own on loopback.
Each side runs in a fresh interpreter: awaitlet (``async_def`` and ``awaitlet.green``; no
greenlet importable) and greenletio 0.11.0 (``async_`` and ``greenletio.green``, on the real
greenlet from a ``pip install --target`` directory put first on ``PYTHONPATH``; made in a
temporary directory unless ``--greenlet-dir`` names one that holds greenlet and greenletio).
Both import ``http.client`` under their own ``patch_blocking()``.  Cases:

- ``http keep-alive``: 50 fibers at once, each sending 20 GETs over one ``http.client``
  connection; the time is per request.
- ``http new connection``: 50 fibers at once, each opening 4 connections of one GET each.
- ``http 50 x 50 ms``: 50 requests at once to a URL the server answers after 50 ms; the
  time is the whole batch (one delay if nothing blocks the loop, 2.5 s if everything does).
- ``tcp round trip``: two fibers in the process, one byte there and back over a loopback
  TCP connection, per round trip.
- ``time.sleep(0)``: 100 fibers yielding to the loop with the green ``time.sleep(0)``.
- ``Lock uncontended``: ``with lock:`` in one fiber on the green ``threading.Lock``.

Each figure is the best of ``--repeat`` runs (default 5), in microseconds (per operation or per
batch as said).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from originals import argument_parser, best, compared, installed, print_table, run_sides

KINDS = ("awaitlet", "greenletio")  # ours, then the originals
GREENLET = "greenlet==3.5.6"
GREENLETIO = "greenletio==0.11.0"
FIBERS = 50


# -- the server (a process of its own) -------------------------------------------------


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            if request.startswith(b"GET /slow"):
                await asyncio.sleep(0.05)
            body = b"hello"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def server_main() -> None:
    async def main() -> None:
        server = await asyncio.start_server(_serve_connection, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        # Serve until the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(main())


# -- the cases (in a child process) ---------------------------------------------------


def child(kind: str, port: int, repeat: int) -> None:
    if kind == "awaitlet":
        from awaitlet import async_def
        from awaitlet.green import patch_blocking

        def run_sync(fn: Callable[..., Any], *args: Any) -> Any:
            return async_def(fn, *args)

    else:
        import greenlet
        from greenletio import async_, patch_blocking  # type: ignore[import-not-found]

        if getattr(greenlet, "__awaitlet_facade__", False):
            raise SystemExit(f"expected the real greenlet, got {greenlet.__file__}")

        def run_sync(fn: Callable[..., Any], *args: Any) -> Any:
            return async_(fn)(*args)

    with patch_blocking():
        import http.client
        import socket
        import threading
        import time as green_time

    def best_run(batch: Callable[[], Any], operations: int) -> float:
        """Best of `repeat` runs of the coroutine function `batch`, in µs per operation."""
        return best(lambda _: asyncio.run(batch()), operations, repeat) / 1000

    def keep_alive(requests: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(requests):
            connection.request("GET", "/")
            assert connection.getresponse().read() == b"hello"
        connection.close()

    def new_connections(requests: int, path: str = "/") -> None:
        for _ in range(requests):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", path)
            assert connection.getresponse().read() == b"hello"
            connection.close()

    def gather(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        async def batch() -> None:
            await asyncio.gather(*(run_sync(fn, *args) for _ in range(FIBERS)))

        return batch

    def round_trips(count: int) -> Callable[[], Any]:
        def echo(server: Any) -> None:
            connection, _ = server.accept()
            while data := connection.recv(1):
                connection.send(data)
            connection.close()

        def ping(address: Any) -> None:
            sock = socket.socket()
            sock.connect(address)
            for _ in range(count):
                sock.send(b"x")
                sock.recv(1)
            sock.close()

        async def batch() -> None:
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen()
            await asyncio.gather(run_sync(echo, server), run_sync(ping, server.getsockname()))
            server.close()

        return batch

    def sleeps(count: int) -> None:
        for _ in range(count):
            green_time.sleep(0)

    async def many_sleeps() -> None:
        await asyncio.gather(*(run_sync(sleeps, 100) for _ in range(100)))

    def locks(count: int) -> Callable[[], Any]:
        def loop(lock: Any) -> None:
            for _ in range(count):
                with lock:
                    pass

        async def batch() -> None:
            await run_sync(loop, threading.Lock())

        return batch

    results = {
        "http keep-alive": best_run(gather(keep_alive, 20), FIBERS * 20),
        "http new connection": best_run(gather(new_connections, 4), FIBERS * 4),
        "http 50 x 50 ms": best_run(gather(new_connections, 1, "/slow"), 1),
        "tcp round trip": best_run(round_trips(5000), 5000),
        "time.sleep(0)": best_run(many_sleeps, 100 * 100),
        "Lock uncontended": best_run(locks(20000), 20000),
    }
    print(json.dumps(results))


def main() -> int:
    parser = argument_parser(__doc__, "--greenlet-dir", "a pip --target dir of greenletio", KINDS)
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        server_main()
        return 0
    if args.child:
        child(args.child, args.port, args.repeat)
        return 0

    server = subprocess.Popen(
        [sys.executable, __file__, "--server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with installed(args.greenlet_dir, (GREENLET, GREENLETIO), "greenletio") as target:
            ours, theirs = run_sides(__file__, KINDS, args.repeat, target, "--port", str(port))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)

    print(f"CPython {sys.version.split()[0]}; µs, best of {args.repeat} ({time.strftime('%F')})")
    print()
    header = ("case", "awaitlet.green (µs)", "greenletio (µs)", "greenletio / awaitlet")
    print_table(header, compared(ours, theirs, ".1f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
