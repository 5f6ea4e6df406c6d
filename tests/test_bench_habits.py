"""``udpkit bench`` typed with iperf3's and sockperf's words, and stopped before its end.

Every form runs against a real ``udpkit reflect`` on loopback (short runs); the
stops are real signals to a ``udpkit bench`` process, the blocked output a real
pipe nobody reads.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests._proc import (
    STEP,
    UDPKIT,
    LineReader,
    end_process,
    free_port,
    one_line_error,
    run,
    start_listening,
)
from tests.conftest import needs_tool
from tests.test_bench import _check_units

from udpkit._cli.bench import config_from_args
from udpkit._cli.main import build_parser
from udpkit._loops.bench import BenchConfig, run_bench


@pytest.fixture(scope="module")
def reflect_port() -> Iterator[int]:
    """One ``udpkit reflect`` on 127.0.0.1 for the module's runs."""
    proc, port, _err = start_listening("reflect", "127.0.0.1", "0", "--quiet")
    try:
        yield port
    finally:
        end_process(proc)


def _config(*argv: str) -> BenchConfig:
    return config_from_args(build_parser().parse_args(["bench", *argv]))


def _doc(*argv: str) -> dict[str, Any]:
    res = run("bench", *argv, "-J", "-q")
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


# ---------------------------------------------------------------- the words, parsed


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        # iperf3: -c HOST -p PORT -u -b BITS -l SIZE -t SECS -P N
        (("-c", "h", "-p", "7", "-u", "-b", "100M", "-l", "1250"),
         {"host": "h", "port": "7", "size": 1250, "rate": 10_000.0}),
        (("-c", "h", "-b", "100m", "-l", "1250"), {"port": "5202", "rate": 10_000.0}),
        (("-c", "h", "7", "--bitrate", "1Gbps", "--length", "1K"),
         {"port": "7", "size": 1024, "rate": 1e9 / 8192}),
        (("h", "7", "-b", "10Mbit", "-l", "1000"), {"rate": 1250.0}),
        (("h", "7", "-b", "0"), {"rate": None}),  # iperf3's unlimited
        (("h", "-p", "7", "-t", "3", "-P", "4"), {"port": "7", "duration": 3.0, "parallel": 4}),
        (("h", "7", "--time", "500ms"), {"duration": 0.5}),
        # sockperf: --mps N|max, -m/--msg-size, -t
        (("h", "7", "--mps", "20k", "-m", "100"), {"rate": 20_000.0, "size": 100}),
        (("h", "7", "--mps", "max", "--msg-size", "200"), {"rate": None, "size": 200}),
        # datagram rates named so
        (("h", "7", "--rate", "20k"), {"rate": 20_000.0}),
        (("h", "7", "--rate", "20kpps"), {"rate": 20_000.0}),
        (("h", "7", "--rate", "100Mbps", "-l", "1250"), {"rate": 10_000.0}),
        (("h", "7"), {"rate": 1000.0, "duration": 10.0}),
    ],
)  # fmt: skip
def test_iperf3_and_sockperf_words_parse(argv: tuple[str, ...], want: dict[str, Any]) -> None:
    cfg = _config(*argv)
    for key, value in want.items():
        assert getattr(cfg, key) == (pytest.approx(value) if value else value), key


def test_json_and_udp_flags() -> None:
    args = build_parser().parse_args(["bench", "h", "7", "-J", "-u"])
    assert args.json and args.udp


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--rate", "100M"),
         "invalid --rate '100M': --rate 100M means 100 million datagrams/s, which no sender "
         "reaches; for 100 Mbit/s write -b 100M (or --rate 100Mbps)"),
        (("--mps", "1G"), "--rate 1G means 1 billion datagrams/s"),
        (("-b", "5MB/s"), "invalid -b '5MB/s': a bit rate like 100M"),
        (("-b", "fast"), "invalid -b 'fast'"),
        (("--rate", "10k", "-b", "1M"), "not allowed with argument"),
        (("-l", "16"), "invalid --size '16': must be 32-65507 bytes"),
        (("-P", "0"), "invalid --parallel '0'"),
    ],
)  # fmt: skip
def test_refusals_are_one_line_exit_2(argv: tuple[str, ...], says: str) -> None:
    res = run("bench", "127.0.0.1", "9", *argv)
    assert res.returncode == 2, res
    assert says in one_line_error(res.stderr)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("127.0.0.1", "9", "-R"), "-R (reverse) does not fit bench's probes"),
        (("127.0.0.1", "9", "--reverse"), "the 'return' row"),
        (("h", "9", "-c", "127.0.0.1"), "HOST given twice: 'h' and -c '127.0.0.1'"),
        (("127.0.0.1", "9", "-p", "10"), "port given twice: '9' and -p '10'"),
        (("-p", "9",), "missing HOST: write udpkit bench HOST PORT (or -c HOST, as in iperf3)"),
        (("-c", "5202",), "did you mean port 5202?"),
    ],
)  # fmt: skip
def test_target_and_reverse_refusals(argv: tuple[str, ...], says: str) -> None:
    res = run("bench", *argv)
    assert res.returncode == 2, res
    line = one_line_error(res.stderr)
    assert says in line, line


