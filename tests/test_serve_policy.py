"""`udpkit serve` policy flags on loopback: refused datagrams are counted, never shown."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
from pathlib import Path

import pytest
from tests._proc import run, serving


def _counter(err: bytes, name: str) -> int:
    m = re.search(rb"\b" + name.encode() + rb"=(\d+)", err)
    return int(m.group(1)) if m else 0


def _exchange(port: int, payloads: list[bytes], wait: float = 0.3) -> list[bytes]:
    replies = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.connect(("127.0.0.1", port))
        c.settimeout(wait)
        for p in payloads:
            c.send(p)
            with contextlib.suppress(TimeoutError):
                replies.append(c.recv(2048))
    return replies


def test_deny_drops_and_counts() -> None:
    with serving("127.0.0.1", "0", "--deny", "127.0.0.0/8") as srv:
        assert srv.port is not None
        assert _exchange(srv.port, [b"a", b"b", b"c"], wait=0.2) == []
        code, out, err = srv.stop(signal.SIGTERM)
    assert code == 0
    assert out == b""  # nothing shown
    assert _counter(err, "denied") == 3
    assert b"3 datagrams" in err


def test_allow_list_admits_only_listed_sources() -> None:
    with serving("127.0.0.1", "0", "--allow", "10.0.0.0/8") as srv:
        assert srv.port is not None
        assert _exchange(srv.port, [b"x"], wait=0.2) == []
        code, _, err = srv.stop(signal.SIGTERM)
    assert code == 0 and _counter(err, "denied") == 1
    with serving("127.0.0.1", "0", "--allow", "127.0.0.1", "--deny", "10.0.0.0/8") as srv:
        assert srv.port is not None
        assert _exchange(srv.port, [b"x"]) == [b"Hello UDP Client"]
        srv.stop(signal.SIGTERM)


def test_rate_limit_and_log_only() -> None:
    burst = [b"%d" % i for i in range(10)]
    with serving("127.0.0.1", "0", "--echo", "--rate-limit", "1/s:3", "--quiet") as srv:
        assert srv.port is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            for p in burst:
                c.sendto(p, ("127.0.0.1", srv.port))
        code, _, err = srv.stop(signal.SIGTERM)
    assert code == 0
    assert _counter(err, "rate_limited") == 7, err
    assert _counter(err, "replies") == 3, err
    args = ("--echo", "--rate-limit", "1/s:3", "--rate-limit-log-only", "--quiet")
    with serving("127.0.0.1", "0", *args) as srv:
        assert srv.port is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            for p in burst:
                c.sendto(p, ("127.0.0.1", srv.port))
        code, _, err = srv.stop(signal.SIGTERM)
    assert _counter(err, "rate_limited_logged") == 7, err
    assert _counter(err, "replies") == 10, err


def test_seed_exchange_on_loopback_is_trusted() -> None:
    """A 13-byte 'Hello, World!' gets the 16-byte reply: loopback is outside the budget."""
    with serving("127.0.0.1", "0") as srv:
        assert srv.port is not None
        assert _exchange(srv.port, [b"Hello, World!"]) == [b"Hello UDP Client"]
        srv.stop(signal.SIGTERM)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--deny", "10.0.0.300/8"), "10.0.0.300/8"),
        (("--rate-limit", "fast"), "fast"),
        (("--amplification", "5"), "amplification"),
        (("--trust", "nonsense"), "nonsense"),
    ],
)
def test_bad_policy_values(args: tuple[str, ...], fragment: str) -> None:
    res = run("serve", "127.0.0.1", "0", *args)
    assert res.returncode == 2, res.stderr
    assert fragment.encode() in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_metrics_and_sigusr1() -> None:
    """--metrics serves Prometheus text with the live counters; SIGUSR1 prints them."""
    import urllib.request

    pytest.importorskip("prometheus_client")
    with serving("127.0.0.1", "0", "--echo", "--metrics", "127.0.0.1:0") as srv:
        assert srv.port is not None
        line = srv.err.readline()
        m = re.search(rb"metrics at (http://\S+)", line)
        assert m is not None, line
        assert _exchange(srv.port, [b"abc", b"de"]) == [b"abc", b"de"]
        with urllib.request.urlopen(m.group(1).decode(), timeout=5) as resp:
            body = resp.read()
        assert b"udpkit_datagrams_received_total 2.0" in body
        assert b"udpkit_bytes_received_total 5.0" in body
        assert b"udpkit_replies_sent_total 2.0" in body
        assert b'udpkit_policy_total{kind="admitted"} 2.0' in body
        srv.proc.send_signal(signal.SIGUSR1)
        assert b"counters: 2 datagrams" in srv.err.readline()
        code, _, _ = srv.stop(signal.SIGTERM)
    assert code == 0


def test_serve_records_to_pcap_and_jsonl(tmp_path: Path) -> None:
    """--record keeps every datagram; `udpkit read` gives them back; an existing file is refused."""
    for suffix in ("pcap", "jsonl"):
        path = tmp_path / f"rec.{suffix}"
        with serving("127.0.0.1", "0", "--quiet", "--record", str(path)) as srv:
            assert srv.port is not None
            assert len(_exchange(srv.port, [b"one", b"", b"\x1b[2J"])) == 3
            code, _, err = srv.stop(signal.SIGTERM)
        assert code == 0
        assert _counter(err, "recorded") == 3 and _counter(err, "record_dropped") == 0, err
        assert path.stat().st_mode & 0o777 == 0o600
        res = run("read", str(path), "--format", "line")
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert len(lines) == 3 and b"one" in lines[0] and b"\\x1b[2J" in lines[2]
        assert b"\x1b" not in res.stdout
        again = run("serve", "127.0.0.1", "0", "--record", str(path))
        assert again.returncode == 2 and b"--force" in again.stderr


def test_recording_counters_are_live_in_metrics_and_sigusr1(tmp_path: Path) -> None:
    """The recording counters were attached to the final summary only: mid-run, /metrics
    had no udpkit_record_total samples and SIGUSR1 no recorded=."""
    import time
    import urllib.request

    pytest.importorskip("prometheus_client")
    path = tmp_path / "r.jsonl"
    with serving(
        "127.0.0.1", "0", "--quiet", "--record", str(path), "--metrics", "127.0.0.1:0"
    ) as srv:
        assert srv.port is not None
        m = re.search(rb"metrics at (http://\S+)", srv.err.readline())
        assert m is not None
        assert len(_exchange(srv.port, [b"one", b"two", b"three"])) == 3
        body = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the writer thread may lag the replies
            with urllib.request.urlopen(m.group(1).decode(), timeout=5) as resp:
                body = resp.read()
            if b'udpkit_record_total{kind="recorded"} 3.0' in body:
                break
            time.sleep(0.05)
        assert b'udpkit_record_total{kind="recorded"} 3.0' in body, body
        assert b'udpkit_record_total{kind="record_dropped"} 0.0' in body
        srv.proc.send_signal(signal.SIGUSR1)
        line = srv.err.readline()
        assert b"counters: 3 datagrams" in line and _counter(line, "recorded") == 3, line
        code, _, err = srv.stop(signal.SIGTERM)
    assert code == 0 and _counter(err, "recorded") == 3
