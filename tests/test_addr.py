"""Tests for udpkit._net.addr: every host and port form, to socket addresses."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from udpkit._core.errors import AddressError
from udpkit._net.addr import (
    BROADCAST,
    MAX_UDP_PAYLOAD,
    Address,
    format_sockaddr,
    is_broadcast,
    is_multicast,
    parse_host,
    parse_port,
    resolve,
    resolve_one,
    split_hostport,
)

try:
    from tests._proc import one_line_error
    from tests._proc import run as run_udpkit
except ModuleNotFoundError:  # plain `pytest` puts tests/, not the repo, on sys.path
    from _proc import one_line_error  # type: ignore[import-not-found,no-redef]
    from _proc import run as run_udpkit  # type: ignore[no-redef]

V4 = socket.AF_INET
V6 = socket.AF_INET6
ANY = socket.AF_UNSPEC
RECV_TIMEOUT = 2.0


def _lo_index() -> int | None:
    try:
        return socket.if_nametoindex("lo")
    except OSError:
        return None


LO_INDEX = _lo_index()
needs_lo = pytest.mark.skipif(LO_INDEX is None, reason="no interface named 'lo'")

# (host, port, family, passive, expected sockaddr). The expected family
# follows from the sockaddr's length. Every form the textbook names is here.
RESOLVE_TABLE: list[Any] = [
    # host name
    ("localhost", 5005, V4, False, ("127.0.0.1", 5005)),
    ("localhost", 5005, V4, True, ("127.0.0.1", 5005)),
    # dotted quad
    ("127.0.0.1", 5005, ANY, False, ("127.0.0.1", 5005)),
    ("127.0.0.1", 5005, V4, True, ("127.0.0.1", 5005)),
    ("192.0.2.1", 9, V4, False, ("192.0.2.1", 9)),
    # IPv6, colon and dotted-tail notation, canonicalised
    ("::1", 5005, ANY, False, ("::1", 5005, 0, 0)),
    ("::1", 5005, V6, True, ("::1", 5005, 0, 0)),
    ("0:0:0:0:0:0:0:1", 5005, V6, False, ("::1", 5005, 0, 0)),
    ("::ffff:127.0.0.1", 5005, V6, False, ("::ffff:127.0.0.1", 5005, 0, 0)),
    ("::FFFF:7F00:1", 5005, ANY, False, ("::ffff:127.0.0.1", 5005, 0, 0)),
    ("2001:DB8::1", 5005, ANY, False, ("2001:db8::1", 5005, 0, 0)),
    # brackets
    ("[::1]", 5005, ANY, False, ("::1", 5005, 0, 0)),
    ("[2001:db8::1]", 5005, V6, True, ("2001:db8::1", 5005, 0, 0)),
    # scope ids, by name and by number
    pytest.param("fe80::1%lo", 5005, V6, False, ("fe80::1", 5005, 0, LO_INDEX), marks=needs_lo),
    pytest.param("[fe80::1%lo]", 5005, ANY, True, ("fe80::1", 5005, 0, LO_INDEX), marks=needs_lo),
    ("fe80::1%3", 5005, V6, False, ("fe80::1", 5005, 0, 3)),
    # "<broadcast>" is INADDR_BROADCAST
    (BROADCAST, 5005, ANY, False, ("255.255.255.255", 5005)),
    (BROADCAST, 5005, V4, True, ("255.255.255.255", 5005)),
    # "" is INADDR_ANY (or in6addr_any) for binding (never a destination: see below)
    ("", 5005, ANY, True, ("0.0.0.0", 5005)),
    ("", 5005, V4, True, ("0.0.0.0", 5005)),
    ("", 5005, V6, True, ("::", 5005, 0, 0)),
    (None, 5005, V4, True, ("0.0.0.0", 5005)),
    ("::", 0, ANY, True, ("::", 0, 0, 0)),
    # an integer is an IPv4 address in host byte order; digit strings too
    (2130706433, 5005, ANY, False, ("127.0.0.1", 5005)),
    (0, 5005, V4, True, ("0.0.0.0", 5005)),
    (0xFFFFFFFF, 5005, V4, False, ("255.255.255.255", 5005)),
    ("2130706433", 5005, V4, False, ("127.0.0.1", 5005)),
    # ports: int, numeric string, service names, ephemeral 0
    ("127.0.0.1", "5005", V4, False, ("127.0.0.1", 5005)),
    ("127.0.0.1", "syslog", V4, False, ("127.0.0.1", 514)),
    ("127.0.0.1", "domain", V4, False, ("127.0.0.1", 53)),
    ("127.0.0.1", 0, V4, True, ("127.0.0.1", 0)),
    ("127.0.0.1", "0", V4, True, ("127.0.0.1", 0)),
    ("127.0.0.1", 65535, V4, False, ("127.0.0.1", 65535)),
    ("::1", "syslog", V6, False, ("::1", 514, 0, 0)),
]


@pytest.mark.parametrize(("host", "port", "family", "passive", "expected"), RESOLVE_TABLE)
def test_resolve_table(
    host: str | int | None, port: int | str, family: int, passive: bool, expected: tuple[Any, ...]
) -> None:
    addrs = resolve(host, port, family=family, passive=passive)
    assert addrs[0].sockaddr == expected
    assert addrs[0].family == (V4 if len(expected) == 2 else V6)
    assert isinstance(addrs[0].family, socket.AddressFamily)
    assert resolve_one(host, port, family=family, passive=passive) == addrs[0]


# (host, port, family, message fragment)
INVALID_TABLE: list[Any] = [
    ("256.1.1.1", 5005, ANY, "invalid IPv4 address '256.1.1.1'"),
    ("1.2.3.4.5", 5005, ANY, "invalid IPv4 address '1.2.3.4.5'"),
    ("1.2.3", 5005, ANY, "write four numbers 0-255"),
    ("01.2.3.4", 5005, ANY, "without leading zeros"),
    ("[::1", 5005, ANY, "invalid host '[::1'"),
    ("::1]", 5005, ANY, "invalid host '::1]'"),
    ("[]", 5005, ANY, "brackets must enclose an IPv6 address"),
    ("[127.0.0.1]", 5005, ANY, "brackets are only for IPv6"),
    ("::1::2", 5005, ANY, "invalid IPv6 address '::1::2'"),
    ("fe80::1%", 5005, ANY, "invalid IPv6 scope in 'fe80::1%'"),
    ("fe80::1%nosuchif0", 5005, ANY, "unknown interface 'nosuchif0'"),
    ("127.0.0.1:5005", 5005, ANY, "give the host and the port separately: '127.0.0.1' and port"),
    ("local host", 5005, ANY, "remove the spaces"),
    (2**32, 5005, ANY, "must be 0-4294967295"),
    (-1, 5005, ANY, "must be 0-4294967295"),
    ("4294967296", 5005, ANY, "invalid host '4294967296'"),
    (True, 5005, ANY, "invalid host True of type bool"),
    (1.5, 5005, ANY, "of type float"),
    ("::1", 5005, V4, "IPv6 address but only IPv4 was asked for: give an IPv4 address, or"),
    ("127.0.0.1", 5005, V6, "'::ffff:127.0.0.1', IPv4-mapped"),
    (BROADCAST, 5005, V6, "IPv4 broadcast address but only IPv6 was asked for"),
    ("[fe80::1%lo]:5005", 5005, ANY, "give the port separately"),
    ("fe80::1", 5005, ANY, "link-local address 'fe80::1' needs a scope"),
    ("no-such-host.invalid", 5005, ANY, "cannot resolve host 'no-such-host.invalid'"),
    ("a" * 64 + ".example", 5005, ANY, "not a valid host name"),
    ("127.0.0.1", 70000, ANY, "invalid port '70000': must be 0-65535 or a service name"),
    ("127.0.0.1", 65536, ANY, "invalid port '65536'"),
    ("127.0.0.1", -1, ANY, "invalid port '-1'"),
    ("127.0.0.1", "-1", ANY, "invalid port '-1'"),
    ("127.0.0.1", "70000", ANY, "invalid port '70000'"),
    ("127.0.0.1", "abc-no-such-svc", ANY, "unknown service 'abc-no-such-svc' for udp"),
    ("127.0.0.1", "", ANY, "invalid port ''"),
    ("127.0.0.1", "   ", ANY, "invalid port '   '"),
    ("127.0.0.1", "5.5", ANY, "invalid port '5.5'"),
    ("127.0.0.1", True, ANY, "invalid port 'True'"),
    ("127.0.0.1", 5.0, ANY, "invalid port '5.0'"),
    ("127.0.0.1", 5005, socket.AF_UNIX, "use AF_INET, AF_INET6 or AF_UNSPEC"),
]


@pytest.mark.parametrize(("host", "port", "family", "fragment"), INVALID_TABLE)
def test_resolve_invalid(host: Any, port: Any, family: int, fragment: str) -> None:
    with pytest.raises(AddressError) as info:
        resolve(host, port, family=family)
    assert fragment in str(info.value)
    # AddressError is also a ValueError, so plain-Python callers can catch that.
    assert isinstance(info.value, ValueError)


PARSE_HOST_TABLE: list[tuple[Any, str]] = [
    (None, ""),
    ("", ""),
    (BROADCAST, "255.255.255.255"),
    (2130706433, "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    (0, "0.0.0.0"),
    ("[::1]", "::1"),
    ("fe80::1%lo", "fe80::1%lo"),
    ("[fe80::1%eth0]", "fe80::1%eth0"),
    ("localhost", "localhost"),
    ("example.com.", "example.com."),
    ("127.0.0.1", "127.0.0.1"),
]


@pytest.mark.parametrize(("host", "expected"), PARSE_HOST_TABLE)
def test_parse_host(host: str | int | None, expected: str) -> None:
    assert parse_host(host) == expected


PARSE_PORT_TABLE: list[tuple[Any, str, int]] = [
    (0, "udp", 0),
    (5005, "udp", 5005),
    ("5005", "udp", 5005),
    ("05005", "udp", 5005),
    (65535, "udp", 65535),
    ("syslog", "udp", 514),
    ("domain", "udp", 53),
    ("domain", "tcp", 53),
]


@pytest.mark.parametrize(("port", "proto", "expected"), PARSE_PORT_TABLE)
def test_parse_port(port: int | str, proto: str, expected: int) -> None:
    assert parse_port(port, proto=proto) == expected


def test_unknown_service_message_names_proto() -> None:
    with pytest.raises(AddressError, match=r"unknown service 'nosuch' for udp: use a port number"):
        parse_port("nosuch")


def test_name_resolution_matches_getaddrinfo_deduplicated() -> None:
    addrs = resolve("localhost", 7, family=ANY)
    expected: list[object] = []
    for fam, _t, _p, _c, sa in socket.getaddrinfo("localhost", 7, ANY, socket.SOCK_DGRAM):
        if fam in (V4, V6) and sa not in expected:
            expected.append(sa)
    assert [a.sockaddr for a in addrs] == expected
    assert len(set(addrs)) == len(addrs)


@pytest.fixture
def getaddrinfo_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Record the flags of every getaddrinfo call, passing each through unchanged.

    This observes, it does not fake: the real getaddrinfo still answers.
    """
    flags_seen: list[int] = []
    real: Callable[..., Any] = socket.getaddrinfo

    def spy(*args: Any, **kwargs: Any) -> Any:
        # getaddrinfo(host, port, family=0, type=0, proto=0, flags=0)
        flags_seen.append(args[5] if len(args) > 5 else kwargs.get("flags", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    yield flags_seen


NUMERIC_HOSTS: list[Any] = [
    "127.0.0.1",
    "::1",
    "[::1]",
    "::ffff:127.0.0.1",
    "fe80::1%1",
    BROADCAST,
    "",
    None,
    2130706433,
    "2130706433",
]


@pytest.mark.parametrize("host", NUMERIC_HOSTS)
def test_numeric_hosts_never_reach_dns(host: Any, getaddrinfo_calls: list[int]) -> None:
    assert len(resolve(host, 5005, passive=host in ("", None))) == 1
    lookups = [f for f in getaddrinfo_calls if not f & socket.AI_NUMERICHOST]
    assert lookups == []


def test_spy_sees_name_lookups(getaddrinfo_calls: list[int]) -> None:
    """Guards the test above: the spy does see a real name lookup."""
    resolve("localhost", 5005)
    assert getaddrinfo_calls


def test_numeric_resolve_is_fast() -> None:
    start = time.monotonic()
    for _ in range(1000):
        resolve("127.0.0.1", 5005)
    # A DNS round trip per call would take far longer than this loose bound.
    assert time.monotonic() - start < 2.0


SPLIT_TABLE: list[tuple[str, str, tuple[str, str]]] = [
    ("5005", "", ("", "5005")),
    ("5005", "127.0.0.1", ("127.0.0.1", "5005")),
    ("syslog", "", ("", "syslog")),
    ("127.0.0.1:5005", "x", ("127.0.0.1", "5005")),
    ("[::1]:5005", "", ("::1", "5005")),
    ("[fe80::1%lo]:5005", "", ("fe80::1%lo", "5005")),
    ("host:syslog", "", ("host", "syslog")),
    (":5005", "127.0.0.1", ("", "5005")),
]


@pytest.mark.parametrize(("text", "default", "expected"), SPLIT_TABLE)
def test_split_hostport(text: str, default: str, expected: tuple[str, str]) -> None:
    assert split_hostport(text, default_host=default) == expected


SPLIT_INVALID: list[tuple[str, str]] = [
    ("::1", "'[::1]:PORT'"),
    ("::1:5005", "put an IPv6 host in brackets"),
    ("[::1]", "write '[::1]:PORT'"),
    ("[::1", "missing ']'"),
    ("[::1]5005", "with a port after the ']'"),
    ("host:", "missing port, write 'host:PORT'"),
    ("", "write [HOST:]PORT"),
]


@pytest.mark.parametrize(("text", "fragment"), SPLIT_INVALID)
def test_split_hostport_invalid(text: str, fragment: str) -> None:
    with pytest.raises(AddressError) as info:
        split_hostport(text)
    assert fragment in str(info.value)


FORMAT_TABLE: list[tuple[object, str]] = [
    (("127.0.0.1", 5005), "127.0.0.1:5005"),
    (("::1", 5005, 0, 0), "[::1]:5005"),
    (("::1", 5005), "[::1]:5005"),
    (("fe80::1", 5005, 0, 987654), "[fe80::1%987654]:5005"),
    # A dual-stack socket's IPv4 peer reads as IPv4, as serve shows it.
    (("::ffff:127.0.0.1", 5005, 0, 0), "127.0.0.1:5005"),
    (("::ffff:7f00:1", 5005, 0, 0), "127.0.0.1:5005"),  # any spelling of it
    (("::ffff:1:2:3", 5005, 0, 0), "[::ffff:1:2:3]:5005"),  # not a mapped address
    ("/tmp/udpkit.sock", "/tmp/udpkit.sock"),
    (b"/tmp/udpkit.sock", "/tmp/udpkit.sock"),
    (b"\0udpkit", "@udpkit"),
    ("\0udpkit", "@udpkit"),
    ("", "(unnamed)"),
    (b"", "(unnamed)"),
    (None, "(unnamed)"),
    (Address(V4, ("127.0.0.1", 1)), "127.0.0.1:1"),
]


@pytest.mark.parametrize(("sockaddr", "expected"), FORMAT_TABLE)
def test_format_sockaddr(sockaddr: object, expected: str) -> None:
    assert format_sockaddr(sockaddr) == expected


@needs_lo
def test_str_shows_scope_by_interface_name() -> None:
    addr = resolve_one("fe80::1%lo", 5005)
    assert str(addr) == "[fe80::1%lo]:5005"
    assert addr.host == f"fe80::1%{socket.if_nametoindex('lo')}"
    assert addr.port == 5005


@needs_lo
def test_host_keeps_the_scope_for_a_round_trip() -> None:
    """`udpkit send fe80::...%eth0` failed with EINVAL: the CLI re-resolved
    ``addr.host``, which had dropped the scope id."""
    addr = resolve_one("fe80::1%lo", 5005)
    assert resolve_one(addr.host, addr.port) == addr


ADDRESS_TABLE: list[tuple[Address, str, int, str]] = [
    (Address(V4, ("127.0.0.1", 5005)), "127.0.0.1", 5005, "127.0.0.1:5005"),
    (Address(V6, ("::1", 5005, 0, 0)), "::1", 5005, "[::1]:5005"),
    (Address(socket.AF_UNIX, "/run/x.sock"), "/run/x.sock", 0, "/run/x.sock"),
    (Address(socket.AF_UNIX, b"\0abstract"), "\0abstract", 0, "@abstract"),
]


@pytest.mark.parametrize(("addr", "host", "port", "text"), ADDRESS_TABLE)
def test_address_properties(addr: Address, host: str, port: int, text: str) -> None:
    assert (addr.host, addr.port, str(addr)) == (host, port, text)


def test_address_is_frozen_and_hashable() -> None:
    addr = Address(V4, ("127.0.0.1", 1))
    with pytest.raises(AttributeError):
        addr.sockaddr = ("127.0.0.2", 1)  # type: ignore[misc]
    assert {addr, Address(V4, ("127.0.0.1", 1))} == {addr}


KIND_TABLE: list[tuple[Any, bool, bool]] = [
    (BROADCAST, True, False),
    ("255.255.255.255", True, False),
    ("::ffff:255.255.255.255", True, False),
    ("192.0.2.255", False, False),
    ("127.0.0.1", False, False),
    ("224.0.0.1", False, True),
    ("239.255.255.250", False, True),
    ("240.0.0.1", False, False),
    ("ff02::1", False, True),
    ("ff05::1:3", False, True),
    ("::ffff:224.0.0.251", False, True),
    ("::1", False, False),
    ("", False, False),
]


@pytest.mark.parametrize(("host", "broadcast", "multicast"), KIND_TABLE)
def test_broadcast_and_multicast(host: Any, broadcast: bool, multicast: bool) -> None:
    addr = resolve_one(host, 1, passive=host == "")
    assert is_broadcast(addr) is broadcast
    assert is_multicast(addr) is multicast
    # Any host form works as well as an Address (a str raised AttributeError).
    assert is_broadcast(host) is broadcast
    assert is_multicast(host) is multicast


def test_broadcast_and_multicast_name_a_bad_host() -> None:
    with pytest.raises(AddressError, match=r"invalid host '\[::1'"):
        is_broadcast("[::1")
    with pytest.raises(AddressError, match="an integer host must be 0-4294967295"):
        is_multicast(2**40)


def test_unix_address_is_neither_broadcast_nor_multicast() -> None:
    addr = Address(socket.AF_UNIX, "/tmp/x")
    assert not is_broadcast(addr)
    assert not is_multicast(addr)


def _round_trip(
    family: socket.AddressFamily, bind_host: str, dest: Callable[[int], Address]
) -> None:
    """Bind a receiver on loopback, send to ``dest(port)``, expect the datagram."""
    with (
        socket.socket(family, socket.SOCK_DGRAM) as rx,
        socket.socket(family, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(resolve_one(bind_host, 0, family=family, passive=True).sockaddr)
        rx.settimeout(RECV_TIMEOUT)
        addr = dest(rx.getsockname()[1])
        assert addr.family == family
        tx.sendto(b"ping", addr.sockaddr)
        data, _src = rx.recvfrom(64)
        assert data == b"ping"


NOT_DESTINATIONS: list[Any] = [
    # (host, port, family, message fragment)
    ("", 5005, ANY, "cannot send to '' (0.0.0.0): the empty host is the wildcard, for binding"),
    (None, 5005, ANY, "cannot send to '' (0.0.0.0)"),
    ("", 5005, V6, "cannot send to '' (::): the empty host is the wildcard, for binding only"),
    ("0.0.0.0", 5005, ANY, "cannot send to '0.0.0.0': 0.0.0.0/8 is 'this network', never a"),
    ("0.1.2.3", 5005, V4, "0.0.0.0/8 is 'this network', never a destination; to reach this host"),
    ("::", 5005, ANY, "cannot send to '::': '::' is the unspecified address, never a destination"),
    ("::ffff:0.0.0.1", 5005, ANY, "'::ffff:0.0.0.1' (0.0.0.1): 0.0.0.0/8 is 'this network'"),
    (0, 5005, ANY, "cannot send to '0' (the integer address 0.0.0.0)"),
    (40050, 5005, ANY, "(the integer address 0.0.156.114): 0.0.0.0/8 is 'this network', never"),
    ("40050", 5005, ANY, "did you mean port 40050? give the host first, then the port"),
    ("16777215", 5005, ANY, "'16777215' (the integer address 0.255.255.255): 0.0.0.0/8"),
    ("127.0.0.1", 0, ANY, "invalid port '0' (sending to 127.0.0.1): port 0 is not a destination"),
    ("::1", "0", ANY, "invalid port '0' (sending to ::1): port 0 is not a destination"),
    ("localhost", 0, ANY, "port 0 is not a destination"),
]


@pytest.mark.parametrize(("host", "port", "family", "needle"), NOT_DESTINATIONS)
def test_what_is_never_a_destination_is_refused_for_sending(
    host: Any, port: Any, family: int, needle: str
) -> None:
    """`udpkit send 40050` sent to 0.0.156.114, which a normal host routes off the
    machine, and `send '' 5005` to 0.0.0.0: 0.0.0.0/8 is "this network" (RFC 1122),
    never a destination, and `send 127.0.0.1 0` went to port 0 and then named the
    socket's own port (getpeername() fails for a peer port 0)."""
    with pytest.raises(AddressError) as info:
        resolve(host, port, family=family)
    assert needle in str(info.value), str(info.value)
    with pytest.raises(AddressError):
        resolve_one(host, port, family=family)
    if host not in ("", None, 0, "0.0.0.0", "::"):
        return
    resolve(host, port, family=family, passive=True)  # binding: the wildcard


def test_a_name_that_resolves_to_this_network_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ad-blocking hosts file maps names to 0.0.0.0: no datagram goes there either."""

    def blocked(host: str, port: int, family: int, *args: Any) -> list[Any]:
        return [(V4, socket.SOCK_DGRAM, 17, "", ("0.0.0.0", port))]

    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    with pytest.raises(AddressError, match=r"cannot send to 'ads\.example' \(it resolves to 0"):
        resolve("ads.example", 5005)


def test_every_integer_below_2_24_is_this_network_and_above_is_kept() -> None:
    """Every integer host below 16777216 is 0.x.x.x; 16777216 (1.0.0.0) can be sent to."""
    with pytest.raises(AddressError):
        resolve(16777215, 5005)
    assert resolve(16777216, 5005)[0].host == "1.0.0.0"


@pytest.mark.parametrize("host", [2130706433, "2130706433", "localhost"])
def test_send_to_int_host_reaches_loopback(host: str | int) -> None:
    _round_trip(V4, "127.0.0.1", lambda port: resolve_one(host, port, family=V4))


def test_max_udp_payload_fits_and_one_more_does_not(
    family: tuple[socket.AddressFamily, str],
) -> None:
    fam, loopback = family
    limit = MAX_UDP_PAYLOAD[fam]
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind(resolve_one(loopback, 0, family=fam, passive=True).sockaddr)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.settimeout(RECV_TIMEOUT)
        me = s.getsockname()
        s.sendto(b"x" * limit, me)
        assert len(s.recv(limit + 1)) == limit
        with pytest.raises(OSError):
            s.sendto(b"x" * (limit + 1), me)


# --------------------------------------------------------------- messages a user can act on


@pytest.mark.parametrize(
    ("host", "family", "expected"),
    [
        (
            "ff02::1234",
            V4,
            "host 'ff02::1234' is an IPv6 address but only IPv4 was asked for: "
            "give an IPv4 address, or ask for IPv6 or either family",
        ),
        (
            "192.0.2.1",
            V6,
            "host '192.0.2.1' is an IPv4 address but only IPv6 was asked for: "
            "give an IPv6 address (or '::ffff:192.0.2.1', IPv4-mapped), "
            "or ask for IPv4 or either family",
        ),
        (
            "239.1.2.3",
            V6,
            "host '239.1.2.3' is an IPv4 multicast group but only IPv6 was asked for: "
            "use an IPv6 group (ff00::/8, e.g. ff12::1234), or ask for IPv4 or either family",
        ),
    ],
)
def test_family_mismatch_says_what_to_do(host: str, family: int, expected: str) -> None:
    """`udpkit send ff02::1234 5005 x -4` said "the family is AF_INET: use ... family
    AF_INET6 or AF_UNSPEC", which a command-line user cannot act on (and then "-4 /
    family=AF_INET", each audience reading the other's words); and a v4 group asked for
    as IPv6 was told to use '::ffff:<group>', which fails."""
    assert "-4" not in expected and "-6" not in expected and "AF_" not in expected
    with pytest.raises(AddressError) as info:
        resolve(host, 5005, family=family)
    assert str(info.value) == expected
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("answer", ["empty", "gaierror"])
def test_name_without_an_address_of_the_family_names_the_flag(
    monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """A name with no address of the family asked for said "with family AF_INET6"
    (or only the resolver's reason), not which option asked for it."""

    def no_v6(host: str, port: int, family: int, *args: Any) -> list[Any]:
        if family != V6:
            return [(V4, socket.SOCK_DGRAM, 17, "", ("192.0.2.7", port))]
        if answer == "empty":
            return [(socket.AF_UNIX, socket.SOCK_DGRAM, 0, "", "/x")]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_v6)
    with pytest.raises(AddressError) as info:
        resolve("v4only.example", 5005, family=V6)
    msg = str(info.value)
    assert msg.startswith("cannot resolve host 'v4only.example': "), msg
    assert msg.endswith(
        "only IPv6 was asked for: ask for either family or give a host that has one"
    ), msg


@pytest.mark.parametrize(
    ("host", "shown", "bare"),
    [
        ("fe80::1004:76ff:fe25:162d", "fe80::1004:76ff:fe25:162d", "fe80::1004:76ff:fe25:162d"),
        ("[fe80::1]", "[fe80::1]", "fe80::1"),
        ("FEBF::1", "FEBF::1", "FEBF::1"),  # the top of fe80::/10
    ],
)
@pytest.mark.parametrize("passive", [False, True])
def test_link_local_without_a_scope_is_an_address_error(
    host: str, shown: str, bare: str, passive: bool
) -> None:
    """`udpkit send fe80::... 5107 x` (and `serve fe80::...`) failed with the kernel's
    bare "invalid argument", exit 1: the scope is what is missing."""
    with pytest.raises(AddressError) as info:
        resolve(host, 5107, passive=passive)
    msg = str(info.value)
    assert msg.startswith(
        f"link-local address '{shown}' needs a scope: write '{bare}%IFACE' (e.g. %"
    )
    assert "\n" not in msg


@pytest.mark.parametrize(
    "host", ["fe80::1%1", "fec0::1", "ff02::1", "ff12::6", "fe7f::1", "2001:db8::1", "::1"]
)
def test_scoped_link_local_and_other_ipv6_need_no_scope(host: str) -> None:
    """The scope check is for fe80::/10 unicast only: link-scope groups (ff02::/16) are
    fine without one when an interface is given separately."""
    (addr,) = resolve(host, 5005)
    assert addr.family == V6


def test_policy_cidrs_for_link_local_still_parse() -> None:
    """CIDRs are parsed by the policy rules, not resolve: fe80::/10 stays valid there."""
    from udpkit._core.policy_rules import parse_cidr

    assert parse_cidr("fe80::/10").prefixlen == 10


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (
            "[fe80::1%eth0]:5107",
            "invalid host '[fe80::1%eth0]:5107': it has the port 5107 inside it; give the port "
            "separately, as an argument of its own: fe80::1%eth0 5107",
        ),
        (
            "[::1]:5005",
            "invalid host '[::1]:5005': it has the port 5005 inside it; give the port "
            "separately, as an argument of its own: ::1 5005",
        ),
    ],
)
def test_bracketed_host_with_a_port_says_the_port_goes_separately(host: str, expected: str) -> None:
    """`udpkit send '[fe80::...%eth0]:5107' x` said "brackets must enclose an IPv6
    address", though they do: the port inside the host argument is the problem."""
    with pytest.raises(AddressError) as info:
        parse_host(host)
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["send", "fe80::1004:76ff:fe25:162d", "5107", "x", "--no-wait"],
            "link-local address 'fe80::1004:76ff:fe25:162d' needs a scope: "
            "write 'fe80::1004:76ff:fe25:162d%IFACE'",
        ),
        (
            ["serve", "fe80::1004:76ff:fe25:162d", "5107"],
            "link-local address 'fe80::1004:76ff:fe25:162d' needs a scope",
        ),
        (
            ["send", "ff02::1234", "5005", "x", "-4", "--no-wait"],
            "host 'ff02::1234' is an IPv6 address but only IPv4 was asked for: give an IPv4",
        ),
        (
            ["send", "239.1.2.3", "5005", "x", "-6", "--no-wait"],
            "use an IPv6 group (ff00::/8, e.g. ff12::1234), or ask for IPv4",
        ),
        (
            ["send", "[fe80::1%lo]:5107"],
            "give the port separately, as an argument of its own: fe80::1%lo 5107",
        ),
        (
            ["serve", "[::1]:5005"],
            "give the port separately, as an argument of its own: ::1 5005",
        ),
    ],
)
def test_cli_address_mistakes_are_one_line_exit_2(argv: list[str], needle: str) -> None:
    """These exited 1 with the kernel's "invalid argument" (link-local without a
    scope), or with advice in AF_* terms or about brackets that were fine."""
    res = run_udpkit(*argv)
    assert res.returncode == 2, res.stderr
    line = one_line_error(res.stderr)
    assert line.startswith(f"udpkit {argv[0]}: error: ") and needle in line, line
