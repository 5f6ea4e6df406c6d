"""Sockets in the textbook's vocabulary: domain, type and protocol.

The textbook says the socket library "provides specific classes for handling the
common transports as well as a generic interface for handling the rest".
Here that is:

* the generic interface, :func:`udpkit.open_socket` (in ``domains.py``);
* specific classes for the common transports: :class:`DatagramSocket` (UDP
  over IPv4/IPv6, UDP-Lite, Unix datagrams), :class:`StreamSocket` and
  :class:`StreamListener` (TCP and Unix streams, in ``stream.py``), and the
  constructors :func:`udp_bind`, :func:`udp_connect`, :func:`tcp_listen` and
  :func:`tcp_connect` (Unix-domain constructors are in ``unix.py``).

One responsibility, which is why it runs past 600 lines: turning OS sockets
into udpkit's socket objects (what every wrapper shares, the datagram socket,
and the constructors that bind and connect them).  Every ``OSError`` becomes a
udpkit error (see ``_core/errors.py``) with a message saying what was being
done, and every socket opened here is closed again on every error path.
:class:`~udpkit.Datagram` itself lives in the core (``_core/datagram.py``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable, Sequence
from typing import Self, TypeVar

from udpkit._core.datagram import AnySockAddr, Datagram, Payload, SockAddr
from udpkit._core.errors import (
    AddressError,
    MessageTooLarge,
    NetworkError,
    PermissionDenied,
    Timeout,
    UdpkitError,
    Unsupported,
    UsageError,
    map_oserror,
)
from udpkit._net.addr import MAX_UDP_PAYLOAD, Address, format_sockaddr, resolve, resolve_one
from udpkit._net.domains import (
    IPPROTO_UDPLITE,
    _domain_name,
    _new_socket,
    _type_name,
    parse_domain,
    parse_protocol,
)
from udpkit._net.kernel import LINUX, MSG_TRUNC

_T = TypeVar("_T")

Destination = Address | tuple[str | int | None, int | str] | tuple[str, int, int, int] | str | bytes
"""Where :meth:`DatagramSocket.send` may send: an Address, a ``(host, port)``
tuple in any form udpkit accepts (or a full IPv6 sockaddr), or a unix path,
``@name`` or abstract name."""

__all__ = [
    "Datagram",
    "DatagramSocket",
    "set_receive_buffer",
    "udp_bind",
    "udp_connect",
]


# --- error helpers ---------------------------------------------------------------------------


_REFUSED_HINT = "nothing is listening there (ICMP port unreachable)"
_BROADCAST_HINT = "broadcast needs SO_BROADCAST (broadcast=True, or --broadcast)"
# A host with no default route has no way out for a group either.
_GROUP_ROUTE_HINT = (
    "no route for the group: name the interface (--iface IFACE, or set_multicast_send(iface=))"
)


def _is_group_dest(dest: object) -> bool:
    from udpkit._net.mcast import group_family

    if not (isinstance(dest, tuple) and dest and isinstance(dest[0], str)):
        return False
    try:
        return group_family(dest[0]) is not None
    except AddressError:
        return False


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


def _close_on_error(sock: socket.socket, build: Callable[[], _T]) -> _T:
    try:
        return build()
    except BaseException:
        sock.close()
        raise


# --- the classes -----------------------------------------------------------------------------

_FAMILY_LABEL: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


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
    def local_address(self) -> AnySockAddr:
        """The raw local socket address from ``getsockname()``."""
        try:
            addr: AnySockAddr = self._sock.getsockname()
        except OSError as exc:
            raise map_oserror(exc, "cannot read the local address") from exc
        return addr

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


def _peer_of(sock: socket.socket) -> AnySockAddr:
    try:
        addr: AnySockAddr = sock.getpeername()
    except OSError:
        return None  # not connected
    return addr


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
    _kernel_length: bool = LINUX

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
        self._peer = _peer_of(sock)
        self._limit: int | None = None
        if sock.proto in (0, socket.IPPROTO_UDP, IPPROTO_UDPLITE):
            self._limit = MAX_UDP_PAYLOAD.get(sock.family)
        self._last_to: tuple[Destination, SockAddr] | None = None  # (as given, sockaddr)

    @property
    def peer(self) -> AnySockAddr:
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
                n, peer = self._sock.recvfrom_into(view, bufsize, MSG_TRUNC)
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
            raise map_oserror(exc, f"receive {self._where()}", hint) from exc
        return Datagram(bytes(view[: min(n, bufsize)]), peer, n)

    def _sockaddr(self, to: Destination) -> SockAddr:
        if isinstance(to, Address):
            if to.family != self.family:
                raise UsageError(
                    f"cannot send to {to} from an {_domain_name(self.family)} socket: "
                    f"use an address of family {_domain_name(self.family)}"
                )
            return to.sockaddr
        if self._last_to is not None and self._last_to[0] == to:
            return self._last_to[1]  # a reply to the same peer: skip resolving
        sockaddr: SockAddr
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

    def send(self, data: Payload, to: Destination | None = None) -> int:
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

    def _send_error(self, exc: OSError, size: int, dest: SockAddr | None) -> UdpkitError:
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
        hint = ""
        if exc.errno == errno.ECONNREFUSED:
            hint = _REFUSED_HINT
        elif exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) and _is_group_dest(dest):
            hint = _GROUP_ROUTE_HINT
        return map_oserror(exc, what, hint)


# --- constructors for the common transports -------------------------------------------------


def _bind(sock: socket.socket, sockaddr: SockAddr, shown: str) -> None:
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        raise map_oserror(exc, f"cannot bind {shown}") from exc


def _connect(sock: socket.socket, sockaddr: SockAddr, shown: str, timeout: float | None) -> None:
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
        hint = ""
        if exc.errno == errno.ECONNREFUSED:
            hint = "nothing is listening there"
        elif exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) and _is_group_dest(sockaddr):
            hint = _GROUP_ROUTE_HINT
        raise map_oserror(exc, f"connect to {shown}", hint) from exc
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
    v6only: bool | None = None,
    protocol: int | str = "udp",
    reuse_addr: bool = False,
) -> DatagramSocket:
    """Open a UDP (or UDP-Lite) socket bound to ``host``:``port``.

    SO_REUSEADDR is off unless asked for: for unicast it would let a second
    server share the port silently. For ``"::"`` IPV6_V6ONLY keeps the OS default.

    Args:
        host: any host form udpkit accepts; ``""``/``None`` is every interface.
            A name's addresses are tried in order, and the first that binds is used.
        port: a number, numeric string or service name; 0 picks a free port.
        family: AF_UNSPEC (from the host), AF_INET or AF_INET6.
        reuse_port: set SO_REUSEPORT, so several sockets share the port (load spread).
        reuse_addr: set SO_REUSEADDR, so several multicast receivers on one host
            share the group port (each hears the groups it joined; a unicast
            datagram to the port reaches only one of them).
        broadcast: set SO_BROADCAST, needed to send to broadcast addresses.
        v6only: for an IPv6 socket, IPV6_V6ONLY: ``False`` makes ``"::"`` receive
            IPv4 too (dual stack, peers as ``::ffff:a.b.c.d``), ``True`` IPv6 only;
            ``None`` keeps the OS default.
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
    candidates = resolve(host, port, family=parse_domain(family), passive=True)
    return first_that_binds(
        candidates,
        lambda addr: _udp_bind_one(
            addr,
            proto,
            reuse_port=reuse_port,
            broadcast=broadcast,
            v6only=v6only,
            reuse_addr=reuse_addr,
        ),
    )[1]