# ---------------------------------------------------------------- the words, run


@pytest.mark.parametrize(
    ("argv", "settings"),
    [
        (("-c", "127.0.0.1", "-p", "{port}", "-u", "-b", "1M", "-l", "250", "-t", "300ms"),
         {"size_bytes": 250, "rate_bits_per_s": 1e6, "rate_datagrams_per_s": 500.0}),
        (("-c", "127.0.0.1", "{port}", "--mps", "2k", "-m", "100", "--time", "0.3", "-P", "2"),
         {"size_bytes": 100, "rate_datagrams_per_s": 2000.0, "parallel_flows": 2}),
        (("127.0.0.1", "-p", "{port}", "--rate", "3kpps", "--length", "1K", "-n", "200"),
         {"size_bytes": 1024, "rate_datagrams_per_s": 3000.0, "count_datagrams": 200}),
    ],
)  # fmt: skip
def test_habit_forms_run_against_reflect(
    reflect_port: int, argv: tuple[str, ...], settings: dict[str, Any]
) -> None:
    doc = _doc(*(a.format(port=reflect_port) for a in argv))
    for key, value in settings.items():
        assert doc["settings"][key] == pytest.approx(value), key
    t = doc["total"]
    assert doc["peer"] == "reflector" and t["sent_datagrams"] > 0
    assert t["round_trip"]["lost_datagrams"] == 0, t["round_trip"]
    assert doc["stopped_by"] is None and doc["under_rate"] is None


# ---------------------------------------------------------------- under the asked rate


def test_a_rate_the_sender_cannot_reach_is_said_with_its_cause(reflect_port: int) -> None:
    """100 Gbit/s of 1000-byte datagrams is 12.5 M datagrams/s: far beyond one Python
    loop, which never idles.  The run says so at the end, on stderr and in the JSON."""
    res = run("bench", "127.0.0.1", str(reflect_port), "-b", "100G", "-l", "1000", "-t", "0.3",
              "-q")  # fmt: skip
    assert res.returncode == 0, res.stderr
    last = res.stderr.decode().splitlines()[-1]
    assert last.startswith("udpkit bench: sent "), last
    assert "of the 12500000 (100 Gbit/s) asked; likely cause: the sender's CPU" in last
    doc = _doc("127.0.0.1", str(reflect_port), "--mps", "10Mpps", "-t", "0.3")
    _check_units(doc)
    short = doc["under_rate"]
    assert short["causes"] == ["sender_cpu"] and short["achieved_ratio"] < 0.9
    assert short["asked_datagrams_per_s"] == 1e7 and doc["total"]["send_idle_ratio"] < 0.05


def test_max_and_a_reachable_rate_say_nothing(reflect_port: int) -> None:
    for rate in (("-b", "0"), ("--rate", "max"), ("--rate", "2k")):
        res = run("bench", "127.0.0.1", str(reflect_port), *rate, "-t", "0.3", "-q")
        assert res.returncode == 0, res.stderr
        assert b"likely cause" not in res.stderr, (rate, res.stderr)


def test_a_window_that_holds_the_rate_back_is_named(reflect_port: int) -> None:
    doc = _doc("127.0.0.1", str(reflect_port), "--window", "1", "--rate", "200k", "-t", "0.3")
    assert doc["under_rate"]["causes"] == ["window"], doc["under_rate"]
    assert doc["total"]["send_idle_ratio"] >= 0.05


# ---------------------------------------------------------------- stopped before the end


def _start(port: int, *argv: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*UDPKIT, "bench", "127.0.0.1", str(port), "-t", "20", "-i", "0.1", *argv],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )


def _stop(proc: subprocess.Popen[bytes], sig: int) -> tuple[int, float]:
    t0 = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(timeout=STEP)
    return code, time.monotonic() - t0


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_prints_the_table_of_what_ran(reflect_port: int, sig: int, code: int) -> None:
    """Ctrl-C during bench once exited 130 with nothing: the part that ran was lost."""
    proc = _start(reflect_port)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out = LineReader(proc.stdout.fileno())
        out.readline()  # the row header
        out.readline()
        out.readline()  # two rows: 0.2 s of the run
        got, took = _stop(proc, sig)
        text = out.read_rest(2.0).decode()
    finally:
        end_process(proc)
    assert got == code and took < 1.5, (got, took)
    name = signal.Signals(sig).name
    head = next(line for line in text.splitlines() if line.startswith("udpkit bench: "))
    assert head.endswith(f"(stopped by {name})"), head
    assert "round trip" in text and "rtt ms:" in text and "lost on the path 0" in text


