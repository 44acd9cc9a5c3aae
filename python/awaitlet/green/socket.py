"""Green :mod:`socket`: a socket whose blocking calls wait on the event loop when on a fiber.

Everything the standard :mod:`socket` module has is here under the same name.  :class:`socket`
is a subclass of the standard class; ``create_connection``, ``create_server``, ``socketpair``
and ``fromfd`` are the standard functions, made to construct this module's class.

A green socket keeps the timeout the user sees (``settimeout``, ``gettimeout``,
``setblocking``, ``getblocking``, ``timeout``) apart from the mode of its descriptor.  A call
made on a fiber with an event loop running in this thread puts the descriptor in
non-blocking mode and, whenever the call would block, suspends the fiber until the loop sees
the descriptor ready, within the user's timeout (:class:`TimeoutError`, which
``socket.timeout`` names, when it expires; a timeout of 0 raises :class:`BlockingIOError` as
usual).  Anywhere else the descriptor is put back in the user's mode and the standard
method runs.
"""

from __future__ import annotations

import _socket
import errno as _errno
import os as _os
import socket as _std
from collections.abc import Callable

# The drop-in module has every name of the standard one (type checkers see them here).
from socket import *  # noqa: F403  # pyright: ignore[reportWildcardImportFromLibrary]
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._loop import READ, WRITE, copy_standard_names, green_loop, rebind_functions, wait_fds

if TYPE_CHECKING:
    # In the standard module at run time on some versions and platforms, not in typeshed.
    IP_BIND_ADDRESS_NO_PORT: int
    SO_INCOMING_CPU: int

_T = TypeVar("_T")
_C_SOCKET = _socket.socket
_WOULD_BLOCK = (BlockingIOError, InterruptedError)
# As the stdlib in timeout mode: only a connection in progress is waited for.
_CONNECT_PENDING = {_errno.EINPROGRESS}


def _deadline(loop: Any, timeout: float | None) -> float | None:
    return None if timeout is None else loop.time() + timeout


def _remaining(loop: Any, deadline: float | None) -> float | None:
    return None if deadline is None else deadline - loop.time()


