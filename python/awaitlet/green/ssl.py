"""Green :mod:`ssl`: TLS sockets whose handshake, reads and writes wait on the loop on a fiber.

Everything the standard :mod:`ssl` module has is here under the same name.
:class:`SSLContext` is a subclass of the standard context whose ``wrap_socket`` gives a green
:class:`SSLSocket` (a standard ``SSLSocket`` over a green :class:`awaitlet.green.socket.socket`);
``create_default_context`` and the other standard helpers that build a context by its global
name are the standard functions, made to build this module's context.

On a fiber with an event loop running in this thread, the TLS calls run on the descriptor in
non-blocking mode: ``SSLWantReadError`` and ``SSLWantWriteError`` suspend the fiber until the
loop sees the descriptor readable or writable, and the call is retried, within the socket's
timeout (:class:`TimeoutError` when it expires).  Anywhere else they are the standard calls.
"""

from __future__ import annotations

import socket as _std_socket
import ssl as _std
from collections.abc import Callable

# The drop-in module has every name of the standard one (type checkers see them here).
from ssl import *  # noqa: F403  # pyright: ignore[reportWildcardImportFromLibrary]
from typing import Any, TypeVar

from . import socket as _green_socket
from ._loop import READ, WRITE, copy_standard_names, rebind_functions

_T = TypeVar("_T")


class _GreenSSLSocket(_std.SSLSocket, _green_socket._GreenSocket):  # type: ignore[misc]
    """The standard :class:`ssl.SSLSocket` on a green socket: TLS calls wait on the loop."""

    def _green_tls(self, operation: str, call: Callable[..., _T], *args: Any) -> _T:
        """Run the TLS ``call``, waiting on the loop each time it wants to read or write."""
        loop = self._loop_for_call()
        if loop is None or self._green_timeout == 0.0:
            return call(*args)
        deadline = None if self._green_timeout is None else loop.time() + self._green_timeout
        while True:
            try:
                return call(*args)
            except SSLWantReadError:  # noqa: F405
                direction = READ
            except SSLWantWriteError:  # noqa: F405
                direction = WRITE
            try:
                self._wait(loop, direction, deadline)
            except TimeoutError:
                raise TimeoutError(f"The {operation} operation timed out") from None

    def do_handshake(self, block: bool = False) -> None:
        """Perform the TLS handshake, as :meth:`ssl.SSLSocket.do_handshake`."""
        if self._loop_for_call() is None:
            return super().do_handshake(block)
        self._check_connected()  # type: ignore[attr-defined]
        sslobj: Any = self._sslobj
        # The standard method flips the timeout around the call, which would make the
        # descriptor blocking; on a fiber the loop does the waiting instead.
        self._green_tls("handshake", sslobj.do_handshake)
        return None

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        """Read up to ``len`` bytes (into ``buffer`` if given), as :meth:`ssl.SSLSocket.read`."""
        return self._green_tls("read", super().read, len, buffer)  # pyright: ignore[reportDeprecated]

    def write(self, data: Any) -> int:
        """Write ``data`` to the TLS channel, as :meth:`ssl.SSLSocket.write`."""
        return self._green_tls("write", super().write, data)  # pyright: ignore[reportDeprecated]

    def send(self, data: Any, flags: int = 0) -> int:
        """Send ``data`` through TLS (or in the clear once unwrapped)."""
        sslobj: Any = self._sslobj
        if sslobj is None:
            return super().send(data, flags)
        return self._green_tls("write", super().send, data, flags)

    def unwrap(self) -> _std_socket.socket:
        """Shut the TLS layer down and return the socket underneath."""
        sslobj: Any = self._sslobj  # type: ignore[has-type]
        if not sslobj or self._loop_for_call() is None:
            return super().unwrap()
        result = self._green_tls("read", sslobj.shutdown)
        self._sslobj = None
        return result  # type: ignore[no-any-return]


class _GreenSSLContext(_std.SSLContext):
    """The standard :class:`ssl.SSLContext`; ``wrap_socket`` gives a green :class:`SSLSocket`."""

    sslsocket_class: type[_std.SSLSocket] = _GreenSSLSocket


_GreenSSLSocket.__name__ = _GreenSSLSocket.__qualname__ = "SSLSocket"
_GreenSSLContext.__name__ = _GreenSSLContext.__qualname__ = "SSLContext"
# The green classes (to type checkers, the standard ones, whose interface they have).
SSLSocket = _GreenSSLSocket  # type: ignore[misc]
SSLContext = _GreenSSLContext  # type: ignore[misc]

# The names the standard module took from socket, green here too.
socket = _green_socket.socket
create_connection = _green_socket.create_connection
copy_standard_names(_std, globals())

# Standard helpers that build a context, a socket or a connection by global name, rebound so
# that they build green ones (their aliases, such as _create_default_https_context, too).
globals().update(
    rebind_functions(
        _std,
        __name__,
        {
            "SSLContext": _GreenSSLContext,
            "SSLSocket": _GreenSSLSocket,
            "socket": _green_socket.socket,
            "create_connection": _green_socket.create_connection,
        },
        (
            "create_default_context",
            "_create_unverified_context",
            "wrap_socket",
            "get_server_certificate",
        ),
    )
)
