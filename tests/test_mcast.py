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

import udpkit
import udpkit.aio

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
