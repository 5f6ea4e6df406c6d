"""Sockets in the seed's vocabulary: domain, type and protocol.

The seed says the socket library "provides specific classes for handling the
common transports as well as a generic interface for handling the rest".
Here that is:

* the generic interface, :func:`open_socket`, which takes any domain
  (``AF_INET``, ``PF_UNIX``, ``PF_X25``, ...), type and protocol by constant,
  number or name, and passes through whatever the OS supports;
* specific classes for the common transports: :class:`DatagramSocket` (UDP
  over IPv4/IPv6, UDP-Lite, Unix datagrams), :class:`StreamSocket` and
  :class:`StreamListener` (TCP and Unix streams), and the constructors
  :func:`udp_bind`, :func:`udp_connect`, :func:`unix_datagram_bind`, ...

Every ``OSError`` becomes a udpkit error (see ``_errors.py``) with a message
saying what was being done, and every socket opened here is closed again on
every error path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, Self, TypeVar

from udpkit._addr import MAX_UDP_PAYLOAD, Address, format_sockaddr, resolve_one
from udpkit._errors import (
    AddressError,
    AddressInUse,
    MessageTooLarge,
    NetworkError,
    PermissionDenied,
    Timeout,
    UdpkitError,
    Unsupported,
    UsageError,
    map_oserror,
)

_T = TypeVar("_T")

__all__ = [
    "IPPROTO_UDPLITE",
    "Datagram",
    "DatagramSocket",
    "StreamListener",
    "StreamSocket",
    "open_socket",
    "parse_domain",
    "parse_protocol",
    "parse_type",
    "tcp_connect",
    "tcp_listen",
    "udp_bind",
    "udp_connect",
    "unix_datagram_bind",
    "unix_datagram_connect",
    "unix_stream_connect",
    "unix_stream_listen",
]

_LINUX = sys.platform.startswith("linux")
#: UDP-Lite (RFC 3828); older Pythons and some platforms lack the constant.
IPPROTO_UDPLITE: int = getattr(socket, "IPPROTO_UDPLITE", 136)
_MSG_TRUNC: int = getattr(socket, "MSG_TRUNC", 0)

# --- domain, type and protocol tables ------------------------------------------------------

# Every AF_*/PF_* the socket module knows, by its lower-case name without the prefix.
_DOMAINS: dict[str, int] = {
    name[3:].lower(): int(getattr(socket, name))
    for name in dir(socket)
    if name.startswith(("AF_", "PF_")) and isinstance(getattr(socket, name), int)
}
_DOMAINS["local"] = socket.AF_UNIX  # POSIX's name for AF_UNIX
if _LINUX:
    # Linux numbers, for Python builds that lack the constants.
    for _name, _value in (("x25", 9), ("netlink", 16), ("packet", 17)):
        _DOMAINS.setdefault(_name, _value)
_DOMAIN_EXAMPLES = "inet, inet6, unix, local, x25, packet, netlink (or AF_INET, PF_UNIX)"

_TYPES: dict[str, int] = {
    name[5:].lower(): int(getattr(socket, name))
    for name in ("SOCK_DGRAM", "SOCK_STREAM", "SOCK_SEQPACKET", "SOCK_RAW", "SOCK_RDM")
    if hasattr(socket, name)
}
_TYPES["datagram"] = socket.SOCK_DGRAM
_TYPE_EXAMPLES = "dgram, stream, seqpacket, raw, rdm (or SOCK_DGRAM)"

_PROTOCOLS: dict[str, int] = {
    name[8:].lower(): int(getattr(socket, name))
    for name in dir(socket)
    if name.startswith("IPPROTO_") and isinstance(getattr(socket, name), int)
}
_PROTOCOLS.update(ip=0, icmp=1, tcp=6, udp=17, udplite=IPPROTO_UDPLITE)
_PROTOCOLS["udp-lite"] = IPPROTO_UDPLITE
_PROTOCOL_EXAMPLES = "0, udp, tcp, udplite, icmp or any name in /etc/protocols"
_MAX_PROTOCOL = 2**31 - 1


def _name_of(table: dict[str, int], value: int, preferred: tuple[str, ...] = ()) -> str:
    for name in preferred:
        if table.get(name) == value:
            return name
    return next((name for name, v in table.items() if v == value), str(value))


def _domain_name(domain: int) -> str:
    return _name_of(_DOMAINS, domain, ("inet", "inet6", "unix", "x25", "packet", "netlink"))


def _type_name(kind: int) -> str:
    return _name_of(_TYPES, kind, ("dgram", "stream"))


def _parse(
    value: int | str,
    table: dict[str, int],
    prefixes: tuple[str, ...],
    what: str,
    *,
    examples: str,
    limit: int,
) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UsageError(f"invalid {what} {value!r}: use {examples}, or a number")
    if isinstance(value, int):
        if not 0 <= value <= limit:
            raise UsageError(f"invalid {what} {value}: must be 0-{limit}, or a name ({examples})")
        return value
    text = value.strip().lower()
    if text.isascii() and text.isdigit():
        return _parse(int(text), table, prefixes, what, examples=examples, limit=limit)
    for prefix in prefixes:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if text in table:
        return table[text]
    raise UsageError(f"unknown {what} '{value}': use {examples}, or a number")


def parse_domain(value: int | str) -> int:
    """Turn a domain (address family) given as constant, number or name into a number.

    Args:
        value: ``socket.AF_INET``, ``2``, ``"2"``, ``"inet"``, ``"AF_INET6"``,
            ``"PF_UNIX"``, ``"local"``, ``"x25"``, ... (case-insensitive).

    Returns:
        The family number (not checked against what the OS supports; opening
        a socket does that).

    Raises:
        UsageError: an unknown name (the message lists examples) or a bad number.
    """
    return _parse(
        value, _DOMAINS, ("af_", "pf_"), "domain", examples=_DOMAIN_EXAMPLES, limit=0xFFFF
    )


def parse_type(value: int | str) -> int:
    """Turn a socket type given as constant, number or name into a number.

    Args:
        value: ``socket.SOCK_DGRAM``, ``2``, ``"dgram"``, ``"stream"``,
            ``"seqpacket"``, ``"raw"``, ``"SOCK_DGRAM"``, ... (case-insensitive).

    Returns:
        The socket type number.

    Raises:
        UsageError: an unknown name or a bad number.
    """
    return _parse(value, _TYPES, ("sock_",), "socket type", examples=_TYPE_EXAMPLES, limit=0xFFFF)


def parse_protocol(value: int | str) -> int:
    """Turn a protocol given as number or name into a number.

    Args:
        value: ``0`` (the default for the domain and type), a number, or a
            name: ``"udp"``, ``"tcp"``, ``"udplite"`` (136), ``"icmp"``,
            ``"IPPROTO_UDP"``, or anything ``socket.getprotobyname`` knows.

    Returns:
        The protocol number.

    Raises:
        UsageError: an unknown name or a negative or huge number.
    """
    try:
        return _parse(
            value,
            _PROTOCOLS,
            ("ipproto_",),
            "protocol",
            examples=_PROTOCOL_EXAMPLES,
            limit=_MAX_PROTOCOL,
        )
    except UsageError:
        if not isinstance(value, str) or not value.strip():
            raise
        try:
            return socket.getprotobyname(value.strip())
        except OSError:
            raise UsageError(
                f"unknown protocol '{value}': use {_PROTOCOL_EXAMPLES}, or a number"
            ) from None


# --- error helpers ---------------------------------------------------------------------------


def _fail(exc: OSError, what: str, hint: str = "") -> NetworkError:
    """map_oserror, with the OS reason in lower case and an optional hint after it."""
    err = map_oserror(exc, what)
    reason = exc.strerror or str(exc)
    reason = reason[:1].lower() + reason[1:]
    msg = f"{what}: {reason}: {hint}" if hint else f"{what}: {reason}"
    return type(err)(err.errno, msg)


_REFUSED_HINT = "nothing is listening there (ICMP port unreachable)"
_BROADCAST_HINT = "broadcast needs SO_BROADCAST (--broadcast)"


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout >= 0:  # "not >=" also catches NaN
        raise UsageError(
            f"invalid timeout {timeout!r}: must be None (wait forever) or >= 0 seconds"
        )


def _set_timeout(sock: socket.socket, timeout: float | None) -> None:
    _check_timeout(timeout)
    # settimeout is a syscall (it flips O_NONBLOCK); skip it when nothing changes.
    if sock.gettimeout() != timeout:
        sock.settimeout(timeout)


def _broadcast_denied(exc: OSError, sock: socket.socket) -> bool:
    return (
        exc.errno == errno.EACCES
        and sock.family == socket.AF_INET
        and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
    )


def _new_socket(domain: int, kind: int, proto: int) -> socket.socket:
    try:
        return socket.socket(domain, kind, proto)
    except OSError as exc:
        what = (
            f"cannot open a socket for domain {_domain_name(domain)} ({domain}), "
            f"type {_type_name(kind)} ({kind}), protocol {proto}"
        )
        code = exc.errno
        if code in (errno.EAFNOSUPPORT, errno.EPFNOSUPPORT):
            reason = "address family not supported by this system"
        elif code == errno.EPROTONOSUPPORT:
            reason = "protocol not supported for this domain and type"
        elif code in (errno.ESOCKTNOSUPPORT, errno.EPROTOTYPE, errno.EOPNOTSUPP):
            reason = "socket type not supported for this domain"
        elif code in (errno.EPERM, errno.EACCES) and kind == socket.SOCK_RAW:
            raise _fail(exc, what, "raw sockets need root or CAP_NET_RAW") from exc
        else:
            raise _fail(exc, what) from exc
        raise Unsupported(code, f"{what}: {reason}") from exc


def _close_on_error(sock: socket.socket, build: Callable[[], _T]) -> _T:
    try:
        return build()
    except BaseException:
        sock.close()
        raise


def open_socket(
    domain: int | str = "inet", type: int | str = "dgram", proto: int | str = 0
) -> socket.socket:
    """Open a socket of any domain, type and protocol the OS supports.

    This is the seed's "generic interface for handling the rest": nothing is
    assumed about the family, so ``open_socket("packet", "raw")`` or
    ``open_socket("unix", "seqpacket")`` work where the OS allows them.

    Args:
        domain: address family, as :func:`parse_domain` accepts.
        type: socket type, as :func:`parse_type` accepts.
        proto: protocol, as :func:`parse_protocol` accepts; 0 picks the default.

    Returns:
        A new blocking socket; the caller owns it.

    Raises:
        UsageError: an unknown domain, type or protocol name.
        Unsupported: the OS lacks the family (``PF_X25`` on most Linux
            systems), the type in that family, or the protocol.
        NetworkError: any other refusal (PermissionDenied for raw sockets
            without privileges).
    """
    return _new_socket(parse_domain(domain), parse_type(type), parse_protocol(proto))


# --- the classes -----------------------------------------------------------------------------

_FAMILY_LABEL: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


class Datagram(NamedTuple):
    """One datagram as received.

    Attributes:
        data: the bytes kept (at most the buffer size given to ``recv``).
        peer: the sender's socket address, as the socket module gives it.
        length: the datagram's real length on the wire; larger than
            ``len(data)`` when it was truncated.
    """

    data: bytes
    peer: Any
    length: int

    @property
    def truncated(self) -> bool:
        """Whether bytes were cut off because the buffer was too small."""
        return self.length > len(self.data)


class _Wrapped:
    """What every socket wrapper shares: ownership, closing, local address."""

    _kind: int = -1
    _kind_hint = ""

    def __init__(self, sock: socket.socket) -> None:
        if sock.type != self._kind:
            raise UsageError(
                f"{type(self).__name__} needs a {_type_name(self._kind)} socket, not "
                f"{_type_name(sock.type)}: {self._kind_hint}"
            )
        self._sock = sock
        # A unix socket file we created, removed on close: (path, st_dev, st_ino).
        self._unlink: tuple[str, int, int] | None = None

    @property
    def sock(self) -> socket.socket:
        """The underlying socket (for select, setsockopt, ...); still owned by this object."""
        return self._sock

    @property
    def family(self) -> int:
        """The address family (``AF_INET``, ``AF_INET6``, ``AF_UNIX``, ...)."""
        return self._sock.family

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the socket closed otherwise)."""
        return self._sock.fileno() == -1

    def fileno(self) -> int:
        """The file descriptor, for select/poll/selectors."""
        return self._sock.fileno()

    @property
    def local_address(self) -> Any:
        """The raw local socket address from ``getsockname()``."""
        try:
            return self._sock.getsockname()
        except OSError as exc:
            raise _fail(exc, "cannot read the local address") from exc

    @property
    def local_text(self) -> str:
        """The local address as text, e.g. ``127.0.0.1:5005`` or ``[::1]:5005``."""
        return format_sockaddr(self.local_address)

    def close(self) -> None:
        """Close the socket (idempotent); remove a unix socket file this object created."""
        self._sock.close()
        token, self._unlink = self._unlink, None
        if token is not None:
            _remove_own_file(token)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<{type(self).__name__} closed>"
        return f"<{type(self).__name__} {_domain_name(self.family)} {self.local_text}>"


