"""Bind a serving socket: one, or several sharing a port for workers, joined to groups.

The one rule for ``udpkit serve`` and ``udpkit reflect`` (and a library user):
which address a server listens on when none is given, when an IPv6 wildcard
also hears IPv4, which multicast groups a socket bound there could ever hear,
and how SO_REUSEPORT workers share a port without each hearing every group
datagram.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence

from udpkit._core.errors import UsageError, map_oserror
from udpkit._net.addr import Address, resolve
from udpkit._net.domains import parse_domain
from udpkit._net.kernel import IP_MULTICAST_ALL, IPV6_MULTICAST_ALL, LINUX
from udpkit._net.mcast import group_family, join_group, parse_group
from udpkit._net.sockets import DatagramSocket, first_that_binds, udp_bind

__all__ = ["DEFAULT_SERVER_HOST", "bind_server", "default_host"]

DEFAULT_SERVER_HOST = "127.0.0.1"  # the textbook server's address


def bind_server(
    host: str | int | None = None,
    port: int | str = 0,
    *,
    family: int | str = socket.AF_UNSPEC,
    workers: int = 1,
    join: Iterable[str | tuple[str, str | None]] = (),
    iface: str | None = None,
    source: str | None = None,
) -> list[DatagramSocket]:
    """Bind the UDP socket(s) a server listens on, ready for a :class:`~udpkit.DatagramServer`.

    With no ``host``, the server listens on loopback (127.0.0.1, or ::1 when
    ``family`` is IPv6); with groups to join, on the wildcard of ``family``, or
    else of the first group's family, since group traffic is addressed to the
    group.  An IPv6 wildcard hears IPv4 too (dual stack) unless ``family`` asks
    for IPv6.  A name's addresses are tried in order; the first that binds is used.

    ``workers`` sockets share the port with SO_REUSEPORT (the kernel spreads
    unicast peers over them).  It gives each socket its own copy of a group
    datagram, so only the first socket joins the groups and the others hear
    none.  Group receivers set SO_REUSEADDR, so several of them share a
    group's port on one host (as socat or VLC do).

    Args:
        host: any host form udpkit accepts (``""`` is the wildcard), or ``None``
            for the default above.
        port: a number, numeric string or service name; 0 picks a free port
            (shared by every worker socket).
        family: AF_UNSPEC (from the host), AF_INET or AF_INET6 (or ``"inet6"``...).
        workers: how many sockets share the port.
        join: multicast groups the (first) socket joins: ``"239.1.2.3"``,
            ``"GROUP@IFACE"``, or ``(group, iface)``.
        iface: the interface for groups that name none (``None``: by route).
        source: with ``join``: hear only this sender (source-specific multicast).

    Returns:
        The bound sockets, ``workers`` of them on one port; the caller closes them.

    Raises:
        UsageError: ``source`` without ``join``, ``workers`` out of range, or a
            group this socket could never hear (of the other family, or the
            socket bound to a unicast address: Linux delivers group datagrams
            only to sockets bound to the wildcard or to the group).
        AddressError: a bad host or port, or a group that is no group.
        AddressInUse, NetworkError: the kernel refused the bind or the join.
    """
    groups = [parse_group(g) if isinstance(g, str) else g for g in join]
    groups = [(g, i if i is not None else iface) for g, i in groups]
    if source is not None and not groups:
        raise UsageError(f"source {source!r} (--source) goes with a group to join (--join GROUP)")
    if workers < 1:
        raise UsageError(f"invalid workers {workers!r}: must be 1 or more sockets")
    fam = parse_domain(family)
    if host is None:
        host = default_host(fam, [g for g, _ in groups])
    candidates = resolve(host, port, family=fam, passive=True)
    if len(candidates) == 1:  # refused before binding, whatever bind would say
        _check_groups(groups, candidates[0])
    # An IPv6 wildcard serves IPv4 too (dual stack) unless IPv6 was asked for.
    v6only = fam == socket.AF_INET6
    share = {"reuse_port": workers > 1, "v6only": v6only, "reuse_addr": bool(groups)}
    addr, first = first_that_binds(
        candidates, lambda a: udp_bind(a.host, a.port, family=a.family, **share)
    )
    socks = [first]
    try:
        if len(candidates) > 1:  # a single address was checked before binding
            _check_groups(groups, addr)
        bound_port = first.local_address[1]  # the rest join the port the first got
        for _ in range(workers - 1):
            socks.append(udp_bind(addr.host, bound_port, family=addr.family, **share))
        _join(socks, groups, source)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def _join(
    socks: list[DatagramSocket], groups: list[tuple[str, str | None]], source: str | None
) -> None:
    """The first socket joins every group; the other workers' sockets hear none."""
    if len(socks) > 1:
        # With IP_MULTICAST_ALL on, a wildcard socket hears any group another
        # socket on the host joined.  The first keeps the default without
        # groups, like a single socket; join_group turns it off with groups.
        for s in socks[0 if groups else 1 :]:
            _multicast_all_off(s.sock)
    for group, iface in groups:
        join_group(socks[0], group, iface=iface, source=source)


