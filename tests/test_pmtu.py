"""A path MTU smaller than the datagram: ICMP "fragmentation needed" / "packet too big".

The request loop (udpkit.request, ``udpkit send --retries``) and bench treat the
EMSGSIZE such an ICMP error reports on receive as soft: request resends at once
(the kernel has learned the path MTU and fragments the resend), bench counts it
per errno and carries on.  A datagram over the family's limit stays an immediate
MessageTooLarge.  The scripted-socket tests run anywhere; the namespaced ones use
the routed topology of tests/test_netns_routed.py (a - router - b, MTU 1280 on
the r-b link) and are skipped where namespaces cannot be made.
"""

from __future__ import annotations

import errno
import json
import time
from typing import Any, cast

import pytest
from tests._netns import needs_netns
from tests.test_netns_reach import STEP, running, serving
from tests.test_netns_routed import _one_line_error, _send_stdin, _udpkit, routed

import udpkit
from udpkit._cli.benchreport import bench_document, format_table, icmp_errors
from udpkit._core.errors import MessageTooLarge, NetworkError
from udpkit._loops import bench as _bench
from udpkit._loops import client as _client
from udpkit._loops.benchflow import ProbeFlow
from udpkit._net.sockets import Datagram, DatagramSocket

TRUST = ("--trust", "fd81::/16", "--trust", "10.81.0.0/16")
PEER = ("192.0.2.1", 5000)


def _too_big() -> NetworkError:
    return NetworkError(errno.EMSGSIZE, "receive from 192.0.2.1:5000: message too long")


class _Scripted:
    """A stand-in socket: each recv takes the next outcome (an exception or a reply)."""

    def __init__(self, outcomes: list[BaseException | bytes]) -> None:
        self.outcomes = outcomes
        self.sent = 0

    def send(self, data: bytes, to: Any = None) -> int:
        self.sent += 1
        return len(data)

    def recv(self, bufsize: int = 65535, *, timeout: float | None = None) -> Datagram:
        if not self.outcomes:
            raise udpkit.Timeout("no datagram: none arrived")
        out = self.outcomes.pop(0)
        if isinstance(out, BaseException):
            raise out
        return Datagram(out, PEER, len(out))


def _request(s: _Scripted, **kw: Any) -> tuple[Datagram, int]:
    return _client.request(cast(DatagramSocket, s), b"m" * 3000, **kw)


def test_one_packet_too_big_resends_at_once_within_the_attempt() -> None:
    s = _Scripted([_too_big(), b"answer"])
    start = time.monotonic()
    reply, attempts = _request(s, timeout=5, retries=0)
    assert time.monotonic() - start < 1  # no waiting out the attempt
    assert (reply.data, attempts, s.sent) == (b"answer", 1, 2)


def test_a_second_packet_too_big_on_the_last_attempt_names_the_path_mtu() -> None:
    s = _Scripted([_too_big(), _too_big()])
    with pytest.raises(NetworkError) as info:
        _request(s, timeout=5, retries=0)
    assert info.value.errno == errno.EMSGSIZE
    assert not isinstance(info.value, MessageTooLarge)  # a network error: exit 1, not 2
    text = str(info.value)
    assert text.startswith("receive from 192.0.2.1:5000: the path MTU is smaller than")
    assert "3000-byte datagram" in text and "--retries" in text
    assert s.sent == 2


def test_packet_too_big_twice_moves_on_to_the_next_attempt_at_once() -> None:
    s = _Scripted([_too_big(), _too_big(), b"answer"])
    start = time.monotonic()
    reply, attempts = _request(s, timeout=5, retries=1)
    assert time.monotonic() - start < 1
    assert (reply.data, attempts, s.sent) == (b"answer", 2, 3)


def test_other_receive_errors_still_raise_at_once() -> None:
    s = _Scripted([NetworkError(errno.EHOSTUNREACH, "receive: no route to host"), b"late"])
    with pytest.raises(NetworkError, match="no route to host"):
        _request(s, timeout=5, retries=3)
    assert s.sent == 1


def test_over_the_limit_is_an_immediate_message_too_large() -> None:
    with (
        udpkit.udp_bind("127.0.0.1", 0) as server,
        udpkit.udp_connect(*server.sock.getsockname()) as client,
    ):
        start = time.monotonic()
        with pytest.raises(MessageTooLarge, match="65507"):
            udpkit.request(client, b"x" * 70000, timeout=5, retries=3)
        assert time.monotonic() - start < 1


