"""The engine: one contract, run against the recvmmsg path and the portable path."""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pytest

from udpkit._core.errors import UsageError
from udpkit._core.serving import ECHO, Fixed
from udpkit._loops.engine import Engine, EngineStats
from udpkit._net.kernel import (
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    Waker,
    inode,
    proc_drops,
    proc_drops_by_inode,
    wait_writable,
)
from udpkit._net.mmsg import decode_sockaddr, encode_sockaddr, fast_path_available
from udpkit._net.sendmmsg import Packer, send_batch
from udpkit._net.sockets import Datagram

LINUX = sys.platform.startswith("linux")
Family = tuple[socket.AddressFamily, str]


def _probe_gso() -> bool:
    """Really send one GSO datagram pair over loopback."""
    if not LINUX:
        return False
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
    ):
        r.bind(("127.0.0.1", 0))
        try:
            s.sendmsg([b"abcd"], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 2))], 0, r.getsockname())
        except OSError:
            return False
    return True


def _probe_gro() -> bool:
    if not LINUX:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
        try:
            r.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            return False
    return True


needs_fast = pytest.mark.skipif(not fast_path_available(), reason="no recvmmsg/sendmmsg here")
needs_gso = pytest.mark.skipif(not _probe_gso(), reason="kernel refuses UDP GSO")
needs_gro = pytest.mark.skipif(not _probe_gro(), reason="kernel refuses UDP GRO")
needs_proc = pytest.mark.skipif(
    not LINUX or not __import__("os").path.exists("/proc/net/udp"), reason="no /proc/net/udp"
)


