"""Host and port parsing, and resolution to socket addresses.

Every host and port form udpkit accepts goes through here, for binding and
for sending alike:

* hosts: a name (``"localhost"``), a dotted quad (``"127.0.0.1"``), an IPv6
  address in colon or dotted-tail notation (``"::1"``, ``"::ffff:127.0.0.1"``),
  optionally in brackets (``"[::1]"``) and with a scope (``"fe80::1%eth0"``),
  ``"<broadcast>"`` (255.255.255.255), ``""``/``None`` (INADDR_ANY), or an
  integer IPv4 address in host byte order (``2130706433`` is 127.0.0.1; a
  string of decimal digits counts as such an integer);
* ports: an integer, a numeric string, or a service name from
  ``/etc/services`` (``"syslog"`` is 514/udp).

Numeric hosts never go through DNS: they are checked with ``inet_pton`` and
turned into a socket address directly, because every ``sendto`` may come
through here. Malformed numeric-looking hosts (``"256.1.1.1"``, ``"1.2.3"``,
``"::1::2"``) are errors, not DNS lookups that fail slowly later, and so is a
link-local address (fe80::/10) without the ``%scope`` that says which link.

One responsibility, which is why it runs past 600 lines: address text to
socket address and back (parse, resolve, format, classify), with an error
message for every wrong form.
"""

from __future__ import annotations

import functools
import os
import socket
import struct

from udpkit._core.datagram import V4_MAPPED_PREFIX, SockAddr, unmap_v4
from udpkit._core.errors import AddressError

__all__ = [
    "BROADCAST",
    "MAX_UDP_PAYLOAD",
    "Address",
    "format_sockaddr",
    "is_broadcast",
    "is_multicast",
    "parse_host",
    "parse_port",
    "resolve",
    "resolve_one",
    "split_hostport",
]

BROADCAST: str = "<broadcast>"
"""The textbook's spelling of INADDR_BROADCAST (255.255.255.255)."""

#: Largest UDP payload per family: 65535 minus the UDP header (8) and, for
#: IPv4, the minimal IP header (20). IPv6's 40-byte header is not counted in
#: its 16-bit payload length, so only the UDP header comes off.
MAX_UDP_PAYLOAD: dict[int, int] = {socket.AF_INET: 65507, socket.AF_INET6: 65527}

_V4_BROADCAST = "255.255.255.255"
_V4_ANY = "0.0.0.0"
_V6_ANY = "::"
_MAX_V4_INT = 2**32 - 1
_FAMILIES = (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6)
_FAMILY_NAMES: dict[int, str] = {
    socket.AF_UNSPEC: "AF_UNSPEC",
    socket.AF_INET: "AF_INET",
    socket.AF_INET6: "AF_INET6",
}
_KIND: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
_PORT_HELP = "must be 0-65535 or a service name"
_V6_HELP = "write it like '2001:db8::1' or 'fe80::1%eth0', and pass the port separately"
# Service names in /etc/services are letters, digits, '-', '_', '+', '.', '/'.
_SERVICE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_+./")


class Address:
    """A resolved socket address, ready for ``bind`` or ``sendto``.

    Attributes:
        family: ``AF_INET``, ``AF_INET6`` or ``AF_UNIX``.
        sockaddr: what the socket module takes: ``(host, port)`` for IPv4,
            ``(host, port, flowinfo, scope_id)`` for IPv6, a path (``str`` or
            ``bytes``; a leading NUL byte is Linux's abstract namespace) for
            AF_UNIX.
    """

    # A hand-written immutable value class, not a dataclass: importing
    # dataclasses costs ~9 ms, a third of `udpkit send`'s start-up.
    __slots__ = ("_family", "_sockaddr")
    _family: socket.AddressFamily
    _sockaddr: SockAddr

    def __init__(self, family: socket.AddressFamily, sockaddr: SockAddr) -> None:
        object.__setattr__(self, "_family", family)
        object.__setattr__(self, "_sockaddr", sockaddr)

    @property
    def family(self) -> socket.AddressFamily:
        """``AF_INET``, ``AF_INET6`` or ``AF_UNIX``."""
        return self._family

    @property
    def sockaddr(self) -> SockAddr:
        """What the socket module takes for ``bind``/``connect``/``sendto``."""
        return self._sockaddr

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Address is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Address is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Address):
            return NotImplemented
        return self.family == other.family and self.sockaddr == other.sockaddr

    def __hash__(self) -> int:
        return hash((self.family, self.sockaddr))

    def __repr__(self) -> str:
        return f"Address(family={self.family!r}, sockaddr={self.sockaddr!r})"

    @property
    def host(self) -> str:
        """The IP address as text, or the path for AF_UNIX.

        An IPv6 address with a scope keeps it as ``%INDEX`` (``fe80::1%2``), so
        ``resolve_one(addr.host, addr.port)`` gives the same address back.
        """
        sa = self.sockaddr
        if isinstance(sa, tuple):
            if len(sa) == 4 and sa[3] and "%" not in sa[0]:
                return f"{sa[0]}%{sa[3]}"
            return sa[0]
        return os.fsdecode(sa)

    @property
    def port(self) -> int:
        """The port number; 0 for AF_UNIX."""
        sa = self.sockaddr
        return sa[1] if isinstance(sa, tuple) else 0

    def __str__(self) -> str:
        return format_sockaddr(self.sockaddr)


