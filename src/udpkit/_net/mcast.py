"""Multicast and broadcast socket options, IPv4 and IPv6 alike.

Group membership uses the protocol-independent API of RFC 3678
(``MCAST_JOIN_GROUP`` / ``MCAST_JOIN_SOURCE_GROUP``), so any-source and
source-specific joins look the same for both families.  Python 3.11's
``socket`` module lacks these constants and structures: the Linux values are
defined here.
"""

from __future__ import annotations

import socket
import struct
from typing import Protocol

from udpkit._core.errors import AddressError, UsageError, map_oserror
from udpkit._net.addr import link_local_without_scope, parse_host, resolve_one
from udpkit._net.kernel import (
    IP_MULTICAST_ALL,
    IPV6_MULTICAST_ALL,
    LINUX,
    MCAST_JOIN_GROUP,
    MCAST_JOIN_SOURCE_GROUP,
    MCAST_LEAVE_GROUP,
    MCAST_LEAVE_SOURCE_GROUP,
)

__all__ = [
    "group_family",
    "join_group",
    "leave_group",
    "parse_group",
    "set_dual_stack",
    "set_multicast_send",
]

_SS_SIZE = 128  # sizeof(struct sockaddr_storage)
_ALIGN = 8  # the storage is 8-byte aligned: 4 bytes of padding after the interface


def _storage(family: int, sockaddr: object) -> bytes:
    """A ``struct sockaddr_storage`` holding ``sockaddr`` (port 0)."""
    assert isinstance(sockaddr, tuple)
    host = str(sockaddr[0]).split("%", 1)[0]
    if family == socket.AF_INET:
        raw = struct.pack("=H", socket.AF_INET) + b"\0\0" + socket.inet_pton(family, host)
    else:
        scope = int(sockaddr[3]) if len(sockaddr) > 3 else 0
        raw = (
            struct.pack("=H", socket.AF_INET6)
            + b"\0\0"
            + b"\0\0\0\0"
            + socket.inet_pton(family, host)
            + struct.pack("=I", scope)
        )
    return raw.ljust(_SS_SIZE, b"\0")


def _ifindex(iface: str | None) -> int:
    """The index of interface ``iface`` (a name, or an index as digits); 0 for none given.

    ``"0"`` also means none: the kernel picks the interface by route.

    An index is checked like a name: the kernel would otherwise refuse an unknown
    one later with an unrelated reason (EADDRNOTAVAIL, ENODEV).
    """
    if not iface:
        return 0
    if iface.isascii() and iface.isdigit():
        index = int(iface)
        if index == 0:
            return 0  # index 0: no interface named, the kernel picks by route
        try:
            socket.if_indextoname(index)
        except (OSError, OverflowError, ValueError):
            raise AddressError(
                f"unknown interface {iface!r}: no interface has index {index}; "
                "use a name or index from 'ip link'"
            ) from None
        return index
    try:
        return socket.if_nametoindex(iface)
    except OSError:
        raise AddressError(f"unknown interface {iface!r}: use a name from 'ip link'") from None


def _not_a_group(group: str) -> AddressError:
    return AddressError(
        f"{group!r} is not a multicast group: use 224.0.0.0/4 (IPv4) or ff00::/8 (IPv6)"
    )


def _is_group(family: int, packed: bytes) -> bool:
    return 224 <= packed[0] <= 239 if family == socket.AF_INET else packed[0] == 0xFF


_FAMILY_WORD: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
_WILDCARD: dict[int, str] = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


def group_family(group: str) -> int | None:
    """The family of a group written as an address; ``None`` for a name (resolved on join).

    Raises:
        AddressError: an address that is not a multicast group.
    """
    literal = group.split("%", 1)[0].strip("[]")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, literal)
        except (OSError, ValueError):
            continue
        if not _is_group(family, packed):
            raise _not_a_group(group)
        return family
    return None


def parse_group(text: str) -> tuple[str, str | None]:
    """Split ``GROUP[@IFACE]`` (``239.1.2.3@eth0``, ``ff02::1234@eth0``, ``ff02::1234%eth0``)."""
    group, _, iface = text.partition("@")
    if not group:
        raise UsageError(f"invalid group {text!r}: use GROUP[@IFACE], e.g. 239.1.2.3@eth0")
    return group, iface or None


class _HasSocket(Protocol):
    @property
    def sock(self) -> socket.socket: ...


SocketLike = socket.socket | _HasSocket
"""A socket.socket, or what wraps one as ``.sock`` (DatagramSocket, an aio endpoint)."""


def _raw(sock: SocketLike) -> socket.socket:
    """The plain socket of a socket.socket, a DatagramSocket or an udpkit.aio endpoint."""
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "sock", None)
    if not isinstance(raw, socket.socket) or raw.family not in (socket.AF_INET, socket.AF_INET6):
        raise UsageError(f"multicast needs an IPv4 or IPv6 datagram socket, not {sock!r}")
    return raw


def join_group(
    sock: SocketLike, group: str, *, iface: str | None = None, source: str | None = None
) -> None:
    """Join multicast ``group`` on ``iface`` (any-source, or source-specific with ``source``).

    Also turns off IP_MULTICAST_ALL, so the socket receives only the groups it
    joined (Linux otherwise delivers every group any socket joined on the port).
    The socket must be bound to the group's port (on the wildcard address, or
    on the group itself) to receive.

    Args:
        sock: a ``socket.socket``, a :class:`~udpkit.DatagramSocket` or an
            :mod:`udpkit.aio` endpoint or server, of the group's family.
        group: the group: ``"239.1.2.3"``, ``"ff02::1234"`` (a scope as in
            ``"ff02::1234%eth0"`` names the interface too).
        iface: the interface name or index; ``None`` lets the kernel pick by route.
        source: for a source-specific join (SSM), the one sender to hear.

    Raises:
        AddressError: ``group`` is not a multicast address of the socket's family,
            or ``iface`` does not exist.
        NetworkError: the kernel refused (no multicast route: name the interface).
    """
    _membership(_raw(sock), group, iface, source, join=True)


