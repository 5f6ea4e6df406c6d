"""``udpkit bench`` and ``udpkit reflect`` on real loopback sockets.

Counts are exact on a clean path: every probe sent is received once, in order,
in each direction, or the test fails.  The comparisons with iperf3 and sockperf
are short (about a second each) and skip when the tool is missing.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests._proc import (
    STEP,
    LineReader,
    Peer,
    end_process,
    free_port,
    one_line_error,
    run,
    serving,
    start_listening,
)
from tests.conftest import needs_tool

from udpkit._cli.benchreport import bench_document
from udpkit._core.errors import NetworkError, UsageError
from udpkit._core.probe import HEADER_SIZE, Kind, build_probe, build_report_request
from udpkit._loops.bench import BenchConfig, parse_bench_rate, run_bench
from udpkit._loops.reflect import Reflector
from udpkit._net.sockets import set_receive_buffer, udp_bind

Family = tuple[socket.AddressFamily, str]


@contextlib.contextmanager
def reflector(host: str) -> Iterator[tuple[Reflector, int]]:
    """A reflector in a thread; bound before the thread starts, stopped on the way out."""
    sock = udp_bind(host, 0)
    # The reflector shares the GIL with bench here: room for a few ms of probes.
    set_receive_buffer(sock.sock, 4 << 20)
    refl = Reflector(sock)
    thread = threading.Thread(target=refl.run, daemon=True)
    thread.start()
    try:
        yield refl, sock.local_address[1]
    finally:
        refl.stop()
        thread.join(timeout=STEP)
        refl.close()
        sock.close()


@contextlib.contextmanager
def reflect_process(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], int, LineReader]]:
    """``udpkit reflect ARGS`` as a process; ended by PID on the way out."""
    proc, port, err = start_listening("reflect", *args)
    try:
        yield proc, port, err
    finally:
        end_process(proc)


def _bench(host: str, port: int, **kw: Any) -> dict[str, Any]:
    cfg = BenchConfig(host=host, port=port, linger=2.0, **kw)
    return bench_document(run_bench(cfg))


def _exact_clean(d: dict[str, Any] | None, n: int) -> None:
    assert d is not None
    assert d["sent_datagrams"] == n
    got = (d["received_datagrams"], d["unique_datagrams"], d["lost_datagrams"])
    assert got == (n, n, 0), d
    assert (d["duplicate_datagrams"], d["reordered_datagrams"]) == (0, 0)


# ---------------------------------------------------------------- library, in process


@pytest.mark.parametrize("fast", [None, False], ids=["batched", "portable"])
def test_reflector_counts_are_exact_per_direction(family: Family, fast: bool | None) -> None:
    _, host = family
    with reflector(host) as (refl, port):
        doc = _bench(host, port, count=3000, rate=20_000.0, duration=None, fast=fast)
    t = doc["total"]
    assert doc["peer"] == "reflector"
    for key in ("forward", "return", "round_trip"):
        _exact_clean(t[key], 3000)
    assert (
        t["rtt_samples_count"] == 3000 and 0 < t["rtt_p50_ms"] <= t["rtt_p99_ms"] <= t["rtt_max_ms"]
    )
    assert t["path_lost_datagrams"] == 0
    run_id = doc["flows"][0]["run_id"]
    assert refl.runs[run_id].tracker.unique == 3000 and refl.runs[run_id].echoed == 3000


def test_window_keeps_at_most_n_outstanding(family: Family) -> None:
    _, host = family
    with reflector(host) as (_refl, port):
        doc = _bench(host, port, count=400, rate=None, duration=None, window=4)
    _exact_clean(doc["total"]["round_trip"], 400)
    assert doc["settings"]["window_datagrams"] == 4
    # Window 4 means the reflector never saw more than 4 numbers ahead of the replies:
    # on a clean path nothing arrives out of order and nothing is late.
    assert doc["flows"][0]["late_replies_datagrams"] == 0


def test_parallel_flows_are_tracked_apart(family: Family) -> None:
    _, host = family
    with reflector(host) as (refl, port):
        doc = _bench(host, port, count=500, rate=20_000.0, duration=None, parallel=3)
    flows = doc["flows"]
    assert len(flows) == 3 and len({f["run_id"] for f in flows}) == 3
    assert len({f["local"] for f in flows}) == 3
    for f in flows:
        _exact_clean(f["forward"], 500)
        _exact_clean(f["return"], 500)
    _exact_clean(doc["total"]["round_trip"], 1500)
    assert sum(refl.runs[f["run_id"]].tracker.unique for f in flows) == 1500


def test_one_way_counts_at_the_reflector(family: Family) -> None:
    _, host = family
    with reflector(host) as (refl, port):
        doc = _bench(host, port, count=5000, rate=50_000.0, duration=None, one_way=True)
    t = doc["total"]
    _exact_clean(t["forward"], 5000)
    assert t["return"] is None and t["round_trip"] is None and t["rtt_p50_ms"] is None
    assert refl.engine.stats.tx_datagrams <= 10  # only the report answers
    assert t["forward"]["jitter_ms"] >= 0


def test_pacing_holds_the_rate(family: Family) -> None:
    _, host = family
    with reflector(host) as (_refl, port):
        doc = _bench(host, port, rate=2000.0, duration=1.0, interval=0.25)
    sent = doc["total"]["sent_datagrams"]
    assert 1900 <= sent <= 2010, sent  # 1 s at 2000/s (the first probe leaves at t=0)
    rows = doc["intervals"]
    assert len(rows) >= 4
    for row in rows[:4]:
        assert 400 <= row["sent_datagrams"] <= 560, rows


def test_reflector_refuses_to_amplify_or_ping_pong(family: Family) -> None:
    fam, host = family
    with reflector(host) as (refl, port), socket.socket(fam, socket.SOCK_DGRAM) as c:
        c.settimeout(0.3)
        c.connect((host, port))
        c.send(build_probe(Kind.REPORT_REQUEST, 1, 1, 0, HEADER_SIZE))  # too small to answer
        c.send(build_probe(Kind.REFLECTED, 1, 1, 0, 64))  # another reflector's echo
        c.send(build_probe(Kind.REPORT, 1, 1, 0, 64))
        c.send(b"garbage")
        with pytest.raises(TimeoutError):
            c.recv(2048)
        c.send(build_report_request(1, 7, 0))
        answer = c.recv(2048)
        assert answer[3] == Kind.REPORT and len(answer) <= 1024
        assert (refl.refused_small, refl.ignored, refl.malformed) == (1, 2, 1)


def test_bench_against_plain_echo_server(family: Family) -> None:
    _, host = family
    with serving(host, "0", "--echo", "--quiet") as srv:
        assert srv.port is not None
        doc = _bench(host, srv.port, count=1000, rate=20_000.0, duration=None)
    t = doc["total"]
    assert doc["peer"] == "echo"
    assert t["forward"] is None and t["return"] is None
    _exact_clean(t["round_trip"], 1000)
    assert t["rtt_samples_count"] == 1000


# ---------------------------------------------------------------- the command line


_UNIT = re.compile(
    r"(_datagrams|_bytes|_ms|_s|_per_s|_ratio|_count|_flows|_id)$|^(version|target|peer|local|control_local|receivers"
    r"|one_way|send_errors|forward|return|round_trip|total|flows|intervals|settings"
    r"|stopped_by|under_rate|causes|message)$"
)


def _check_units(obj: Any, path: str = "") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if path.endswith("send_errors"):
                continue  # errno names
            assert _UNIT.search(k), f"key {path}.{k} carries no unit"
            _check_units(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for v in obj:
            _check_units(v, path)


def test_cli_json_against_reflect_process(family: Family) -> None:
    _, host = family
    with reflect_process(host, "0") as (proc, port, err):
        res = run("bench", host, str(port), "--count", "800", "--rate", "8k", "--json")
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STEP) == 0
        summary = err.read_rest(2.0).decode()
    _check_units(doc)
    for key in ("forward", "return", "round_trip"):
        _exact_clean(doc["total"][key], 800)
    for key in ("rtt_p50_ms", "rtt_p90_ms", "rtt_p99_ms", "rtt_p99_9_ms", "rtt_max_ms"):
        assert doc["total"][key] > 0
    assert doc["total"]["send_datagrams_per_s"] > 0 and doc["total"]["send_bits_per_s"] > 0
    assert "received 800 (unique 800" in summary and "stopped by SIGTERM" in summary


def test_cli_table_and_live_rows(family: Family) -> None:
    _, host = family
    with reflect_process(host, "0") as (_proc, port, _err):
        res = run("bench", host, str(port), "-t", "0.6", "-i", "0.2", "--rate", "2k")
    assert res.returncode == 0, res.stderr
    text = res.stdout.decode()
    assert text.count(" s ") >= 3  # live rows
    assert "forward" in text and "round trip" in text and "rtt ms:" in text
    assert "lost on the path 0" in text


def test_cli_plot(tmp_path: Path) -> None:
    png = tmp_path / "bench.png"
    with reflect_process("127.0.0.1", "0") as (_proc, port, _err):
        res = run("bench", "127.0.0.1", str(port), "-n", "200", "--plot", str(png), "-q")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert res.returncode == 2
        assert "matplotlib" in one_line_error(res.stderr)
        return
    assert res.returncode == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["--size", "10"], "'10'"),
        (["--size", "x"], "'x'"),
        (["--rate", "fast"], "'fast'"),
        (["--rate", "-5"], "'-5'"),
        (["--parallel", "0"], "'0'"),
        (["--window", "0"], "'0'"),
        (["--count", "many"], "'many'"),
        (["--duration", "-1"], "'-1'"),
        (["--interval", "0"], "'0'"),
        (["--one-way", "--window", "2"], "--window"),
    ],
)
def test_cli_bad_input_exits_2_naming_it(args: list[str], word: str) -> None:
    res = run("bench", "127.0.0.1", "9", *args)
    assert res.returncode == 2, res
    assert word in one_line_error(res.stderr)


def test_cli_bad_port_and_host() -> None:
    for host, port, word in (("127.0.0.1", "70000", "70000"), ("300.1.1.1", "9", "300.1.1.1")):
        res = run("bench", host, port, "-n", "1")
        assert res.returncode == 2, res
        assert word in one_line_error(res.stderr)


def test_cli_nothing_listening_is_one_line_exit_1(family: Family) -> None:
    fam, host = family
    res = run("bench", host, str(free_port(fam, host)), "-n", "5")
    assert res.returncode == 1, res
    assert "nothing listening" in one_line_error(res.stderr)


def test_cli_silent_peer_times_out_exit_3(family: Family) -> None:
    fam, host = family
    with Peer(fam, host, reply=None) as peer:
        res = run("bench", host, str(peer.port), "-n", "5")
    assert res.returncode == 3, res
    assert "no answer" in one_line_error(res.stderr)


def test_cli_one_way_needs_a_reflector() -> None:
    with serving("127.0.0.1", "0", "--echo", "--quiet") as srv:
        res = run("bench", "127.0.0.1", str(srv.port), "-n", "5", "--one-way")
    assert res.returncode == 2, res
    assert "reflect" in one_line_error(res.stderr)


@pytest.mark.parametrize("group", ["239.1.2.6", "ff12::6"])
def test_group_send_options_come_before_connect(
    group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bench ff12::6 5202 --one-way --iface eth0` failed "connect to [ff12::6]:5202:
    invalid argument": the probe socket was connected before IPV6_MULTICAST_IF was set."""
    from udpkit._loops import bench as _bench
    from udpkit._loops import benchflow
    from udpkit._net.mcast import set_multicast_send as real

    unconnected: list[bool] = []

    def spy(sock: socket.socket, **kw: Any) -> None:
        try:
            sock.getpeername()
            unconnected.append(False)
        except OSError:
            unconnected.append(True)
        real(sock, **kw)

    monkeypatch.setattr(benchflow, "set_multicast_send", spy)
    cfg = BenchConfig(group, 5202, one_way=True, count=1, iface="lo")
    try:
        benchflow.ProbeFlow(cfg, False, _bench._new_result).close()
    except NetworkError as exc:
        # lo has no IPv6 multicast route: connect fails, but with the interface known,
        # never with EINVAL, and only after the options were set.
        assert ":" in group and "invalid argument" not in str(exc), exc
        assert unconnected == [True]
    else:
        assert unconnected == [True, True]  # the probe socket, then the control socket


