"""Tests for udpkit._net.sockets and stream: the domain/type/protocol vocabulary, transports.

Real sockets on 127.0.0.1 and ::1 only, port 0, every receive bounded by a timeout.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
from tests.conftest import LINUX, linux_only, needs_ipv6

from udpkit._core.errors import (
    AddressError,
    AddressInUse,
    ConnectionRefused,
    MessageTooLarge,
    NetworkError,
    Timeout,
    Unsupported,
    UsageError,
)
from udpkit._net.addr import MAX_UDP_PAYLOAD, resolve_one
from udpkit._net.domains import (
    IPPROTO_UDPLITE,
    open_socket,
    parse_domain,
    parse_protocol,
    parse_type,
)
from udpkit._net.sockets import (
    Datagram,
    DatagramSocket,
    udp_bind,
    udp_connect,
)
from udpkit._net.stream import StreamSocket, tcp_connect, tcp_listen
from udpkit._net.unix import (
    unix_datagram_bind,
    unix_datagram_connect,
    unix_stream_connect,
    unix_stream_listen,
)

Family = tuple[socket.AddressFamily, str]
WAIT = 2.0  # the bound on every receive that should succeed


def _can_open(family: int, kind: int, proto: int) -> bool:
    try:
        socket.socket(family, kind, proto).close()
    except OSError:
        return False
    return True


HAVE_UDPLITE = _can_open(socket.AF_INET, socket.SOCK_DGRAM, IPPROTO_UDPLITE)


@pytest.fixture(params=["kernel-length", "portable"])
def recv_path(request: pytest.FixtureRequest) -> str:
    """Run a test over the Linux MSG_TRUNC receive path and the portable one."""
    if request.param == "kernel-length" and not DatagramSocket._kernel_length:
        pytest.skip("MSG_TRUNC real lengths are Linux-only")
    return str(request.param)


def _use_path(dsock: DatagramSocket, path: str) -> DatagramSocket:
    if path == "portable":
        dsock._kernel_length = False  # the instance shadows the class default
    return dsock


@pytest.fixture
def udp_pair(family: Family) -> Iterator[tuple[DatagramSocket, DatagramSocket]]:
    """A bound server and a client connected to it, on the loopback of ``family``."""
    fam, host = family
    with (
        udp_bind(host, 0, family=fam) as server,
        udp_connect(host, server.local_address[1], family=fam) as client,
    ):
        yield server, client


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short directory for unix socket files (sun_path holds about 100 bytes)."""
    path = tempfile.mkdtemp(prefix="udpkit-", dir="/tmp" if os.path.isdir("/tmp") else None)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- domain, type, protocol ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (socket.AF_INET, socket.AF_INET),
        (socket.AF_INET6, socket.AF_INET6),
        (int(socket.AF_UNIX), socket.AF_UNIX),
        ("2", 2),
        ("inet", socket.AF_INET),
        ("INET6", socket.AF_INET6),
        ("AF_INET", socket.AF_INET),
        ("PF_INET", socket.AF_INET),
        ("pf_unix", socket.AF_UNIX),
        ("unix", socket.AF_UNIX),
        ("local", socket.AF_UNIX),
        (" Inet ", socket.AF_INET),
        pytest.param("x25", 9, marks=linux_only),
        pytest.param("PF_X25", 9, marks=linux_only),
        pytest.param("packet", 17, marks=linux_only),
        pytest.param("netlink", 16, marks=linux_only),
    ],
)
def test_parse_domain(value: int | str, expected: int) -> None:
    assert parse_domain(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (socket.SOCK_DGRAM, socket.SOCK_DGRAM),
        (int(socket.SOCK_STREAM), socket.SOCK_STREAM),
        ("dgram", socket.SOCK_DGRAM),
        ("stream", socket.SOCK_STREAM),
        ("seqpacket", socket.SOCK_SEQPACKET),
        ("raw", socket.SOCK_RAW),
        ("SOCK_DGRAM", socket.SOCK_DGRAM),
        ("sock_stream", socket.SOCK_STREAM),
        (str(int(socket.SOCK_DGRAM)), socket.SOCK_DGRAM),
    ],
)
def test_parse_type(value: int | str, expected: int) -> None:
    assert parse_type(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (17, 17),
        ("0", 0),
        ("udp", socket.IPPROTO_UDP),
        ("tcp", socket.IPPROTO_TCP),
        ("UDP", socket.IPPROTO_UDP),
        ("IPPROTO_UDP", socket.IPPROTO_UDP),
        ("udplite", 136),
        ("udp-lite", 136),
        ("icmp", 1),
    ],
)
def test_parse_protocol(value: int | str, expected: int) -> None:
    assert parse_protocol(value) == expected


