"""Stream sockets: TCP over IPv4/IPv6 and Unix streams.

:class:`StreamSocket` (a connection) and :class:`StreamListener` (a listening
socket), with the constructors :func:`tcp_listen` and :func:`tcp_connect`
(Unix-domain constructors are in ``unix.py``).  What they share with the
datagram side (ownership, closing, binding, connecting, timeouts) is in
``sockets.py``.
"""

from __future__ import annotations

import socket
import sys

from udpkit._core.datagram import AnySockAddr
from udpkit._core.errors import Timeout, UsageError, map_oserror
from udpkit._net.addr import Address, format_sockaddr, resolve, resolve_one
from udpkit._net.domains import _new_socket, parse_domain
from udpkit._net.sockets import (
    _bind,
    _check_timeout,
    _close_on_error,
    _connect,
    _listen,
    _local_for,
    _peer_of,
    _set_timeout,
    _Wrapped,
    first_that_binds,
)

__all__ = ["StreamListener", "StreamSocket", "tcp_connect", "tcp_listen"]

# --- the classes -----------------------------------------------------------------------------


class StreamSocket(_Wrapped):
    """A connected stream: TCP over IPv4/IPv6 or a Unix stream."""

    _kind = socket.SOCK_STREAM
    _kind_hint = "use DatagramSocket for datagram sockets"

    def __init__(self, sock: socket.socket) -> None:
        """Wrap a connected SOCK_STREAM socket; this object owns it from now on.

        Raises:
            UsageError: ``sock`` is not a stream socket.
        """
        super().__init__(sock)
        self._peer: AnySockAddr = _peer_of(sock)

    @property
    def peer(self) -> AnySockAddr:
        """The peer's socket address (``""`` for an unnamed unix peer)."""
        return self._peer

    def _what(self, verb: str) -> str:
        return f"{verb} {format_sockaddr(self._peer)}"

    def send_all(self, data: bytes, *, timeout: float | None = None) -> None:
        """Send every byte of ``data``.

        Args:
            data: the bytes to send.
            timeout: ``None`` blocks until all is sent; seconds otherwise.

        Raises:
            Timeout: not all sent in time (some bytes may have gone).
            NetworkError: the connection broke (reset, pipe closed, ...).
        """
        # Always set: a recv(timeout=0) must not leave sendall non-blocking.
        _set_timeout(self._sock, timeout)
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise Timeout(f"{self._what('send to')}: not all sent within {timeout} s") from exc
        except OSError as exc:
            raise map_oserror(exc, self._what("send to")) from exc

    def recv(self, max_bytes: int = 65536, *, timeout: float | None = None) -> bytes:
        """Receive up to ``max_bytes`` bytes; ``b""`` means the peer closed its side.

        Args:
            max_bytes: the most bytes to return (at least 1).
            timeout: ``None`` blocks; seconds otherwise (``0``: only what is there).

        Raises:
            UsageError: a bad ``max_bytes`` or ``timeout``.
            Timeout: nothing arrived in time.
            NetworkError: the connection broke.
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise UsageError(f"invalid max_bytes {max_bytes!r}: must be at least 1 byte")
        _set_timeout(self._sock, timeout)
        try:
            return self._sock.recv(max_bytes)
        except (TimeoutError, BlockingIOError) as exc:
            waited = "none was waiting" if not timeout else f"none arrived within {timeout:g} s"
            raise Timeout(f"no data {self._what('from')}: {waited}") from exc
        except OSError as exc:
            raise map_oserror(exc, self._what("receive from")) from exc

    def shutdown_write(self) -> None:
        """Tell the peer no more data follows (it reads EOF); reading still works.

        Raises:
            NetworkError: the connection is already gone.
        """
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise map_oserror(exc, self._what("shut down sending to")) from exc


class StreamListener(_Wrapped):
    """A listening stream socket (TCP or Unix) that hands out :class:`StreamSocket`."""

    _kind = socket.SOCK_STREAM
    _kind_hint = "listen on a stream socket"

    def accept(self, *, timeout: float | None = None) -> tuple[StreamSocket, AnySockAddr]:
        """Accept one connection.

        Args:
            timeout: ``None`` blocks; seconds otherwise (``0``: only a pending one).

        Returns:
            ``(connection, peer address)``; the connection blocks by default.

        Raises:
            Timeout: no connection in time.
            NetworkError: the OS refused (e.g. out of file descriptors).
        """
        _set_timeout(self._sock, timeout)
        try:
            conn, peer = self._sock.accept()
        except (TimeoutError, BlockingIOError) as exc:
            waited = "none was waiting" if not timeout else f"none within {timeout:g} s"
            raise Timeout(f"no connection on {self.local_text}: {waited}") from exc
        except OSError as exc:
            raise map_oserror(exc, f"accept on {self.local_text}") from exc
        conn.setblocking(True)  # do not inherit the listener's timeout
        return _close_on_error(conn, lambda: StreamSocket(conn)), peer


# --- constructors ----------------------------------------------------------------------------


def tcp_listen(
    host: str | int | None = "127.0.0.1",
    port: int | str = 0,
    *,
    family: int | str = socket.AF_UNSPEC,
    backlog: int = 128,
) -> StreamListener:
    """Open a TCP socket listening on ``host``:``port`` (the textbook's simple server).

    SO_REUSEADDR is on (not on Windows, where it means port stealing), so a
    restarted server can bind while old connections sit in TIME_WAIT.

    Args:
        host: any host form udpkit accepts.
        port: a number, numeric string or service name; 0 picks a free port.
        family: AF_UNSPEC, AF_INET or AF_INET6.
        backlog: how many connections may wait for accept.

    Returns:
        The listener.

    Raises:
        AddressError: a bad host or port.
        AddressInUse: another socket listens there.
        NetworkError: any other refusal.
    """
    candidates = resolve(
        host, port, family=parse_domain(family), type=socket.SOCK_STREAM, proto="tcp", passive=True
    )

    def listen_on(addr: Address) -> StreamListener:
        sock = _new_socket(addr.family, socket.SOCK_STREAM, 0)

        def build() -> StreamListener:
            if sys.platform != "win32":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _bind(sock, addr.sockaddr, str(addr))
            _listen(sock, backlog, str(addr))
            return StreamListener(sock)

        return _close_on_error(sock, build)

    return first_that_binds(candidates, listen_on)[1]


def tcp_connect(
    host: str | int | None,
    port: int | str,
    *,
    timeout: float | None = None,
    bind: tuple[str | int | None, int | str] | None = None,
    family: int | str = socket.AF_UNSPEC,
) -> StreamSocket:
    """Open a TCP connection to ``host``:``port`` (the textbook's simple client).

    Args:
        host: the server host, any form udpkit accepts.
        port: the server port.
        timeout: the most seconds to wait for the connection; ``None`` waits
            as long as the OS does. The connection itself then blocks.
        bind: an optional local ``(host, port)`` of the destination's family.
        family: AF_UNSPEC, AF_INET or AF_INET6.

    Returns:
        The connection.

    Raises:
        AddressError: a bad host or port.
        Timeout: no answer within ``timeout``.
        ConnectionRefused: nothing listens there.
        NetworkError: any other refusal.
    """
    _check_timeout(timeout)
    dest = resolve_one(
        host, port, family=parse_domain(family), type=socket.SOCK_STREAM, proto="tcp"
    )
    local = _local_for(bind, dest, socket.SOCK_STREAM, "tcp") if bind is not None else None
    sock = _new_socket(dest.family, socket.SOCK_STREAM, 0)

    def build() -> StreamSocket:
        if local is not None:
            _bind(sock, local.sockaddr, str(local))
        _connect(sock, dest.sockaddr, str(dest), timeout)
        return StreamSocket(sock)

    return _close_on_error(sock, build)
