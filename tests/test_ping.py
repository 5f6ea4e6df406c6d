"""``udpkit ping``: the session on a hand-driven clock, the loop and the command on loopback.

The echoes here are threads that bind before they start and stop through a
socket pair; they can be told to misbehave (drop every other datagram, answer
twice, answer something that is no echo, stay silent).  Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from tests._proc import (
    STEP,
    UDPKIT,
    LineReader,
    end_process,
    free_port,
    port_is_free,
    serving,
    start_listening,
)
from tests.conftest import needs_tool

from udpkit._core.errors import UsageError
from udpkit._core.pingstats import (
    DUPLICATE,
    ERROR,
    LATE,
    REPLY,
    TIMEOUT,
    UNMATCHED,
    PingSession,
)
from udpkit._core.probe import HEADER, Kind, build_probe
from udpkit._loops.ping import Pinger, ping

Family = tuple[socket.AddressFamily, str]
MS = 1_000_000


PING = [*UDPKIT, "ping"]


def start_ping(port: int, *args: str) -> subprocess.Popen[bytes]:
    """``udpkit ping 127.0.0.1 PORT ARGS`` with its output on pipes; the caller ends it."""
    return subprocess.Popen(
        [*PING, "127.0.0.1", str(port), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run_ping(*args: str, timeout: float = STEP) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PING, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---------------------------------------------------------------- the session, no I/O


def _session(**kw: int | None) -> PingSession:
    settings: dict[str, int | None] = {
        "run_id": 7,
        "start_ns": 1000 * MS,
        "interval_ns": 100 * MS,
        "timeout_ns": 50 * MS,
    }
    settings.update(kw)
    return PingSession(**settings)  # type: ignore[arg-type]


def _echo_of(probe: bytes, kind: int = Kind.PROBE) -> bytes:
    head = list(HEADER.unpack_from(probe))
    head[2] = kind
    return HEADER.pack(*head) + probe[HEADER.size :]


def test_session_schedule_one_probe_outstanding() -> None:
    s = _session(count=3)
    t = 1000 * MS
    assert s.due_ns() == t and s.deadline_ns() == t
    p0 = s.probe(t)
    assert len(p0) == 64 and s.awaiting == 0
    # Awaited: the next is due at the interval, but not before this one's timeout.
    assert s.due_ns() == t + 100 * MS
    assert s.deadline_ns() == t + 50 * MS
    ev = s.datagram(_echo_of(p0), t + 2 * MS)
    assert ev == (REPLY, 0, 2 * MS, 64, "")
    assert s.awaiting == -1 and s.deadline_ns() == t + 100 * MS
    assert s.expire(t + 99 * MS) is None
    s.probe(t + 100 * MS)
    # Unanswered: timed out at its deadline, the next leaves at the interval.
    assert s.expire(t + 149 * MS) is None
    assert s.expire(t + 150 * MS) == (TIMEOUT, 1, -1, 0, "")
    s.probe(t + 200 * MS)
    assert s.due_ns() is None and not s.finished()
    assert s.expire(t + 250 * MS) is not None
    assert s.finished()
    r = s.result()
    assert (r.sent, r.received, r.lost, r.timeouts) == (3, 1, 2, 2)
    assert r.duration_ns == 250 * MS


def test_session_interval_shorter_than_timeout_waits_for_the_awaited_probe() -> None:
    """One probe outstanding: a short interval does not send over an unanswered probe."""
    s = _session(interval_ns=10 * MS, timeout_ns=50 * MS)
    t = 1000 * MS
    s.probe(t)
    assert s.due_ns() == t + 50 * MS
    s.datagram(_echo_of(_probe_bytes(7, 0, t)), t + 20 * MS)
    assert s.due_ns() == t + 10 * MS  # answered: due at once (the interval has passed)


def _probe_bytes(run_id: int, seq: int, sent_ns: int, size: int = 64) -> bytes:
    return build_probe(Kind.PROBE, run_id, seq, sent_ns, size)


def test_session_matches_by_number_not_by_arrival() -> None:
    s = _session(interval_ns=0)
    t = 1000 * MS
    p0 = s.probe(t)
    assert s.expire(t + 50 * MS) is not None  # seq 0 timed out
    p1 = s.probe(t + 50 * MS)
    # seq 1's reply, then seq 0's, late: told apart by number, not order.
    assert s.datagram(_echo_of(p1), t + 51 * MS)[:3] == (REPLY, 1, 1 * MS)
    assert s.datagram(_echo_of(p0), t + 60 * MS)[:3] == (LATE, 0, 60 * MS)
    assert s.datagram(_echo_of(p0), t + 61 * MS)[:2] == (DUPLICATE, 0)
    r = s.result()
    assert (r.sent, r.received, r.late, r.duplicates, r.reordered, r.lost) == (2, 2, 1, 1, 1, 0)
    assert (r.timeouts, r.rtt.count, r.rtt.max_ns) == (1, 2, 60 * MS)


def test_session_counts_what_is_no_reply_as_unmatched() -> None:
    s = _session()
    t = 1000 * MS
    p0 = s.probe(t)
    strangers = [
        b"Hello UDP Client",  # a server that answers but does not echo
        b"",
        b"x" * 64,
        _echo_of(build_probe(Kind.PROBE, 8, 0, t, 64)),  # another run
        _probe_bytes(7, 1, t),  # a number not sent yet
        _echo_of(p0, Kind.REPORT),  # not an answer kind
        build_probe(Kind.PROBE, 7, 0, 0, 64)[:31],  # cut short
    ]
    for data in strangers:
        assert s.datagram(data, t + MS) == (UNMATCHED, -1, -1, len(data), "")
    assert s.awaiting == 0  # still awaited
    # Our header with a stamp from before the run: no round trip is trusted from it.
    s.expire(t + 50 * MS)
    s.probe(t + 100 * MS)
    assert s.datagram(_probe_bytes(7, 0, 5), t + 101 * MS)[0] == UNMATCHED
    r = s.result()
    assert (r.unmatched, r.received, r.rtt.count) == (len(strangers) + 1, 0, 0)


def test_session_reflector_and_echo_replies() -> None:
    s = _session(interval_ns=0)
    t = 1000 * MS
    assert s.result().peer is None
    p0 = s.probe(t)
    assert s.datagram(_echo_of(p0, Kind.REFLECTED), t + MS)[0] == REPLY
    assert s.result().peer == "reflector"
    e = _session()
    e.datagram(_echo_of(e.probe(t)), t + MS)
    assert e.result().peer == "echo"


def test_session_error_settles_the_probe() -> None:
    s = _session(interval_ns=0)
    t = 1000 * MS
    s.probe(t)
    assert s.error(t + MS, "port unreachable") == (ERROR, 0, -1, 0, "port unreachable")
    assert s.awaiting == -1 and s.due_ns() == t
    r = s.result()
    assert (r.errors, r.lost, r.timeouts) == (1, 1, 0)


def test_session_figures_carry_units_and_none_without_replies() -> None:
    s = _session()
    figures = s.result().figures()
    assert figures["rtt_p50_ms"] is None and figures["loss_ratio"] == 0.0
    t = 1000 * MS
    s.datagram(_echo_of(s.probe(t)), t + 3 * MS)
    s.probe(t + 100 * MS)
    figures = s.result().figures()
    for key in ("min", "mean", "p50", "p90", "p99", "max"):
        assert figures[f"rtt_{key}_ms"] == 3.0
    assert figures["sent_datagrams"] == 2 and figures["lost_datagrams"] == 1
    assert figures["loss_ratio"] == 0.5 and figures["size_bytes"] == 64


@pytest.mark.parametrize(
    ("kw", "mentions"),
    [
        ({"size": 31}, "size 31"),
        ({"size": 65508}, "size 65508"),
        ({"count": 0}, "count 0"),
        ({"timeout_ns": 0}, "timeout 0"),
        ({"interval_ns": -1}, "interval -1"),
    ],
)
def test_session_refuses_values_out_of_range(kw: dict[str, int], mentions: str) -> None:
    with pytest.raises(UsageError, match=mentions):
        _session(**kw)


# ---------------------------------------------------------------- echoes in threads


class Echo:
    """A UDP echo in a thread, bound before it starts, stopped through a socket pair.

    ``mode``: ``echo``; ``drop_odd`` (drops the 2nd, 4th, ... datagram);
    ``twice`` (answers every datagram twice); ``fixed`` (answers
    ``Hello UDP Client``); ``silent``.
    """

    def __init__(self, family: socket.AddressFamily, host: str, mode: str = "echo") -> None:
        self.mode = mode
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port: int = self.sock.getsockname()[1]
        self.received = 0
        self._r, self._w = socket.socketpair()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            ready, _, _ = select.select([self.sock, self._r], [], [], STEP)
            if not ready or self._r in ready:
                return
            data, peer = self.sock.recvfrom(65535)
            self.received += 1
            if self.mode == "silent" or (self.mode == "drop_odd" and self.received % 2 == 0):
                continue
            reply = b"Hello UDP Client" if self.mode == "fixed" else data
            for _ in range(2 if self.mode == "twice" else 1):
                self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._w.send(b"x")
        self._thread.join(timeout=STEP)
        for s in (self.sock, self._r, self._w):
            s.close()


@contextlib.contextmanager
def echo(family: Family, mode: str = "echo") -> Iterator[Echo]:
    e = Echo(family[0], family[1], mode)
    try:
        yield e
    finally:
        e.close()


# ---------------------------------------------------------------- the loop, in process


def test_ping_a_plain_echo(family: Family) -> None:
    with echo(family) as e:
        r = ping(family[1], e.port, count=20, interval=0)
    assert (r.sent, r.received, r.lost, r.duplicates, r.unmatched) == (20, 20, 0, 0, 0)
    assert r.peer == "echo" and r.rtt.count == 20
    assert 0 < r.rtt.min_ns <= r.rtt.percentile(50) <= r.rtt.max_ns < STEP * 1e9
    assert e.received == 20


def test_loss_is_counted_against_an_echo_that_drops_every_other(family: Family) -> None:
    with (
        echo(family, "drop_odd") as e,
        Pinger(family[1], e.port, count=6, interval=0, timeout=0.05) as p,
    ):
        kinds = [(ev.kind, ev.seq) for ev in p.events()]
        r = p.result()
    assert kinds == [
        (REPLY, 0),
        (TIMEOUT, 1),
        (REPLY, 2),
        (TIMEOUT, 3),
        (REPLY, 4),
        (TIMEOUT, 5),
    ]
    assert (r.sent, r.received, r.lost, r.timeouts, r.loss_ratio) == (6, 3, 3, 3, 0.5)


def test_duplicates_are_counted_not_received_twice(family: Family) -> None:
    with echo(family, "twice") as e:
        r = ping(family[1], e.port, count=5, interval=0.02)
    assert (r.sent, r.received, r.lost) == (5, 5, 0)
    # The last probe's second copy may come after the run ended.
    assert 4 <= r.duplicates <= 5, r


def test_a_fixed_reply_is_unmatched_and_never_a_round_trip(family: Family) -> None:
    with echo(family, "fixed") as e:
        r = ping(family[1], e.port, count=2, interval=0, timeout=0.05)
    assert (r.sent, r.received, r.unmatched, r.timeouts, r.rtt.count) == (2, 0, 2, 2, 0)


def test_size_is_respected(family: Family) -> None:
    with echo(family) as e, Pinger(family[1], e.port, count=2, interval=0, size=1000) as p:
        lengths = [ev.length for ev in p.events()]
    assert lengths == [1000, 1000]


def test_nothing_listening_is_an_error_per_probe_not_a_timeout(family: Family) -> None:
    with socket.socket(family[0], socket.SOCK_DGRAM) as s:
        s.bind((family[1], 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    r = ping(family[1], port, count=2, interval=0.05, timeout=5)
    assert (r.sent, r.received, r.errors) == (2, 0, 2)
    assert time.monotonic() - t0 < 2.0  # no probe waited for its 5 s timeout


def test_stop_from_another_thread_ends_the_run_at_once(family: Family) -> None:
    with echo(family, "silent") as e, Pinger(family[1], e.port, interval=10, timeout=10) as p:
        threading.Timer(0.2, p.stop).start()
        t0 = time.monotonic()
        r = p.run()
    assert time.monotonic() - t0 < 2.0
    assert (r.sent, r.received, r.lost) == (1, 0, 1)


def test_interval_paces_the_probes(family: Family) -> None:
    with echo(family) as e:
        t0 = time.monotonic()
        r = ping(family[1], e.port, count=4, interval=0.1)
        took = time.monotonic() - t0
    assert r.received == 4
    assert 0.3 <= took < 0.3 + STEP


# ---------------------------------------------------------------- the command


def _lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if "bytes from" in ln]


def test_cli_against_udpkit_serve_echo() -> None:
    with serving("--echo", "--quiet", "127.0.0.1", "0", banner=False) as srv:
        res = run_ping("127.0.0.1", str(srv.port), "-c", "3", "-i", "200ms", "-s", "100")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith(f"PING 127.0.0.1:{srv.port}: 100 bytes per probe\n")
    lines = _lines(out)
    assert len(lines) == 3
    for seq, ln in enumerate(lines):
        assert ln.startswith(f"100 bytes from 127.0.0.1:{srv.port}: seq={seq} time=")
        assert ln.endswith(" ms")
    assert f"--- 127.0.0.1:{srv.port} ping statistics ---" in out
    assert "3 probes sent, 3 received, 0% loss, 0 duplicates, 0 reordered" in out
    assert "rtt min/p50/p90/p99/max = " in out
    assert res.stderr == ""


def test_cli_against_udpkit_reflect_json() -> None:
    proc, port, _err = start_listening("reflect", "127.0.0.1", "0")
    try:
        res = run_ping("127.0.0.1", str(port), "-c", "3", "-i", "0", "-J")
    finally:
        end_process(proc)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["peer"] == "reflector"
    assert (doc["sent_datagrams"], doc["received_datagrams"], doc["lost_datagrams"]) == (3, 3, 0)
    for key in (
        "loss_ratio",
        "duplicate_datagrams",
        "reordered_datagrams",
        "late_datagrams",
        "unmatched_datagrams",
        "error_datagrams",
        "rtt_min_ms",
        "rtt_p50_ms",
        "rtt_p90_ms",
        "rtt_p99_ms",
        "rtt_max_ms",
        "rtt_mean_ms",
        "duration_s",
        "interval_s",
        "timeout_s",
        "size_bytes",
        "stopped_by",
    ):
        assert key in doc, key
    assert doc["stopped_by"] is None and doc["size_bytes"] == 64
    assert 0 < doc["rtt_min_ms"] <= doc["rtt_p50_ms"] <= doc["rtt_max_ms"]


@needs_tool("socat")
def test_cli_against_socat_echo() -> None:
    port = free_port(socket.AF_INET, "127.0.0.1")
    proc = subprocess.Popen(
        ["socat", f"UDP4-RECVFROM:{port},fork", "EXEC:cat"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + STEP
        while port_is_free(socket.AF_INET, "127.0.0.1", port):
            assert time.monotonic() < deadline and proc.poll() is None, "socat did not bind"
            time.sleep(0.02)
        res = run_ping("127.0.0.1", str(port), "-c", "3", "-i", "0.05", "-W", "2")
    finally:
        end_process(proc)
    assert res.returncode == 0, res.stderr
    assert len(_lines(res.stdout)) == 3
    assert "3 probes sent, 3 received, 0% loss" in res.stdout


def test_cli_against_a_plain_echo_counts_loss_and_duplicates() -> None:
    fam = (socket.AF_INET, "127.0.0.1")
    with echo(fam, "drop_odd") as e:
        res = run_ping("127.0.0.1", str(e.port), "-c", "4", "-i", "0", "-W", "50ms")
    assert res.returncode == 0, res.stderr
    assert "seq=1 timeout" in res.stdout and "seq=3 timeout" in res.stdout
    assert "4 probes sent, 2 received, 50% loss" in res.stdout
    with echo(fam, "twice") as e:
        res = run_ping("127.0.0.1", str(e.port), "-c", "3", "-i", "50ms")
    assert "seq=0 duplicate" in res.stdout and "seq=1 duplicate" in res.stdout


def test_cli_quiet_prints_the_statistics_only() -> None:
    with echo((socket.AF_INET, "127.0.0.1")) as e:
        res = run_ping("127.0.0.1", str(e.port), "-c", "3", "-i", "0", "-q")
    assert res.returncode == 0
    assert _lines(res.stdout) == []
    assert "3 probes sent, 3 received" in res.stdout


def test_cli_no_reply_exits_1_with_timeouts() -> None:
    with echo((socket.AF_INET, "127.0.0.1"), "fixed") as e:
        res = run_ping("127.0.0.1", str(e.port), "-c", "2", "-i", "0", "-W", "0.1")
    assert res.returncode == 1
    assert "seq=0 timeout" in res.stdout and "2 unmatched" in res.stdout
    assert "16 bytes from" in res.stdout and "Hello" not in res.stdout
    assert "no echo of a probe" in res.stderr and "udpkit serve --echo" in res.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_signal_prints_the_statistics_of_what_ran(sig: signal.Signals) -> None:
    with echo((socket.AF_INET, "127.0.0.1")) as e:
        proc = start_ping(e.port, "-i", "0.05")
        try:
            assert proc.stdout is not None
            out = LineReader(proc.stdout.fileno())
            assert out.readline().startswith(b"PING ")
            assert b"seq=0 " in out.readline()
            assert b"seq=1 " in out.readline()
            proc.send_signal(sig)
            code = proc.wait(timeout=STEP)
            rest = out.read_rest()
        finally:
            end_process(proc)
    assert code == 0
    assert b"ping statistics ---" in rest and b" received, " in rest
    assert b"rtt min/p50/p90/p99/max = " in rest


def test_cli_signal_with_no_reply_exits_1() -> None:
    with echo((socket.AF_INET, "127.0.0.1"), "silent") as e:
        proc = start_ping(e.port, "-J")
        try:
            deadline = time.monotonic() + STEP
            while e.received < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=STEP)
        finally:
            end_process(proc)
    assert proc.returncode == 1
    doc = json.loads(out)
    assert doc["stopped_by"] == "SIGTERM" and doc["received_datagrams"] == 0
    assert doc["rtt_p50_ms"] is None


def test_cli_closed_stdout_ends_quietly_with_statistics_on_stderr() -> None:
    with echo((socket.AF_INET, "127.0.0.1")) as e:
        proc = start_ping(e.port, "-i", "0.02")
        try:
            assert proc.stdout is not None
            out = LineReader(proc.stdout.fileno())
            out.readline()
            proc.stdout.close()
            _, err = proc.communicate(timeout=STEP)
        finally:
            end_process(proc)
    assert proc.returncode == 0
    text = err.decode()
    assert "Traceback" not in text and "ping statistics" in text


def test_cli_stops_within_a_second_while_stdout_is_blocked() -> None:
    """`udpkit ping ... | sleep 60`: a stop is not held until the pipe drains."""
    with echo((socket.AF_INET, "127.0.0.1")) as e:
        proc = start_ping(e.port, "-i", "0")  # stdout never read: it fills, a write hangs
        try:
            # A 64 KiB pipe holds about 1200 lines: then a write hangs and no probe goes.
            deadline = time.monotonic() + STEP
            sent = -1
            while sent != e.received or sent < 100:
                assert time.monotonic() < deadline, "ping never blocked on its stdout"
                sent = e.received
                time.sleep(0.3)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.stderr is not None
            err = LineReader(proc.stderr.fileno()).read_rest(STEP)
            code = proc.wait(timeout=STEP)
            took = time.monotonic() - t0
        finally:
            end_process(proc)
    assert took < 1.5, took
    assert code == 0
    assert b"ping statistics ---" in err and b"Traceback" not in err


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (("5005",), "did you mean port 5005? give the host first: udpkit ping 127.0.0.1 5005"),
        (("40050", "5005"), "did you mean port 40050?"),
        (("localhost",), "missing PORT"),
        (("127.0.0.1", "5005", "-s", "31"), "--size"),
        (("127.0.0.1", "5005", "-i", "fast"), "--interval"),
        (("127.0.0.1", "5005", "-W", "0"), "--timeout"),
        (("127.0.0.1", "5005", "-c", "0"), "--count"),
        (("127.0.0.1", "5005", "--busy-poll=2s"), "--busy-poll"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(args: tuple[str, ...], mentions: str) -> None:
    res = run_ping(*args)
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert mentions in lines[0]


def test_cli_host_and_port_in_one_word_and_busy_poll() -> None:
    with echo((socket.AF_INET, "127.0.0.1")) as e:
        res = run_ping(f"127.0.0.1:{e.port}", "-c", "3", "-i", "0", "--busy-poll")
        assert res.returncode == 0, res.stderr
        res2 = run_ping("127.0.0.1", str(e.port), "-c", "2", "-i", "0", "--busy-poll=100us")
    assert "3 probes sent, 3 received" in res.stdout
    assert "2 probes sent, 2 received" in res2.stdout


def test_cli_help_states_the_exit_codes() -> None:
    res = run_ping("--help")
    assert res.returncode == 0
    assert "exit codes:" in res.stdout and "Ctrl-C" in res.stdout


def test_start_up_imports_little() -> None:
    """Registering or asking for help loads no asyncio, json or prometheus."""
    code = (
        "import sys, udpkit._cli.ping; "
        "print(sorted(m for m in ('asyncio', 'json', 'prometheus_client') if m in sys.modules))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=STEP, check=True
    )
    assert res.stdout.strip() == "[]"
