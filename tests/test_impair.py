"""Each fault of the relay's pipeline on the core, with a hand-driven clock.

No sockets and no sleeps: a test feeds datagrams at chosen instants, polls at
the deadlines the pipeline names, and checks what came out, when, and how each
datagram was counted (``unaccounted() == 0`` after every step).
"""

from __future__ import annotations

import argparse
from itertools import pairwise

import pytest

from udpkit._core.errors import UsageError
from udpkit._core.impair import Impairment, ImpairRng
from udpkit._core.impairconfig import FIELDS, ImpairConfig


def seqs(n: int, size: int = 4) -> list[bytes]:
    return [i.to_bytes(4, "big").ljust(size, b".") for i in range(n)]


def nums(out: list[bytes]) -> list[int]:
    return [int.from_bytes(p[:4], "big") for p in out]


def pipe(seed: int = 1, **kw: object) -> Impairment:
    return Impairment(ImpairConfig(**kw), ImpairRng(seed, "up"))  # type: ignore[arg-type]


def exact(imp: Impairment) -> None:
    st = imp.stats
    assert st.unaccounted() == 0, st
    assert st.held == imp.held


def run_until_empty(imp: Impairment, limit: float = 1000.0) -> list[tuple[float, bytes]]:
    """Poll at each deadline until nothing is held: ``(time, datagram)`` in order."""
    got: list[tuple[float, bytes]] = []
    while imp.deadline is not None and imp.deadline < limit:
        t = imp.deadline
        out, _ = imp.poll(t)
        got += [(t, p) for p in out]
        exact(imp)
    return got


def observed_reorders(received: list[int]) -> int:
    top, n = -1, 0
    for x in received:
        if x < top:
            n += 1
        top = max(top, x)
    return n


# ---------------------------------------------------------------- MTU, truncation, corruption


def test_mtu_blackhole_drops_only_what_is_over() -> None:
    imp = pipe(mtu_blackhole=1400)
    out, dl = imp.feed(0.0, [b"a" * 1400, b"b" * 1401, b"", b"c" * 9000])
    assert out == [b"a" * 1400, b""] and dl is None
    assert imp.stats.mtu_drop == 2 and imp.stats.passed == 2
    exact(imp)


def test_truncate_delivers_shorter_and_counts() -> None:
    imp = pipe(truncate=3)
    out, _ = imp.feed(0.0, [b"abcdef", b"ab", b"abc"])
    assert out == [b"abc", b"ab", b"abc"]
    assert imp.stats.truncated == 1 and imp.stats.passed == 3
    zero = pipe(truncate=0)
    assert zero.feed(0.0, [b"xyz"])[0] == [b""]  # a zero-length datagram still goes
    exact(imp)


def test_corrupt_flips_exactly_one_bit_in_what_it_counts() -> None:
    imp = pipe(seed=3, corrupt=0.2)
    sent = seqs(2000, size=64)
    out, _ = imp.feed(0.0, list(sent))
    changed = 0
    for a, b in zip(sent, out, strict=True):
        diff = sum(bin(x ^ y).count("1") for x, y in zip(a, b, strict=True))
        assert diff in (0, 1)
        changed += diff
    assert changed == imp.stats.corrupted
    assert 300 < changed < 500
    assert imp.feed(0.0, [b""] * 50)[0] == [b""] * 50  # nothing to flip in an empty one
    exact(imp)


def test_filters_do_not_touch_the_callers_list() -> None:
    sent = [b"abcdef"] * 10
    pipe(truncate=2, corrupt=1.0).feed(0.0, sent)
    assert sent == [b"abcdef"] * 10


# ---------------------------------------------------------------- blackout


def test_blackout_drops_arrivals_and_lets_held_ones_leave() -> None:
    imp = pipe(delay=0.1)
    imp.feed(0.0, seqs(3))
    imp.set_blackout(True)
    assert imp.blackout
    out, dl = imp.feed(0.05, seqs(5))
    assert out == [] and imp.stats.blackout_drop == 5 and dl == pytest.approx(0.1)
    assert nums(imp.poll(0.1)[0]) == [0, 1, 2]  # already on the wire
    imp.set_blackout(False)
    imp.feed(0.2, seqs(1))
    assert len(imp.poll(0.31)[0]) == 1
    exact(imp)