def test_cli_link_scope_group_without_an_interface_is_exit_2() -> None:
    """Without --iface (or a %scope) a link-scope group cannot be sent to: say so up front."""
    res = run("bench", "ff02::6", "5202", "--one-way", "-n", "1")
    assert res.returncode == 2, res
    line = one_line_error(res.stderr)
    assert "ff02::6 is link-scope" in line and "--iface IFACE" in line, line


def test_reflect_bad_port_exits_2() -> None:
    res = run("reflect", "127.0.0.1", "70000")
    assert res.returncode == 2
    assert "70000" in one_line_error(res.stderr)


@pytest.mark.parametrize(
    ("text", "size", "expect"),
    [
        ("10000", 64, 10000.0),
        ("10k", 64, 10000.0),
        ("2.5Mpps", 64, 2.5e6),
        ("20kpps", 64, 20_000.0),
        ("max", 64, None),
        ("MAX", 64, None),
        ("512kbps", 64, 1000.0),
        ("1Gb/s", 1250, 100_000.0),
        ("8bit/s", 1, 1.0),
        ("640B/s", 64, 10.0),
    ],
)
def test_parse_bench_rate(text: str, size: int, expect: float | None) -> None:
    assert parse_bench_rate(text, size) == expect


@pytest.mark.parametrize("text", ["", "fast", "0", "-1k", "10m", "nan", "inf", "kbps"])
def test_parse_bench_rate_refuses(text: str) -> None:
    with pytest.raises(UsageError, match=re.escape(repr(text))):
        parse_bench_rate(text, 64)


