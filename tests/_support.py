"""Helpers shared by the test modules (imported as ``import _support``)."""

from __future__ import annotations

import contextlib
import http.server
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import awaitlet

SCRIPTS_DIR = pathlib.Path(__file__).resolve().parent / "scripts"

CRASH_MARKERS = ("Fatal Python error", "Segmentation fault", "Aborted", "core dumped")


class Yield:
    """Awaitable that hands ``value`` to whoever drives the coroutine.

    ``await Yield(v)`` suspends the whole await chain; the driver's ``send(x)``
    resumes it and ``x`` becomes the result of the await.
    """

    def __init__(self, value=None):
        self.value = value

    def __await__(self):
        return (yield self.value)


async def returns(value):
    return value


async def raises(exc):
    raise exc


@dataclass
class ScriptResult:
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"exit code {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n"
            f"--- stderr ---\n{self.stderr}"
        )


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    package_parent = str(pathlib.Path(awaitlet.__file__).resolve().parent.parent)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = package_parent + (os.pathsep + existing if existing else "")
    env["PYTHONFAULTHANDLER"] = "1"
    env.pop("PYTHONASYNCIODEBUG", None)
    return env


def run_script(name: str, *args: str, timeout: float = 120) -> ScriptResult:
    """Run ``tests/scripts/<name>`` with the current interpreter and the same awaitlet."""
    completed = subprocess.run(
        [sys.executable, str(SCRIPTS_DIR / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_subprocess_env(),
        cwd=str(SCRIPTS_DIR),
    )
    return ScriptResult(completed.returncode, completed.stdout, completed.stderr)


def assert_script_succeeded(result: ScriptResult, expected_stdout_lines: list[str]) -> None:
    for marker in CRASH_MARKERS:
        assert marker not in result.stderr, result.describe()
    assert result.returncode == 0, result.describe()
    assert result.stdout.splitlines() == expected_stdout_lines, result.describe()


def resident_memory_bytes() -> int | None:
    """Current resident set size of this process, or None where it can't be read."""
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


# -- awaitlet.green: fresh imports, an HTTP server ---------------------------------------

#: How long serve_http()'s server takes to answer a path that starts with /slow.
SLOW_HTTP_DELAY = 0.05


def lateness_percentile(lateness: list[float], fraction: float) -> float:
    """The lateness of a ticker's wake-ups that ``fraction`` of them stay within.

    The tests that check an event loop stays responsive look at a high percentile rather
    than the maximum: a call that blocks the loop makes nearly every wake-up late, while a
    machine busy with other work (CI runs two test sessions on two CPUs) delays only a few.
    """
    if not lateness:
        return 0.0
    ordered = sorted(lateness)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextlib.contextmanager
def fresh_green_imports(*packages: str) -> Iterator[None]:
    """Let ``patch_blocking()`` import ``packages`` anew, then put back what was there.

    A module already imported is not imported again by ``import``: these tests want the
    green flavour of modules the test process may already hold.
    """

    def ours(name: str) -> bool:
        return any(name == package or name.startswith(package + ".") for package in packages)

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
        # A fresh import of a submodule rebinds it on its package: point that back too.
        for name, module in saved.items():
            package_name, _, attribute = name.rpartition(".")
            if package_name in sys.modules:
                setattr(sys.modules[package_name], attribute, module)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if self.path.startswith("/slow"):
            time.sleep(SLOW_HTTP_DELAY)
        body = f"you asked for {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    # Many clients connect at once: the default backlog of 5 would make some of them retry
    # their SYN a second later.
    request_queue_size = 256
    daemon_threads = True


@contextlib.contextmanager
def serve_http() -> Iterator[str]:
    """A threaded HTTP server on loopback, independent of the loops under test: "host:port".

    ``GET /path`` gets ``you asked for /path``, after SLOW_HTTP_DELAY if the path starts
    with /slow.
    """
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# A self-signed certificate for localhost and 127.0.0.1, valid until 2126, with its key.
CERTIFICATE = """\
-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIURX/35OJ6uDhfZpIbfHnP1cJs5NwwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEzMDAzMDgyM1oYDzIxMjYxMTA2
MDMwODIzWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATgFIrOr9ZHeODG0/kA5jZq0uvzrKSETluYBj3P49ycHdVl9QlqcYYL
5E48muRT0vHG+j6FhfwD6F9ThgWXcTgAo28wbTAdBgNVHQ4EFgQU0AsFffw9Dp8r
m2grkM1YiaDqZhowHwYDVR0jBBgwFoAU0AsFffw9Dp8rm2grkM1YiaDqZhowDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI
zj0EAwIDSQAwRgIhAPgpvuZnNjyuMf6Gv1c08LfQjF7LgDVXwJHqMJ6C4WP1AiEA
rS4Hmy9gJOGCJpsOaoqC+6SPnhrw1a7Suny9jvF8dWw=
-----END CERTIFICATE-----
"""
PRIVATE_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgdMZxCCzolOs46IQm
ZwAcFiRCZ+m8b4u4ZCgn9R2IZHGhRANCAATgFIrOr9ZHeODG0/kA5jZq0uvzrKSE
TluYBj3P49ycHdVl9QlqcYYL5E48muRT0vHG+j6FhfwD6F9ThgWXcTgA
-----END PRIVATE KEY-----
"""


class UpperCaseServer:
    """A blocking server on loopback, in a thread of its own (no event loop): it answers
    whatever it receives upper-cased, until the client closes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                while data := connection.recv(1024):
                    connection.sendall(data.upper())

    def close(self) -> None:
        # shutdown() wakes the blocked accept(); close() alone does not on Linux.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join()
