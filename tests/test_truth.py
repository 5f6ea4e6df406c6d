"""Truth tests: ``udpkit bench`` through ``udpkit relay`` reports exactly what the relay did.

Three processes on 127.0.0.1, as a user would run them::

    udpkit reflect 127.0.0.1 0
    udpkit relay 127.0.0.1:0 127.0.0.1:<reflect> --seed N --loss P ...
    udpkit bench 127.0.0.1 <relay> --count N --rate R --json

The relay prints its own counters on SIGTERM (``key=value`` lines, see
``udpkit._core.relaystats.format_stats``); bench prints its JSON.  Nothing below knows
which datagrams a seed drops: every case parses both outputs and compares them,
so a seed nobody tried is checked the same way.  Per direction:

- bench ``forward`` (client -> reflector) against the relay's ``up`` counters,
- bench ``return`` (reflector -> client, on the reflector's own numbering)
  against the relay's ``down`` counters,

and the figures must be equal: lost (everything the relay threw away),
duplicated, reordered.  Bench's report requests and the reflector's reports cross
the relay too and are counted by it; bench's figures are about probes only, so an
impaired control datagram shows as a difference of one, which the failure message
diagnoses (``_control_story``) rather than the comparison forgiving it.  Delay is
compared as a shift of bench's RTT p50 against a direct run, within
:data:`DELAY_TOLERANCE_MS`.  A clean path through the relay is compared with
sockperf (iperf3 needs a TCP control connection on the same port, which a UDP
relay cannot carry; ``tests/test_bench.py`` compares with iperf3 and sockperf
directly).

Every process is ended by its PID; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from tests._proc import (
    STEP,
    LineReader,
    end_process,
    free_port,
    run,
    start_listening,
)
from tests.conftest import needs_tool

pytestmark = pytest.mark.linux_only  # the relay's signals and counters are POSIX; CI is Linux

HOST = "127.0.0.1"
# Probes per case and their rate: ~0.15 s of sending, slow enough for the relay's
# Python impairment path on a loaded 2-core box (checked: no relay or kernel drops).
COUNT = 1500
RATE = "10k"
# Late replies: the relay releases a held datagram after --reorder-max (100 ms) at most.
LINGER = "0.6"
# RTT p50 through ``--delay D`` must be the direct p50 + D per impaired direction, +-this.
DELAY_TOLERANCE_MS = 5.0
BENCH_TIMEOUT = 30.0

# ---------------------------------------------------------------- processes


@dataclass
class RelayCounters:
    """The relay's final counters, parsed from its ``key=value`` lines on stderr."""

    totals: dict[str, str] = field(default_factory=dict)
    up: dict[str, int] = field(default_factory=dict)
    down: dict[str, int] = field(default_factory=dict)
    # Per client flow (its address as the relay saw it): {"up": {...}, "down": {...}}.
    flows: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    text: str = ""

    def dropped(self, direction: str) -> int:
        """Everything one direction's pipeline threw away, whatever the reason."""
        return _dropped(self.up if direction == "up" else self.down)


def _dropped(d: dict[str, int]) -> int:
    return d["lost"] + d["queue_drop"] + d["overflow"] + d["abandoned"]


_PAIR = re.compile(r"(\w+)=(\S+)")


def parse_relay_counters(text: str) -> RelayCounters:
    """Parse the last counter block ``udpkit relay`` printed (totals, up, down lines)."""
    out = RelayCounters(text=text)
    for line in text.splitlines():
        if line.startswith("udpkit relay:   flow "):
            peer, _, rest = line[len("udpkit relay:   flow ") :].partition(" ")
            parts = rest.split("; ")
            out.flows[peer] = {
                name: {k: int(v) for k, v in _PAIR.findall(part)}
                for name, part in (("up", parts[0]), ("down", parts[1]))
            }
            continue
        if not line.startswith("udpkit relay: "):
            continue
        body = line[len("udpkit relay: ") :]
        pairs = dict(_PAIR.findall(body))
        if body.startswith("up "):
            out.up = {k: int(v) for k, v in pairs.items()}
        elif body.startswith("down "):
            out.down = {k: int(v) for k, v in pairs.items()}
        elif "flows" in pairs:
            out.totals = pairs
    assert out.up and out.down and out.totals, f"no relay counters in:\n{text}"
    return out


