"""Policy rules from text: rate limits, CIDRs, CIDR sets and numeric hosts.

The parsing half of ``_policy.py``: options and addresses turned into values
once, when a :class:`~udpkit._core.policy.Policy` is built (a peer's host: when the
peer is first seen), and the warning for a replying server bound to a wildcard
address.  No I/O, no clock, no per-source state; malformed options raise
:class:`~udpkit._core.errors.UsageError` naming the input.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import Iterable
from typing import NamedTuple

from udpkit._core.errors import UsageError
from udpkit._core.units import parse_count, parse_rate

__all__ = ["RateLimit", "parse_cidr", "parse_rate_limit", "wildcard_warning"]


class RateLimit(NamedTuple):
    """A token bucket: ``rate`` datagrams per second, at most ``burst`` at once."""

    rate: float
    burst: int


def parse_rate_limit(text: str) -> RateLimit:
    """Parse ``N/s[:BURST]`` (also ``N`` and ``N:BURST``).

    N is a rate in the one unit grammar (:func:`udpkit._core.units.parse_rate`:
    ``100``, ``0.5/s``, ``10k/s``); BURST a count (``200``, ``2k``).

    Args:
        text: e.g. ``"100/s"``, ``"100/s:200"``, ``"0.5/s"``, ``"10k/s"``, ``"100"``.

    Returns:
        The rate and burst; the burst defaults to one second's worth (at least 1).

    Raises:
        UsageError: malformed, a rate that is not > 0, or a burst < 1.
    """
    rate_text, colon, burst_text = text.partition(":") if isinstance(text, str) else ("", "", "")
    try:
        rate = parse_rate(rate_text, "rate limit").value
        burst = parse_count(burst_text, "burst", low=1) if colon else max(1, math.ceil(rate))
    except UsageError:
        raise UsageError(
            f"invalid rate limit {text!r}: expected N/s[:BURST] with N > 0 and BURST a whole "
            "number >= 1, e.g. 100/s, 10k/s or 100/s:200"
        ) from None
    return RateLimit(rate, burst)


def _unmap(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    # IPv4-mapped peers are judged as IPv4, so mapped CIDRs must be too.
    if net.version == 6 and net.prefixlen >= 96:
        base = int(net.network_address)
        if base >> 32 == 0xFFFF:
            return ipaddress.IPv4Network((base & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse an IPv4 or IPv6 CIDR; a bare address is a /32 or /128.

    Host bits are masked off (``10.1.2.3/8`` means ``10.0.0.0/8``), as
    iptables does.  IPv4-mapped IPv6 networks (``::ffff:10.0.0.0/104``) come
    back as the IPv4 network they mean.

    Args:
        text: e.g. ``"10.0.0.0/8"``, ``"2001:db8::/32"``, ``"192.0.2.7"``.

    Returns:
        The network.

    Raises:
        UsageError: not a CIDR, naming the input.
    """
    try:
        if not isinstance(text, str) or "%" in text:
            raise ValueError("scoped or non-text addresses are not CIDRs")
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise UsageError(
            f"invalid CIDR {text!r}: {exc}; expected ADDRESS[/PREFIX], "
            "e.g. 10.0.0.0/8 or 2001:db8::/32"
        ) from exc
    result: ipaddress.IPv4Network | ipaddress.IPv6Network = _unmap(net)
    return result


def _as_list(items: Iterable[str] | str | None) -> list[str]:
    # A lone string is one CIDR, not a sequence of one-character CIDRs.
    if items is None:
        return []
    if isinstance(items, str):
        return [items]
    return list(items)


class _NetSet:
    """CIDR membership in O(distinct prefix lengths): one set of prefixes per length."""

    __slots__ = ("v4", "v6")

    def __init__(self, texts: Iterable[str]) -> None:
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        for text in texts:
            net = parse_cidr(text)
            table, bits = (v4, 32) if net.version == 4 else (v6, 128)
            shift = bits - net.prefixlen
            table.setdefault(shift, set()).add(int(net.network_address) >> shift)
        self.v4 = [(s, frozenset(p)) for s, p in sorted(v4.items())]
        self.v6 = [(s, frozenset(p)) for s, p in sorted(v6.items())]

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    def contains(self, version: int, value: int) -> bool:
        for shift, prefixes in self.v4 if version == 4 else self.v6:
            if value >> shift in prefixes:
                return True
        return False


def _parse_host(host: object) -> tuple[int, int, str] | None:
    """``"::ffff:1.2.3.4"`` -> ``(4, int, "")``; ``"fe80::1%eth0"`` -> ``(6, int, "eth0")``."""
    if not isinstance(host, str):
        return None
    try:
        if ":" in host:
            addr, _, scope = host.partition("%")
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, addr), "big")
            if value >> 32 == 0xFFFF and not scope:
                return (4, value & 0xFFFFFFFF, "")
            return (6, value, scope)
        return (4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big"), "")
    except (OSError, ValueError):
        return None


def _is_wildcard(host: object) -> bool:
    if host is None or host == "":
        return True
    parsed = _parse_host(host)
    return parsed is not None and parsed[1] == 0


def wildcard_warning(bind_host: str | None, replies_on: bool) -> str | None:
    """The one-line warning to print when a replying server binds a wildcard address.

    Args:
        bind_host: the host the server binds (``""``/``None``, ``"0.0.0.0"``, ``"::"`` ...).
        replies_on: whether the server sends replies (echo, fixed reply, handler).

    Returns:
        The warning text, or ``None`` when there is nothing to warn about.
    """
    if not replies_on or not _is_wildcard(bind_host):
        return None
    shown = bind_host or "0.0.0.0"
    return (
        f"warning: replying on wildcard address {shown!r} answers every interface; "
        "non-loopback peers get at most the amplification budget "
        "(bind a specific address, or --trust CIDR for networks you control)"
    )