def _peer_of(sock: socket.socket) -> Any:
    try:
        return sock.getpeername()
    except OSError:
        return None  # not connected


class DatagramSocket(_Wrapped):
    """A datagram socket: UDP over IPv4/IPv6, UDP-Lite, Unix datagrams, any SOCK_DGRAM.

    Nothing is truncated silently: :meth:`recv` returns the real length of
    every datagram. On Linux the kernel reports it (``MSG_TRUNC``) and the
    receive buffer is exactly ``bufsize``. Other systems cannot report it, so
    there the buffer is at least 64 KiB and at least ``SO_RCVBUF`` (no queued
    datagram can be larger than the receive buffer) and the kept bytes are
    cut to ``bufsize`` afterwards; the length is exact unless ``SO_RCVBUF``
    is raised after the first receive.
    """

    _kind = socket.SOCK_DGRAM
    _kind_hint = "use StreamSocket for stream sockets"
    # Class attribute so the tests can run the portable path on Linux too.
    _kernel_length: bool = _LINUX and bool(_MSG_TRUNC)

    def __init__(self, sock: socket.socket) -> None:
        """Wrap a SOCK_DGRAM socket; this object owns it from now on.

        Args:
            sock: any SOCK_DGRAM socket, bound, connected or neither.

        Raises:
            UsageError: ``sock`` is not a datagram socket.
        """
        super().__init__(sock)
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._floor = 0  # portable path: the smallest safe buffer, found on first use
        self._peer: Any = _peer_of(sock)
        self._limit: int | None = None
        if sock.proto in (0, socket.IPPROTO_UDP, IPPROTO_UDPLITE):
            self._limit = MAX_UDP_PAYLOAD.get(sock.family)
        self._last_to: tuple[Any, Any] | None = None  # (destination as given, sockaddr)

    @property
    def peer(self) -> Any:
        """The connected peer's socket address, or ``None`` if not connected."""
        return self._peer

    def _buffer(self, size: int) -> memoryview:
        if len(self._buf) < size:
            self._view.release()
            self._buf = bytearray(size)
            self._view = memoryview(self._buf)
        return self._view

    def _where(self) -> str:
        if self._peer is not None:
            return f"from {format_sockaddr(self._peer)}"
        try:
            return f"on {format_sockaddr(self._sock.getsockname())}"
        except OSError:
            return "on a closed socket"

    def recv(self, bufsize: int = 65535, *, timeout: float | None = None) -> Datagram:
        """Receive one datagram, whole or marked truncated with its real length.

        Args:
            bufsize: the most bytes to keep (at least 1). The default holds any
                IPv4 UDP datagram; use 65527 for the largest IPv6 one.
            timeout: ``None`` blocks; a number of seconds waits at most that
                long (``0`` only takes a datagram already queued).

        Returns:
            The datagram; ``length`` is its real size, ``truncated`` says if
            bytes were cut off. A zero-length datagram gives ``b""``.

        Raises:
            UsageError: a bad ``bufsize`` or ``timeout``.
            Timeout: nothing arrived in time.
            ConnectionRefused: a connected socket's peer sent ICMP port unreachable.
            NetworkError: any other socket error.
        """
        if isinstance(bufsize, bool) or not isinstance(bufsize, int) or bufsize < 1:
            raise UsageError(f"invalid bufsize {bufsize!r}: must be at least 1 byte")
        _set_timeout(self._sock, timeout)
        try:
            if self._kernel_length:
                # With MSG_TRUNC Linux returns the datagram's real length.
                view = self._buffer(bufsize)
                n, peer = self._sock.recvfrom_into(view, bufsize, _MSG_TRUNC)
            else:
                if not self._floor:
                    rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                    self._floor = max(65536, rcvbuf)
                size = max(bufsize, self._floor)
                view = self._buffer(size)
                n, peer = self._sock.recvfrom_into(view, size)
        except (TimeoutError, BlockingIOError) as exc:
            waited = "none was waiting" if not timeout else f"none arrived within {timeout:g} s"
            raise Timeout(f"no datagram {self._where()}: {waited}") from exc
        except OSError as exc:
            hint = _REFUSED_HINT if exc.errno == errno.ECONNREFUSED else ""
            raise _fail(exc, f"receive {self._where()}", hint) from exc
        return Datagram(bytes(view[: min(n, bufsize)]), peer, n)

    def _sockaddr(self, to: Address | tuple[Any, ...] | str | bytes) -> Any:
        if isinstance(to, Address):
            if to.family != self.family:
                raise UsageError(
                    f"cannot send to {to} from an {_domain_name(self.family)} socket: "
                    f"use an address of family {_domain_name(self.family)}"
                )
            return to.sockaddr
        if self._last_to is not None and self._last_to[0] == to:
            return self._last_to[1]  # a reply to the same peer: skip resolving
        sockaddr: Any
        if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(to, tuple):
            if len(to) != 2:
                sockaddr = to  # a full IPv6 (host, port, flowinfo, scope_id)
            else:
                sockaddr = resolve_one(to[0], to[1], family=self.family).sockaddr
        elif self.family == socket.AF_UNIX and isinstance(to, str | bytes):
            sockaddr = _unix_sockaddr(to) if isinstance(to, str) else to
        else:
            want = "(host, port) or an Address" if self.family != socket.AF_UNIX else "a path"
            raise UsageError(
                f"invalid destination {to!r} for an {_domain_name(self.family)} socket: give {want}"
            )
        self._last_to = (to, sockaddr)
        return sockaddr

    def send(self, data: bytes, to: Address | tuple[Any, ...] | str | None = None) -> int:
        """Send one datagram.

        Args:
            data: the payload; ``b""`` sends a zero-length datagram.
            to: the destination (an Address, a ``(host, port)`` tuple in any
                form udpkit accepts, or a unix path / ``@name``); ``None`` for
                a connected socket's peer.

        Returns:
            The number of bytes sent (always ``len(data)`` for datagrams).

        Raises:
            MessageTooLarge: over the family's largest UDP payload (checked
                before anything is sent), or refused by the kernel (EMSGSIZE).
            UsageError: no destination on an unconnected socket, or a
                destination of the wrong form or family.
            AddressError: a destination host or port that does not resolve.
            PermissionDenied: e.g. broadcast without SO_BROADCAST.
            ConnectionRefused: an earlier datagram drew ICMP port unreachable.
            Timeout: the socket was left with a timeout by ``recv`` and the
                send could not complete within it.
            NetworkError: any other socket error.
        """
        size = len(data)
        if self._limit is not None and size > self._limit:
            label = _FAMILY_LABEL.get(self.family, _domain_name(self.family))
            proto = "UDP-Lite" if self._sock.proto == IPPROTO_UDPLITE else "UDP"
            raise MessageTooLarge(
                f"message of {size} bytes is too large: "
                f"the largest {label} {proto} datagram carries {self._limit} bytes"
            )
        dest = None if to is None else self._sockaddr(to)
        try:
            if dest is None:
                return self._sock.send(data)
            return self._sock.sendto(data, dest)
        except OSError as exc:
            raise self._send_error(exc, size, dest) from exc

    def _send_error(self, exc: OSError, size: int, dest: Any) -> UdpkitError:
        where = format_sockaddr(dest if dest is not None else self._peer)
        what = f"send to {where}"
        if isinstance(exc, TimeoutError):
            return Timeout(f"{what}: not sent within {self._sock.gettimeout() or 0:g} s")
        if exc.errno == errno.EMSGSIZE:
            return MessageTooLarge(
                f"message of {size} bytes is too large for {where}: the kernel refused it "
                "(for unix sockets raise SO_SNDBUF; for UDP the path MTU may be smaller)"
            )
        if exc.errno in (errno.EDESTADDRREQ, errno.ENOTCONN):
            return UsageError("send needs a destination: this socket is not connected, pass to=")
        if _broadcast_denied(exc, self._sock):
            return PermissionDenied(errno.EACCES, f"{what}: permission denied: {_BROADCAST_HINT}")
        return _fail(exc, what, _REFUSED_HINT if exc.errno == errno.ECONNREFUSED else "")


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
        self._peer: Any = _peer_of(sock)

    @property
    def peer(self) -> Any:
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
            raise _fail(exc, self._what("send to")) from exc

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
            raise _fail(exc, self._what("receive from")) from exc

    def shutdown_write(self) -> None:
        """Tell the peer no more data follows (it reads EOF); reading still works.

        Raises:
            NetworkError: the connection is already gone.
        """
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise _fail(exc, self._what("shut down sending to")) from exc