def test_parse_protocol_falls_back_to_the_protocols_database() -> None:
    try:
        expected = socket.getprotobyname("ospf")
    except OSError:
        pytest.skip("no 'ospf' in the protocols database here")
    assert parse_protocol("ospf") == expected


@pytest.mark.parametrize(
    ("parse", "value", "words"),
    [
        (parse_domain, "foo", ["'foo'", "inet", "AF_INET"]),
        (parse_domain, "AF_NOPE", ["'AF_NOPE'", "inet6", "unix"]),
        (parse_domain, -1, ["-1", "0-65535"]),
        (parse_domain, True, ["True"]),
        (parse_domain, "", ["''", "inet"]),
        (parse_type, "datagramz", ["'datagramz'", "dgram", "stream"]),
        (parse_type, 1.5, ["1.5", "dgram"]),
        (parse_protocol, "nosuchproto", ["'nosuchproto'", "udp", "udplite"]),
        (parse_protocol, -3, ["-3"]),
    ],
)
def test_bad_names_are_usage_errors(parse: object, value: object, words: list[str]) -> None:
    assert callable(parse)
    with pytest.raises(UsageError) as info:
        parse(value)
    for word in words:
        assert word in str(info.value)


# --- the generic interface ----------------------------------------------------------------

GENERIC = [
    ("inet", "dgram", socket.AF_INET, socket.SOCK_DGRAM),
    ("inet", "stream", socket.AF_INET, socket.SOCK_STREAM),
    pytest.param("inet6", "dgram", socket.AF_INET6, socket.SOCK_DGRAM, marks=needs_ipv6),
    pytest.param("inet6", "stream", socket.AF_INET6, socket.SOCK_STREAM, marks=needs_ipv6),
    ("unix", "dgram", socket.AF_UNIX, socket.SOCK_DGRAM),
    ("unix", "stream", socket.AF_UNIX, socket.SOCK_STREAM),
    ("PF_UNIX", "seqpacket", socket.AF_UNIX, socket.SOCK_SEQPACKET),
    (socket.AF_INET, socket.SOCK_DGRAM, socket.AF_INET, socket.SOCK_DGRAM),
]


@pytest.mark.parametrize(("domain", "kind", "family", "sock_type"), GENERIC)
def test_open_socket_generic(domain: str, kind: str, family: int, sock_type: int) -> None:
    with open_socket(domain, kind) as sock:
        assert sock.family == family
        assert sock.type == sock_type


def test_open_socket_with_protocol() -> None:
    with open_socket("inet", "dgram", "udp") as sock:
        assert sock.proto == socket.IPPROTO_UDP


@linux_only
def test_x25_is_unsupported() -> None:
    """The textbook lists PF_X25; most Linux kernels lack it, and the error must say so."""
    if _can_open(9, socket.SOCK_SEQPACKET, 0):
        pytest.skip("this kernel has X.25")
    with pytest.raises(Unsupported) as info:
        open_socket("PF_X25", "seqpacket")
    message = str(info.value)
    assert "address family not supported" in message
    assert "x25 (9)" in message
    assert info.value.errno == errno.EAFNOSUPPORT


def test_unsupported_protocol_for_type() -> None:
    with pytest.raises(Unsupported) as info:
        open_socket("inet", "dgram", "tcp")
    assert "protocol not supported" in str(info.value)


# --- UDP ----------------------------------------------------------------------------------


def test_round_trip_with_reply(udp_pair: tuple[DatagramSocket, DatagramSocket]) -> None:
    server, client = udp_pair
    assert client.send(b"Hello UDP Server") == 16
    got = server.recv(timeout=WAIT)
    assert got == Datagram(b"Hello UDP Server", client.local_address, 16)
    assert not got.truncated
    server.send(b"Hello UDP Client", got.peer)
    assert client.recv(timeout=WAIT).data == b"Hello UDP Client"