def _bad_port(port: object) -> AddressError:
    return AddressError(f"invalid port '{port}': {_PORT_HELP}")


def parse_port(port: int | str, *, proto: str = "udp") -> int:
    """Turn a port number, numeric string or service name into a port number.

    Args:
        port: an ``int`` 0-65535, a string of decimal digits, or a service name
            looked up in the services database (``"syslog"`` is 514 for udp).
        proto: the protocol for service lookup, ``"udp"`` or ``"tcp"``.

    Returns:
        The port, 0-65535 (0 asks the OS for an ephemeral port when binding).

    Raises:
        AddressError: out of range, not a number or name, or an unknown service.
    """
    # bool is an int subclass; True as a port is always a caller bug.
    if isinstance(port, bool) or not isinstance(port, int | str):
        raise _bad_port(port)
    if isinstance(port, int):
        if not 0 <= port <= 65535:
            raise _bad_port(port)
        return port
    if port.isascii() and port.isdigit():
        number = int(port)
        if number > 65535:
            raise _bad_port(port)
        return number
    # Anything that is not a plausible service name ("", " ", "-1", "5.5x y")
    # gets the range message, not a confusing "unknown service".
    if (
        not port
        or not set(port) <= _SERVICE_CHARS
        or not any(c.isalpha() for c in port)
        or port[0] in "-+"
    ):
        raise _bad_port(port)
    try:
        return socket.getservbyname(port, proto)
    except OSError:
        raise AddressError(
            f"unknown service '{port}' for {proto}: "
            "use a port number 0-65535 or a name from /etc/services"
        ) from None


def _int_host(value: int, shown: object) -> str:
    if not 0 <= value <= _MAX_V4_INT:
        raise AddressError(
            f"invalid host '{shown}': an integer host must be 0-{_MAX_V4_INT} "
            "(an IPv4 address in host byte order, e.g. 2130706433 for 127.0.0.1)"
        )
    return socket.inet_ntoa(struct.pack("!I", value))


def _check_v6(text: str, shown: str) -> str:
    """Validate an IPv6 literal with optional ``%scope``; return it unchanged."""
    addr, sep, scope = text.partition("%")
    try:
        socket.inet_pton(socket.AF_INET6, addr)
    except OSError:
        raise AddressError(f"invalid IPv6 address '{shown}': {_V6_HELP}") from None
    if sep and (not scope or "%" in scope):
        raise AddressError(
            f"invalid IPv6 scope in '{shown}': put an interface name or index "
            "after '%', e.g. 'fe80::1%eth0'"
        )
    return text


