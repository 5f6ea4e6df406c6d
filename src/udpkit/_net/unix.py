"""Unix-domain endpoints: datagram and stream sockets on a path or an abstract name.

The textbook's PF_UNIX, through the same classes as UDP and TCP.  A path that
starts with ``@`` is Linux's abstract namespace (no file).  A server removes
the socket file it created when it closes, and replaces a stale one (its
server gone) but never any other file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from typing import TYPE_CHECKING

from udpkit._core.errors import AddressInUse, map_oserror
from udpkit._net.domains import _new_socket
from udpkit._net.kernel import LINUX
from udpkit._net.sockets import (
    DatagramSocket,
    _bind,
    _check_timeout,
    _close_on_error,
    _connect,
    _listen,
    _own_file,
    _remove_own_file,
    _unix_sockaddr,
)

if TYPE_CHECKING:
    from udpkit._net.stream import StreamListener, StreamSocket

__all__ = [
    "unix_datagram_bind",
    "unix_datagram_connect",
    "unix_stream_connect",
    "unix_stream_listen",
]


def _claim_path(path: str, kind: int) -> None:
    """Make room to bind ``path``: remove a stale socket file, refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise map_oserror(exc, f"cannot bind {path}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressInUse(
            errno.EADDRINUSE,
            f"cannot bind {path}: a file that is not a socket is there; "
            "remove it or choose another path",
        )
    # A socket file: stale if connecting is refused (its server is gone).
    with socket.socket(socket.AF_UNIX, kind) as probe:
        probe.setblocking(False)  # a full backlog must not block us
        code = probe.connect_ex(path)
    if code == errno.ECONNREFUSED:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    if code in (0, errno.EAGAIN, errno.EINPROGRESS, errno.EPROTOTYPE):
        raise AddressInUse(
            errno.EADDRINUSE,
            f"cannot bind {path}: address already in use: a live socket is bound to it",
        )
    # Anything else (EACCES, ...): let bind report it.


def _bind_unix(sock: socket.socket, path: str, kind: int) -> tuple[str, int, int] | None:
    sockaddr = _unix_sockaddr(path)
    if sockaddr.startswith("\0"):
        _bind(sock, sockaddr, path)
        return None
    _claim_path(path, kind)
    _bind(sock, sockaddr, path)
    return _own_file(path)


def _autobind(sock: socket.socket) -> tuple[str, int, int] | None:
    """Give a client a name so a datagram server can reply to it."""
    if LINUX:
        _bind(sock, "", "an automatic abstract address")  # Linux autobind
        return None
    import tempfile  # off Linux only

    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()  # short: sun_path is small
    path = os.path.join(base, f"udpkit-{os.getpid()}-{os.urandom(4).hex()}.sock")
    _bind(sock, path, path)
    return _own_file(path)


def unix_datagram_bind(path: str) -> DatagramSocket:
    """Open a Unix datagram socket bound to ``path``.

    Args:
        path: a file path, or ``@name`` for Linux's abstract namespace (no file).
            A stale socket file (its server gone) is replaced; any other file is
            left alone. The file is removed on close.

    Returns:
        The bound socket.

    Raises:
        UsageError: an empty path, or ``@name`` off Linux.
        AddressInUse: a live socket or a non-socket file is at ``path``.
        NetworkError: any other refusal (no such directory, path too long, ...).
    """
    sock = _new_socket(socket.AF_UNIX, socket.SOCK_DGRAM, 0)

    def build() -> DatagramSocket:
        token = _bind_unix(sock, path, socket.SOCK_DGRAM)
        dsock = DatagramSocket(sock)
        dsock._unlink = token
        return dsock

    return _close_on_error(sock, build)


def unix_datagram_connect(path: str) -> DatagramSocket:
    """Open a Unix datagram socket connected to the server at ``path``.

    The socket gets a name of its own first (Linux: an automatic abstract
    address; elsewhere a temporary file, removed on close), so the server can
    reply.

    Args:
        path: the server's file path or ``@name``.

    Returns:
        The connected socket.

    Raises:
        UsageError: an empty path, or ``@name`` off Linux.
        ConnectionRefused: no server is bound there any more.
        NetworkError: any other refusal (no such file, ...).
    """
    sockaddr = _unix_sockaddr(path)
    sock = _new_socket(socket.AF_UNIX, socket.SOCK_DGRAM, 0)
    token = None
    try:
        token = _autobind(sock)
        _connect(sock, sockaddr, path, None)
        dsock = DatagramSocket(sock)
    except BaseException:
        sock.close()
        if token is not None:
            _remove_own_file(token)
        raise
    dsock._unlink = token
    return dsock


def unix_stream_listen(path: str, *, backlog: int = 128) -> StreamListener:
    """Open a Unix stream socket listening on ``path``.

    Args:
        path: as for :func:`unix_datagram_bind`.
        backlog: how many connections may wait for accept.

    Returns:
        The listener; its file is removed on close.

    Raises:
        UsageError: an empty path, or ``@name`` off Linux.
        AddressInUse: a live socket or a non-socket file is at ``path``.
        NetworkError: any other refusal.
    """
    sock = _new_socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)

    from udpkit._net.stream import StreamListener  # TCP and stream code load only when used

    def build() -> StreamListener:
        token = _bind_unix(sock, path, socket.SOCK_STREAM)
        try:
            _listen(sock, backlog, path)
        except BaseException:
            if token is not None:
                _remove_own_file(token)
            raise
        listener = StreamListener(sock)
        listener._unlink = token
        return listener

    return _close_on_error(sock, build)


def unix_stream_connect(path: str, *, timeout: float | None = None) -> StreamSocket:
    """Connect to the Unix stream server at ``path``.

    Args:
        path: the server's file path or ``@name``.
        timeout: the most seconds to wait (a full backlog can make connect wait).

    Returns:
        The connection.

    Raises:
        UsageError: an empty path, or ``@name`` off Linux.
        Timeout: no room in the server's backlog within ``timeout``.
        ConnectionRefused: no server listens there any more.
        NetworkError: any other refusal (no such file, ...).
    """
    _check_timeout(timeout)
    sockaddr = _unix_sockaddr(path)
    sock = _new_socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)

    from udpkit._net.stream import StreamSocket  # TCP and stream code load only when used

    def build() -> StreamSocket:
        _connect(sock, sockaddr, path, timeout)
        return StreamSocket(sock)

    return _close_on_error(sock, build)