def test_blackout_works_with_no_other_fault() -> None:
    imp = pipe()
    imp.set_blackout(True)
    assert imp.feed(0.0, seqs(4))[0] == []
    assert imp.stats.blackout_drop == 4 and imp.stats.dropped == 4
    exact(imp)


# ---------------------------------------------------------------- jitter and order


def test_jitter_reorders_by_default_and_counts_it_as_a_receiver_sees() -> None:
    imp = pipe(seed=2, delay=0.01, jitter=0.01, delay_dist="normal")
    out: list[bytes] = []
    for i in range(500):
        now = i * 0.001
        out += [p for _, p in run_until_empty(imp, limit=now + 1e-12)]
        out += imp.feed(now, seqs(500)[i : i + 1])[0]
    out += [p for _, p in run_until_empty(imp)]
    got = nums(out)
    assert sorted(got) == list(range(500))
    assert imp.stats.reordered == observed_reorders(got) > 50
    exact(imp)


def test_keep_order_never_reorders_and_only_adds_wait() -> None:
    imp = pipe(seed=2, delay=0.01, jitter=0.01, delay_dist="normal", keep_order=True)
    released: list[tuple[float, int]] = []
    for i in range(500):
        now = i * 0.001
        released += [(t, nums([p])[0]) for t, p in run_until_empty(imp, limit=now + 1e-12)]
        released += [(now, x) for x in nums(imp.feed(now, seqs(500)[i : i + 1])[0])]
    released += [(t, nums([p])[0]) for t, p in run_until_empty(imp)]
    assert [x for _, x in released] == list(range(500))
    assert imp.stats.reordered == 0
    assert all(t >= x * 0.001 for t, x in released)


def test_duplicate_leaves_right_after_its_original_even_with_jitter() -> None:
    imp = pipe(seed=4, duplicate=0.3, delay=0.01, jitter=0.01)
    out: list[bytes] = []
    for i in range(300):
        out += imp.feed(i * 0.001, seqs(300)[i : i + 1])[0]
    got = nums(out + [p for _, p in run_until_empty(imp)])
    assert len(got) == 300 + imp.stats.duplicated
    copies = [a for a, b in pairwise(got) if a == b]
    assert len(copies) == imp.stats.duplicated  # every copy is adjacent to its original
    exact(imp)


# ---------------------------------------------------------------- the link


def test_link_departure_is_serialisation_behind_the_queue() -> None:
    """departure = max(now, link free) + size/rate, exactly."""
    imp = pipe(rate=1000.0)
    out, dl = imp.feed(0.0, [b"a" * 100])
    assert out == [] and dl == pytest.approx(0.1)
    imp.feed(0.05, [b"b" * 50])  # link busy until 0.1: leaves at 0.15
    got = run_until_empty(imp)
    assert [(round(t, 9), p[:1]) for t, p in got] == [(0.1, b"a"), (0.15, b"b")]
    imp.feed(1.0, [b"c" * 10])  # idle link: 10 ms of serialisation
    assert run_until_empty(imp)[0][0] == pytest.approx(1.01)
    assert imp.stats.rate_limited == 3
    exact(imp)


def test_queueing_delay_grows_as_in_a_bottleneck() -> None:
    """Offered at twice the rate, the n-th datagram waits about n * size/rate / 2 more."""
    imp = pipe(rate=100_000.0)  # 1000-byte datagrams: 10 ms each on the link
    when: dict[int, float] = {}
    for i in range(100):
        now = i * 0.005  # 200 kB/s offered
        for t, p in run_until_empty(imp, limit=now + 1e-12):
            when[nums([p])[0]] = t
        imp.feed(now, seqs(100, size=1000)[i : i + 1])
    for t, p in run_until_empty(imp):
        when[nums([p])[0]] = t
    waits = [when[i] - i * 0.005 for i in range(100)]
    for i, w in enumerate(waits):
        assert w == pytest.approx(0.01 + i * 0.005)
    exact(imp)