def parse_host(host: str | int | None) -> str:
    """Normalise any accepted host form to text ``getaddrinfo`` understands.

    Names are not resolved here; numeric forms are fully validated.

    Args:
        host: ``None`` or ``""`` (wildcard), ``"<broadcast>"``, an ``int`` IPv4
            address in host byte order (or a string of decimal digits), a dotted
            quad, an IPv6 address (brackets allowed, ``%scope`` kept), or a name.

    Returns:
        ``""`` for the wildcard, else a dotted quad, an IPv6 address without
        brackets, or the host name as given.

    Raises:
        AddressError: a malformed address, a bad type, or an integer out of range.
    """
    if host is None:
        return ""
    if isinstance(host, bool) or not isinstance(host, int | str):
        raise AddressError(
            f"invalid host {host!r} of type {type(host).__name__}: "
            "use a name, an IP address string, or an int IPv4 address"
        )
    if isinstance(host, int):
        return _int_host(host, host)
    if host in ("", BROADCAST):
        return _V4_BROADCAST if host else ""
    if not host.isprintable() or any(c.isspace() for c in host):
        raise AddressError(f"invalid host {host!r}: remove the spaces and control characters")
    if host.isascii() and host.isdigit():
        return _int_host(int(host), host)
    if host.startswith("[") or host.endswith("]"):
        in_brackets, close, after = host[1:].partition("]")
        if host.startswith("[") and close and after.startswith(":") and after[1:] and in_brackets:
            # '[HOST]:PORT' where only the host belongs: the port is an argument of its own.
            raise AddressError(
                f"invalid host '{host}': it has the port {after[1:]} inside it; give the "
                f"port separately, as an argument of its own: {in_brackets} {after[1:]}"
            )
        inner = host[1:-1]
        if not (host.startswith("[") and host.endswith("]") and len(host) > 2):
            raise AddressError(
                f"invalid host '{host}': brackets must enclose an IPv6 address, like '[::1]'"
            )
        if ":" not in inner:
            raise AddressError(
                f"invalid host '{host}': brackets are only for IPv6 addresses, like '[::1]'"
            )
        return _check_v6(inner, host)
    if host.count(":") == 1:
        # Probably HOST:PORT handed over whole; IPv6 always has two colons or more.
        name, _, after = host.partition(":")
        raise AddressError(
            f"invalid host '{host}': ':' belongs only in an IPv6 address; give the host "
            f"and the port separately: '{name}' and port {after or 'PORT'}"
        )
    if ":" in host:
        # A ':' is never part of a host name, so this must be IPv6.
        return _check_v6(host, host)
    if set(host) <= set("0123456789."):
        # Numeric TLDs do not exist, so digits-and-dots is a dotted quad or a typo.
        try:
            socket.inet_pton(socket.AF_INET, host)
        except OSError:
            raise AddressError(
                f"invalid IPv4 address '{host}': write four numbers 0-255 "
                "without leading zeros, like '192.0.2.1'"
            ) from None
    return host


def _family_name(family: int) -> str:
    return _FAMILY_NAMES.get(family, str(family))


# How a family is asked for, in words that fit the command line (-4/-6) and the
# API (family=) alike: neither spelling, so neither audience reads the other's.
_ASKED: dict[int, str] = {
    socket.AF_INET: "only IPv4 was asked for",
    socket.AF_INET6: "only IPv6 was asked for",
}


def _mismatch(shown: object, text: str, family: int) -> AddressError:
    """The error for a numeric host of the other family than the one asked for."""
    asked = _ASKED.get(family, f"the family is {_family_name(family)}")
    if ":" in text:
        return AddressError(
            f"host '{shown}' is an IPv6 address but {asked}: give an IPv4 address, "
            "or ask for IPv6 or either family"
        )
    packed = socket.inet_pton(socket.AF_INET, text)
    drop = "or ask for IPv4 or either family"
    if 224 <= packed[0] <= 239:
        # '::ffff:239.1.2.3' is no group an IPv6 socket can send to or join.
        return AddressError(
            f"host '{shown}' is an IPv4 multicast group but {asked}: use an IPv6 group "
            f"(ff00::/8, e.g. ff12::1234), {drop}"
        )
    if packed == b"\xff\xff\xff\xff":
        return AddressError(
            f"host '{shown}' is the IPv4 broadcast address but {asked}: IPv6 has no "
            f"broadcast, use a multicast group (e.g. ff02::1%IFACE), {drop}"
        )
    return AddressError(
        f"host '{shown}' is an IPv4 address but {asked}: give an IPv6 address "
        f"(or '::ffff:{text}', IPv4-mapped), {drop}"
    )


def _is_link_local(packed: bytes) -> bool:
    """fe80::/10: unicast that means something only on one link (an interface)."""
    return packed[0] == 0xFE and packed[1] & 0xC0 == 0x80


