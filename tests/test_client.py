"""udpkit.request_all over loopback: every reply within the timeout, in order, bounded."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable

import pytest

import udpkit

Family = tuple[socket.AddressFamily, str]


def _answer_each_with(server: socket.socket, replies: list[bytes]) -> threading.Thread:
    """Answer the next request on ``server`` with every payload in ``replies``."""

    def run() -> None:
        _, peer = server.recvfrom(100)
        for r in replies:
            server.sendto(r, peer)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_request_all_collects_every_reply_in_order(family: Family) -> None:
    fam, host = family
    with socket.socket(fam, socket.SOCK_DGRAM) as server:
        server.bind((host, 0))
        server.settimeout(5)
        where = server.getsockname()
        t = _answer_each_with(server, [b"one", b"", b"three"])
        with udpkit.udp_bind(host, 0) as client:
            start = time.monotonic()
            got = udpkit.request_all(client, b"q", where, timeout=0.5)
            waited = time.monotonic() - start
        t.join(5)
    assert [d.data for d in got] == [b"one", b"", b"three"]
    assert all(d.peer[:2] == where[:2] for d in got)
    assert 0.45 <= waited < 3  # it collects for the whole timeout


def test_request_all_limit_and_silence() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        t = _answer_each_with(server, [b"%d" % i for i in range(5)])
        with udpkit.udp_bind("127.0.0.1", 0) as client:
            got = udpkit.request_all(client, b"q", server.getsockname(), timeout=2, limit=2)
            assert [d.data for d in got] == [b"0", b"1"]
            t.join(5)
        with udpkit.udp_bind("127.0.0.1", 0) as client:
            # Nobody answers this one: an empty list, not an exception.
            assert udpkit.request_all(client, b"q", server.getsockname(), timeout=0.1) == []
        with pytest.raises(udpkit.UsageError, match="invalid limit 0"):
            udpkit.request_all(client, b"q", ("127.0.0.1", 9), limit=0)


_WRONG_CALLS: list[tuple[Callable[[], object], str]] = [
    (lambda: udpkit.request("127.0.0.1", 5005, b"x"), "request() takes a udpkit Datagram"),  # type: ignore[arg-type]
    (lambda: udpkit.request_all("127.0.0.1", b"x"), "request_all() takes a udpkit"),  # type: ignore[arg-type]
    (lambda: udpkit.stream_request("127.0.0.1", b"x"), "stream_request() takes a udpkit"),  # type: ignore[arg-type]
    (lambda: udpkit.DatagramServer("127.0.0.1", udpkit.ECHO), "DatagramServer() takes"),  # type: ignore[arg-type]
    (lambda: udpkit.StreamServer(("127.0.0.1", 1), None), "StreamServer() takes"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("call", "expected"), _WRONG_CALLS)
def test_a_wrong_guess_at_a_signature_is_a_usage_error(
    call: Callable[[], object], expected: str
) -> None:
    """`udpkit.request("127.0.0.1", 5005, b"x")` raised a bare AttributeError (issue 12),
    although every error is promised to derive from UdpkitError."""
    with pytest.raises(udpkit.UsageError, match=re.escape(expected)):
        call()


def test_text_instead_of_bytes_says_encode() -> None:
    with (
        udpkit.udp_bind("127.0.0.1", 0) as sock,
        pytest.raises(udpkit.UsageError, match=r"as bytes, not str .*encode"),
    ):
        udpkit.request(sock, "hello", ("127.0.0.1", 9))  # type: ignore[arg-type]