class StreamListener(_Wrapped):
    """A listening stream socket (TCP or Unix) that hands out :class:`StreamSocket`."""

    _kind = socket.SOCK_STREAM
    _kind_hint = "listen on a stream socket"

    def accept(self, *, timeout: float | None = None) -> tuple[StreamSocket, Any]:
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
            raise _fail(exc, f"accept on {self.local_text}") from exc
        conn.setblocking(True)  # do not inherit the listener's timeout
        return _close_on_error(conn, lambda: StreamSocket(conn)), peer


# --- constructors for the common transports -------------------------------------------------


def _bind(sock: socket.socket, sockaddr: Any, shown: str) -> None:
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        raise _fail(exc, f"cannot bind {shown}") from exc


def _connect(sock: socket.socket, sockaddr: Any, shown: str, timeout: float | None) -> None:
    _set_timeout(sock, timeout)
    try:
        sock.connect(sockaddr)
    except TimeoutError as exc:
        raise Timeout(f"connect to {shown}: no answer within {timeout:g} s") from exc
    except OSError as exc:
        if _broadcast_denied(exc, sock):
            raise PermissionDenied(
                errno.EACCES, f"connect to {shown}: permission denied: {_BROADCAST_HINT}"
            ) from exc
        hint = "nothing is listening there" if exc.errno == errno.ECONNREFUSED else ""
        raise _fail(exc, f"connect to {shown}", hint) from exc
    sock.settimeout(None)