@pytest.fixture
def pair(family: Family) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A bound server socket and a client socket (2 s receive timeout) on loopback."""
    fam, host = family
    server = socket.socket(fam, socket.SOCK_DGRAM)
    client = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        server.bind((host, 0))
        client.bind((host, 0))
        client.settimeout(2.0)
        yield server, client
    finally:
        server.close()
        client.close()


def _echo(d: Datagram) -> bytes:
    return d.data


def _run_in_thread(e: Engine) -> tuple[threading.Thread, threading.Event]:
    """Start ``e.run()`` in a thread; the event is set when it returns."""
    done = threading.Event()

    def serve() -> None:
        e.run()
        done.set()

    t = threading.Thread(target=serve)
    t.start()
    return t, done


def _recv_n(sock: socket.socket, n: int) -> list[bytes]:
    return [sock.recvfrom(70000)[0] for _ in range(n)]


class EngineContract:
    """Observable behaviour both paths share; subclasses pick the path."""

    fast: ClassVar[bool]

    def engine(self, sock: socket.socket, handler: Any = None, **kw: Any) -> Engine:
        e = Engine(sock, handler, fast=self.fast, **kw)
        assert e.fast is self.fast
        return e

    def test_echo_round_trip(self, pair: tuple[socket.socket, socket.socket]) -> None:
        server, client = pair
        msgs = [b"one", b"two" * 10, b"three" * 100]
        for m in msgs:
            client.sendto(m, server.getsockname())
        seen: list[Datagram] = []
        with self.engine(server, _echo, on_batch=seen.extend) as e:
            st = e.run(count=len(msgs), duration=5)
        assert _recv_n(client, len(msgs)) == msgs
        assert [d.data for d in seen] == msgs
        assert all(d.peer == client.getsockname() for d in seen)
        assert (st.rx_datagrams, st.rx_bytes) == (3, sum(map(len, msgs)))
        assert (st.tx_datagrams, st.tx_bytes) == (3, sum(map(len, msgs)))
        assert st.send_errors == {} and st.handler_errors == 0 and st.truncated == 0

    def test_many_peers_each_answered_with_the_cache_bounded(
        self, pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Twelve sources through a peer cache of four: every datagram keeps its own peer."""
        from udpkit._net import mmsg as _mmsg

        monkeypatch.setattr(_mmsg, "PEER_CACHE_MAX", 4)
        server, _ = pair
        clients = [socket.socket(server.family, socket.SOCK_DGRAM) for _ in range(12)]
        try:
            for i, c in enumerate(clients):
                c.bind((server.getsockname()[0], 0))
                c.settimeout(2.0)
                for k in range(2):
                    c.sendto(b"%d.%d" % (i, k), server.getsockname())
            seen: list[Datagram] = []
            with self.engine(server, _echo, on_batch=seen.extend) as e:
                st = e.run(count=24, duration=5)
                assert len(e._peers.cache) <= 4
            by_peer = {d.data: d.peer for d in seen}
            for i, c in enumerate(clients):
                assert sorted(_recv_n(c, 2)) == [b"%d.0" % i, b"%d.1" % i]
                assert by_peer[b"%d.0" % i] == by_peer[b"%d.1" % i] == c.getsockname()
            assert st.rx_datagrams == st.tx_datagrams == 24
        finally:
            for c in clients:
                c.close()

    def test_several_replies_per_datagram(self, pair: tuple[socket.socket, socket.socket]) -> None:
        server, client = pair
        client.sendto(b"q", server.getsockname())
        with self.engine(server, lambda d: [d.data + b"1", d.data + b"22", b""]) as e:
            st = e.run(count=1, duration=5)
        assert _recv_n(client, 3) == [b"q1", b"q22", b""]
        assert st.tx_datagrams == 3

    def test_zero_length_delivered_and_answered(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        server, client = pair
        client.sendto(b"", server.getsockname())
        seen: list[Datagram] = []
        with self.engine(server, _echo, on_batch=seen.extend) as e:
            st = e.run(count=1, duration=5)
        assert client.recvfrom(100)[0] == b""
        assert [(d.data, d.length) for d in seen] == [(b"", 0)]
        assert (st.rx_datagrams, st.rx_bytes, st.tx_datagrams) == (1, 0, 1)

    def test_truncation_counted_with_real_length(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        server, client = pair
        client.sendto(b"x" * 2000, server.getsockname())
        client.sendto(b"y" * 10, server.getsockname())
        seen: list[Datagram] = []
        with self.engine(server, None, bufsize=1024, on_batch=seen.extend) as e:
            st = e.run(count=2, duration=5)
        assert [(len(d.data), d.length, d.truncated) for d in seen] == [
            (1024, 2000, True),
            (10, 10, False),
        ]
        assert (st.rx_datagrams, st.rx_bytes) == (2, 2010)
        assert (st.truncated, st.truncated_bytes_lost) == (1, 976)

    def test_count_stops_exactly(self, pair: tuple[socket.socket, socket.socket]) -> None:
        server, client = pair
        for i in range(10):
            client.sendto(b"%d" % i, server.getsockname())
        seen: list[Datagram] = []
        with self.engine(server, None, batch=3, on_batch=seen.extend) as e:
            assert e.run(count=4, duration=5).rx_datagrams == 4
            assert e.run(count=6, duration=5).rx_datagrams == 10
        assert [d.data for d in seen] == [b"%d" % i for i in range(10)]

    def test_duration_ends_an_idle_run(self, pair: tuple[socket.socket, socket.socket]) -> None:
        server, _ = pair
        with self.engine(server, _echo) as e:
            t0 = time.monotonic()
            e.run(duration=0.2)
            assert 0.15 <= time.monotonic() - t0 < 2.0

    def test_stop_from_another_thread(self, pair: tuple[socket.socket, socket.socket]) -> None:
        server, client = pair
        server.settimeout(None)  # a blocking socket must not keep the engine asleep
        with self.engine(server, _echo) as e:
            t, done = _run_in_thread(e)
            client.sendto(b"ping", server.getsockname())
            assert client.recvfrom(100)[0] == b"ping"
            t0 = time.monotonic()
            e.stop()
            t.join(timeout=5)
            assert done.is_set() and time.monotonic() - t0 < 1.0
            assert e.stats.rx_datagrams == 1

    def test_answering_engine_truncates_and_counts(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        """With a handler, a lone datagram takes the one-at-a-time read: same accounting."""
        server, client = pair
        seen: list[Datagram] = []
        with self.engine(server, _echo, bufsize=1024, on_batch=seen.extend) as e:
            for m in (b"x" * 2000, b"y" * 10, b""):
                client.sendto(m, server.getsockname())
                st = e.run(count=1, duration=5)
        assert _recv_n(client, 3) == [b"x" * 1024, b"y" * 10, b""]
        assert [(d.length, d.truncated) for d in seen] == [(2000, True), (10, False), (0, False)]
        assert (st.rx_datagrams, st.rx_bytes, st.tx_datagrams) == (3, 2010, 3)
        assert (st.truncated, st.truncated_bytes_lost) == (1, 976)

    def test_answering_engine_count_stops_exactly(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        server, client = pair
        for i in range(10):
            client.sendto(b"%d" % i, server.getsockname())
        with self.engine(server, _echo, batch=3) as e:
            assert e.run(count=1, duration=5).rx_datagrams == 1
            assert e.run(count=4, duration=5).rx_datagrams == 5
            assert e.run(count=5, duration=5).rx_datagrams == 10
        assert _recv_n(client, 10) == [b"%d" % i for i in range(10)]

    @pytest.mark.parametrize("busy", [0, 300])
    def test_ping_pong_then_burst(
        self, pair: tuple[socket.socket, socket.socket], busy: int
    ) -> None:
        """Lone requests (light reads, busy spins), then a burst (batches): all answered."""
        server, client = pair
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        n_pp, n_burst = 40, 120
        with self.engine(server, lambda d: d.data + b"!", busy_poll_us=busy) as e:
            t = threading.Thread(target=e.run, kwargs={"count": n_pp + n_burst, "duration": 10})
            t.start()
            try:
                for i in range(n_pp):
                    client.sendto(b"p%d" % i, server.getsockname())
                    assert client.recv(100) == b"p%d!" % i
                for i in range(n_burst):
                    client.sendto(b"b%d" % i, server.getsockname())
                assert _recv_n(client, n_burst) == [b"b%d!" % i for i in range(n_burst)]
            finally:
                e.stop()
                t.join(10)
            st = e.stats
        assert (st.rx_datagrams, st.tx_datagrams) == (n_pp + n_burst, n_pp + n_burst)

    def test_handler_exception_counted(self, pair: tuple[socket.socket, socket.socket]) -> None:
        server, client = pair

        def handler(d: Datagram) -> bytes | list[Any]:
            if d.data == b"bad":
                raise RuntimeError("boom")
            if d.data == b"mixed":
                return [b"ok-before", "not bytes"]
            return d.data

        for m in (b"bad", b"mixed", b"good"):
            client.sendto(m, server.getsockname())
        with self.engine(server, handler) as e:
            st = e.run(count=3, duration=5)
        assert _recv_n(client, 2) == [b"ok-before", b"good"]
        assert st.handler_errors == 2 and st.rx_datagrams == 3

    def test_send_errors_counted_not_raised(self, family: Family) -> None:
        """An ICMP port unreachable for a reply surfaces on a later call: counted by errno."""
        fam, host = family
        with socket.socket(fam, socket.SOCK_DGRAM) as server:
            server.bind((host, 0))
            with socket.socket(fam, socket.SOCK_DGRAM) as c:
                c.bind((host, 0))
                addr = c.getsockname()
                server.connect(addr)
                c.sendto(b"1", server.getsockname())
            with self.engine(server, _echo) as e:
                e.run(count=1, duration=5)  # the reply finds nobody: ICMP, error now pending
                with socket.socket(fam, socket.SOCK_DGRAM) as c:
                    c.bind(addr)
                    c.sendto(b"2", server.getsockname())
                st = e.run(count=1, duration=5)
        assert st.rx_datagrams == 2
        assert st.send_errors.get("ECONNREFUSED", 0) >= 1

    @needs_proc
    def test_kernel_drops_known_on_linux(self, pair: tuple[socket.socket, socket.socket]) -> None:
        server, client = pair
        client.sendto(b"x", server.getsockname())
        with self.engine(server, None) as e:
            assert e.run(count=1, duration=5).kernel_drops == 0

    def test_sink_counts_without_handler(self, pair: tuple[socket.socket, socket.socket]) -> None:
        server, client = pair
        payloads = [b"p" * 64] * 50
        assert send_batch(client, payloads, server.getsockname(), gso=False) == 50
        with self.engine(server, None, gro=False) as e:
            st = e.run(count=50, duration=5)
        assert (st.rx_datagrams, st.rx_bytes) == (50, 3200)

    @needs_proc
    @pytest.mark.parametrize("proc_first", [True, False], ids=["proc", "rxq_ovfl"])
    def test_accounting_invariant_under_flood(
        self, family: Family, proc_first: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """sent == received + kernel drops, exactly, with a receive buffer far too small,
        whether the drops are read from /proc/net/udp or from SO_RXQ_OVFL messages."""
        monkeypatch.setattr(Engine, "_proc_drops_first", proc_first)
        fam, host = family
        total = 20_000
        with (
            socket.socket(fam, socket.SOCK_DGRAM) as server,
            socket.socket(fam, socket.SOCK_DGRAM) as client,
        ):
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            server.bind((host, 0))
            client.connect(server.getsockname())
            marker = b"END"

            def on_batch(b: Sequence[Datagram]) -> None:
                if any(d.data == marker for d in b):
                    e.stop()

            with self.engine(server, None, gro=False, on_batch=on_batch) as e:
                t = threading.Thread(target=lambda: e.run(duration=10))
                t.start()
                sent = 0
                for _ in range(total // 100):
                    sent += send_batch(client, [b"f" * 64] * 100, gso=False)
                # Once the queue has drained, a last datagram carries the final drop count.
                time.sleep(0.3)
                client.send(marker)
                sent += 1
                t.join(timeout=15)
                assert not t.is_alive()
                st = e.stats
                drops = proc_drops(server.fileno())
                cmsg_drops = e._cmsg_drops
        assert sent == total + 1
        assert st.kernel_drops is not None and st.kernel_drops > 0
        assert sent == st.rx_datagrams + st.kernel_drops
        assert drops == st.kernel_drops
        if self.fast and not proc_first:
            assert cmsg_drops == st.kernel_drops

    @pytest.mark.parametrize("answer", ["echo", "fixed"])
    def test_whole_batches_answer_every_datagram_exactly(
        self, pair: tuple[socket.socket, socket.socket], answer: str
    ) -> None:
        """ECHO and Fixed replies, sent a batch at a time from the receive buffers (GSO
        runs for one peer's same-size replies), reach every sender intact and in order."""
        server, client = pair
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        other = socket.socket(server.family, socket.SOCK_DGRAM)
        try:
            other.bind((server.getsockname()[0], 0))
            other.settimeout(2.0)
            # 150 of one size from one peer (several GSO runs), then mixed sizes, then
            # a second peer in the same batches.
            same = [b"%05d" % i * 20 for i in range(150)]
            mixed = [b"m" * (i % 7) for i in range(30)]
            for m in same + mixed:
                client.sendto(m, server.getsockname())
            for i in range(20):
                other.sendto(b"o%d" % i, server.getsockname())
            n = len(same) + len(mixed) + 20
            reply = Fixed(b"ok")
            with self.engine(server, ECHO if answer == "echo" else reply) as e:
                st = e.run(count=n, duration=5)
            got = _recv_n(client, len(same) + len(mixed))
            got_other = _recv_n(other, 20)
        finally:
            other.close()
        if answer == "echo":
            assert got == same + mixed
            assert got_other == [b"o%d" % i for i in range(20)]
            assert st.tx_bytes == st.rx_bytes
        else:
            assert got == [b"ok"] * (n - 20) and got_other == [b"ok"] * 20
            assert st.tx_bytes == 2 * n
        assert (st.rx_datagrams, st.tx_datagrams, st.send_errors) == (n, n, {})

    def test_fixed_and_echo_to_port_zero_are_counted_send_errors(self, family: Family) -> None:
        """Without a policy the engine answers anyone; a reply the kernel refuses is counted."""
        fam, host = family
        if fam == socket.AF_INET6:
            pytest.skip("IPv6 needs a UDP checksum; the IPv4 case covers the rule")
        try:
            raw = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_UDP)
        except PermissionError:
            pytest.skip("a raw socket needs root")
        with raw, socket.socket(fam, socket.SOCK_DGRAM) as server:
            server.bind((host, 0))
            port = server.getsockname()[1]
            # A UDP header from source port 0 (checksum 0: allowed over IPv4).
            raw.sendto(struct.pack("!HHHH", 0, port, 12, 0) + b"zero", (host, 0))
            with self.engine(server, ECHO) as e:
                st = e.run(count=1, duration=5)
        assert st.rx_datagrams == 1 and st.tx_datagrams == 0
        assert sum(st.send_errors.values()) == 1


@needs_fast
def test_asleep_in_recvmmsg_a_stop_is_seen_within_a_tick() -> None:
    """Asleep in the receive call itself (no epoll), stop() from another thread still ends
    the run within the 0.1 s tick, and the socket's own receive timeout is given back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        before = server.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
        with Engine(server, _echo) as e:
            t, ended = _run_in_thread(e)
            time.sleep(0.3)  # long asleep by now
            t0 = time.monotonic()
            e.stop()
            assert ended.wait(2.0)
            took = time.monotonic() - t0
            t.join(2.0)
        assert took < 0.5, took  # 0.1 s tick, with room for a loaded machine
        assert server.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == before


@needs_fast
def test_a_socket_with_a_timeout_is_served_from_epoll() -> None:
    """A caller's timeout makes the socket non-blocking: the loop must not spin on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5.0)
        with Engine(server, _echo) as e:
            t0 = time.process_time()
            e.run(duration=0.3)
            assert time.process_time() - t0 < 0.2  # asleep, not spinning
        assert server.gettimeout() == 5.0


class TestPortablePath(EngineContract):
    fast = False


@needs_fast
class TestFastPath(EngineContract):
    fast = True


@needs_fast
class TestFastPathPolling(EngineContract):
    """The fast path asleep in epoll (as on a socket with a timeout) instead of in recvmmsg."""

    fast = True

    @pytest.fixture(autouse=True)
    def _poll(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(Engine, "_sleep_in_receive", False)


@needs_fast
@needs_gso
class TestOffloads:
    """GSO-sent streams come out as exactly the datagrams sent, with GRO on or off."""

    @pytest.mark.parametrize("gro", [pytest.param(True, marks=needs_gro), False])
    @pytest.mark.parametrize("last", [1000, 333])
    def test_gso_stream_received_as_sent(self, family: Family, gro: bool, last: int) -> None:
        fam, host = family
        n = 120
        payloads = [bytes([i % 251]) * 1000 for i in range(n - 1)] + [b"L" * last]
        with (
            socket.socket(fam, socket.SOCK_DGRAM) as server,
            socket.socket(fam, socket.SOCK_DGRAM) as client,
        ):
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            server.bind((host, 0))
            seen: list[Datagram] = []
            with Engine(server, None, gro=gro, on_batch=seen.extend) as e:
                assert e.gro is gro
                assert send_batch(client, payloads, server.getsockname(), gso=True) == n
                st = e.run(count=n, duration=5)
            port = client.getsockname()[1]
        assert st.kernel_drops == 0, "receive buffer overflowed: test invalid"
        assert [d.data for d in seen] == payloads
        assert all(d.peer[:2] == (host, port) for d in seen)
        assert (st.rx_datagrams, st.rx_bytes, st.truncated) == (n, 1000 * (n - 1) + last, 0)
        if gro:
            assert st.batches < n  # really coalesced

    @pytest.mark.parametrize("last", [1000, 333])
    def test_gro_echo_sends_coalesced_buffers_back_whole(self, family: Family, last: int) -> None:
        """ECHO with GRO: each coalesced buffer goes back as one GSO send, and the sender
        receives exactly the datagrams it sent, in order, with every one counted."""
        if not _probe_gro():
            pytest.skip("kernel refuses UDP GRO")
        fam, host = family
        n = 120
        payloads = [bytes([i % 251]) * 1000 for i in range(n - 1)] + [b"L" * last]
        with (
            socket.socket(fam, socket.SOCK_DGRAM) as server,
            socket.socket(fam, socket.SOCK_DGRAM) as client,
        ):
            for s in (server, client):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            server.bind((host, 0))
            client.bind((host, 0))
            client.settimeout(2.0)
            with Engine(server, ECHO, gro=True) as e:
                assert e.gro
                assert send_batch(client, payloads, server.getsockname(), gso=True) == n
                st = e.run(count=n, duration=5)
                whole = e.step.stats.whole_batches
            assert _recv_n(client, n) == payloads
        assert st.kernel_drops == 0, "receive buffer overflowed: test invalid"
        assert (st.rx_datagrams, st.tx_datagrams) == (n, n)
        assert st.rx_bytes == st.tx_bytes == 1000 * (n - 1) + last
        assert st.batches < n and whole >= 1  # really coalesced, and echoed as such

    def test_same_size_replies_leave_as_separate_datagrams(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        server, client = pair
        for i in range(20):
            client.sendto(b"%04d" % i, server.getsockname())
        time.sleep(0.05)  # let all 20 queue so they are one batch and one GSO run
        with Engine(server, _echo, gso=True) as e:
            st = e.run(count=20, duration=5)
            assert e.gso
        assert _recv_n(client, 20) == [b"%04d" % i for i in range(20)]
        assert (st.tx_datagrams, st.tx_bytes, st.send_errors) == (20, 80, {})


def test_gro_needs_a_large_buffer() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(UsageError, match="bufsize"):
            Engine(s, None, bufsize=1024, gro=True)
        with Engine(s, None, bufsize=1024) as e:
            assert not e.gro


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"bufsize": 0}, "invalid bufsize 0"),
        ({"batch": 0}, "invalid batch 0"),
        ({"busy_poll_us": -1}, "invalid busy_poll_us -1"),
    ],
)
def test_bad_arguments_named(kw: dict[str, Any], match: str) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
        pytest.raises(UsageError, match=match),
    ):
        Engine(s, None, **kw)


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [(None, None, None), (None, 3, 3), (2, None, 2), (2, 3, 5)],
)
def test_stats_merge(a: int | None, b: int | None, want: int | None) -> None:
    x = EngineStats(rx_datagrams=1, kernel_drops=a, send_errors={"EPERM": 1})
    y = EngineStats(rx_datagrams=2, kernel_drops=b, send_errors={"EPERM": 2, "EIO": 1})
    x.merge(y)
    assert x.as_dict() == {
        **EngineStats().as_dict(),
        "rx_datagrams": 3,
        "kernel_drops": want,
        "send_errors": {"EPERM": 3, "EIO": 1},
    }


@pytest.mark.parametrize(
    ("fam", "addr"),
    [
        (socket.AF_INET, ("127.0.0.1", 5005)),
        (socket.AF_INET, ("10.1.2.3", 65535)),
        (socket.AF_INET6, ("::1", 5005, 0, 0)),
        (socket.AF_INET6, ("2001:db8::1", 1, 0x12345, 0)),
        (socket.AF_INET6, ("::ffff:127.0.0.1", 80, 0, 0)),
    ],
)
def test_sockaddr_round_trip(fam: socket.AddressFamily, addr: tuple[Any, ...]) -> None:
    assert decode_sockaddr(encode_sockaddr(fam, addr)) == addr


@pytest.mark.skipif(not hasattr(select, "poll"), reason="no poll() here")
def test_waiting_for_room_works_on_a_high_descriptor() -> None:
    """With epoll for reading, a full send buffer fell back to select(), which raises
    ValueError for a descriptor >= 1024 (a busy server has many)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        try:
            high = os.dup2(s.fileno(), 1500)
        except OSError as exc:  # a descriptor limit below 1501
            pytest.skip(f"cannot use descriptor 1500 here: {exc}")
        with socket.socket(fileno=high) as dup:
            waited = wait_writable(dup.fileno(), 0.01)  # writable at once: a short wait
            assert 0 < waited < 1


def test_waker_reports_readable_sockets_and_wakes_at_once() -> None:
    """The one wait of the engine and the relay: readable sockets, never its own pair."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        waker = Waker(s.fileno())
        try:
            assert waker.wait(0) == []
            s.sendto(b"x", s.getsockname())
            assert waker.wait(2.0) == [s.fileno()]
            assert s.recv(10) == b"x"
            waker.wake()
            start = time.monotonic()
            assert waker.wait(2.0) == []  # woken, nothing to read
            assert time.monotonic() - start < 1.0
            assert waker.wait(0) == []  # the wake-up byte was taken
            waker.unregister(s.fileno())
            s.sendto(b"y", s.getsockname())
            assert waker.wait(0.05) == []
        finally:
            waker.close()


@needs_fast
@pytest.mark.parametrize(
    ("payloads", "sources", "counts", "firsts"),
    [
        ([b"aa", b"aa", b"a", b"bb"], None, [3, 1], [0, 3]),  # a shorter one ends a run
        ([b"aa", b"aa", b"aa"], [0, 1, 0], [1, 1, 1], [0, 1, 2]),  # runs keep to one peer
        ([b"aa", b"aa", b"aaa"], [0, 2, 2], [2, 1], [0, 2]),  # a longer one starts anew
        ([b"", b"", b"a"], None, [1, 1, 1], [0, 1, 2]),  # empty datagrams go one by one
    ],
)
def test_packer_runs(
    payloads: list[bytes], sources: list[int] | None, counts: list[int], firsts: list[int]
) -> None:
    """The one packer: same-size payloads to one destination share a GSO header."""
    packer = Packer(8, 4096)
    keys = ["p", "q", "p"]  # messages 0 and 2 came from one peer
    k = packer.pack(payloads, 0, gso=True, name_addr=0, namelen=0, sources=sources, keys=keys)
    assert k == len(payloads)
    assert packer.counts == counts and packer.firsts == firsts
    assert packer.nbytes == [
        sum(len(p) for p in payloads[f : f + c]) for f, c in zip(firsts, counts, strict=True)
    ]
    assert packer.pack(payloads, 0, gso=False, name_addr=0, namelen=0) == len(payloads)
    assert packer.counts == [1] * len(payloads)


@needs_fast
def test_packer_stops_where_the_arena_is_full() -> None:
    packer = Packer(8, 10)
    assert packer.pack([b"x" * 6, b"y" * 6], 0, gso=False, name_addr=0, namelen=0) == 1
    assert packer.j == 1
    assert packer.pack([b"x" * 11], 0, gso=False, name_addr=0, namelen=0) == 0
    assert packer.j == 0  # can never fit: the caller counts it


@needs_proc
def test_one_drop_reader_for_one_socket_and_for_all() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        ino = inode(s.fileno())
        assert ino is not None
        assert proc_drops(s.fileno()) == 0
        assert proc_drops_by_inode()[ino] == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unbound:
        assert proc_drops(unbound.fileno()) is None  # not listed: unknown, not 0
