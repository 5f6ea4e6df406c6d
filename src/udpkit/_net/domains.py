"""The textbook's generic interface: sockets of any domain, type and protocol.

The textbook's vocabulary: a *domain* is the protocol family (``AF_INET``,
``PF_UNIX``, ``PF_X25``, ...), a *type* the kind of communication
(``SOCK_DGRAM``, ``SOCK_STREAM``, ...), and a *protocol*, "typically zero",
picks a variant within a domain and type (UDP-Lite within inet/dgram).  Each
is accepted as a constant, a number or a name; :func:`open_socket` passes
through whatever the OS supports and names what it does not.
"""

from __future__ import annotations

import errno
import socket

from udpkit._core.errors import Unsupported, UsageError, map_oserror
from udpkit._net.kernel import LINUX

__all__ = ["IPPROTO_UDPLITE", "open_socket", "parse_domain", "parse_protocol", "parse_type"]

#: UDP-Lite (RFC 3828); older Pythons and some platforms lack the constant.
IPPROTO_UDPLITE: int = getattr(socket, "IPPROTO_UDPLITE", 136)

# --- domain, type and protocol tables ------------------------------------------------------

# Every AF_*/PF_* the socket module knows, by its lower-case name without the prefix.
_DOMAINS: dict[str, int] = {
    name[3:].lower(): int(getattr(socket, name))
    for name in dir(socket)
    if name.startswith(("AF_", "PF_")) and isinstance(getattr(socket, name), int)
}
_DOMAINS["local"] = socket.AF_UNIX  # POSIX's name for AF_UNIX
if LINUX:
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
            raise map_oserror(exc, what, "raw sockets need root or CAP_NET_RAW") from exc
        else:
            raise map_oserror(exc, what) from exc
        raise Unsupported(code, f"{what}: {reason}") from exc


def open_socket(
    domain: int | str = "inet", type: int | str = "dgram", proto: int | str = 0
) -> socket.socket:
    """Open a socket of any domain, type and protocol the OS supports.

    This is the textbook's "generic interface for handling the rest": nothing is
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
