"""What the CLI does, done with ``import udpkit`` alone (no ``udpkit._*`` name).

Each test builds from public names only: a name's first answering address,
a server with a recorder, a policy and metrics, a relay with impairments, and
a bench run against a reflector with its result types.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import udpkit

STEP = 5.0


@contextmanager
def running(target: Callable[[], Any], stop: Callable[[], None]) -> Iterator[list[Any]]:
    """Run ``target`` in a thread; ``stop`` it and join on the way out."""
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(target()), daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop()
        thread.join(STEP)
        assert not thread.is_alive()


@contextmanager
def echo_server() -> Iterator[int]:
    with udpkit.udp_bind("127.0.0.1", 0) as sock:
        server = udpkit.DatagramServer(sock, udpkit.ECHO)
        with running(server.serve, server.stop):
            yield sock.local_address[1]
        server.close()


def closed_port() -> int:
    with udpkit.udp_bind("127.0.0.1", 0) as probe:
        port: int = probe.local_address[1]
    return port


# ---------------------------------------------------------------- the first address that answers


def test_request_first_reaches_a_server() -> None:
    with echo_server() as port:
        reply, attempts = udpkit.request_first("127.0.0.1", port, b"ping", timeout=2)
    assert reply.data == b"ping" and attempts == 1


def test_first_answering_moves_past_an_address_where_nothing_listens() -> None:
    """`udpkit send localhost` stopped at ::1 when the server listened on 127.0.0.1 only."""
    skipped: list[str] = []
    dead = closed_port()
    with echo_server() as port:
        addresses = [*udpkit.resolve("127.0.0.1", dead), *udpkit.resolve("127.0.0.1", port)]
        reply, _ = udpkit.first_answering(
            addresses,
            lambda sock: udpkit.request(sock, b"hello", timeout=2),
            on_skip=skipped.append,
        )
    assert reply.data == b"hello"
    assert len(skipped) == 1
    assert f"nothing listens at 127.0.0.1:{dead}" in skipped[0]
    assert f"trying 127.0.0.1:{port}" in skipped[0]


def test_first_answering_raises_the_last_refusal() -> None:
    addresses = udpkit.resolve("127.0.0.1", closed_port())
    with pytest.raises(udpkit.ConnectionRefused):
        udpkit.first_answering(addresses, lambda sock: udpkit.request(sock, b"x", timeout=1))


# ---------------------------------------------------------------- a server, fully wired


def test_server_with_recorder_policy_and_metrics(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    path = tmp_path / "capture.jsonl"
    (sock,) = udpkit.bind_server("127.0.0.1", 0)
    with sock:
        recorder = udpkit.Recorder(str(path), local=sock.local_address)
        policy = udpkit.Policy(rate_limit="1000/s:1000", local=sock.local_address)
        server = udpkit.DatagramServer(sock, udpkit.ECHO, policy=policy, recorder=recorder)
        assert recorder.stop_server == server.stop  # a failed disk ends serving
        url = server.start_metrics("127.0.0.1:0")
        with running(server.serve, server.stop):
            with udpkit.udp_connect(*sock.local_address) as client:
                for i in range(3):
                    client.send(b"m%d" % i)
                    assert client.recv(timeout=2).data == b"m%d" % i
            deadline = time.monotonic() + STEP
            while server.stats.record.get("recorded", 0) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            with urllib.request.urlopen(url, timeout=STEP) as page:
                text = page.read().decode()
        server.close()  # also stops the metrics
        recorder.close()
    assert "udpkit_datagrams_received_total 3.0" in text
    assert 'udpkit_record_total{kind="recorded"} 3.0' in text
    assert server.stats.received == 3 and server.stats.replies == 3
    assert [r.data for r in udpkit.read_records_untrusted(path)] == [b"m0", b"m1", b"m2"]


# ---------------------------------------------------------------- a relay with impairments


def test_relay_with_impairments_from_the_library() -> None:
    impair = udpkit.ImpairConfig(duplicate=1.0)  # plain numbers: no option text
    with (
        udpkit.udp_bind("127.0.0.1", 0) as target,
        udpkit.udp_bind("127.0.0.1", 0) as listener,
    ):
        relay = udpkit.Relay(listener, target.local_address, impair_up=impair, seed=7)
        with running(relay.run, relay.stop), udpkit.udp_connect(*listener.local_address) as c:
            c.send(b"twice")
            got = [target.recv(timeout=2).data for _ in range(2)]
        relay.close()
    assert got == [b"twice", b"twice"]
    assert relay.stats.up.duplicated == 1


# ---------------------------------------------------------------- bench and its result types


def test_bench_against_a_reflector_returns_public_result_types() -> None:
    with udpkit.udp_bind("127.0.0.1", 0) as sock:
        reflector = udpkit.Reflector(sock)
        assert reflector.rcvbuf > 0  # asked for a large buffer, as `udpkit reflect` does
        with running(reflector.run, reflector.stop):
            cfg = udpkit.BenchConfig("127.0.0.1", sock.local_address[1], count=50, rate=5000)
            result = udpkit.run_bench(cfg)
        reflector.close()
    assert isinstance(result, udpkit.BenchResult)
    (flow,) = result.flows
    assert isinstance(flow, udpkit.FlowResult)
    assert flow.sent == 50 and flow.replies == 50