@pytest.mark.skipif(not HAVE_UDPLITE, reason="the kernel has no UDP-Lite (IPPROTO_UDPLITE)")
def test_udplite_round_trip(family: Family) -> None:
    fam, host = family
    with udp_bind(host, 0, family=fam, protocol="udplite") as server:
        assert server.sock.proto == IPPROTO_UDPLITE
        assert server.sock.type == socket.SOCK_DGRAM
        port = server.local_address[1]
        with udp_connect(host, port, family=fam, protocol=136) as client:
            client.send(b"lite")
            got = server.recv(timeout=WAIT)
            assert got.data == b"lite"
            server.send(b"back", got.peer)
            assert client.recv(timeout=WAIT).data == b"back"


def test_largest_datagram_arrives_whole(family: Family, recv_path: str) -> None:
    fam, host = family
    size = MAX_UDP_PAYLOAD[fam]  # 65507 on IPv4, 65527 on IPv6
    with udp_bind(host, 0, family=fam) as server, udp_bind(host, 0, family=fam) as client:
        _use_path(server, recv_path)
        payload = os.urandom(size)
        client.send(payload, server.local_address)
        got = server.recv(timeout=WAIT)  # the default buffer
        assert got.length == size
        assert not got.truncated
        assert got.data == payload


def test_truncation_is_reported_with_real_length(
    udp_pair: tuple[DatagramSocket, DatagramSocket], recv_path: str
) -> None:
    """CPython's socketserver cut datagrams to 8192 bytes silently; we never do."""
    server, client = udp_pair
    _use_path(server, recv_path)
    payload = os.urandom(2000)
    client.send(payload)
    got = server.recv(1024, timeout=WAIT)
    assert got.truncated
    assert got.length == 2000
    assert got.data == payload[:1024]
    # The buffer is reused: a later small datagram is not polluted by the earlier one.
    client.send(b"abc")
    assert server.recv(1024, timeout=WAIT) == Datagram(b"abc", client.local_address, 3)


def test_zero_length_datagram(udp_pair: tuple[DatagramSocket, DatagramSocket]) -> None:
    """asyncio and uvloop drop zero-length sends; they are datagrams like any other."""
    server, client = udp_pair
    assert client.send(b"") == 0
    got = server.recv(timeout=WAIT)
    assert got.data == b""
    assert got.length == 0
    assert not got.truncated


def test_recv_timeout(udp_pair: tuple[DatagramSocket, DatagramSocket]) -> None:
    server, _ = udp_pair
    start = time.monotonic()
    with pytest.raises(Timeout) as info:
        server.recv(timeout=0.2)
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 1.5
    assert isinstance(info.value, TimeoutError)
    assert "0.2 s" in str(info.value)
    with pytest.raises(Timeout):
        server.recv(timeout=0)


def test_oversize_send_refused_before_sending(
    udp_pair: tuple[DatagramSocket, DatagramSocket], family: Family
) -> None:
    server, client = udp_pair
    limit = MAX_UDP_PAYLOAD[family[0]]
    with pytest.raises(MessageTooLarge) as info:
        client.send(bytes(70000))
    label = "IPv4" if family[0] == socket.AF_INET else "IPv6"
    assert str(info.value) == (
        f"message of 70000 bytes is too large: the largest {label} UDP datagram "
        f"carries {limit} bytes"
    )
    with pytest.raises(MessageTooLarge):
        client.send(bytes(limit + 1))
    with pytest.raises(Timeout):
        server.recv(timeout=0.1)  # nothing went out


def test_connected_socket_to_closed_port_is_refused(family: Family) -> None:
    fam, host = family
    with udp_bind(host, 0, family=fam) as gone:
        port = gone.local_address[1]
    with udp_connect(host, port, family=fam) as client:
        client.send(b"anyone?")
        with pytest.raises(ConnectionRefused) as info:
            client.recv(timeout=WAIT)
    assert isinstance(info.value, ConnectionRefusedError)
    assert str(port) in str(info.value)
    assert "connection refused" in str(info.value)


