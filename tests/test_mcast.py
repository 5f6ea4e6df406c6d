"""The multicast API: joining, leaving and send options, and its errors.

Only socket options are set here (on the loopback interface); no datagram goes
to a group. Delivery across hosts is tested in test_netns_reach.py and
test_netns_aio.py.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest
from tests.conftest import needs_ipv6

import udpkit
import udpkit.aio

try:
    from tests._proc import one_line_error
    from tests._proc import run as run_udpkit
except ModuleNotFoundError:  # plain `pytest` puts tests/, not the repo, on sys.path
    from _proc import one_line_error  # type: ignore[import-not-found,no-redef]
    from _proc import run as run_udpkit  # type: ignore[no-redef]

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux socket options")


@pytest.fixture(
    params=[(socket.AF_INET, "239.9.9.9"), (socket.AF_INET6, "ff02::9:9")], ids=["v4", "v6"]
)
def member(request: pytest.FixtureRequest) -> tuple[socket.socket, str]:
    family, group = request.param
    s = socket.socket(family, socket.SOCK_DGRAM)
    request.addfinalizer(s.close)
    s.bind(("", 0))
    return s, group


@linux_only
def test_join_then_leave_once(member: tuple[socket.socket, str]) -> None:
    sock, group = member
    udpkit.join_group(sock, group, iface="lo")
    udpkit.leave_group(sock, group, iface="lo")
    with pytest.raises(udpkit.NetworkError, match=f"cannot leave {group} on lo"):
        udpkit.leave_group(sock, group, iface="lo")  # no longer a member


@linux_only
def test_join_twice_is_refused(member: tuple[socket.socket, str]) -> None:
    sock, group = member
    udpkit.join_group(sock, group, iface="lo")
    with pytest.raises(udpkit.NetworkError, match=f"cannot join {group} on lo"):
        udpkit.join_group(sock, group, iface="lo")


@pytest.mark.parametrize(
    ("group", "iface", "error", "match"),
    [
        ("10.0.0.1", None, udpkit.AddressError, "'10.0.0.1' is not a multicast group"),
        ("239.1.1.1", "nosuch0", udpkit.AddressError, "unknown interface 'nosuch0'"),
        ("not an address", None, udpkit.AddressError, "not an address"),
    ],
)
def test_bad_groups_name_the_input(
    group: str, iface: str | None, error: type[Exception], match: str
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(error, match=match):
        udpkit.join_group(s, group, iface=iface)


@needs_ipv6
@pytest.mark.parametrize(
    ("bind", "group", "match"),
    [
        (
            "127.0.0.1",
            "ff02::1",
            r"cannot join IPv6 group 'ff02::1' on an IPv4 socket \(bound to '127.0.0.1'\): "
            r"use a socket of the group's family \(bind '::' for IPv6\)",
        ),
        ("::1", "239.1.1.1", r"cannot join IPv4 group '239.1.1.1' on an IPv6 socket"),
    ],
)
def test_a_group_of_the_other_family_names_the_socket(bind: str, group: str, match: str) -> None:
    """bind_udp("", 0) then join_group("ff02::1") said "IPv4 was asked for (-4 ...)":
    a library user never asked, the wildcard bind picked IPv4."""
    fam = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((bind, 0))
        with pytest.raises(udpkit.AddressError, match=match):
            udpkit.join_group(s, group)


def test_needs_an_ip_datagram_socket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, pytest.raises(udpkit.UsageError, match="multicast needs an IPv4 or IPv6"):
        udpkit.join_group(a, "239.1.1.1")


def test_send_options_set_and_checked() -> None:
    with udpkit.udp_bind("127.0.0.1", 0) as ds:
        udpkit.set_multicast_send(ds, ttl=7, loop=False, iface="lo")  # a DatagramSocket works
        raw = ds.sock
        assert raw.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 7
        assert raw.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 0
        with pytest.raises(udpkit.UsageError, match="invalid TTL 256: must be 0-255"):
            udpkit.set_multicast_send(ds, ttl=256)
        with pytest.raises(udpkit.AddressError, match="unknown interface 'nosuch0'"):
            udpkit.set_multicast_send(ds, iface="nosuch0")


@linux_only
def test_aio_endpoint_methods() -> None:
    async def main() -> None:
        async with udpkit.aio.bind_udp("", 0, family=socket.AF_INET) as ep:
            ep.set_multicast(ttl=3, loop=False)
            assert ep.sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 3
            assert ep.sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 0
            ep.join_group("239.9.9.8", iface="lo")
            ep.leave_group("239.9.9.8", iface="lo")
            with pytest.raises(udpkit.NetworkError, match="cannot leave"):
                ep.leave_group("239.9.9.8", iface="lo")
        with pytest.raises(udpkit.UsageError, match="closed"):
            ep.join_group("239.9.9.8", iface="lo")

    asyncio.run(asyncio.wait_for(main(), 10))


def _unused_index() -> int:
    """An interface index no interface has here."""
    return max((i for i, _ in socket.if_nameindex()), default=0) + 1000


def test_unknown_interface_index_is_an_address_error() -> None:
    """An index no interface has (`--iface 99`) was passed on unchecked: the kernel then
    refused with "cannot assign requested address" or "no such device", exit 1."""
    index = str(_unused_index())
    with udpkit.udp_bind("127.0.0.1", 0) as ds:
        with pytest.raises(udpkit.AddressError) as info:
            udpkit.set_multicast_send(ds, iface=index)
        assert str(info.value) == (
            f"unknown interface '{index}': no interface has index {index}; "
            "use a name or index from 'ip link'"
        )
        with pytest.raises(udpkit.AddressError, match=f"unknown interface '{index}'"):
            udpkit.join_group(ds, "239.9.9.7", iface=index)


@linux_only
def test_a_known_interface_index_still_works() -> None:
    lo = str(socket.if_nametoindex("lo"))
    with udpkit.udp_bind("", 0, family=socket.AF_INET) as ds:
        udpkit.set_multicast_send(ds, iface=lo)
        udpkit.join_group(ds, "239.9.9.6", iface=lo)
        udpkit.leave_group(ds, "239.9.9.6", iface="lo")


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "239.1.2.3", "5005", "x", "--iface", "{index}", "--no-wait"],
        ["serve", "--join", "239.1.2.3@{index}", "-p", "0"],
    ],
)
def test_cli_unknown_interface_index_is_exit_2(argv: list[str]) -> None:
    """`udpkit send 239.1.2.3 5005 x --iface 99` and `serve --join 239.1.2.3@99` exited 1
    with messages that did not say the interface was the problem."""
    index = str(_unused_index())
    res = run_udpkit(*(a.replace("{index}", index) for a in argv))
    assert res.returncode == 2, res.stderr
    line = one_line_error(res.stderr)
    assert f"unknown interface '{index}'" in line and "ip link" in line, line


def test_link_local_address_is_no_group() -> None:
    """A fe80:: address is refused as no group, not for its missing scope."""
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s,
        pytest.raises(udpkit.AddressError, match="'fe80::1' is not a multicast group"),
    ):
        udpkit.join_group(s, "fe80::1", iface="lo")


@linux_only
def test_link_local_source_takes_the_interface_of_the_join() -> None:
    """A source-specific join with a link-local source and no scope: the source is on
    the join's interface (the scope check of resolve does not refuse it)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::", 0))
        udpkit.join_group(s, "ff32::8000:9", iface="lo", source="fe80::1")
        udpkit.leave_group(s, "ff32::8000:9", iface="lo", source="fe80::1")


@linux_only
def test_index_zero_means_no_interface() -> None:
    """`GROUP@0` meant "any interface" before indexes were checked, and still does."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", 0))
        udpkit.set_multicast_send(s, iface="0")
        udpkit.join_group(s, "239.9.9.7", iface="lo")
        udpkit.leave_group(s, "239.9.9.7", iface="lo")