def link_local_without_scope(text: str) -> bool:
    """Whether ``text`` (as :func:`parse_host` returns it) is fe80::/10 with no ``%scope``."""
    addr, sep, _ = text.partition("%")
    if sep or ":" not in addr:
        return False
    try:
        return _is_link_local(socket.inet_pton(socket.AF_INET6, addr))
    except OSError:
        return False


def _is_up(name: str) -> bool:
    """Whether interface ``name`` is up, as ``ip link`` says (where sysfs cannot tell: yes)."""
    try:
        with open(f"/sys/class/net/{name}/operstate", encoding="ascii") as f:
            # "unknown" is what drivers without carrier reporting say (tun, dummy): usable.
            return f.read().strip() in ("up", "unknown")
    except OSError:
        return True


def _example_ifaces() -> list[str]:
    """Interfaces to show in advice about a missing scope: those that are up and not
    loopback, the ones with a link-local address first (error path only)."""
    try:
        names = [name for _, name in socket.if_nameindex() if name != "lo" and _is_up(name)]
    except OSError:
        return []
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            # "fe80...0001 04 40 20 80 eth0": scope 20 is link-local.
            linked = {row.split()[-1] for row in f if row.split()[3:4] == ["20"]}
    except (OSError, IndexError):
        linked = set()
    return sorted(names, key=lambda name: name not in linked)[:3]


def _needs_scope(shown: object, addr: str) -> AddressError:
    names = _example_ifaces()
    example = f" (e.g. {', '.join(f'%{name}' for name in names)})" if names else ""
    return AddressError(
        f"link-local address '{shown}' needs a scope: write '{addr}%IFACE'{example}, "
        "naming the interface it is on (see 'ip link')"
    )


def _scope_index(scope: str, shown: object) -> int:
    if scope.isascii() and scope.isdigit():
        index = int(scope)
        if index <= _MAX_V4_INT:
            return index
    else:
        try:
            return socket.if_nametoindex(scope)
        except OSError:
            pass
    raise AddressError(
        f"unknown interface '{scope}' in host '{shown}': "
        "use an interface name (see 'ip link') or its index"
    )


def _numeric(text: str, port: int, family: int, shown: object) -> Address | None:
    """An Address for a numeric host with no resolver call, or None for a name."""
    addr, _, scope = text.partition("%")
    try:
        packed = socket.inet_pton(socket.AF_INET6, addr)
    except OSError:
        pass
    else:
        if family == socket.AF_INET:
            raise _mismatch(shown, text, family)
        if not scope and _is_link_local(packed):
            # The kernel refuses it with a bare EINVAL (connect, bind): say what is missing.
            raise _needs_scope(shown, addr)
        scope_id = _scope_index(scope, shown) if scope else 0
        canonical = socket.inet_ntop(socket.AF_INET6, packed)
        return Address(socket.AF_INET6, (canonical, port, 0, scope_id))
    try:
        socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return None
    if family == socket.AF_INET6:
        raise _mismatch(shown, text, family)
    return Address(socket.AF_INET, (text, port))


def _this_network(addr: Address) -> bool:
    """Whether ``addr`` is 0.0.0.0/8 ("this network", RFC 1122; ``::ffff:0.x.x.x`` too)
    or ``::`` (unspecified, RFC 4291): sources and wildcards, never destinations."""
    packed = _packed_v4(addr)
    if packed is not None:
        return packed[0] == 0
    return addr.family == socket.AF_INET6 and _packed_v6(addr) == bytes(16)


def _not_a_destination(shown: object, addr: Address, named: bool) -> AddressError:
    """The error for a destination in 0.0.0.0/8 or ``::``, naming the address."""
    v4 = _packed_v4(addr) is not None
    host = addr.host.removeprefix("::ffff:") if v4 else addr.host
    text = "" if shown is None else str(shown)
    if named:
        where = f"'{text}' (it resolves to {host})"
    elif text != host:
        kind = "the integer address " if text.isascii() and text.isdigit() else ""
        where = f"'{text}' ({kind}{host})"
    else:
        where = f"'{host}'"
    why = "0.0.0.0/8 is 'this network'" if v4 else "'::' is the unspecified address"
    if text == "":
        why = f"the empty host is the wildcard, for binding only, and {why}"
    hint = f"to reach this host use {'127.0.0.1' if v4 else '::1'}"
    if text.isascii() and text.isdigit() and 0 < int(text) <= 65535:
        # `udpkit send 40050`: a port typed where the host goes.
        hint = f"did you mean port {text}? give the host first, then the port"
    return AddressError(f"cannot send to {where}: {why}, never a destination; {hint}")