def _local_for(
    bind: tuple[str | int | None, int | str], dest: Address, kind: int, proto: str
) -> Address:
    """Resolve a local bind address in the destination's family, or explain the mismatch."""
    host, port = bind
    try:
        return resolve_one(host, port, family=dest.family, type=kind, proto=proto, passive=True)
    except AddressError as exc:
        try:
            other = resolve_one(host, port, type=kind, proto=proto, passive=True)
        except AddressError:
            raise exc from None
        if other.family == dest.family:
            raise
        raise AddressError(
            f"cannot bind {other} to reach {dest}: the bind address is "
            f"{_FAMILY_LABEL.get(other.family, '?')} but the destination is "
            f"{_FAMILY_LABEL.get(dest.family, '?')}; use addresses of one family"
        ) from exc


def udp_bind(
    host: str | int | None = "127.0.0.1",
    port: int | str = 0,
    *,
    family: int | str = socket.AF_UNSPEC,
    reuse_port: bool = False,
    broadcast: bool = False,
    protocol: int | str = "udp",
) -> DatagramSocket:
    """Open a UDP (or UDP-Lite) socket bound to ``host``:``port``.

    SO_REUSEADDR is not set: for UDP it would let a second server share the
    port silently. For ``"::"`` IPV6_V6ONLY keeps the OS default.

    Args:
        host: any host form udpkit accepts; ``""``/``None`` is every interface.
        port: a number, numeric string or service name; 0 picks a free port.
        family: AF_UNSPEC (from the host), AF_INET or AF_INET6.
        reuse_port: set SO_REUSEPORT, so several sockets share the port (load spread).
        broadcast: set SO_BROADCAST, needed to send to broadcast addresses.
        protocol: ``"udp"`` (or 0) or ``"udplite"``.

    Returns:
        The bound socket; ``local_address`` tells the port picked.

    Raises:
        AddressError: a bad host or port.
        AddressInUse: the address is taken ("cannot bind 127.0.0.1:5005: address already in use").
        Unsupported: SO_REUSEPORT or UDP-Lite missing here.
        NetworkError: any other refusal (PermissionDenied for ports < 1024).
    """
    proto = parse_protocol(protocol)
    addr = resolve_one(host, port, family=parse_domain(family), passive=True)
    sock = _new_socket(addr.family, socket.SOCK_DGRAM, proto)

    def build() -> DatagramSocket:
        if reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise Unsupported(errno.ENOPROTOOPT, "SO_REUSEPORT is not available on this system")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        _bind(sock, addr.sockaddr, str(addr))
        return DatagramSocket(sock)

    return _close_on_error(sock, build)