# ---------------------------------------------------------------- other tools, same path


def _iperf3(port: int, *client: str) -> dict[str, Any]:
    srv = subprocess.Popen(
        ["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        res = subprocess.run(
            ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-u", "--json", *client],
            capture_output=True,
            timeout=STEP,
            check=False,
        )
        doc: dict[str, Any] = json.loads(res.stdout)
        return doc
    finally:
        end_process(srv)


@needs_tool("iperf3")
def test_agrees_with_iperf3_at_a_fixed_rate() -> None:
    """At 10k datagrams/s of 64 B for 1 s, both see the same rate and no loss."""
    port = free_port(socket.AF_INET, "127.0.0.1", socket.SOCK_STREAM)
    ip = _iperf3(port, "-b", "5.12M", "-l", "64", "-t", "1")
    ip_sum = ip["end"]["sum"]
    with reflector("127.0.0.1") as (_refl, rport):
        doc = _bench("127.0.0.1", rport, rate=10_000.0, duration=1.0, one_way=True)
    fwd = doc["total"]["forward"]
    ip_rate = ip_sum["packets"] / ip_sum["seconds"]
    assert fwd["datagrams_per_s"] == pytest.approx(ip_rate, rel=0.05)
    assert fwd["bits_per_s"] == pytest.approx(ip_sum["bits_per_second"], rel=0.05)
    assert ip_sum["lost_packets"] == 0 and fwd["lost_datagrams"] == 0


def _sockperf_pp_p50_us(port: int) -> float:
    srv = subprocess.Popen(
        ["sockperf", "sr", "-i", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        res = subprocess.run(
            ["sockperf", "pp", "-i", "127.0.0.1", "-p", str(port), "-t", "1", "-m", "64"],
            capture_output=True,
            timeout=STEP,
            check=False,
        )
    finally:
        end_process(srv)
    m = re.search(rb"percentile 50\.000 =\s+([\d.]+)", res.stdout + res.stderr)
    assert m is not None, res.stdout[-2000:]
    return float(m.group(1))


@needs_tool("sockperf")
def test_agrees_with_sockperf_ping_pong() -> None:
    """sockperf reports half the round trip; bench's window-1 RTT is of the same order."""
    one_way_us = _sockperf_pp_p50_us(free_port(socket.AF_INET, "127.0.0.1"))
    with reflector("127.0.0.1") as (_refl, port):
        doc = _bench("127.0.0.1", port, rate=None, duration=1.0, window=1)
    rtt_us = doc["total"]["rtt_p50_ms"] * 1000
    _exact_clean(doc["total"]["round_trip"], doc["total"]["sent_datagrams"])
    # Both are user-space ping-pong over loopback; Python adds tens of microseconds.
    assert 0.5 * 2 * one_way_us <= rtt_us <= 6 * 2 * one_way_us + 200, (rtt_us, one_way_us)


def test_tools_are_optional() -> None:
    """The two comparisons above skip, never fail, where the tools are missing."""
    for tool in ("iperf3", "sockperf"):
        mark = needs_tool(tool)
        assert mark.kwargs["reason"] == f"{tool} is not installed"
        assert mark.args[0] == (shutil.which(tool) is None)


@pytest.mark.parametrize("kind", [Kind.PROBE, Kind.PROBE_ONEWAY])
def test_reflector_batch_at_once_matches_the_general_loop(
    kind: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of one run's probes is read at once (map/zip, jitter in closed form);
    it must leave every counter, answer and the jitter as the per-datagram loop does."""
    from udpkit._loops import reflect as _reflect
    from udpkit._net.sockets import Datagram

    clock = iter(range(9_000_000, 10**12, 250_000))
    arrival = [0]  # both reflectors see each batch arrive at the same time
    monkeypatch.setattr(_reflect, "clock_ns", lambda: arrival[0])

    peer = ("127.0.0.1", 40000)
    sends = [1_000_000 + 37 * i + (i % 5) * 11_000 for i in range(100)]
    batches = [
        [
            Datagram(p, peer, len(p))
            for p in (build_probe(kind, 9, seq, sends[seq], 64 + seq % 3) for seq in rng)
        ]
        for rng in (range(0, 40), range(40, 41), range(43, 100), range(41, 43))  # reordered
    ]
    with udp_bind("127.0.0.1", 0) as a, udp_bind("127.0.0.1", 0) as b:
        whole, loop = Reflector(a), Reflector(b)
        loop._answer_uniform = lambda batch: None  # type: ignore[method-assign]
        at_once = whole._answer_uniform
        used: list[bool] = []

        def spy(batch: Any) -> Any:
            out = at_once(batch)
            used.append(out is not None)
            return out

        whole._answer_uniform = spy  # type: ignore[method-assign]
        try:
            for batch in batches:
                arrival[0] = next(clock)
                assert whole.answer_batch(batch) == loop.answer_batch(batch)
            assert used == [True] * len(batches)
        finally:
            whole.close()
            loop.close()
    w, g = whole.runs[9], loop.runs[9]
    slots = w.tracker.__slots__
    assert [getattr(w.tracker, k) for k in slots] == [getattr(g.tracker, k) for k in slots]
    assert (w.bytes, w.echoed, w.jitter.samples) == (g.bytes, g.echoed, g.jitter.samples)
    assert w.jitter.jitter_ns == pytest.approx(g.jitter.jitter_ns, rel=1e-9)
    assert w.jitter.jitter_ns > 0


def test_reflector_mixed_batch_goes_through_the_general_loop() -> None:
    """A report request, a short datagram or a second run in the batch: not read at once."""
    from udpkit._net.sockets import Datagram

    peer = ("127.0.0.1", 40000)
    probe = build_probe(Kind.PROBE, 1, 0, 5, 64)
    with udp_bind("127.0.0.1", 0) as a:
        refl = Reflector(a)
        try:
            for odd in (
                build_probe(Kind.PROBE, 2, 0, 5, 64),  # another run
                build_report_request(1, 7, 5),
                b"short",
                build_probe(Kind.PROBE_ONEWAY, 1, 1, 5, 64),  # another kind
            ):
                batch = [Datagram(probe, peer, 64), Datagram(odd, peer, len(odd))]
                assert refl._answer_uniform(batch) is None
            assert refl._answer_uniform([Datagram(probe[:40], peer, 64)]) is None  # truncated
        finally:
            refl.close()