def _check_destination(addrs: list[Address], shown: object, named: bool) -> list[Address]:
    """``addrs`` when every one can be sent to; else the error naming the one that cannot."""
    for addr in addrs:
        if addr.port == 0:
            raise AddressError(
                f"invalid port '0' (sending to {addr.host}): port 0 is not a destination; "
                "give the port the receiver listens on"
            )
        if _this_network(addr):
            raise _not_a_destination(shown, addr, named)
    return addrs


def _resolves_at_all(text: str, port: int, type: int, flags: int) -> bool:
    """Whether a name that failed for one family has an address of any (error path only)."""
    try:
        return bool(socket.getaddrinfo(text, port, socket.AF_UNSPEC, type, 0, flags))
    except (OSError, UnicodeError):
        return False


def _lookup_name(text: str, number: int, family: int, type: int, passive: bool) -> list[Address]:
    """A host name's addresses from ``getaddrinfo``, de-duplicated, in its order."""
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(text, number, family, type, 0, flags)
    except socket.gaierror as exc:
        hint = ""
        if family in _ASKED and _resolves_at_all(text, number, type, flags):
            hint = f", and {_ASKED[family]}: ask for either family or give a host that has one"
        raise AddressError(f"cannot resolve host '{text}': {exc.strerror or exc}{hint}") from exc
    except UnicodeError as exc:
        # IDNA encoding refuses labels that are empty or over 63 characters.
        raise AddressError(f"cannot resolve host '{text}': not a valid host name ({exc})") from exc
    seen: set[tuple[int, object]] = set()
    out: list[Address] = []
    for fam, _type, _proto, _canon, sockaddr in infos:
        if fam not in (socket.AF_INET, socket.AF_INET6):
            continue
        key = (int(fam), sockaddr)
        if key in seen:
            continue
        seen.add(key)
        if fam == socket.AF_INET6:
            h6, p6, flow, scope_id = sockaddr[:4]  # type: ignore[misc]
            out.append(Address(socket.AF_INET6, (str(h6), int(p6), int(flow), int(scope_id))))
        else:
            out.append(Address(socket.AF_INET, (str(sockaddr[0]), int(sockaddr[1]))))
    if not out:
        if family in _ASKED:
            raise AddressError(
                f"cannot resolve host '{text}': it has no {_KIND[family]} address and "
                f"{_ASKED[family]}: ask for either family or give a host that has one"
            )
        raise AddressError(f"cannot resolve host '{text}': no IPv4 or IPv6 address for it")
    return out