def default_host(family: int, groups: Sequence[str] = ()) -> str:
    """Where a server listens when no host is given (for UDP and TCP alike).

    Loopback of ``family`` (``-6`` alone means ::1, never 127.0.0.1); with
    groups, the wildcard of ``family``, or else of the first group's family.
    """
    v6 = family == socket.AF_INET6
    if not groups:
        return "::1" if v6 else DEFAULT_SERVER_HOST
    if family == socket.AF_UNSPEC:
        v6 = group_family(groups[0]) == socket.AF_INET6
    return "::" if v6 else "0.0.0.0"


def _check_groups(groups: list[tuple[str, str | None]], bound: Address) -> None:
    """Refuse a group that a socket bound to ``bound`` could never hear.

    Raises:
        AddressError: a group written as an address that is not a multicast group.
        UsageError: a group of the other family, or ``bound`` is a unicast address
            (or another group).
    """
    family = bound.family
    for group, _iface in groups:
        own = group_family(group)
        if own is None:
            continue  # a name: join_group resolves it and reports what is wrong
        if own != family:
            if own == socket.AF_INET:
                raise UsageError(
                    f"cannot join IPv4 group {group} on an IPv6 socket (serving on "
                    f"{bound.host}): serve on an IPv4 address (-4, or HOST 0.0.0.0) to join "
                    f"{group}, or join an IPv6 group (ff00::/8)"
                )
            raise UsageError(
                f"cannot join IPv6 group {group} on an IPv4 socket (serving on {bound.host}): "
                f"serve on an IPv6 address (-6, or HOST '::') to join {group}, "
                "or join an IPv4 group (224.0.0.0/4)"
            )
        packed = socket.inet_pton(family, bound.host.split("%", 1)[0])
        if not any(packed) or packed == socket.inet_pton(
            family, group.split("%", 1)[0].strip("[]")
        ):
            continue
        wildcard = "''" if family == socket.AF_INET else "'::'"
        raise UsageError(
            f"serving on {bound.host}, udpkit would never receive group {group}: Linux "
            "delivers group datagrams only to sockets bound to the wildcard or to the group; "
            f"bind {wildcard} (or give no HOST) or {group}"
        )


def _multicast_all_off(sock: socket.socket) -> None:
    """IP_MULTICAST_ALL (and IPV6_MULTICAST_ALL) off: hear only the groups joined here.

    Raises:
        NetworkError: the kernel refused.
    """
    if not LINUX:
        return
    try:
        # A dual-stack IPv6 socket hears IPv4 groups too: both levels.
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
    except OSError as exc:
        raise map_oserror(
            exc, "cannot turn off IP_MULTICAST_ALL for a second worker", "use one worker"
        ) from exc