def udp_connect(
    host: str | int | None,
    port: int | str,
    *,
    bind: tuple[str | int | None, int | str] | None = None,
    family: int | str = socket.AF_UNSPEC,
    broadcast: bool = False,
    protocol: int | str = "udp",
) -> DatagramSocket:
    """Open a UDP socket connected to ``host``:``port``.

    A connected socket only accepts datagrams from that peer, and ICMP port
    unreachable shows up as ConnectionRefused on a later recv or send.

    Args:
        host: the destination host, any form udpkit accepts.
        port: the destination port.
        bind: an optional local ``(host, port)`` to bind first, like the seed's
            client binding ``('', 54312)``; it must be of the destination's family.
        family: AF_UNSPEC, AF_INET or AF_INET6.
        broadcast: set SO_BROADCAST (needed to connect to 255.255.255.255).
        protocol: ``"udp"`` (or 0) or ``"udplite"``.

    Returns:
        The connected socket.

    Raises:
        AddressError: a bad host or port, or a bind address of the other family.
        AddressInUse: the local bind address is taken.
        PermissionDenied: broadcast without ``broadcast=True``.
        NetworkError: any other refusal (e.g. no route).
    """
    proto = parse_protocol(protocol)
    dest = resolve_one(host, port, family=parse_domain(family))
    local = _local_for(bind, dest, socket.SOCK_DGRAM, "udp") if bind is not None else None
    sock = _new_socket(dest.family, socket.SOCK_DGRAM, proto)

    def build() -> DatagramSocket:
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if local is not None:
            _bind(sock, local.sockaddr, str(local))
        _connect(sock, dest.sockaddr, str(dest), None)
        return DatagramSocket(sock)

    return _close_on_error(sock, build)