def test_sigterm_prints_the_json_document_with_the_partial_intervals(reflect_port: int) -> None:
    proc = _start(reflect_port, "-J")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        rows = LineReader(proc.stderr.fileno())  # with -J the live rows go to stderr
        for _ in range(4):
            rows.readline()
        got, took = _stop(proc, signal.SIGTERM)
        doc = json.loads(proc.stdout.read())
    finally:
        end_process(proc)
    assert got == 143 and took < 1.5, (got, took)
    assert doc["stopped_by"] == "SIGTERM"
    intervals = doc["intervals"]
    assert len(intervals) >= 3
    ends = [r["end_s"] for r in intervals]
    assert ends == sorted(ends) and doc["send_seconds_s"] < 20
    assert sum(r["sent_datagrams"] for r in intervals) == doc["total"]["sent_datagrams"]
    assert doc["total"]["round_trip"]["lost_datagrams"] == 0


def test_a_stop_while_stdout_is_blocked_ends_within_a_second(reflect_port: int) -> None:
    """`udpkit bench ... | sleep 60`: a full pipe must not hold a stop."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 65536)  # fill the pipe: the first row's write hangs
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    proc = _start(reflect_port, stdout=w)
    os.close(w)
    try:
        assert proc.stderr is not None
        time.sleep(1.0)  # the run started and its first row hangs
        got, took = _stop(proc, signal.SIGINT)
        err = proc.stderr.read().decode()
    finally:
        end_process(proc)
        os.close(r)
    assert got == 130 and took < 1.5, (got, took, err)
    assert "(stopped by SIGINT)" in err and "round trip" in err, err


def test_a_closed_pipe_ends_the_run_with_its_table_on_stderr(reflect_port: int) -> None:
    """`udpkit bench ... | head -2`: the reader has gone; the figures still come out."""
    proc = _start(reflect_port)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out = LineReader(proc.stdout.fileno())
        out.readline()
        out.readline()
        proc.stdout.close()
        code = proc.wait(timeout=STEP)
        err = proc.stderr.read().decode()
    finally:
        end_process(proc)
    assert code == 0, err
    assert "(stopped by closed stdout)" in err and "round trip" in err, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_library_stop_from_another_thread(reflect_port: int) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    try:
        t0 = time.monotonic()
        result = run_bench(BenchConfig("127.0.0.1", reflect_port, duration=20.0), stop=stop)
        took = time.monotonic() - t0
    finally:
        timer.cancel()
    assert result.stopped and took < 2.0, took
    assert 0 < result.send_seconds < 1.0
    flow = result.flows[0]
    assert flow.report is not None and flow.report.unique == flow.sent  # the far side's count
    assert flow.round_trip.unique == flow.sent


def test_a_stop_before_the_peer_answers_is_exit_130() -> None:
    """A silent peer: Ctrl-C during the opening exchange ends it at once, not after 1.5 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        proc = _start(silent.getsockname()[1])
        try:
            time.sleep(0.6)
            got, took = _stop(proc, signal.SIGINT)
            assert proc.stderr is not None
            err = proc.stderr.read().decode()
        finally:
            end_process(proc)
    assert got == 130 and took < 1.0, (got, took)
    assert "stopped by SIGINT before 127.0.0.1 answered" in err


# ---------------------------------------------------------------- iperf3's own reading


@needs_tool("iperf3")
def test_bitrate_and_length_mean_what_iperf3_asks_for(reflect_port: int) -> None:
    """`-b 10M -l 1000` asks for the same bit rate in both tools (the configured rates)."""
    port = free_port(socket.AF_INET, "127.0.0.1", socket.SOCK_STREAM)
    srv = subprocess.Popen(
        ["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        res = subprocess.run(
            ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-u", "-b", "10M", "-l", "1000",
             "-t", "1", "--json"],
            capture_output=True, timeout=STEP, check=False,
        )  # fmt: skip
    finally:
        end_process(srv)
    start = json.loads(res.stdout)["start"]["test_start"]
    doc = _doc("127.0.0.1", str(reflect_port), "-b", "10M", "-l", "1000", "-t", "1")
    assert doc["settings"]["size_bytes"] == start["blksize"] == 1000
    assert doc["settings"]["rate_bits_per_s"] == start["target_bitrate"] == 10_000_000
    assert doc["total"]["send_bits_per_s"] == pytest.approx(10_000_000, rel=0.05)