@pytest.mark.parametrize(
    ("queue", "kept"),
    [({"queue": 3000.0}, 3), ({"queue_time": 0.03}, 3), ({"queue_limit": 2}, 2)],
)
def test_queue_limit_tail_drops(queue: dict[str, object], kept: int) -> None:
    imp = pipe(1, rate=100_000.0, **queue)  # 1000-byte datagrams
    out, _ = imp.feed(0.0, seqs(10, size=1000))
    assert out == []
    assert imp.held == kept and imp.stats.queue_drop == 10 - kept
    assert nums([p for _, p in run_until_empty(imp)]) == list(range(kept))  # the tail went
    exact(imp)


def test_queue_in_time_follows_the_rate() -> None:
    assert ImpairConfig.from_text(rate="1M", queue="50ms").queue_bytes == pytest.approx(50_000)
    assert ImpairConfig.from_text(rate="1M", queue="64K").queue_bytes == 65536


# ---------------------------------------------------------------- drain, abandon, reconfigure


def test_drain_flushes_in_order_and_counts() -> None:
    imp = pipe(seed=1, reorder=0.3, reorder_max=5.0, delay=1.0, rate=100.0)
    imp.feed(0.0, seqs(20))
    held = imp.held
    assert held > 0
    out = imp.drain(0.5)
    assert len(out) == held and imp.held == 0 and imp.deadline is None
    assert imp.stats.drained == held and imp.stats.passed == 20
    assert imp.stats.reordered == observed_reorders(nums(out))
    exact(imp)


def test_abandon_counts_every_queue() -> None:
    imp = pipe(reorder=0.5, reorder_max=5.0, delay=1.0, rate=10.0)
    imp.feed(0.0, seqs(40))
    held = imp.held
    assert imp.abandon() == held and imp.stats.abandoned == held and imp.held == 0
    exact(imp)


def test_reconfigure_keeps_what_is_held_on_its_deadline() -> None:
    imp = pipe(delay=3.0)
    imp.feed(0.0, seqs(5))
    imp.reconfigure(ImpairConfig(), 0.5)  # faults cleared: new ones go at once ...
    out, dl = imp.feed(0.6, [b"new"])
    assert out == [b"new"] and dl == pytest.approx(3.0)  # ... the delayed keep 3 s
    assert nums(imp.poll(3.0)[0]) == [0, 1, 2, 3, 4]
    assert imp.stats.reordered == 5  # "new" overtook them, as a receiver sees
    exact(imp)