def _start(*args: str) -> tuple[subprocess.Popen[bytes], int, LineReader]:
    """Start ``udpkit ARGS`` and read its port from the ``listening on`` line."""
    return start_listening(*args, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def reflect_port() -> Iterator[int]:
    """One ``udpkit reflect`` for the module: every bench run has its own run id."""
    proc, port, _err = _start("reflect", HOST, "0", "--quiet")
    try:
        yield port
    finally:
        end_process(proc)


@contextlib.contextmanager
def relay(target: int, *opts: str) -> Iterator[tuple[int, list[RelayCounters]]]:
    """``udpkit relay`` to ``target``; on the way out SIGTERM, and its counters appended."""
    proc, port, err = _start("relay", f"{HOST}:0", f"{HOST}:{target}", *opts)
    found: list[RelayCounters] = []
    try:
        yield port, found
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STEP) == 0
        found.append(parse_relay_counters(err.read_rest(STEP).decode()))
    finally:
        end_process(proc)


def bench(port: int, *opts: str) -> dict[str, Any]:
    """``udpkit bench --json`` to ``port``; its JSON document."""
    res = run("bench", HOST, str(port), "--json", "--quiet", *opts, timeout=BENCH_TIMEOUT)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def bench_through_relay(
    target: int, relay_opts: list[str], bench_opts: list[str]
) -> tuple[dict[str, Any], RelayCounters]:
    """One bench run through a fresh relay; bench's JSON and the relay's counters."""
    with relay(target, *relay_opts) as (port, counters):
        doc = bench(port, *bench_opts)
    return doc, counters[0]


# ---------------------------------------------------------------- the comparison


_DIRECTIONS = (("up", "forward"), ("down", "return"))


def assert_bench_tells_the_truth(doc: dict[str, Any], relay: RelayCounters) -> None:
    """bench's per-direction loss, duplicates and reorders equal the relay's counts.

    Compared flow by flow: bench's probe flows are the relay flows from the addresses
    in ``flows[i].local``; bench keeps its opening and report exchange on a control
    socket of its own (``control_local``), a separate relay flow, so whatever the relay
    does to those datagrams is not in the probe figures -- and not in this comparison.
    """
    total = doc["total"]
    # Preconditions, not tolerances: the relay forwarded everything it was not told
    # to drop, and no socket overflowed (else the test box is too slow for RATE).
    assert relay.totals["send_errors"] == "0", relay.text
    assert relay.totals["kernel_drops"] in ("0", "unavailable"), relay.text
    assert total["sent_datagrams"] == total["forward"]["sent_datagrams"]
    probe_flows = [f["local"] for f in doc["flows"]]
    for local in probe_flows:
        assert local in relay.flows, f"no relay flow for bench's {local}:\n{relay.text}"
    for f in doc["flows"]:
        assert f["control_local"] not in probe_flows  # control never shares a probe flow
    problems = []
    for direction, key in _DIRECTIONS:
        b = total[key]
        assert b["lost_sender_datagrams"] == 0 and b["lost_receiver_kernel_datagrams"] == 0, b
        rs = [relay.flows[local][direction] for local in probe_flows]
        got = {
            "sent": b["sent_datagrams"],
            "lost": b["lost_datagrams"],
            "duplicated": b["duplicate_datagrams"],
            "reordered": b["reordered_datagrams"],
        }
        want = {
            "sent": sum(r["in"] for r in rs),
            "lost": sum(_dropped(r) for r in rs),
            "duplicated": sum(r["duplicated"] for r in rs),
            "reordered": sum(r["reordered"] for r in rs),
        }
        if got != want:
            problems.append(f"{key}: bench {got} != relay {direction} {want}")
    assert not problems, "; ".join(problems) + "\n" + relay.text


def _run_case(target: int, relay_opts: list[str], bench_opts: list[str] | None = None) -> None:
    opts = ["--count", str(COUNT), "--rate", RATE, "--linger", LINGER]
    doc, counters = bench_through_relay(target, relay_opts, opts + (bench_opts or []))
    assert_bench_tells_the_truth(doc, counters)


# ---------------------------------------------------------------- impairments, seeded

SEEDS = [1, 7, 2024]