def test_address_in_use(family: Family) -> None:
    fam, host = family
    with udp_bind(host, 0, family=fam) as first:
        port = first.local_address[1]
        with pytest.raises(AddressInUse) as info:
            udp_bind(host, port, family=fam)
    shown = resolve_one(host, port, family=fam)
    assert str(info.value) == f"cannot bind {shown}: address already in use"
    assert info.value.errno == errno.EADDRINUSE
    assert isinstance(info.value, OSError)


def test_reuse_port_lets_two_sockets_share() -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT here")
    with (
        udp_bind(reuse_port=True) as first,
        udp_bind("127.0.0.1", first.local_address[1], reuse_port=True) as second,
    ):
        assert second.local_address == first.local_address


def test_send_destination_forms(udp_pair: tuple[DatagramSocket, DatagramSocket]) -> None:
    server, _ = udp_pair
    host, port = server.local_address[:2]
    fam = server.family
    with udp_bind(host, 0, family=fam) as sender:
        sender.send(b"1", resolve_one(host, port, family=fam))
        sender.send(b"2", (host, port))
        sender.send(b"3", (host, str(port)))
        sender.send(b"4", (host, port))  # the cached destination
        got = [server.recv(timeout=WAIT).data for _ in range(4)]
    assert got == [b"1", b"2", b"3", b"4"]


def test_send_errors_are_usage_errors() -> None:
    with udp_bind() as sock:
        with pytest.raises(UsageError, match="not connected"):
            sock.send(b"x")
        with pytest.raises(UsageError, match="invalid destination"):
            sock.send(b"x", "127.0.0.1:5005")
        with pytest.raises(AddressError):
            sock.send(b"x", ("::1", 5005))
        with pytest.raises(UsageError, match="bufsize"):
            sock.recv(0)
        with pytest.raises(UsageError, match="timeout"):
            sock.recv(timeout=-1)


@needs_ipv6
def test_send_address_of_other_family() -> None:
    with udp_bind() as sock, pytest.raises(UsageError, match="family"):
        sock.send(b"x", resolve_one("::1", 5005))


@needs_ipv6
def test_bind_family_must_match_destination() -> None:
    with pytest.raises(AddressError, match="one family"):
        udp_connect("::1", 5005, bind=("127.0.0.1", 0))


def test_connect_with_textbook_style_bind() -> None:
    """The textbook's client binds ('', port) before sending."""
    with (
        udp_bind() as server,
        udp_connect("127.0.0.1", server.local_address[1], bind=("", 0)) as client,
    ):
        assert client.local_address[0] == "127.0.0.1"  # connect picked the source
        assert client.peer == server.local_address
        client.send(b"hi")
        assert server.recv(timeout=WAIT).peer == client.local_address


def test_wrapping_checks_the_type() -> None:
    stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with stream, pytest.raises(UsageError, match="needs a dgram socket, not stream"):
        DatagramSocket(stream)
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with dgram, pytest.raises(UsageError, match="needs a stream socket, not dgram"):
        StreamSocket(dgram)


# --- TCP and Unix streams -----------------------------------------------------------------


def test_tcp_echo(family: Family) -> None:
    fam, host = family
    with (
        tcp_listen(host, 0, family=fam) as listener,
        tcp_connect(host, listener.local_address[1], timeout=WAIT) as client,
    ):
        conn, peer = listener.accept(timeout=WAIT)
        with conn:
            assert peer == client.local_address == conn.peer
            client.send_all(b"Hello TCP Server")
            client.shutdown_write()
            received = b""
            deadline = time.monotonic() + WAIT
            while (chunk := conn.recv(timeout=WAIT)) and time.monotonic() < deadline:
                received += chunk
            assert received == b"Hello TCP Server"
            conn.send_all(received)
        assert client.recv(timeout=WAIT) == b"Hello TCP Server"
        assert client.recv(timeout=WAIT) == b""  # EOF