def leave_group(
    sock: SocketLike, group: str, *, iface: str | None = None, source: str | None = None
) -> None:
    """Leave a group joined with :func:`join_group` (the same arguments).

    Raises:
        AddressError: as for :func:`join_group`.
        NetworkError: the socket was not a member (EADDRNOTAVAIL), or the kernel refused.
    """
    _membership(_raw(sock), group, iface, source, join=False)


def _membership(
    sock: socket.socket, group: str, iface: str | None, source: str | None, *, join: bool
) -> None:
    family = sock.family
    if link_local_without_scope(parse_host(group)):
        raise _not_a_group(group)
    wanted = group_family(group)
    if wanted is not None and wanted != family and family in _FAMILY_WORD:
        # The socket, not the caller, picked the family (bind "" is IPv4): say so.
        verb = "join" if join else "leave"
        bound = sock.getsockname()[0] or "unbound"
        raise AddressError(
            f"cannot {verb} {_FAMILY_WORD[wanted]} group {group!r} on an "
            f"{_FAMILY_WORD[family]} socket (bound to {bound!r}): use a socket of the "
            f"group's family (bind {_WILDCARD[wanted]!r} for {_FAMILY_WORD[wanted]})"
        )
    addr = resolve_one(group, 0, family=family, passive=True)  # a group, not a send
    if not _is_group(family, socket.inet_pton(family, addr.host.split("%", 1)[0])):
        raise _not_a_group(group)
    sa = addr.sockaddr
    scope = sa[3] if isinstance(sa, tuple) and len(sa) == 4 else 0
    index = _ifindex(iface) or scope
    level = socket.IPPROTO_IP if family == socket.AF_INET else socket.IPPROTO_IPV6
    head = struct.pack("=I", index).ljust(_ALIGN, b"\0")
    verb = "join" if join else "leave"
    what = f"cannot {verb} {group}" + (f" on {iface}" if iface else "")
    try:
        if source is None:
            opt = MCAST_JOIN_GROUP if join else MCAST_LEAVE_GROUP
            sock.setsockopt(level, opt, head + _storage(family, addr.sockaddr))
        else:
            if index and link_local_without_scope(parse_host(source)):
                # A link-local source is on the interface of the join.
                source = f"{parse_host(source)}%{index}"
            src = resolve_one(source, 0, family=family, passive=True)
            opt = MCAST_JOIN_SOURCE_GROUP if join else MCAST_LEAVE_SOURCE_GROUP
            sock.setsockopt(
                level, opt, head + _storage(family, addr.sockaddr) + _storage(family, src.sockaddr)
            )
        if LINUX and join:
            opt = IP_MULTICAST_ALL if family == socket.AF_INET else IPV6_MULTICAST_ALL
            sock.setsockopt(level, opt, 0)
    except OSError as exc:
        hint = "name the interface: GROUP@IFACE" if join and not index else ""
        raise map_oserror(exc, what, hint) from exc


def set_multicast_send(
    sock: SocketLike,
    *,
    ttl: int | None = None,
    loop: bool | None = None,
    iface: str | None = None,
) -> None:
    """Set the hop limit, loopback and outgoing interface for multicast sends.

    Args:
        sock: as for :func:`join_group`.
        ttl: the hop limit (0-255; the kernel's default is 1: the local link).
        loop: whether this host's own members hear what the socket sends.
        iface: the interface name or index to send from.

    Raises:
        UsageError: ``ttl`` outside 0-255.
        AddressError: ``iface`` does not exist.
        NetworkError: the kernel refused.
    """
    sock = _raw(sock)
    v4 = sock.family == socket.AF_INET
    level = socket.IPPROTO_IP if v4 else socket.IPPROTO_IPV6
    try:
        if ttl is not None:
            if not 0 <= ttl <= 255:
                raise UsageError(f"invalid TTL {ttl}: must be 0-255")
            opt = socket.IP_MULTICAST_TTL if v4 else socket.IPV6_MULTICAST_HOPS
            sock.setsockopt(level, opt, ttl)
        if loop is not None:
            opt = socket.IP_MULTICAST_LOOP if v4 else socket.IPV6_MULTICAST_LOOP
            sock.setsockopt(level, opt, int(loop))
        if iface is not None:
            index = _ifindex(iface)
            if v4:
                # struct ip_mreqn: group (unused here), local address, interface index.
                mreqn = b"\0" * 4 + b"\0" * 4 + struct.pack("=i", index)
                sock.setsockopt(level, socket.IP_MULTICAST_IF, mreqn)
            else:
                sock.setsockopt(level, socket.IPV6_MULTICAST_IF, index)
    except OSError as exc:
        raise map_oserror(exc, "cannot set multicast options") from exc


def set_dual_stack(sock: socket.socket, on: bool) -> None:
    """IPV6_V6ONLY off (``on=True``: also receive IPv4 as ::ffff:a.b.c.d) or on.

    Raises:
        NetworkError: the OS refused (some systems have no dual-stack sockets).
    """
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if on else 1)
    except OSError as exc:
        raise map_oserror(exc, "cannot set IPV6_V6ONLY") from exc