def resolve(
    host: str | int | None,
    port: int | str,
    *,
    family: int = socket.AF_UNSPEC,
    type: int = socket.SOCK_DGRAM,
    proto: str = "udp",
    passive: bool = False,
) -> list[Address]:
    """Resolve a host and port to socket addresses.

    Numeric hosts (``""``, ``"<broadcast>"``, ints, dotted quads, IPv6 with or
    without scope) give exactly one Address and never touch DNS; names go
    through ``getaddrinfo`` and come back de-duplicated, in its order.

    ``""`` (or ``None``) is the wildcard: 0.0.0.0, or ``::`` when ``family`` is
    AF_INET6, for ``bind`` (``passive=True``). Without ``passive`` the address is a
    destination, and what can never be one is refused, whatever form names it: the
    wildcard, 0.0.0.0/8 ("this network", RFC 1122: ``""``, ``"0.1.2.3"``, and every
    integer below 16777216, such as ``40050``, a port typed where the host goes),
    ``::``, and port 0. Linux would deliver 0.0.0.0 to this host, but other
    systems route it off the machine, so "this host" is spelled 127.0.0.1 or ::1.

    Args:
        host: any form :func:`parse_host` accepts.
        port: any form :func:`parse_port` accepts; 0 asks for an ephemeral port.
        family: AF_UNSPEC (any), AF_INET or AF_INET6.
        type: the socket type passed to ``getaddrinfo`` for names.
        proto: ``"udp"`` or ``"tcp"``, for service-name lookup.
        passive: True when the address is for ``bind``; False (the default) for a
            destination.

    Returns:
        One or more Addresses, best first.

    Raises:
        AddressError: a malformed host or port, an address of the wrong family,
            a link-local address (fe80::/10) without a scope, an unknown scope
            interface, a name that does not resolve, or (not ``passive``) a
            destination that can never be one: 0.0.0.0/8, ``::`` or port 0.
    """
    if family not in _FAMILIES:
        raise AddressError(
            f"unsupported address family {family!r} for host '{host}': "
            "use AF_INET, AF_INET6 or AF_UNSPEC"
        )
    number = parse_port(port, proto=proto)
    text = parse_host(host)
    shown = "" if host is None else host
    if text == "":
        if family == socket.AF_INET6:
            found = [Address(socket.AF_INET6, (_V6_ANY, number, 0, 0))]
        else:
            found = [Address(socket.AF_INET, (_V4_ANY, number))]
    else:
        numeric = _numeric(text, number, family, shown)
        found = [numeric] if numeric is not None else []
    named = not found
    if named:
        found = _lookup_name(text, number, family, type, passive)
    return found if passive else _check_destination(found, shown, named)


def resolve_one(
    host: str | int | None,
    port: int | str,
    *,
    family: int = socket.AF_UNSPEC,
    type: int = socket.SOCK_DGRAM,
    proto: str = "udp",
    passive: bool = False,
) -> Address:
    """Resolve to the first Address :func:`resolve` returns.

    Args:
        host: as for :func:`resolve`.
        port: as for :func:`resolve`.
        family: as for :func:`resolve`.
        type: as for :func:`resolve`.
        proto: as for :func:`resolve`.
        passive: as for :func:`resolve`.

    Returns:
        The preferred Address.

    Raises:
        AddressError: as for :func:`resolve`.
    """
    return resolve(host, port, family=family, type=type, proto=proto, passive=passive)[0]


def split_hostport(text: str, *, default_host: str = "") -> tuple[str, str]:
    """Split ``[HOST:]PORT`` text, as given to options like ``--bind``.

    ``"5005"`` gives ``(default_host, "5005")``; ``":5005"`` gives ``("", "5005")``
    (explicitly the wildcard); IPv6 hosts need brackets: ``"[::1]:5005"``.
    Neither part is validated beyond the split: pass them on to
    :func:`resolve`.

    Args:
        text: ``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT``; PORT may be a service name.
        default_host: the host when ``text`` has none.

    Returns:
        ``(host, port)``, the host without brackets.

    Raises:
        AddressError: empty text, an empty port, unbalanced brackets, or an
            IPv6 address without brackets.
    """
    if not text:
        raise AddressError("empty address '': write [HOST:]PORT, e.g. '127.0.0.1:5005' or '5005'")
    if text.startswith("["):
        close = text.find("]")
        if close == -1:
            raise AddressError(f"invalid address '{text}': missing ']', write '[IPV6]:PORT'")
        host, rest = text[1:close], text[close + 1 :]
        if not rest.startswith(":") or not rest[1:]:
            raise AddressError(
                f"invalid address '{text}': write '[{host}]:PORT' with a port after the ']'"
            )
        return host, rest[1:]
    if text.count(":") > 1:
        raise AddressError(
            f"invalid address '{text}': put an IPv6 host in brackets and add a port, "
            "e.g. '[::1]:PORT'"
        )
    host, sep, port = text.rpartition(":")
    if not sep:
        return default_host, text
    if not port:
        raise AddressError(f"invalid address '{text}': missing port, write '{host}:PORT'")
    return host, port


@functools.lru_cache(maxsize=256)
def scope_text(scope_id: int) -> str:
    """An IPv6 scope id as text: the interface name where one has that index, else the number."""
    # Cached: printing a link-local peer must not cost a system call per datagram.
    try:
        return socket.if_indextoname(scope_id)
    except (OSError, OverflowError, ValueError):
        return str(scope_id)


