"""bind_server: the one bind rule for serving sockets, SO_REUSEPORT workers and groups.

Used by the library, ``udpkit serve`` and ``udpkit reflect`` alike; multicast runs
on the loopback interface (``GROUP@lo``).
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from tests._proc import end_process, port_is_free, run, start_listening
from tests.conftest import needs_ipv6

import udpkit

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux multicast")


@contextmanager
def bound(*args: object, **kwargs: object) -> Iterator[list[udpkit.DatagramSocket]]:
    socks = udpkit.bind_server(*args, **kwargs)  # type: ignore[arg-type]
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def _group_sender() -> udpkit.DatagramSocket:
    sender = udpkit.udp_bind("127.0.0.1", 0)
    udpkit.set_multicast_send(sender, iface="lo", loop=True)
    return sender


def test_default_host_is_loopback() -> None:
    with bound(None, 0) as socks:
        assert len(socks) == 1
        assert socks[0].local_address[0] == "127.0.0.1"


@needs_ipv6
def test_default_host_follows_an_ipv6_family() -> None:
    """`serve -6` without HOST tried 127.0.0.1 as IPv6: the default follows the family."""
    with bound(None, 0, family=socket.AF_INET6) as socks:
        assert socks[0].local_address[0] == "::1"


@linux_only
def test_workers_share_one_port() -> None:
    with bound("127.0.0.1", 0, workers=3) as socks:
        ports = {s.local_address[1] for s in socks}
        assert len(socks) == 3 and len(ports) == 1
        for s in socks:
            assert s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        # Every datagram reaches exactly one of them.
        port = ports.pop()
        with udpkit.udp_bind("127.0.0.1", 0) as sender:
            for i in range(20):
                sender.send(b"%d" % i, ("127.0.0.1", port))
        got = []
        for s in socks:
            while True:
                try:
                    got.append(s.recv(timeout=0.2).data)
                except udpkit.Timeout:
                    break
        assert sorted(got) == sorted(b"%d" % i for i in range(20))


@linux_only
def test_join_binds_the_wildcard_and_hears_the_group() -> None:
    group = "239.9.9.21"
    with bound(None, 0, join=[f"{group}@lo"]) as socks, _group_sender() as sender:
        (sock,) = socks
        assert sock.local_address[0] == "0.0.0.0"
        sender.send(b"to the group", (group, sock.local_address[1]))
        assert sock.recv(timeout=2).data == b"to the group"


@linux_only
def test_join_as_a_pair_and_iface_for_all() -> None:
    with bound(None, 0, join=[("239.9.9.22", None)], iface="lo") as socks, _group_sender() as s:
        s.send(b"x", ("239.9.9.22", socks[0].local_address[1]))
        assert socks[0].recv(timeout=2).data == b"x"


@linux_only
def test_with_workers_only_the_first_socket_hears_the_group() -> None:
    """`serve --join G --workers 2` answered every group datagram twice: each socket on a
    port gets its own copy of a group datagram, so only the first may join."""
    group = "239.9.9.23"
    with bound(None, 0, workers=2, join=[f"{group}@lo"]) as socks, _group_sender() as sender:
        port = socks[0].local_address[1]
        for i in range(5):
            sender.send(b"%d" % i, (group, port))
        heard = [socks[0].recv(timeout=2).data for _ in range(5)]
        assert heard == [b"%d" % i for i in range(5)]
        with pytest.raises(udpkit.Timeout):
            socks[1].recv(timeout=0.3)


@pytest.mark.parametrize(
    ("host", "group"), [("127.0.0.1", "239.1.2.12@lo"), ("239.1.2.13", "239.1.2.12@lo")]
)
def test_join_on_a_unicast_bind_is_refused(host: str, group: str) -> None:
    """Linux gives group datagrams only to wildcard- or group-bound sockets."""
    with pytest.raises(udpkit.UsageError, match="wildcard") as info:
        udpkit.bind_server(host, 0, join=[group])
    assert host in str(info.value) and "239.1.2.12" in str(info.value)


@needs_ipv6
def test_a_group_of_the_other_family_is_refused() -> None:
    with pytest.raises(udpkit.UsageError, match=r"cannot join IPv4 group 239\.1\.2\.3 on an IPv6"):
        udpkit.bind_server("::", 0, join=["239.1.2.3"])


def test_source_needs_a_group() -> None:
    with pytest.raises(udpkit.UsageError, match=r"source '10\.0\.0\.1'"):
        udpkit.bind_server(None, 0, source="10.0.0.1")


def test_reflect_refuses_a_unicast_host_with_join_as_serve_does() -> None:
    """The --join bind rule had drifted: `reflect 127.0.0.1 PORT --join G` silently moved
    to the wildcard and `reflect 10.x PORT --join G` heard nothing; now both commands
    share bind_server."""
    for command in (["reflect", "127.0.0.1", "0"], ["serve", "127.0.0.1", "0"]):
        result = run(*command, "--join", "239.1.2.14@lo")
        assert result.returncode == 2, result.stderr
        assert b"wildcard" in result.stderr, result.stderr


@linux_only
def test_reflect_with_join_listens_on_the_wildcard() -> None:
    if not port_is_free(socket.AF_INET, "0.0.0.0", 5202):
        pytest.skip("reflect's default port 5202 is busy")
    proc, port, err = start_listening("reflect", "--join", "239.9.9.24@lo")
    try:
        assert port > 0
        assert b"on 0.0.0.0:" in err.seen, err.seen
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        end_process(proc)