def first_that_binds(
    candidates: Sequence[Address], bind: Callable[[Address], _T]
) -> tuple[Address, _T]:
    """Bind the first of a host's addresses that works, as a host name promises.

    A name may resolve to addresses this host does not have (an IPv6 one first,
    say): each is tried in ``getaddrinfo``'s order.

    Returns:
        ``(address, bind(address))`` for the first address that bound.

    Raises:
        NetworkError: the first address's error, when none of them bound.
    """
    error: NetworkError | None = None
    for addr in candidates:
        try:
            return addr, bind(addr)
        except NetworkError as exc:
            if error is None:
                error = exc
    assert error is not None  # resolve() gives at least one address or raises
    raise error


def _udp_bind_one(
    addr: Address,
    proto: int,
    *,
    reuse_port: bool,
    broadcast: bool,
    v6only: bool | None,
    reuse_addr: bool,
) -> DatagramSocket:
    sock = _new_socket(addr.family, socket.SOCK_DGRAM, proto)

    def build() -> DatagramSocket:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise Unsupported(errno.ENOPROTOOPT, "SO_REUSEPORT is not available on this system")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if v6only is not None and addr.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
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
        bind: an optional local ``(host, port)`` to bind first, like the textbook's
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


def _listen(sock: socket.socket, backlog: int, shown: str) -> None:
    try:
        sock.listen(backlog)
    except OSError as exc:
        raise map_oserror(exc, f"cannot listen on {shown}") from exc


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


def _unix_sockaddr(path: str) -> str:
    if not path:
        raise UsageError("empty unix socket path '': give a file path, or @name on Linux")
    if path.startswith("@"):
        if not LINUX:
            raise UsageError(f"abstract unix socket '{path}' needs Linux: use a file path")
        return "\0" + path[1:]  # Linux's abstract namespace: no file at all
    return path


_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if LINUX else None)


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a kernel receive buffer of ``size`` bytes; return what the kernel gave.

    Linux caps SO_RCVBUF silently at ``net.core.rmem_max``; when it falls short
    this tries SO_RCVBUFFORCE, which root (CAP_NET_ADMIN) may use past the cap.
    Linux reports twice the size asked (the other half is its bookkeeping), so
    the figure returned is halved there, to compare with ``size``.

    Raises:
        UsageError: ``size`` is not positive.
        NetworkError: the OS refused the option outright.
    """
    if size < 1:
        raise UsageError(f"invalid receive buffer {size!r}: must be 1 byte or more")
    size = min(size, 2**31 - 1)

    def granted() -> int:
        value = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        return value // 2 if LINUX else value

    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError as exc:
        raise map_oserror(exc, f"cannot set a receive buffer of {size} bytes") from exc
    got = granted()
    if got < size and _SO_RCVBUFFORCE is not None:
        with contextlib.suppress(OSError):  # not root: keep what SO_RCVBUF gave
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
            got = granted()
    return got