IMPAIRMENTS = {
    "loss": ["--loss", "5%"],
    "duplicate": ["--duplicate", "5%"],
    "reorder": ["--reorder", "5%"],
    "all": ["--loss", "3%", "--duplicate", "4%", "--reorder", "5%"],
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("direction", ["both", "up", "down"])
@pytest.mark.parametrize("kind", list(IMPAIRMENTS))
def test_bench_reports_what_the_relay_did(
    reflect_port: int, kind: str, direction: str, seed: int
) -> None:
    opts = [*IMPAIRMENTS[kind], "--direction", direction, "--seed", str(seed)]
    doc, counters = bench_through_relay(
        reflect_port, opts, ["--count", str(COUNT), "--rate", RATE, "--linger", LINGER]
    )
    assert_bench_tells_the_truth(doc, counters)
    # The relay did impair what was asked, and only that: a silent no-op would pass above.
    kind_keys = {"loss": ["lost"], "duplicate": ["duplicated"], "reorder": ["reordered"]}
    keys = kind_keys.get(kind, ["lost", "duplicated", "reordered"])
    for d in ("up", "down"):
        impaired = direction in ("both", d)
        for k in ("lost", "duplicated", "reordered"):
            n = getattr(counters, d)[k]
            if impaired and k in keys:
                assert n > 0, f"{d} {k}=0 with {opts}\n{counters.text}"
            else:
                assert n == 0, f"{d} {k}={n} with {opts}\n{counters.text}"


@pytest.mark.parametrize(
    ("name", "relay_opts", "bench_opts"),
    [
        ("parallel flows", ["--loss", "4%", "--duplicate", "4%", "--reorder", "4%"], ["-P", "3"]),
        ("wide reorder gap", ["--reorder", "8%", "--reorder-gap", "7"], []),
        ("big probes", ["--loss", "5%", "--duplicate", "5%"], ["--size", "1200"]),
        ("high rates", ["--loss", "20%", "--duplicate", "20%", "--reorder", "20%"], []),
        ("jitter reorders", ["--delay", "3ms", "--jitter", "2ms", "--delay-dist", "normal"], []),
    ],
)
def test_other_shapes_agree_too(
    reflect_port: int, name: str, relay_opts: list[str], bench_opts: list[str]
) -> None:
    _run_case(reflect_port, [*relay_opts, "--seed", "11"], bench_opts)


def test_token_bucket_drops_are_bench_loss(reflect_port: int) -> None:
    """--rate: what waits for tokens arrives late, what overflows the queue is lost."""
    # 1500 probes in 0.1 s into 1000/s: the 1000-datagram queue overflows for sure.
    opts = ["--count", str(COUNT), "--rate", "15k", "--linger", "2.5"]
    doc, counters = bench_through_relay(
        reflect_port, ["--rate", "64k", "--direction", "up", "--seed", "3"], opts
    )
    assert counters.up["rate_limited"] > 0 and counters.up["queue_drop"] > 0, counters.text
    assert_bench_tells_the_truth(doc, counters)


def test_jitter_never_reorders(reflect_port: int) -> None:
    """With --keep-order the delay stage is FIFO: jitter alone shows no reordering to bench."""
    opts = ["--count", "500", "--rate", "5k", "--linger", LINGER]
    relay = ["--delay", "3±3", "--keep-order", "--seed", "5"]
    doc, counters = bench_through_relay(reflect_port, relay, opts)
    assert_bench_tells_the_truth(doc, counters)
    assert counters.up["delayed"] > 0 and counters.down["delayed"] > 0, counters.text
    for _, key in _DIRECTIONS:
        assert doc["total"][key]["reordered_datagrams"] == 0


def test_same_seed_same_counts(reflect_port: int) -> None:
    """--seed makes a case reproducible: two runs, the same relay counts and bench figures."""
    opts = ["--loss", "5%", "--duplicate", "5%", "--reorder", "5%", "--seed", "42"]
    runs = [
        bench_through_relay(
            reflect_port, opts, ["--count", "800", "--rate", "8k", "--linger", LINGER]
        )
        for _ in range(2)
    ]
    for doc, counters in runs:
        assert_bench_tells_the_truth(doc, counters)
    (d1, c1), (d2, c2) = runs
    for k in ("lost", "duplicated"):
        assert (c1.up[k], c1.down[k]) == (c2.up[k], c2.down[k])
    assert d1["total"]["forward"]["lost_datagrams"] == d2["total"]["forward"]["lost_datagrams"]


# ---------------------------------------------------------------- delay


def _p50(doc: dict[str, Any]) -> float:
    p50: float = doc["total"]["rtt_p50_ms"]
    return p50


@pytest.mark.parametrize(("direction", "legs"), [("both", 2), ("up", 1), ("down", 1)])
def test_delay_shifts_rtt_p50(reflect_port: int, direction: str, legs: int) -> None:
    """--delay 20 adds 20 ms per impaired direction to bench's RTT p50 (+-5 ms)."""
    opts = ["--count", "300", "--rate", "1k", "--linger", "1"]
    direct = _p50(bench(reflect_port, *opts))
    doc, counters = bench_through_relay(
        reflect_port, ["--delay", "20", "--direction", direction, "--seed", "1"], opts
    )
    assert_bench_tells_the_truth(doc, counters)
    shift = _p50(doc) - direct
    want = 20.0 * legs
    assert abs(shift - want) <= DELAY_TOLERANCE_MS, (
        f"p50 {_p50(doc):.3f} ms through --delay 20 ({direction}) vs direct {direct:.3f} ms: "
        f"shift {shift:.3f} ms, want {want} +- {DELAY_TOLERANCE_MS}"
    )
    for d in ("up", "down"):
        delayed = getattr(counters, d)["delayed"]
        assert (delayed > 0) == (direction in ("both", d)), counters.text


# ---------------------------------------------------------------- clean path, other tools


def test_clean_relay_is_invisible(reflect_port: int) -> None:
    """No impairment: every probe and echo crosses once, in order, and the relay agrees."""
    doc, counters = bench_through_relay(
        reflect_port, [], ["--count", "3000", "--rate", "20k", "--linger", LINGER]
    )
    assert_bench_tells_the_truth(doc, counters)
    total = doc["total"]
    for _, key in _DIRECTIONS:
        b = total[key]
        assert (b["sent_datagrams"], b["unique_datagrams"], b["lost_datagrams"]) == (3000,) * 2 + (
            0,
        )
    assert total["path_lost_datagrams"] == 0
    # Probes plus the control exchange: the relay forwarded all it received.
    assert counters.up["in"] == counters.up["out"] and counters.down["in"] == counters.down["out"]
    assert counters.up["in"] >= 3000 and counters.down["in"] >= 3000


def _sockperf_through(port: int, *args: str) -> str:
    res = subprocess.run(
        ["sockperf", *args, "-i", HOST, "-p", str(port), "-m", "64"],
        capture_output=True,
        timeout=STEP,
        check=False,
    )
    text = (res.stdout + res.stderr).decode(errors="replace")
    assert res.returncode == 0, text[-2000:]
    return text


@contextlib.contextmanager
def sockperf_server() -> Iterator[int]:
    port = free_port(socket.AF_INET, HOST)
    srv = subprocess.Popen(
        ["sockperf", "sr", "-i", HOST, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)  # sockperf prints nothing machine-readable when it is bound
        yield port
    finally:
        end_process(srv)


@needs_tool("sockperf")
def test_sockperf_sees_the_relay_as_bench_does(reflect_port: int) -> None:
    """Through the same clean relay, sockperf's ping-pong and bench's window-1 RTT agree,
    and sockperf counts no loss where bench counts none."""
    with sockperf_server() as sport, relay(sport) as (port, _counters):
        text = _sockperf_through(port, "pp", "-t", "1")
    m = re.search(r"percentile 50\.000 =\s+([\d.]+)", text)
    assert m is not None, text[-2000:]
    sp_rtt_us = 2 * float(m.group(1))  # sockperf reports half the round trip
    drops = re.search(r"dropped messages = (\d+)", text)
    assert drops is not None and int(drops.group(1)) == 0, text[-2000:]
    # Both are user-space ping-pong through the same Python relay; bench's Python
    # client adds tens of microseconds over sockperf's C one.  Three processes share
    # two cores, so a run the scheduler slowed (p50 near 1 ms) is measured again, at
    # most twice: noise only ever adds time, and every run must tell the truth.
    seen = []
    for _ in range(3):
        doc, counters = bench_through_relay(
            reflect_port, [], ["--duration", "1", "--window", "1", "--linger", LINGER]
        )
        assert_bench_tells_the_truth(doc, counters)
        assert doc["total"]["round_trip"]["lost_datagrams"] == 0
        seen.append(_p50(doc) * 1000)
        if seen[-1] <= 4 * sp_rtt_us + 200:
            break
    rtt_us = min(seen)
    assert 0.5 * sp_rtt_us <= rtt_us <= 4 * sp_rtt_us + 200, (seen, sp_rtt_us)


@needs_tool("sockperf")
def test_sockperf_throughput_through_the_relay_matches_bench(reflect_port: int) -> None:
    """At 10k datagrams/s of 64 B for 1 s through the same clean relay, sockperf and bench
    send at the same rate and nothing is lost: the relay forwarded all it received."""
    with sockperf_server() as sport, relay(sport) as (port, c):
        text = _sockperf_through(port, "tp", "--mps", "10000", "-t", "1")
    m = re.search(r"Total of (\d+) messages sent in ([\d.]+) sec", text)
    assert m is not None, text[-2000:]
    sp_sent, sp_secs = int(m.group(1)), float(m.group(2))
    sp = c[0]
    # sockperf's warm-up messages cross the relay too, so it received at least the count.
    assert sp.up["in"] >= sp_sent and sp.up["out"] == sp.up["in"], sp.text
    doc, counters = bench_through_relay(
        reflect_port, [], ["--duration", "1", "--rate", "10k", "--linger", LINGER]
    )
    assert_bench_tells_the_truth(doc, counters)
    fwd = doc["total"]["forward"]
    assert fwd["lost_datagrams"] == 0 and doc["total"]["return"]["lost_datagrams"] == 0
    assert fwd["datagrams_per_s"] == pytest.approx(sp_sent / sp_secs, rel=0.05)