def test_same_seed_same_phases_same_outcome() -> None:
    phases = [
        ImpairConfig.from_text(loss="30%", loss_burst="5"),
        ImpairConfig.from_text(loss="5%", delay="10ms", jitter="5ms", delay_dist="pareto"),
        ImpairConfig.from_text(rate="100k", queue="5ms", corrupt="10%", duplicate="10%"),
    ]

    def run(seed: int) -> tuple[list[bytes], dict[str, int]]:
        imp = Impairment(phases[0], ImpairRng(seed, "down"))
        out: list[bytes] = []
        for step in range(300):
            now = step * 0.001
            if step % 100 == 0:
                imp.reconfigure(phases[step // 100], now)
            out += imp.poll(now)[0] + imp.feed(now, seqs(10, size=200))[0]
        out += imp.drain(1.0)
        exact(imp)
        return out, imp.stats.as_dict()

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_reconfigure_to_the_same_config_changes_nothing() -> None:
    cfg = ImpairConfig.from_text(loss="10%", loss_burst="3", jitter="2ms", delay="5ms")
    a, b = pipe(seed=9), Impairment(cfg, ImpairRng(9, "up"))
    a.reconfigure(cfg, 0.0)
    outs = []
    for imp in (a, b):
        out: list[bytes] = []
        for i in range(50):
            if imp is a and i == 25:
                imp.reconfigure(cfg, i * 0.001)
            out += imp.feed(i * 0.001, seqs(20))[0]
        outs.append(out + imp.drain(1.0))
    assert outs[0] == outs[1]


# ---------------------------------------------------------------- text and options


def test_from_text_takes_every_field_and_numbers_from_a_scenario() -> None:
    import inspect

    params = inspect.signature(ImpairConfig.from_text).parameters
    assert set(params) == set(FIELDS)
    cfg = ImpairConfig.from_text(
        loss=0.3,
        loss_burst=5,
        delay="20ms",
        jitter=5,
        delay_dist="pareto-normal",
        delay_correlation="25%",
        keep_order=True,
        rate="1M",
        burst="3K",
        queue="50ms",
        mtu_blackhole="1400",
        truncate=512,
        corrupt=0.00001,
        reorder_max="2s",
    )
    assert cfg == ImpairConfig(
        loss=0.3,
        loss_burst=5.0,
        delay=0.02,
        jitter=0.005,
        delay_dist="paretonormal",
        delay_correlation=0.25,
        keep_order=True,
        rate=1e6,
        burst=3072.0,
        queue_time=0.05,
        mtu_blackhole=1400,
        truncate=512,
        corrupt=0.00001,
        reorder_max=2.0,
    )


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"loss_burst": "4"}, "invalid --loss 0 with --loss-burst 4"),
        ({"loss": "90%", "loss_burst": "2"}, "at most 0.6667"),
        ({"loss": "5%", "gilbert": "1%,20%"}, "not both"),
        ({"gilbert": "1%,2%,3%,4%,5%"}, "P,R[,1-H[,1-K]]"),
        ({"burst": "5"}, "invalid --burst without --rate"),
        ({"queue": "64K"}, "invalid --queue without --rate"),
        ({"delay": "20±5", "jitter": "3"}, "give the jitter once"),
        ({"delay_dist": "gamma"}, "one of uniform, normal, pareto, paretonormal"),
        ({"mtu_blackhole": "70000"}, "invalid --mtu-blackhole '70000'"),
        ({"corrupt": "2"}, "invalid --corrupt '2'"),
        ({"keep_order": "maybe"}, "true or false"),
        ({"loss": [1]}, "a number or text"),
    ],
)
def test_from_text_refuses_with_the_option_named(kw: dict[str, object], words: str) -> None:
    with pytest.raises(UsageError, match=words.replace("[", r"\[").replace("(", r"\(")):
        ImpairConfig.from_text(**kw)


def test_command_line_options_build_the_same_config_as_from_text() -> None:
    from udpkit._cli.main import build_parser
    from udpkit._cli.relay import impair_config

    argv = [
        "relay", "127.0.0.1:1", "127.0.0.1:2", "--loss", "5%", "--loss-burst", "4",
        "--delay", "20ms", "--jitter", "5ms", "--delay-dist", "normal",
        "--delay-correlation", "25%", "--keep-order", "--rate", "1M", "--queue", "64K",
        "--mtu-blackhole", "1400", "--truncate", "1200", "--corrupt", "1%",
    ]  # fmt: skip
    args: argparse.Namespace = build_parser().parse_args(argv)
    assert impair_config(args) == ImpairConfig.from_text(
        loss="5%",
        loss_burst="4",
        delay="20ms",
        jitter="5ms",
        delay_dist="normal",
        delay_correlation="25%",
        keep_order="yes",
        rate="1M",
        queue="64K",
        mtu_blackhole="1400",
        truncate="1200",
        corrupt="1%",
    )
    bare = build_parser().parse_args(["relay", "127.0.0.1:1", "127.0.0.1:2"])
    assert impair_config(bare) is None


def test_a_late_original_and_its_copy_count_one_reordering() -> None:
    """A held-back datagram that was also duplicated once counted two reorderings where
    bench, like any receiver, saw one late datagram and one duplicate."""
    imp = pipe(seed=5, reorder=0.3, duplicate=0.3, reorder_gap=2, reorder_max=1.0)
    out = imp.feed(0.0, seqs(400))[0] + [p for _, p in run_until_empty(imp)]
    got = nums(out)
    first_copies = [x for i, x in enumerate(got) if i == 0 or got[i - 1] != x]
    assert imp.stats.reordered == observed_reorders(first_copies) > 20
    assert len(got) - len(first_copies) == imp.stats.duplicated
