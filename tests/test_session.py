"""``udpkit connect`` and ``udpkit listen``: sessions like ``nc -u``, run for real over loopback.

Processes are ended by PID in a ``finally`` (see ``_proc``), every wait has a
deadline, every port is ephemeral or probed free just before use.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from tests._proc import (
        LISTENING,
        STEP,
        LineReader,
        Peer,
        _popen_sigint_default,
        end_process,
        free_port,
        run_piped_into_head,
        serving,
    )
    from tests.conftest import needs_tool
except ModuleNotFoundError:  # plain `pytest` puts tests/, not the repo, on sys.path
    from _proc import (  # type: ignore[import-not-found,no-redef]
        LISTENING,
        STEP,
        LineReader,
        Peer,
        _popen_sigint_default,
        end_process,
        free_port,
        run_piped_into_head,
        serving,
    )
    from conftest import needs_tool  # type: ignore[import-not-found,no-redef]

from udpkit._loops.session import Session, SessionConfig

Family = tuple[socket.AddressFamily, str]

# `udpkit connect ...`, `udpkit listen ...` as users start them.
SESSION = [sys.executable, "-m", "udpkit"]

SUMMARY = re.compile(
    rb"udpkit: sent (\d+) datagrams? \((\d+) bytes?\); received (\d+) datagrams? "
    rb"\((\d+) bytes?\) from (\d+) peers?; kernel drops (\d+|unknown)"
)


def _summary(err: bytes) -> tuple[int, int, int, int, int, int | None]:
    m = SUMMARY.search(err)
    assert m is not None, err
    drops = None if m.group(6) == b"unknown" else int(m.group(6))
    sent, sbytes, recv, rbytes, peers = (int(g) for g in m.group(1, 2, 3, 4, 5))
    return sent, sbytes, recv, rbytes, peers, drops


def _run(
    *args: str, input: bytes = b"", timeout: float = STEP
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*SESSION, *args], input=input, capture_output=True, timeout=timeout, check=False
    )


@contextlib.contextmanager
def listening(
    *args: str, stdout: int | Path = subprocess.PIPE, stdin: int = subprocess.PIPE
) -> Iterator[tuple[subprocess.Popen[bytes], int, LineReader]]:
    """Start ``udpkit listen ARGS``; yield (process, port, stderr reader); kill it at the end."""
    out_file = None
    if isinstance(stdout, Path):
        out_file = stdout.open("wb")
    proc = _popen_sigint_default(
        [*SESSION, "listen", *args],
        stdin=stdin,
        stdout=out_file if out_file is not None else stdout,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        err = LineReader(proc.stderr.fileno())
        first = err.readline()
        m = LISTENING.search(first)
        assert m is not None, first
        yield proc, int(m.group(1).decode().rsplit(":", 1)[1]), err
    finally:
        end_process(proc)
        if out_file is not None:
            out_file.close()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ---------------------------------------------------------------- connect


@pytest.mark.parametrize("fmt", ["line", "raw", "hex", "json"])
def test_connect_lines_come_back_from_an_echo_server(fmt: str, family: Family) -> None:
    _, host = family
    with serving("--echo", "--quiet", host, "0") as srv:
        assert srv.port is not None
        result = _run(
            "connect", "--format", fmt, "-w", "500ms", host, str(srv.port),
            input=b"one\ntwo\nthree\n",
        )  # fmt: skip
        srv.stop()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    if fmt == "line":
        assert out == b"one\ntwo\nthree\n"
    elif fmt == "raw":
        assert out == b"one\ntwo\nthree\n"  # a pipe: the bytes as they came
    elif fmt == "hex":
        assert b"6f 6e 65 0a" in out and b"|one.|" in out and b"|three.|" in out
    else:
        rows = [json.loads(line) for line in out.splitlines()]
        assert [base64.b64decode(r["payload_b64"]) for r in rows] == [
            b"one\n",
            b"two\n",
            b"three\n",
        ]
        assert [r["text"] for r in rows] == ["one\n", "two\n", "three\n"]
        assert all(r["length"] == len(r["text"]) and "time" in r and r["peer"] for r in rows)
    sent, sbytes, recv, rbytes, peers, _ = _summary(result.stderr)
    assert (sent, sbytes, recv, rbytes, peers) == (3, 14, 3, 14, 1)


def test_connect_chunk_sends_without_waiting_for_a_newline() -> None:
    """--chunk: a piece with no newline goes out at once, stdin still open."""
    with Peer(socket.AF_INET, "127.0.0.1", reply=b"ok") as peer:
        proc = subprocess.Popen(
            [*SESSION, "connect", "--chunk", "100", "127.0.0.1", str(peer.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"abc")
            proc.stdin.flush()
            assert peer.wait_for(1)[0][0] == b"abc"
            assert LineReader(proc.stdout.fileno()).readline() == b"ok\n"
            proc.stdin.close()
            assert proc.wait(timeout=STEP) == 0
        finally:
            end_process(proc)


def test_connect_to_a_closed_port_says_no_listener_once() -> None:
    port = free_port(socket.AF_INET, "127.0.0.1")
    result = _run("connect", "-w", "300ms", "127.0.0.1", str(port), input=b"a\nb\nc\n")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "Traceback" not in err
    assert err.count(f"no listener at 127.0.0.1:{port}") == 1
    assert re.search(r"errors ECONNREFUSED=\d+", err), err


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (["40050"], "did you mean port 40050? give the host first: udpkit connect 127.0.0.1 40050"),
        ([], "missing HOST and PORT"),
        (["localhost"], "missing PORT: write udpkit connect localhost PORT"),
        (["a", "1", "x"], "too many arguments"),
    ],
)
def test_connect_refuses_what_is_not_host_and_port(args: list[str], wanted: str) -> None:
    result = _run("connect", *args)
    assert result.returncode == 2
    assert wanted in result.stderr.decode()
    assert result.stderr.count(b"\n") == 1


def test_connect_host_colon_port_in_one_word() -> None:
    with serving("--echo", "--quiet", "127.0.0.1", "0") as srv:
        result = _run("connect", "-w", "300ms", f"127.0.0.1:{srv.port}", input=b"hi\n")
        srv.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hi\n"


# ---------------------------------------------------------------- listen


def test_listen_shows_datagrams_and_answers_the_latest_peer(family: Family) -> None:
    fam, host = family
    with listening("-w", "5", host, "0") as (proc, port, err):
        assert proc.stdin is not None and proc.stdout is not None
        out = LineReader(proc.stdout.fileno())
        with (
            socket.socket(fam, socket.SOCK_DGRAM) as a,
            socket.socket(fam, socket.SOCK_DGRAM) as b,
        ):
            a.bind((host, 0))
            b.bind((host, 0))
            a.settimeout(0.3)
            b.settimeout(STEP)
            a.sendto(b"from a\n", (host, port))
            assert out.readline() == b"from a\n"
            b.sendto(b"from b\x1b[2J\n", (host, port))
            assert out.readline() == b"from b\\x1b[2J\n"  # escaped: line format
            proc.stdin.write(b"to the latest\n")
            proc.stdin.flush()
            data, _ = b.recvfrom(100)
            assert data == b"to the latest\n"
            with pytest.raises(TimeoutError):
                a.recvfrom(100)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STEP) == 128 + signal.SIGTERM
        rest = err.read_rest(2.0)
    sent, sbytes, recv, _, peers, _ = _summary(rest)
    assert (sent, sbytes, recv, peers) == (1, 14, 2, 2)
    assert b"stopped by SIGTERM" in rest


def test_listen_with_nobody_to_answer_says_so_once_and_counts() -> None:
    with listening("-w", "1", "0") as (proc, port, err):
        assert proc.stdin is not None
        proc.stdin.write(b"one\n")
        proc.stdin.flush()
        time.sleep(0.2)
        proc.stdin.write(b"two\n")
        proc.stdin.close()
        time.sleep(0.5)
        assert proc.poll() is None  # a listener goes on after stdin's end, as nc -l does
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.sendto(b"late\n", ("127.0.0.1", port))
        assert proc.wait(timeout=STEP) == 0  # ended by -w 1 without traffic
        rest = err.read_rest(2.0)
    assert rest.count(b"nobody to send to yet") == 1
    assert b"unsent 2" in rest
    assert _summary(rest)[2] == 1


def test_listen_lone_port_is_loopback() -> None:
    port = free_port(socket.AF_INET, "127.0.0.1")
    with listening(str(port)) as (_proc, got, err):
        assert got == port
        assert f"127.0.0.1:{port}".encode() in err.seen


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_prints_the_summary(sig: int) -> None:
    with listening("0") as (proc, port, err):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.sendto(b"x" * 10, ("127.0.0.1", port))
        assert proc.stdout is not None
        assert LineReader(proc.stdout.fileno()).readline() == b"x" * 10 + b"\n"
        proc.send_signal(sig)
        assert proc.wait(timeout=STEP) == 128 + sig
        rest = err.read_rest(2.0)
    assert _summary(rest)[2:4] == (1, 10)
    assert f"stopped by {signal.Signals(sig).name}".encode() in rest
    assert b"Traceback" not in rest


def test_listen_count_ends_after_n_datagrams() -> None:
    with listening("--count", "2", "0") as (proc, port, err):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            for i in range(3):
                c.sendto(b"%d" % i, ("127.0.0.1", port))
        assert proc.wait(timeout=STEP) == 0
        assert proc.stdout is not None
        assert LineReader(proc.stdout.fileno()).read_rest(2.0) == b"0\n1\n"
        assert _summary(err.read_rest(2.0))[2] == 2


def test_a_closed_output_pipe_ends_quietly_with_the_summary() -> None:
    """`udpkit listen PORT | head -1`: the summary still reaches stderr."""
    port = free_port(socket.AF_INET, "127.0.0.1")
    code, out, err = run_piped_into_head([*SESSION, "listen", str(port)], port, b"ping\n")
    assert code == 0
    assert out == b"ping\n"
    assert SUMMARY.search(err), err
    assert b"Traceback" not in err and b"Exception ignored" not in err


# ---------------------------------------------------------------- terminals


HOSTILE = b"\x1b[31mRED\x1b]0;title\x07 \x9b2J del\x7f " + "\u202eevil".encode()


@pytest.mark.parametrize("fmt", ["raw", "line", "hex", "json"])
def test_nothing_a_peer_sends_reaches_a_terminal_unescaped(fmt: str) -> None:
    master, slave = pty.openpty()
    try:
        with listening("--format", fmt, "0", stdout=slave) as (proc, port, _err):
            os.close(slave)
            slave = -1
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.sendto(HOSTILE, ("127.0.0.1", port))
            seen = b""
            deadline = time.monotonic() + STEP
            quiet_from = None  # the whole datagram is shown: wait for 0.3 s of quiet
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    seen += os.read(master, 65536)
                    quiet_from = time.monotonic()
                elif quiet_from is not None and time.monotonic() - quiet_from > 0.3:
                    break
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=STEP)
        if fmt in ("raw", "line"):
            assert b"RED" in seen and b"\\u202eevil" in seen, seen
        else:
            assert seen.endswith(b"\n"), seen
        for bad in (b"\x1b", b"\x07", b"\x9b", b"\x7f", "\u202e".encode(), b"\xc2\x9b"):
            assert bad not in seen, (bad, seen)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)


# ---------------------------------------------------------------- a file through


def test_ten_megabytes_through_chunk_1400_every_byte_accounted(tmp_path: Path) -> None:
    """The listener's datagrams plus its kernel drops are what connect sent; with no
    drop the file arrives whole, in order on loopback."""
    data = os.urandom(10_000_000)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    dst = tmp_path / "out.bin"
    with listening("--format", "raw", "-w", "2", "0", stdout=dst) as (proc, port, err):
        with src.open("rb") as f:
            start = time.monotonic()
            sender = subprocess.run(
                [*SESSION, "connect", "--chunk", "1400", "-w", "0", "127.0.0.1", str(port)],
                stdin=f,
                capture_output=True,
                timeout=STEP * 3,
                check=False,
            )
            elapsed = time.monotonic() - start
        assert proc.wait(timeout=STEP) == 0
        listener = err.read_rest(2.0)
    assert sender.returncode == 0, sender.stderr
    sent, sbytes, *_ = _summary(sender.stderr)
    _, _, recv, rbytes, _, drops = _summary(listener)
    assert (sent, sbytes) == (7143, 10_000_000)
    assert drops is not None
    assert recv + drops == sent
    assert rbytes == dst.stat().st_size
    if drops == 0:
        assert dst.read_bytes() == data
    else:
        assert b"the kernel dropped datagrams" in listener
    assert elapsed < STEP * 3


# ---------------------------------------------------------------- the loop itself


def _session_pair() -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    return rx, tx


@pytest.mark.parametrize("fast", [None, False], ids=["recvmmsg", "recvfrom"])
def test_a_line_longer_than_a_datagram_is_cut_and_said_once(fast: bool | None) -> None:
    rx, tx = _session_pair()
    got: list[bytes] = []
    notes: list[str] = []
    r, w = os.pipe()
    try:
        line = b"y" * 70_000 + b"\n"

        def write() -> None:
            os.write(w, line + b"short\n")
            os.close(w)

        writer = threading.Thread(target=write)
        writer.start()
        with Session(
            tx, lambda p, _q, _t: got.extend(p), SessionConfig(wait=0.2), stdin_fd=r,
            notice=notes.append,
        ) as s:  # fmt: skip
            st = s.run()
        writer.join(STEP)
        with Session(
            rx,
            lambda p, _q, _t: got.extend(p),
            SessionConfig(count=3, idle=STEP, fast=fast),
            stdin_fd=None,
            notice=notes.append,
        ) as s2:
            st2 = s2.run()
        assert (st.sent, st.cut_lines, st.ended_by) == (3, 1, "wait")
        assert [len(g) for g in got] == [65507, 70_001 - 65507, 6]
        assert b"".join(got) == line + b"short\n"
        assert st2.ended_by == "count"
        assert sum("longer than the largest datagram" in n for n in notes) == 1
    finally:
        os.close(r)
        rx.close()
        tx.close()


def test_stop_from_another_thread_ends_run() -> None:
    rx, tx = _session_pair()
    try:
        with Session(rx, lambda *_: None, SessionConfig(), stdin_fd=None, notice=print) as s:
            timer = threading.Timer(0.2, s.stop)
            timer.start()
            start = time.monotonic()
            st = s.run()
            timer.join()
        assert st.ended_by == "stop"
        assert time.monotonic() - start < STEP
    finally:
        rx.close()
        tx.close()


# ---------------------------------------------------------------- interop


@needs_tool("nc")
def test_nc_u_talks_to_udpkit_listen() -> None:
    with listening("0") as (proc, port, err):
        assert proc.stdin is not None and proc.stdout is not None
        out = LineReader(proc.stdout.fileno())
        nc = subprocess.Popen(
            ["nc", "-u", "127.0.0.1", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert nc.stdin is not None and nc.stdout is not None
            nc.stdin.write(b"hello from nc\n")
            nc.stdin.flush()
            assert out.readline() == b"hello from nc\n"
            proc.stdin.write(b"hello from udpkit\n")
            proc.stdin.flush()
            assert LineReader(nc.stdout.fileno()).readline() == b"hello from udpkit\n"
        finally:
            end_process(nc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=STEP)
        rest = err.read_rest(2.0)
    assert _summary(rest)[:3] == (1, 18, 1)


@pytest.mark.skipif(shutil.which("nc") is None, reason="nc is not installed")
def test_udpkit_connect_talks_to_nc_ul() -> None:
    port = free_port(socket.AF_INET, "127.0.0.1")
    nc = subprocess.Popen(
        ["nc", "-u", "-l", "127.0.0.1", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert nc.stdout is not None
        time.sleep(0.3)  # nc says nothing when it listens
        result = _run("connect", "-w", "300ms", "127.0.0.1", str(port), input=b"to nc\n")
        assert result.returncode == 0, result.stderr
        assert LineReader(nc.stdout.fileno()).readline() == b"to nc\n"
    finally:
        end_process(nc)


def test_the_dispatcher_runs_connect() -> None:
    """`udpkit connect` reaches this module once the dispatcher registers it."""
    help_text = subprocess.run(
        [sys.executable, "-m", "udpkit", "--help"], capture_output=True, timeout=STEP, check=False
    ).stdout
    if b"connect" not in help_text:
        pytest.skip("udpkit connect is not registered in the dispatcher yet")
    with serving("--echo", "--quiet", "127.0.0.1", "0") as srv:
        result = subprocess.run(
            [sys.executable, "-m", "udpkit", "connect", "-w", "300ms", "127.0.0.1", str(srv.port)],
            input=b"via udpkit\n",
            capture_output=True,
            timeout=STEP,
            check=False,
        )
        srv.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"via udpkit\n"