def format_sockaddr(sockaddr: object) -> str:
    """Render a socket address the way a user would type it.

    Args:
        sockaddr: an IPv4 ``(host, port)``, an IPv6 ``(host, port, flowinfo,
            scope_id)`` (or a 2-tuple with an IPv6 host), an AF_UNIX path
            (``str`` or ``bytes``), an :class:`Address`, or ``None``.

    Returns:
        ``"127.0.0.1:5005"``, ``"[::1]:5005"``, ``"[fe80::1%eth0]:5005"`` (scope
        shown by interface name when known; an IPv4-mapped ``::ffff:a.b.c.d``
        as ``a.b.c.d``), a unix path, ``"@name"`` for a
        Linux abstract socket, or ``"(unnamed)"`` for an unbound unix peer.
    """
    if isinstance(sockaddr, Address):
        return format_sockaddr(sockaddr.sockaddr)
    if sockaddr is None or sockaddr in ("", b""):
        return "(unnamed)"
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        addr = unmap_v4(sockaddr)  # a dual-stack socket's IPv4 peer reads as IPv4
        host, port = str(addr[0]), addr[1]
        if ":" not in host:
            return f"{host}:{port}"
        scope = addr[3] if len(addr) >= 4 else 0
        if isinstance(scope, int) and scope and "%" not in host:
            host = f"{host}%{scope_text(scope)}"
        return f"[{host}]:{port}"
    if isinstance(sockaddr, bytes):
        if sockaddr.startswith(b"\0"):
            return "@" + sockaddr[1:].decode("utf-8", "backslashreplace")
        return os.fsdecode(sockaddr)
    if isinstance(sockaddr, str):
        return "@" + sockaddr[1:] if sockaddr.startswith("\0") else sockaddr
    return str(sockaddr)


def _packed_v4(addr: Address) -> bytes | None:
    """The IPv4 address inside ``addr`` as 4 bytes, or None.

    An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) counts: a dual-stack
    socket sends to it as IPv4. Plain inet_pton, no ``ipaddress``: this runs
    on every ``udpkit send``, whose start-up must stay light.
    """
    if addr.family == socket.AF_INET:
        return socket.inet_pton(socket.AF_INET, addr.host)
    if addr.family == socket.AF_INET6:
        packed = _packed_v6(addr)
        if packed is not None and packed[:12] == V4_MAPPED_PREFIX:
            return packed[12:]
    return None


def _packed_v6(addr: Address) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET6, addr.host.split("%", 1)[0])
    except (OSError, ValueError):
        return None


def _as_address(addr: Address | str | int) -> Address:
    # Passive: a classification, not a send, so the wildcard and port 0 are fine.
    return addr if isinstance(addr, Address) else resolve_one(addr, 0, passive=True)


def is_broadcast(addr: Address | str | int) -> bool:
    """Whether ``addr`` is the limited broadcast address 255.255.255.255.

    A subnet's directed broadcast (e.g. 192.0.2.255) depends on the interface
    netmask and cannot be recognised from the address alone, so it is not.

    Args:
        addr: the address to test: an :class:`Address`, or a host in any udpkit
            form (``"<broadcast>"``, an integer, a name).

    Returns:
        True for 255.255.255.255 (also as ``::ffff:255.255.255.255``).

    Raises:
        AddressError: a host that is not an address and does not resolve.
    """
    addr = _as_address(addr)
    try:
        return _packed_v4(addr) == b"\xff\xff\xff\xff"
    except (OSError, ValueError):
        return False


def is_multicast(addr: Address | str | int) -> bool:
    """Whether ``addr`` is a multicast group: 224.0.0.0/4 or ff00::/8.

    Args:
        addr: the address to test: an :class:`Address`, or a host in any udpkit form.

    Returns:
        True for a multicast address (an IPv4-mapped IPv4 group counts).

    Raises:
        AddressError: a host that is not an address and does not resolve.
    """
    addr = _as_address(addr)
    try:
        v4 = _packed_v4(addr)
    except (OSError, ValueError):
        return False
    if v4 is not None:
        return 224 <= v4[0] <= 239
    if addr.family == socket.AF_INET6:
        v6 = _packed_v6(addr)
        return v6 is not None and v6[0] == 0xFF
    return False
