"""The measurement core and the probe format, with a hand-driven clock: no sockets, no sleeps."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
from fractions import Fraction

import pytest

from udpkit._core.probe import (
    HEADER_SIZE,
    REPORT_REQUEST_SIZE,
    Kind,
    ProbeError,
    Report,
    build_probe,
    build_report,
    build_report_request,
    parse_probe_untrusted,
    parse_report_untrusted,
)
from udpkit._core.stats import (
    IntervalMeter,
    Jitter,
    LatencyHistogram,
    LossSplit,
    SequenceTracker,
    split_loss,
)

# ---------------------------------------------------------------- sequence tracking

# (arrival order, unique, duplicates, reordered, max extent, out of window); extents per
# RFC 4737 section 4.2: arrivals since the first one numbered higher (unique arrivals only).
TRACKER_CASES = [
    ([], 0, 0, 0, 0, 0),
    ([0, 1, 2, 3], 4, 0, 0, 0, 0),
    ([0, 2, 3], 3, 0, 0, 0, 0),  # a loss is not a reorder
    ([0, 2, 1, 3], 4, 0, 1, 1, 0),
    ([1, 2, 3, 0], 4, 0, 1, 3, 0),  # RFC 4737 example: extent 3
    ([0, 3, 4, 1, 2], 5, 0, 2, 2, 0),  # 1: first above is 3 (2 ago); 2: 3 is 3 ago... see below
    ([0, 1, 1, 2], 3, 1, 0, 0, 0),
    ([0, 2, 1, 1, 2], 3, 2, 1, 1, 0),  # duplicates of reordered and in-order datagrams
    ([5, 6, 7], 3, 0, 0, 0, 0),  # starting past 0: the first five are lost, not reordered
]


@pytest.mark.parametrize(
    ("arrivals", "unique", "dups", "reordered", "extent", "oow"), TRACKER_CASES
)
def test_tracker_table(  # noqa: PLR0917 - one table column each
    arrivals: list[int], unique: int, dups: int, reordered: int, extent: int, oow: int
) -> None:
    for batch in (False, True):
        t = SequenceTracker()
        if batch:
            t.observe_many(arrivals)
        else:
            for s in arrivals:
                t.observe(s)
        assert (t.unique, t.duplicates, t.reordered, t.out_of_window) == (
            unique,
            dups,
            reordered,
            oow,
        )
        assert t.received == len(arrivals)
        if arrivals == [0, 3, 4, 1, 2]:
            # 1 arrives 4th (index 3): first above it is 3 at index 1 -> 2; 2 at index 4 -> 3.
            assert t.extent_max == 3 and t.extent_sum == 5
        else:
            assert t.extent_max == extent


def _extent_reference(arrivals: list[int]) -> tuple[int, int, int, int]:
    """RFC 4737 by the book, quadratic: (unique, dups, reordered, extent sum)."""
    seen: set[int] = set()
    order: list[int] = []
    dups = reordered = extent_sum = 0
    nxt = 0
    for s in arrivals:
        if s in seen:
            dups += 1
            continue
        seen.add(s)
        i = len(order)
        order.append(s)
        if s < nxt:
            reordered += 1
            j = next(k for k, x in enumerate(order) if x > s)
            extent_sum += i - j
        else:
            nxt = s + 1
    return len(seen), dups, reordered, extent_sum


@pytest.mark.parametrize("seed", range(20))
def test_tracker_matches_reference_on_random_impairment(seed: int) -> None:
    rng = random.Random(seed)
    arrivals: list[int] = []
    held: list[int] = []
    for s in range(2000):
        r = rng.random()
        if r < 0.05:
            continue  # lost
        if r < 0.10:
            held.append(s)  # released later: reordered
            continue
        arrivals.append(s)
        if r < 0.13:
            arrivals.append(s)  # duplicated
        if held and rng.random() < 0.2:
            arrivals.append(held.pop(0))
    arrivals.extend(held)
    t = SequenceTracker()
    # Mixed: runs of batches and single arrivals take the same path to the same figures.
    k = 0
    while k < len(arrivals):
        n = rng.randint(1, 70)
        t.observe_many(arrivals[k : k + n])
        k += n
    unique, dups, reordered, extent_sum = _extent_reference(arrivals)
    assert (t.unique, t.duplicates, t.reordered, t.extent_sum) == (
        unique,
        dups,
        reordered,
        extent_sum,
    )
    assert t.lost(2000) == 2000 - unique


def test_tracker_window_bounds_memory_and_counts_what_it_forgets() -> None:
    t = SequenceTracker(window=64)
    t.observe_many(list(range(100_000)))
    assert t.unique == 100_000 and t.reordered == 0
    assert len(t._bits) < 64 + 8192  # the bitmap slid, it did not grow
    t.observe(5)  # far below the window: cannot tell duplicate from late
    t.observe(100_000 + 64)  # a jump past the window: refused as garbage
    assert t.out_of_window == 2
    t.observe(99_999)  # inside the window: a duplicate
    assert t.duplicates == 1


def test_tracker_huge_untrusted_number_allocates_nothing() -> None:
    t = SequenceTracker()
    t.observe(2**63)
    assert t.out_of_window == 1 and len(t._bits) == 0


def test_in_order_batch_fast_path_is_exact() -> None:
    t = SequenceTracker()
    t.observe_many(list(range(0, 10)))
    t.observe_many(list(range(12, 20)))  # a gap of two between batches
    t.observe_many([10, 11])  # both late
    assert (t.unique, t.reordered, t.highest) == (20, 2, 19)
    assert t.extent_max == 9  # 11 arrives 9 unique arrivals after 12 did... and 10 after 8
    assert t.reordered_ratio == pytest.approx(2 / 20)


# ---------------------------------------------------------------- jitter


def test_jitter_rfc3550_by_hand() -> None:
    j = Jitter()
    # transits 100, 110, 100, 100: |D| = 10, 10, 0.
    for send, arrive in ((0, 100), (1000, 1110), (2000, 2100), (3000, 3100)):
        j.observe(send, arrive)
    expect = 0.0
    for d in (10, 10, 0):
        expect += (d - expect) / 16
    assert j.jitter_ns == pytest.approx(expect)
    assert j.samples == 4


def test_jitter_ignores_a_constant_clock_offset() -> None:
    a, b = Jitter(), Jitter()
    for i, delay in enumerate((50, 70, 40, 90)):
        a.observe(i * 1000, i * 1000 + delay)
        b.observe(i * 1000 + 10**12, i * 1000 + delay)  # the sender's clock is far off
    assert a.jitter_ns == pytest.approx(b.jitter_ns)


# ---------------------------------------------------------------- histogram


@pytest.mark.parametrize("value", [0, 1, 2047, 2048, 2049, 4095, 4096, 123_456, 10**9, 2**50 + 7])
def test_histogram_precision_is_within_a_thousandth(value: int) -> None:
    h = LatencyHistogram()
    h.record(value)
    h.record(value * 3 + 1)
    assert h.percentile(0.0) == value  # clipped to the exact minimum
    p50 = h.percentile(50)
    assert value <= p50 <= value + value / 1024 + 1


def test_histogram_percentiles_against_sorted_values() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(11, 1)) for _ in range(10_000)]
    h = LatencyHistogram()
    h.record_many(values)
    ordered = sorted(values)
    for p in (50, 90, 99, 99.9):
        rank = math.ceil(Fraction(str(p)) / 100 * len(values))  # exact arithmetic
        exact = ordered[rank - 1]
        got = h.percentile(p)
        assert exact <= got <= exact * (1 + 1 / 1024) + 1, p
    assert h.percentile(100) == max(values) and h.min_ns == min(values)
    assert h.mean_ns == pytest.approx(sum(values) / len(values))
    cdf = h.cdf()
    assert cdf[-1] == (max(values), 1.0)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(cdf))


def test_histogram_agrees_with_hdrhistogram_when_installed() -> None:
    hdrh = pytest.importorskip("hdrh.histogram", reason="hdrhistogram is not installed")
    rng = random.Random(3)
    values = [rng.randint(1_000, 50_000_000) for _ in range(20_000)]
    ours = LatencyHistogram()
    ref = hdrh.HdrHistogram(1, 60 * 10**9, 3)
    for v in values:
        ours.record(v)
        ref.record_value(v)
    for p in (50, 90, 99, 99.9):
        theirs = ref.get_value_at_percentile(p)
        assert abs(ours.percentile(p) - theirs) <= theirs / 500, p


def test_histogram_merge_and_edges() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    assert a.percentile(99) == 0 and a.mean_ns == 0.0 and a.cdf() == []
    a.record(-5)  # a clock step backwards counts as 0, never negative
    b.record(1000)
    a.merge(b)
    assert (a.count, a.min_ns, a.max_ns) == (2, 0, 1000)
    with pytest.raises(ValueError, match="101"):
        a.percentile(101)


# ---------------------------------------------------------------- intervals


def test_interval_meter_with_a_hand_clock() -> None:
    m = IntervalMeter(0, 1_000)
    assert m.tick(10) == []
    m.add("sent", 5)
    m.peak("rtt", 30)
    m.peak("rtt", 20)
    rows = m.tick(2_500)  # two intervals closed at once; the second is empty
    assert [(r.start_ns, r.end_ns, r.sums) for r in rows] == [
        (0, 1_000, {"sent": 5}),
        (1_000, 2_000, {}),
    ]
    assert rows[0].peaks == {"rtt": 30}
    assert rows[0].per_second("sent") == pytest.approx(5 / 1e-6)
    m.add("sent", 1)
    last = m.finish(2_250)
    assert [(r.start_ns, r.end_ns) for r in last] == [(2_000, 2_250)]
    assert m.finish(2_300) == []  # nothing counted: no empty sliver
    assert len(m.rows) == 3
    with pytest.raises(ValueError, match="interval"):
        IntervalMeter(0, 0)


# ---------------------------------------------------------------- loss split


@pytest.mark.parametrize(
    ("numbered", "arrived", "sender", "kernel", "expect"),
    [
        (100, 100, 0, 0, LossSplit(0, 0, 0, 0)),
        (100, 90, 2, 5, LossSplit(10, 2, 3, 5)),
        (100, 90, 0, None, LossSplit(10, 0, 10, 0)),
        (100, 90, 0, 50, LossSplit(10, 0, 0, 10, kernel_shared=True)),
        (100, 105, 0, 0, LossSplit(0, 0, 0, 0)),  # never negative
    ],
)
def test_split_loss(
    numbered: int, arrived: int, sender: int, kernel: int | None, expect: LossSplit
) -> None:
    got = split_loss(numbered, arrived, sender, kernel)
    assert got == expect
    assert got.lost == got.sender + got.path + got.receiver_kernel


# ---------------------------------------------------------------- probe format


def test_probe_round_trip() -> None:
    data = build_probe(Kind.PROBE, 0xDEADBEEF, 42, 123_456_789, 64, rseq=7)
    assert len(data) == 64
    p = parse_probe_untrusted(data)
    assert (p.kind, p.run_id, p.seq, p.send_ns, p.rseq, p.length) == (
        Kind.PROBE,
        0xDEADBEEF,
        42,
        123_456_789,
        7,
        64,
    )


GARBAGE = [
    b"",
    b"uK",
    b"x" * 64,
    b"uK\x02" + bytes(61),  # version 2
    b"uK\x01\x09" + bytes(60),  # unknown kind
    bytes(HEADER_SIZE - 1),
]


@pytest.mark.parametrize("data", GARBAGE)
def test_parse_untrusted_raises_only_probe_error(data: bytes) -> None:
    with pytest.raises(ProbeError):
        parse_probe_untrusted(data)


def test_parse_untrusted_fuzz_raises_only_probe_error() -> None:
    rng = random.Random(1)
    base = build_probe(Kind.PROBE, 1, 2, 3, 40)
    for _ in range(3000):
        data = bytearray(base[: rng.randint(0, 40)])
        for _ in range(rng.randint(0, 3)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(ProbeError):
            parse_probe_untrusted(bytes(data))


@pytest.mark.parametrize(
    ("args", "word"),
    [
        ((Kind.PROBE, 1, 0, 0, 31), "31"),
        ((Kind.PROBE, 1, 0, 0, 70000), "70000"),
        ((9, 1, 0, 0, 64), "9"),
    ],
)
def test_build_probe_names_bad_input(args: tuple[int, int, int, int, int], word: str) -> None:
    with pytest.raises(ProbeError, match=word):
        build_probe(*args)


def test_report_round_trip_and_amplification_bound() -> None:
    req = build_report_request(5, 99, 1)
    assert len(req) == REPORT_REQUEST_SIZE
    rep = Report(received=10, unique=9, duplicates=1, kernel_drops=None, jitter_ns=1.5)
    data = build_report(5, 99, 2, rep)
    assert len(data) <= REPORT_REQUEST_SIZE
    head, got = parse_report_untrusted(data)
    assert head.seq == 99 and got == rep
    worst = Report(**{k: 2**63 for k in ("received", "unique", "duplicates", "bytes")})
    assert len(build_report(5, 99, 2, worst)) <= REPORT_REQUEST_SIZE


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1]", b'{"received": "x"}', b'{"jitter_ns": []}', b'{"kernel_drops": 1.5}'],
)
def test_parse_report_untrusted_rejects_bad_bodies(body: bytes) -> None:
    head = build_probe(Kind.REPORT, 1, 2, 3, HEADER_SIZE)
    with pytest.raises(ProbeError):
        parse_report_untrusted(head + body)


def test_parse_report_ignores_unknown_fields() -> None:
    head = build_probe(Kind.REPORT, 1, 2, 3, HEADER_SIZE)
    _, rep = parse_report_untrusted(head + json.dumps({"unique": 3, "future": 1}).encode())
    assert rep.unique == 3