def test_a_stale_kernel_emsgsize_on_send_is_sent_again() -> None:
    """An ICMP report about an earlier datagram can come on the next send, which then
    sends nothing: request sends once more (a datagram the kernel refuses fails again)."""

    class _StaleOnce(_Scripted):
        def send(self, data: bytes, to: Any = None) -> int:
            self.sent += 1
            if self.sent == 1:
                raise MessageTooLarge("refused") from OSError(errno.EMSGSIZE, "too long")
            return len(data)

    s = _StaleOnce([b"answer"])
    assert _request(s, timeout=5)[0].data == b"answer"
    assert s.sent == 2


def _flow_stub() -> Any:
    f = ProbeFlow.__new__(ProbeFlow)
    f.res = _bench.FlowResult(1, "127.0.0.1:1")
    return f


def test_bench_counts_icmp_errors_per_errno_and_words_others_readably() -> None:
    f = _flow_stub()
    for code in (errno.EMSGSIZE, errno.EMSGSIZE, errno.EHOSTDOWN, errno.ECONNREFUSED):
        assert f._recv_error(code) == []
    assert f.res.icmp_errors == {"EMSGSIZE": 2, "EHOSTDOWN": 1, "ECONNREFUSED": 1}
    with pytest.raises(NetworkError) as info:
        f._recv_error(errno.EBADF)
    assert str(info.value) == "bench receive: bad file descriptor"


def test_bench_report_shows_icmp_errors() -> None:
    res = _bench.FlowResult(1, "127.0.0.1:1", sent=3, numbered=3)
    res.icmp_errors = {"EMSGSIZE": 1, "ECONNREFUSED": 2}
    cfg = _bench.BenchConfig("127.0.0.1", 9, count=3, one_way=True)
    result = _bench.BenchResult(cfg, "127.0.0.1:9", "reflector", 1.0, [res], [])
    doc = bench_document(result)
    assert doc["total"]["icmp_errors_count"] == 3 and doc["flows"][0]["icmp_errors_count"] == 3
    text = format_table(doc, icmp_errors(result))
    assert "ICMP errors ECONNREFUSED 2, EMSGSIZE 1" in text
    assert "ICMP errors 3" in format_table(doc)  # from a saved document: the total


# ------------------------------------------------------------ namespaced


@needs_netns
def test_send_without_retries_gets_through_after_fragmentation_needed() -> None:
    """IPv4 (DF set): the router's "fragmentation needed" comes at once; the resend
    within the attempt is fragmented and answered, even with no retries."""
    with routed(mtu_b=1280) as (a, _r, b), serving(b, "::", "5463", "--echo", *TRUST):
        res = _send_stdin(a, b"m" * 1400, b.v4, "5463", "-", "--timeout", "2", "--retries", "0")
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(b"Message from Server\nb'mmm"), res.stdout


@needs_netns
def test_bench_reports_the_packet_too_big_it_carried_on_after() -> None:
    with routed(mtu_b=1280) as (a, _r, b), running(b, "reflect", "::", "5464"):
        for dest, size in ((b.v6, "3000"), (b.v4, "1400")):
            res = _udpkit(a, "bench", dest, "5464", "--count", "30", "--size", size, timeout=30)
            assert res.returncode == 0, (dest, res.stderr)
            text = res.stdout.decode()
            assert "ICMP errors EMSGSIZE" in text, text
            js = _udpkit(a, "bench", dest, "5464", "-n", "30", "--size", size, "--json")
            assert js.returncode == 0, (dest, js.stderr)
            total = json.loads(js.stdout)["total"]
            fwd = total["forward"]
            # Probes too big for GSO go one datagram each: none is lost at the sender.
            assert fwd["lost_sender_datagrams"] == 0 and total["send_errors"] == {}, total
            assert fwd["received_datagrams"] >= 28, fwd


@needs_netns
def test_bench_to_a_group_without_a_multicast_route_names_iface() -> None:
    with routed() as (_a, r, _b):
        argv = ["bench", "239.4.4.4", "5497", "--one-way", "-n", "3"]
        line = _one_line_error(_udpkit(r, *argv, timeout=STEP), 1)
        assert "network is unreachable: name the interface: --iface IFACE" in line, line