class _GreenSocket(_std.socket):
    """The standard :class:`socket.socket`, whose blocking calls wait on the loop on a fiber."""

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
    ) -> None:
        super().__init__(family, type, proto, fileno)
        # The timeout the user set; the descriptor's own is 0.0 while _green_forced is true.
        self._green_timeout: float | None = _C_SOCKET.gettimeout(self)
        self._green_forced = False

    # -- the user-visible timeout -------------------------------------------------------

    def settimeout(self, value: float | None, /) -> None:
        """Set the timeout of blocking calls, as :meth:`socket.socket.settimeout`."""
        # The descriptor's own settimeout validates and rounds the value as the stdlib does.
        _C_SOCKET.settimeout(self, value)
        self._green_timeout = _C_SOCKET.gettimeout(self)
        if self._green_forced:
            _C_SOCKET.settimeout(self, 0.0)

    def gettimeout(self) -> float | None:
        """The timeout set with :meth:`settimeout` or :meth:`setblocking`."""
        return self._green_timeout

    def setblocking(self, flag: bool, /) -> None:
        """``setblocking(flag)`` is ``settimeout(None)`` if ``flag`` else ``settimeout(0)``."""
        self.settimeout(None if flag else 0.0)

    def getblocking(self) -> bool:
        """Whether the socket's calls block (its timeout is not 0)."""
        return self._green_timeout != 0.0

    @property
    def timeout(self) -> float | None:
        """The timeout, as :meth:`gettimeout` gives it."""
        return self._green_timeout

    def detach(self) -> int:
        """Close the socket object without closing the descriptor, which is returned.

        The descriptor is handed over in the user's blocking mode, not the non-blocking one
        that waits on the loop put it in.
        """
        if self._green_forced:
            self._green_forced = False
            _C_SOCKET.settimeout(self, self._green_timeout)
        return super().detach()

    # -- choosing between the loop and the standard call --------------------------------

    def _loop_for_call(self) -> Any:
        """The loop to wait on (the descriptor made non-blocking), or None for the stdlib call."""
        loop = green_loop()
        if loop is None:
            if self._green_forced:
                self._green_forced = False
                _C_SOCKET.settimeout(self, self._green_timeout)
            return None
        if not self._green_forced:
            self._green_forced = True
            _C_SOCKET.settimeout(self, 0.0)
        return loop

    def _wait(self, loop: Any, direction: int, deadline: float | None) -> None:
        """Suspend until ready for ``direction``; TimeoutError past ``deadline``."""
        remaining = _remaining(loop, deadline)
        if remaining is not None and remaining <= 0:
            raise TimeoutError("timed out")
        fd = self.fileno()
        if fd < 0:
            raise OSError(_errno.EBADF, "Bad file descriptor")
        ready = wait_fds(
            loop,
            (fd,) if direction == READ else (),
            (fd,) if direction == WRITE else (),
            remaining,
        )
        if not ready:
            raise TimeoutError("timed out")

    def _green_call(
        self,
        loop: Any,
        direction: int,
        call: Callable[..., _T],
        *args: Any,
        deadline: float | None = None,
        has_deadline: bool = False,
    ) -> _T:
        """Retry the non-blocking ``call`` until it does not raise BlockingIOError."""
        if self._green_timeout == 0.0:
            return call(*args)
        if not has_deadline:
            deadline = _deadline(loop, self._green_timeout)
        while True:
            try:
                return call(*args)
            except _WOULD_BLOCK:
                pass
            self._wait(loop, direction, deadline)

    # -- blocking calls -----------------------------------------------------------------

    def accept(self) -> tuple[_GreenSocket, Any]:
        """Accept a connection: a green socket for it and the peer's address."""
        loop = self._loop_for_call()
        accepted: tuple[int, Any]
        if loop is None:
            accepted = cast(tuple[int, Any], self._accept())  # type: ignore[attr-defined]
        else:
            accepted = self._green_call(loop, READ, self._accept)  # type: ignore[attr-defined]
        fd, address = accepted
        connection = _GreenSocket(self.family, self.type, self.proto, fileno=fd)
        # As the standard accept(): with no default timeout, a socket accepted from a listener
        # with a timeout blocks.
        if _std.getdefaulttimeout() is None and self.gettimeout():
            connection.setblocking(True)
        return connection, address

    def connect(self, address: Any, /) -> None:
        """Connect to ``address``; on a fiber the loop waits for the connection to complete."""
        loop = self._loop_for_call()
        if loop is None:
            return super().connect(address)
        error = self._green_connect(loop, address)
        if error:
            raise OSError(error, _errno_message(error))
        return None

    def connect_ex(self, address: Any, /) -> int:
        """As :meth:`connect`, but return an ``errno`` value instead of raising OSError for it."""
        loop = self._loop_for_call()
        if loop is None:
            return super().connect_ex(address)
        return self._green_connect(loop, address)

    def _green_connect(self, loop: Any, address: Any) -> int:
        error = _C_SOCKET.connect_ex(self, address)
        if self._green_timeout == 0.0 or error not in _CONNECT_PENDING:
            return error
        self._wait(loop, WRITE, _deadline(loop, self._green_timeout))
        error = self.getsockopt(SOL_SOCKET, SO_ERROR)  # noqa: F405
        return 0 if error == _errno.EISCONN else error

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        """Receive up to ``bufsize`` bytes."""
        loop = self._loop_for_call()
        if loop is None:
            return super().recv(bufsize, flags)
        return self._green_call(loop, READ, _C_SOCKET.recv, self, bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Receive into ``buffer``; return the number of bytes received."""
        loop = self._loop_for_call()
        if loop is None:
            return super().recv_into(buffer, nbytes, flags)
        return self._green_call(loop, READ, _C_SOCKET.recv_into, self, buffer, nbytes, flags)

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, Any]:
        """Receive up to ``bufsize`` bytes and the sender's address."""
        loop = self._loop_for_call()
        if loop is None:
            return super().recvfrom(bufsize, flags)
        return self._green_call(loop, READ, _C_SOCKET.recvfrom, self, bufsize, flags)

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        """Receive into ``buffer``; return the number of bytes and the sender's address."""
        loop = self._loop_for_call()
        if loop is None:
            return super().recvfrom_into(buffer, nbytes, flags)
        return self._green_call(loop, READ, _C_SOCKET.recvfrom_into, self, buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0, /) -> int:
        """Send ``data``; return the number of bytes sent."""
        loop = self._loop_for_call()
        if loop is None:
            return super().send(data, flags)
        return self._green_call(loop, WRITE, _C_SOCKET.send, self, data, flags)

    def sendall(self, data: Any, flags: int = 0, /) -> None:
        """Send all of ``data``; the timeout bounds the whole call, as in the stdlib."""
        loop = self._loop_for_call()
        if loop is None:
            return super().sendall(data, flags)
        with memoryview(data) as view, view.cast("B") as octets:
            deadline = _deadline(loop, self._green_timeout)
            sent, total = 0, len(octets)
            while sent < total:
                sent += self._green_call(
                    loop,
                    WRITE,
                    _C_SOCKET.send,
                    self,
                    octets[sent:],
                    flags,
                    deadline=deadline,
                    has_deadline=True,
                )
        return None

    def sendto(self, *args: Any) -> int:
        """Send data to an address: ``sendto(data, address)``, ``sendto(data, flags, address)``."""
        loop = self._loop_for_call()
        if loop is None:
            return super().sendto(*args)
        return self._green_call(loop, WRITE, _C_SOCKET.sendto, self, *args)

    if hasattr(_C_SOCKET, "sendmsg"):

        def sendmsg(self, *args: Any) -> int:
            """Send normal and ancillary data, as :meth:`socket.socket.sendmsg`."""
            loop = self._loop_for_call()
            if loop is None:
                return super().sendmsg(*args)
            return self._green_call(loop, WRITE, _C_SOCKET.sendmsg, self, *args)

    if hasattr(_C_SOCKET, "recvmsg"):

        def recvmsg(self, *args: Any) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
            """Receive normal and ancillary data, as :meth:`socket.socket.recvmsg`."""
            loop = self._loop_for_call()
            if loop is None:
                return super().recvmsg(*args)
            return self._green_call(loop, READ, _C_SOCKET.recvmsg, self, *args)

        def recvmsg_into(self, *args: Any) -> tuple[int, list[tuple[int, int, bytes]], int, Any]:
            """Receive into buffers, as :meth:`socket.socket.recvmsg_into`."""
            loop = self._loop_for_call()
            if loop is None:
                return super().recvmsg_into(*args)
            return self._green_call(loop, READ, _C_SOCKET.recvmsg_into, self, *args)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send a file; on a fiber it is read and sent with :meth:`send` (no ``os.sendfile``)."""
        if green_loop() is None:
            return super().sendfile(file, offset, count)
        # The stdlib's os.sendfile path waits with a blocking selector; its send() path
        # goes through this class's send(), which waits on the loop.
        send_file = cast(Callable[..., int], self._sendfile_use_send)  # type: ignore[attr-defined]
        return send_file(file, offset, count)


def _errno_message(error: int) -> str:
    return _os.strerror(error)


_GreenSocket.__name__ = _GreenSocket.__qualname__ = "socket"
#: The green socket class (to type checkers, the standard one, whose interface it has).
socket = _GreenSocket  # type: ignore[misc]

# Everything else of the standard module (constants, exceptions, private helpers that
# libraries reach for such as _GLOBAL_DEFAULT_TIMEOUT).
copy_standard_names(_std, globals())

# The standard helpers that build sockets by the global name `socket`, rebound so that they
# build green ones, with the running Python's own code.
globals().update(
    rebind_functions(
        _std,
        __name__,
        {"socket": _GreenSocket},
        ("create_connection", "create_server", "socketpair", "fromfd", "_fallback_socketpair"),
    )
)
