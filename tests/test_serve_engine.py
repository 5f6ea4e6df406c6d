"""`udpkit serve` on the batching engine: both paths alike, exact accounting, workers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import time

import pytest
from tests._proc import serving

from udpkit import send_batch

PATHS = [pytest.param((), id="batched"), pytest.param(("--no-batch",), id="portable")]
SUMMARY = re.compile(
    rb"udpkit: (\d+) datagrams?, (\d+) bytes?(?: from (\d+) peers?)?, (\d+) truncated"
    rb".*kernel_drops=(\d+|unavailable)"
)


def _summary(err: bytes) -> tuple[int, int, int | None, int, int | None]:
    m = SUMMARY.search(err)
    assert m is not None, err
    peers = None if m.group(3) is None else int(m.group(3))
    drops = None if m.group(5) == b"unavailable" else int(m.group(5))
    return int(m.group(1)), int(m.group(2)), peers, int(m.group(4)), drops


def _flood(port: int, total: int, size: int = 64, sources: int = 1) -> int:
    """Send ``total`` datagrams as fast as sendmmsg goes; return how many the kernel took.

    The ``sources`` sockets are open together, so each has its own source port.
    """
    sent = 0
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sources)]
    try:
        for c in socks:
            c.connect(("127.0.0.1", port))
        for c in socks:
            left = total // sources
            while left:
                n = send_batch(c, [b"x" * size] * min(64, left))
                sent += n
                left -= n
    finally:
        for c in socks:
            c.close()
    return sent


@pytest.mark.parametrize("path", PATHS)
def test_output_is_identical_on_both_paths(path: tuple[str, ...]) -> None:
    """The same datagrams print the same lines whether batched or not."""
    payloads = [b"Hello UDP Server", b"", b"\x1b[31m\xe2\x80\xae", b"y" * 2000]
    outputs = {}
    for p in (("--no-batch",), ()):
        with serving("127.0.0.1", "0", "--buffer-size", "1024", "--no-reply", *p) as srv:
            assert srv.port is not None
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.bind(("127.0.0.1", 0))
                for data in payloads:
                    c.sendto(data, ("127.0.0.1", srv.port))
                    srv.out.readline()  # each datagram's lines appear as it arrives
                    srv.out.readline()
                code, out, err = srv.stop(signal.SIGINT)
        assert code == 0
        outputs[p] = out
        received, nbytes, peers, truncated, drops = _summary(err)
        assert (received, nbytes, peers, truncated, drops) == (4, 16 + 0 + 8 + 2000, 1, 1, 0)
    assert outputs[("--no-batch",)] == outputs[()]


@pytest.mark.parametrize("path", PATHS)
def test_accounting_is_exact_when_the_kernel_drops(path: tuple[str, ...]) -> None:
    """sent == received + kernel_drops, exactly, with a receive buffer too small to keep up."""
    with serving("127.0.0.1", "0", "--quiet", "--no-reply", "--rcvbuf", "4096", *path) as srv:
        assert srv.port is not None
        sent = _flood(srv.port, 60_000)
        code, out, err = srv.stop(signal.SIGTERM)
    assert code == 0 and out == b""
    received, _, _, truncated, drops = _summary(err)
    assert drops is not None and drops > 0, err
    assert sent == received + drops, err
    assert truncated == 0


def test_workers_share_the_port_and_sum_their_counts() -> None:
    args = ("--quiet", "--echo", "--workers", "2", "--rcvbuf", "4000000")
    with serving("127.0.0.1", "0", *args) as srv:
        assert srv.port is not None
        sent = _flood(srv.port, 8_000, sources=8)
        code, _, err = srv.stop(signal.SIGINT)
    assert code == 0
    received, nbytes, peers, _, drops = _summary(err)
    assert drops is not None
    assert sent == received + drops
    assert nbytes == received * 64
    if drops == 0:  # a source all of whose datagrams the kernel dropped is never seen
        assert peers == 8
    assert peers is not None and 1 <= peers <= 8


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_workers_end_when_the_parent_is_killed() -> None:
    """Killing `serve --workers 2` with SIGKILL left both workers serving (orphans
    holding the port); now the kernel sends each one SIGTERM when the parent dies."""
    with serving("127.0.0.1", "0", "--no-reply", "--workers", "2") as srv:
        parent = srv.proc.pid
        deadline = time.monotonic() + 5
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                workers = [int(p) for p in f.read().split()]
            time.sleep(0.05)
        assert len(workers) == 2, workers
        try:
            os.kill(parent, signal.SIGKILL)
            srv.proc.wait(timeout=5)
            deadline = time.monotonic() + 5
            while any(map(_alive, workers)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(map(_alive, workers))
        finally:
            for pid in workers:  # ours: never leave one behind, even when the test fails
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_quiet_prints_no_datagram_lines() -> None:
    with serving("127.0.0.1", "0", "--quiet") as srv:
        assert srv.port is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(2)
            c.sendto(b"ping", ("127.0.0.1", srv.port))
            assert c.recv(100) == b"Hello UDP Client"
        code, out, err = srv.stop(signal.SIGTERM)
    assert code == 0 and out == b""
    assert _summary(err)[:3] == (1, 4, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workers", "0"), b"invalid workers"),
        (("--workers", "2", "--count", "3"), b"--count cannot be combined"),
        (("--workers", "2", "--tcp"), b"UDP only"),
        (("--gro", "--no-batch"), b"--gro needs the batched path"),
        (("--rcvbuf", "-5"), b"invalid --rcvbuf '-5'"),
        (("--busy-poll=x",), b"invalid --busy-poll 'x'"),
    ],
)
def test_bad_engine_options(args: tuple[str, ...], message: bytes) -> None:
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "udpkit", "serve", "127.0.0.1", "0", *args],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 2
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert b"Traceback" not in res.stderr


def test_busy_poll_and_rcvbuf_report() -> None:
    with serving("127.0.0.1", "0", "--echo", "--busy-poll", "50", "--rcvbuf", "65536") as srv:
        assert srv.port is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(2)
            c.connect(("127.0.0.1", srv.port))
            for i in range(20):
                c.send(b"%d" % i)
                assert c.recv(100) == b"%d" % i
        code, _, err = srv.stop(signal.SIGTERM)
    assert code == 0
    assert _summary(err)[0] == 20


def test_gro_receives_a_gso_stream_whole() -> None:
    """With --gro, coalesced buffers are split back into the datagrams that were sent."""
    with serving("127.0.0.1", "0", "--quiet", "--no-reply", "--gro", "--rcvbuf", "4000000") as srv:
        assert srv.port is not None
        sent = _flood(srv.port, 6_400, size=1000)
        code, _, err = srv.stop(signal.SIGTERM)
    assert code == 0
    received, nbytes, _, truncated, drops = _summary(err)
    assert truncated == 0
    assert nbytes == received * 1000
    assert received <= sent
    if drops == 0:
        assert received == sent


def test_tcp_echo_to_a_client_that_never_reads_still_stops() -> None:
    """serve --tcp --echo blocked for good in sendall to a client that sent a lot and
    read nothing: SIGTERM set the stop flag, which was only looked at between chunks."""
    with serving("127.0.0.1", "0", "--tcp", "--echo", "--quiet") as srv:
        assert srv.port is not None
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c:
            c.setblocking(False)
            chunk = b"x" * 65536
            deadline = time.monotonic() + 5
            sent = 0
            while time.monotonic() < deadline and sent < 32 << 20:
                try:
                    sent += c.send(chunk)
                except BlockingIOError:
                    break  # both directions are full: the server is stuck replying
            time.sleep(0.2)
            start = time.monotonic()
            code, _, err = srv.stop(signal.SIGTERM)
            took = time.monotonic() - start
    assert code == 0, err
    assert took < 3
    assert b"(stopped by SIGTERM)" in err