def tcp_listen(
    host: str | int | None = "127.0.0.1",
    port: int | str = 0,
    *,
    family: int | str = socket.AF_UNSPEC,
    backlog: int = 128,
) -> StreamListener:
    """Open a TCP socket listening on ``host``:``port`` (the seed's simple server).

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
    addr = resolve_one(
        host, port, family=parse_domain(family), type=socket.SOCK_STREAM, proto="tcp", passive=True
    )
    sock = _new_socket(addr.family, socket.SOCK_STREAM, 0)

    def build() -> StreamListener:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _bind(sock, addr.sockaddr, str(addr))
        _listen(sock, backlog, str(addr))
        return StreamListener(sock)

    return _close_on_error(sock, build)


def _listen(sock: socket.socket, backlog: int, shown: str) -> None:
    try:
        sock.listen(backlog)
    except OSError as exc:
        raise _fail(exc, f"cannot listen on {shown}") from exc


def tcp_connect(
    host: str | int | None,
    port: int | str,
    *,
    timeout: float | None = None,
    bind: tuple[str | int | None, int | str] | None = None,
    family: int | str = socket.AF_UNSPEC,
) -> StreamSocket:
    """Open a TCP connection to ``host``:``port`` (the seed's simple client).

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


# --- Unix domain sockets ---------------------------------------------------------------------


def _unix_sockaddr(path: str) -> str:
    if not path:
        raise UsageError("empty unix socket path '': give a file path, or @name on Linux")
    if path.startswith("@"):
        if not _LINUX:
            raise UsageError(f"abstract unix socket '{path}' needs Linux: use a file path")
        return "\0" + path[1:]  # Linux's abstract namespace: no file at all
    return path


def _claim_path(path: str, kind: int) -> None:
    """Make room to bind ``path``: remove a stale socket file, refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _fail(exc, f"cannot bind {path}") from exc
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


def _own_file(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return (path, st.st_dev, st.st_ino)


def _remove_own_file(token: tuple[str, int, int]) -> None:
    path, dev, ino = token
    try:
        st = os.lstat(path)
        # Only our own file: another server may have replaced it since.
        if (st.st_dev, st.st_ino) == (dev, ino):
            os.unlink(path)
    except OSError:
        pass


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
    if _LINUX:
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

    def build() -> StreamSocket:
        _connect(sock, sockaddr, path, timeout)
        return StreamSocket(sock)

    return _close_on_error(sock, build)
