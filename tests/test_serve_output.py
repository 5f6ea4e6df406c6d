"""`udpkit serve` and its standard output: a reader that leaves or stops reading.

A closed pipe (`udpkit serve | head -2`) ends serve with its summary; a full pipe
nobody reads (`udpkit serve --format json | sleep 60`) no longer holds a stop
back until it drains.  And refusals are told on stderr as they happen.
"""

from __future__ import annotations

import re
import signal
import socket
import time

import pytest
from tests._proc import STEP, serving


def _counter(err: bytes, name: str) -> int:
    m = re.search(rb"\b" + name.encode() + rb"=(\d+)", err)
    return int(m.group(1)) if m else 0


def _received(err: bytes) -> int:
    m = re.search(rb"udpkit: (\d+) datagrams?,", err)
    assert m is not None, err
    return int(m.group(1))


def _send(port: int, count: int, size: int = 1000) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(count):
            s.sendto(b"%08d" % i + b"x" * (size - 8), ("127.0.0.1", port))


def test_a_closed_pipe_ends_serve_with_its_summary() -> None:
    """`udpkit serve | head -2` ended with exit 0 and no summary at all (issue 12)."""
    with serving("127.0.0.1", "0", "--no-reply") as srv:
        assert srv.port is not None and srv.proc.stdout is not None
        _send(srv.port, 1, size=16)
        assert srv.out.readline().startswith(b"Message from Client:")
        srv.proc.stdout.close()  # the reader goes away, as head does
        deadline = time.monotonic() + STEP
        while srv.proc.poll() is None and time.monotonic() < deadline:
            _send(srv.port, 1, size=16)  # the next line finds the pipe closed
            time.sleep(0.05)
        code = srv.proc.wait(timeout=STEP)
        err = srv.err.read_rest(STEP)
    assert code == 0
    assert b"(stopped: output closed)" in err, err
    assert _received(err) >= 2
    assert b"Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_is_prompt_while_stdout_is_full(sig: int) -> None:
    """SIGTERM waited until a full pipe drained (`serve --format json | sleep 60`, issue 12):
    now serve stops within a second, and every datagram is received or a kernel drop."""
    with serving("127.0.0.1", "0", "--format", "json", "--rcvbuf", "64K", banner=False) as srv:
        assert srv.port is not None
        sent = 400  # ~1.4 kB of JSON each: far more than a 64 KiB pipe holds
        _send(srv.port, sent)
        time.sleep(0.5)  # serve is now stuck in a write nobody reads
        assert srv.proc.poll() is None
        start = time.monotonic()
        srv.proc.send_signal(sig)
        code = srv.proc.wait(timeout=STEP)
        took = time.monotonic() - start
        err = srv.err.read_rest(STEP)
    assert code == 0, err
    assert took < 1.5, f"stopped {took:.2f} s after {signal.Signals(sig).name}"
    assert f"(stopped by {signal.Signals(sig).name})".encode() in err, err
    assert _received(err) + _counter(err, "kernel_drops") == sent, err


def test_workers_stop_promptly_while_stdout_is_full() -> None:
    with serving(
        "127.0.0.1", "0", "--format", "json", "--workers", "2", "--no-reply", banner=False
    ) as srv:
        assert srv.port is not None
        for _ in range(300):  # from many ports: SO_REUSEPORT spreads them
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"x" * 1000, ("127.0.0.1", srv.port))
        time.sleep(0.5)
        start = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(timeout=STEP)
        took = time.monotonic() - start
        err = srv.err.read_rest(STEP)
    assert code == 0, err
    assert took < 2.0, f"stopped {took:.2f} s after SIGTERM"
    assert b"(stopped by SIGTERM)" in err, err


def test_a_refusal_is_told_once_per_reason_with_the_flag_that_allows_it() -> None:
    """serve refused in silence until its summary (issue 12): the first refusal of each
    reason is one line on stderr naming the peer and the flag; repeats are counted."""
    with serving("127.0.0.1", "0", "--echo", "--rate-limit", "1/s:1", "--deny", "127.0.0.2") as srv:
        assert srv.port is not None
        _send(srv.port, 5, size=16)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
            for _ in range(3):
                s.sendto(b"x", ("127.0.0.1", srv.port))
        notes = [srv.err.readline(), srv.err.readline()]
        code, _, rest = srv.stop(signal.SIGTERM)
    text = b"".join(notes)
    assert code == 0
    assert re.search(rb"refused 127\.0\.0\.1:\d+: over the rate limit \(--rate-limit 1/s:1\)", text)
    assert b"--rate-limit-log-only" in text
    assert re.search(rb"refused 127\.0\.0\.2:\d+: denied by --allow/--deny", text)
    assert b"--allow 127.0.0.2/32" in text
    assert rest.count(b"refused") == 0  # one note per reason, the rest counted
    assert _counter(rest, "rate_limited") == 4 and _counter(rest, "denied") == 3


def test_quiet_keeps_refusals_silent() -> None:
    with serving("127.0.0.1", "0", "--quiet", "--deny", "127.0.0.0/8", banner=False) as srv:
        assert srv.port is not None
        _send(srv.port, 3, size=16)
        time.sleep(0.3)
        code, _, err = srv.stop(signal.SIGTERM)
    assert code == 0
    assert b"refused" not in err and _counter(err, "denied") == 3