def test_tcp_errors(family: Family) -> None:
    fam, host = family
    with tcp_listen(host, 0, family=fam) as listener:
        port = listener.local_address[1]
        with pytest.raises(Timeout):
            listener.accept(timeout=0.05)
        with tcp_connect(host, port, timeout=WAIT) as client, pytest.raises(Timeout):
            client.recv(timeout=0.05)
    with pytest.raises(ConnectionRefused, match="connect to"):
        tcp_connect(host, port, timeout=WAIT, family=fam)


def test_unix_stream_echo(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    with unix_stream_listen(path) as listener:
        assert listener.local_text == path
        with unix_stream_connect(path, timeout=WAIT) as client:
            conn, _ = listener.accept(timeout=WAIT)
            with conn:
                client.send_all(b"ping")
                assert conn.recv(timeout=WAIT) == b"ping"
                conn.send_all(b"pong")
                assert client.recv(timeout=WAIT) == b"pong"
    assert not os.path.exists(path)


# --- Unix datagrams -----------------------------------------------------------------------


def test_unix_datagram_round_trip(sock_dir: str, recv_path: str) -> None:
    path = os.path.join(sock_dir, "d")
    with unix_datagram_bind(path) as server, unix_datagram_connect(path) as client:
        _use_path(server, recv_path)
        client.send(b"Hello Unix Server")
        got = server.recv(timeout=WAIT)
        assert got.data == b"Hello Unix Server"
        assert got.peer == client.local_address != ""  # autobound, so it can be answered
        server.send(b"Hello Unix Client", got.peer)
        assert client.recv(timeout=WAIT).data == b"Hello Unix Client"
        client.send(bytes(3000))
        big = server.recv(100, timeout=WAIT)
        assert (big.length, len(big.data), big.truncated) == (3000, 100, True)
    assert not os.path.exists(path)


@linux_only
def test_unix_abstract_namespace() -> None:
    name = f"@udpkit-test-{os.getpid()}"
    with unix_datagram_bind(name) as server, unix_datagram_connect(name) as client:
        assert server.local_text == name
        client.send(b"abstract")
        assert server.recv(timeout=WAIT).data == b"abstract"


def test_unix_bind_replaces_stale_socket_file(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "stale")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as old:
        old.bind(path)  # closed without removing its file: a crashed server
    assert os.path.exists(path)
    with unix_datagram_bind(path) as server, unix_datagram_connect(path) as client:
        client.send(b"fresh")
        assert server.recv(timeout=WAIT).data == b"fresh"


def test_unix_bind_refuses_live_socket_and_other_files(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "busy")
    with unix_datagram_bind(path), pytest.raises(AddressInUse, match="already in use"):
        unix_datagram_bind(path)
    plain = os.path.join(sock_dir, "plain.txt")
    with open(plain, "w") as f:
        f.write("keep me")
    with pytest.raises(AddressInUse, match="not a socket"):
        unix_datagram_bind(plain)
    with open(plain) as f:
        assert f.read() == "keep me"


def test_unix_connect_to_missing_path(sock_dir: str) -> None:
    with pytest.raises(NetworkError, match="no such file"):
        unix_datagram_connect(os.path.join(sock_dir, "nobody"))
    with pytest.raises(UsageError, match="empty"):
        unix_datagram_bind("")


# --- closing ------------------------------------------------------------------------------


def test_context_managers_close(sock_dir: str) -> None:
    with udp_bind() as dsock:
        assert not dsock.closed
    assert dsock.closed
    assert dsock.fileno() == -1
    dsock.close()  # idempotent
    with tcp_listen() as listener:
        with tcp_connect("127.0.0.1", listener.local_address[1], timeout=WAIT) as conn:
            pass
        assert conn.closed
    assert listener.closed
    path = os.path.join(sock_dir, "c")
    with unix_datagram_bind(path) as usock:
        assert os.path.exists(path)
    assert usock.closed
    assert not os.path.exists(path)


def test_kernel_length_default_matches_platform() -> None:
    assert DatagramSocket._kernel_length == (LINUX and hasattr(socket, "MSG_TRUNC"))


def test_udp_does_not_load_the_stream_code() -> None:
    """The TCP side lives in _stream; the UDP send path never imports it."""
    code = (
        "import sys, udpkit._net.sockets, udpkit._loops.client, udpkit._net.unix; "
        "print('udpkit._net.stream' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "False"
