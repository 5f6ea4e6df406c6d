"""The relay's policy with a hand-driven clock: no sockets, no sleeps."""

from __future__ import annotations

import pytest

from udpkit._core.errors import UsageError
from udpkit._core.relay import FlowTable, ImpairConfig, Impairment, ImpairRng


def seqs(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


def nums(out: list[bytes]) -> list[int]:
    return [int.from_bytes(p, "big") for p in out]


def pipe(seed: int = 1, **kw: object) -> Impairment:
    return Impairment(ImpairConfig(**kw), ImpairRng(seed, "up"))  # type: ignore[arg-type]


def drain(imp: Impairment, now: float, limit: float = 100.0) -> tuple[list[bytes], float]:
    """Poll at each deadline until nothing is held; return what came out and the time."""
    out: list[bytes] = []
    dl = imp.deadline
    while dl is not None and now < limit:
        now = max(now, dl)
        got, dl = imp.poll(now)
        out += got
    return out, now


def balanced(imp: Impairment) -> bool:
    s = imp.stats
    return s.unaccounted() == 0 and s.held == imp.held


def observed_reorders(received: list[int]) -> int:
    """RFC 4737-style: a datagram is reordered if a higher number arrived before it."""
    top, n = -1, 0
    for x in received:
        if x < top:
            n += 1
        top = max(top, x)
    return n


# ---------------------------------------------------------------- parsing
# The grammar itself is tested in test_units.py; here only the relay's options.


def test_config_from_text_reads_what_relay_takes() -> None:
    cfg = ImpairConfig.from_text(
        loss="5%", delay="20ms±5", reorder_max="2s", rate="1.5M", burst="64K", reorder_gap="2"
    )
    assert cfg == ImpairConfig(
        loss=0.05,
        delay=0.02,
        jitter=0.005,
        reorder_max=2.0,
        rate=1.5e6,
        burst=65536.0,
        reorder_gap=2,
    )
    assert ImpairConfig.from_text() == ImpairConfig()
    assert ImpairConfig.from_text(delay="20").delay == pytest.approx(0.02)  # bare: ms


@pytest.mark.parametrize(
    ("kw", "option"),
    [({"loss": "1.5"}, "--loss"), ({"delay": "5m"}, "--delay"), ({"rate": "10m"}, "--rate")],
)
def test_config_from_text_names_the_option(kw: dict[str, str], option: str) -> None:
    with pytest.raises(UsageError, match=f"invalid {option} "):
        ImpairConfig.from_text(**kw)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"loss": 1.5}, "invalid loss"),
        ({"reorder_gap": 0}, "invalid reorder_gap"),
        ({"reorder_max": 0.0}, "invalid reorder_max"),
        ({"delay": -1.0}, "invalid delay"),
        ({"rate": 0.0}, "invalid rate"),
        ({"burst": 0.0}, "invalid burst"),
    ],
)
def test_config_rejects(kw: dict[str, float], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ImpairConfig(**kw)  # type: ignore[arg-type]


def test_config_active() -> None:
    assert not ImpairConfig().active
    assert not ImpairConfig(delay_dist="normal", keep_order=True).active
    for kw in (
        {"loss": 0.1},
        {"rate": 100.0},
        {"gilbert": (0.01, 0.3, 1.0, 0.0)},
        {"mtu_blackhole": 1400},
        {"truncate": 0},
        {"corrupt": 0.01},
        {"jitter": 0.001},
    ):
        assert ImpairConfig(**kw).active, kw


# ---------------------------------------------------------------- impairments


def test_loss_is_counted_exactly_and_reproducible() -> None:
    a = pipe(seed=7, loss=0.2)
    out, dl = a.feed(0.0, seqs(1000))
    assert dl is None
    assert a.stats.lost + len(out) == 1000
    assert a.stats.passed == len(out)
    assert 120 < a.stats.lost < 280
    assert nums(out) == sorted(nums(out))
    again, _ = pipe(seed=7, loss=0.2).feed(0.0, seqs(1000))
    assert again == out
    other, _ = pipe(seed=8, loss=0.2).feed(0.0, seqs(1000))
    assert other != out
    assert balanced(a)


def test_seeded_streams_are_independent_per_stage() -> None:
    """Adding --duplicate must not change which datagrams --loss drops."""
    lossy, _ = pipe(seed=3, loss=0.3).feed(0.0, seqs(500))
    both, _ = pipe(seed=3, loss=0.3, duplicate=0.5).feed(0.0, seqs(500))
    assert sorted(set(nums(both))) == nums(lossy)


def test_direction_streams_differ() -> None:
    cfg = ImpairConfig(loss=0.5)
    up, _ = Impairment(cfg, ImpairRng(1, "up")).feed(0.0, seqs(200))
    down, _ = Impairment(cfg, ImpairRng(1, "down")).feed(0.0, seqs(200))
    assert up != down


def test_duplicate_copies_follow_their_original() -> None:
    d = pipe(seed=5, duplicate=0.25)
    out, _ = d.feed(0.0, seqs(400))
    got = nums(out)
    assert len(got) == 400 + d.stats.duplicated
    assert len(got) - len(set(got)) == d.stats.duplicated
    assert got == sorted(got)  # the copy comes right after the original
    assert balanced(d)


def test_reorder_by_gap_matches_what_a_receiver_sees() -> None:
    r = pipe(seed=11, reorder=0.1, reorder_gap=2, reorder_max=10.0)
    out, _ = r.feed(0.0, seqs(1000))
    rest, _ = drain(r, 0.0)
    got = nums(out + rest)
    assert sorted(got) == list(range(1000))
    assert observed_reorders(got) == r.stats.reordered
    assert 50 < r.stats.reordered < 150
    assert r.held == 0 and balanced(r)


def test_reorder_gap_is_exact() -> None:
    r = pipe(reorder=1.0, reorder_gap=3, reorder_max=1.0)
    out, dl = r.feed(0.0, seqs(1))
    assert out == [] and dl == pytest.approx(1.0)
    assert r.held == 1
    # reorder=1 holds everything: nothing passes, the timer releases it in order.
    out, dl = r.poll(0.5)
    assert out == [] and dl == pytest.approx(1.0)
    out, dl = r.poll(1.0)
    assert nums(out) == [0] and dl is None
    assert r.stats.reordered == 0  # nothing overtook it


def test_reorder_released_after_n_later_datagrams() -> None:
    cfg = ImpairConfig(reorder=0.5, reorder_gap=2, reorder_max=5.0)
    r = Impairment(cfg, ImpairRng(2, "up"))
    out: list[bytes] = []
    for p in seqs(50):
        got, _ = r.feed(0.0, [p])
        out += got
    rest, _ = drain(r, 0.0)
    got_all = nums(out + rest)
    assert observed_reorders(got_all) == r.stats.reordered
    assert r.stats.reordered > 0


def test_reorder_timer_releases_at_max() -> None:
    r = pipe(seed=1, reorder=1.0, reorder_gap=100, reorder_max=0.05)
    r.feed(0.0, seqs(3))
    assert r.poll(0.049)[0] == []
    out, dl = r.poll(0.05)
    assert nums(out) == [0, 1, 2] and dl is None


def test_delay_holds_until_deadline() -> None:
    d = pipe(delay=0.02)
    out, dl = d.feed(1.0, seqs(3))
    assert out == [] and dl == pytest.approx(1.02)
    assert d.poll(1.0199)[0] == []
    out, dl = d.poll(1.02)
    assert nums(out) == [0, 1, 2] and dl is None
    assert d.stats.delayed == 3


def test_jitter_with_keep_order_stays_in_bounds_and_never_reorders() -> None:
    d = pipe(seed=4, delay=0.02, jitter=0.005, keep_order=True)
    released: list[tuple[float, int]] = []
    now = 0.0
    for i in range(200):
        now = i * 0.001
        got, _ = d.feed(now, [i.to_bytes(4, "big")])
        released += [(now, x) for x in nums(got)]
        while d.deadline is not None and (d.deadline <= now + 0.001 or i == 199):
            t = d.deadline
            got, _ = d.poll(t)
            released += [(t, x) for x in nums(got)]
    order = [x for _, x in released]
    assert order == list(range(200))
    for t, x in released:
        assert t - x * 0.001 >= 0.015 - 1e-9
        # FIFO can add wait behind a later-jittered predecessor, never more than 2*jitter
        assert t - x * 0.001 <= 0.025 + 0.010 + 1e-9


def test_token_bucket_bound() -> None:
    """Bytes delivered by time T never exceed rate*T + burst."""
    rate, burst = 10_000.0, 1000.0
    b = pipe(rate=rate, burst=burst, queue_limit=100_000)
    delivered: list[tuple[float, int]] = []
    now = 0.0
    for step in range(200):
        now = step * 0.01
        got, _ = b.feed(now, [b"x" * 100] * 20)  # 200 kB/s offered, 20x the rate
        delivered += [(now, len(p)) for p in got]
        while b.deadline is not None and b.deadline <= now + 0.01:
            t = b.deadline
            got, _ = b.poll(t)
            delivered += [(t, len(p)) for p in got]
    total = 0
    for t, n in delivered:
        total += n
        assert total <= rate * t + burst + 1e-6
    # and the shaper is not idle: within one datagram of the bound at the end
    assert total >= rate * now + burst - 100 - 200
    assert b.stats.rate_limited > 0 and balanced(b)


def test_link_queue_overflow_is_counted() -> None:
    b = pipe(rate=1000.0, queue_limit=5)
    out, dl = b.feed(0.0, [b"y" * 100] * 10)
    # A link of 1000 B/s sends 100 bytes in 0.1 s: each waits for the ones ahead.
    assert out == [] and dl == pytest.approx(0.1)
    assert b.stats.rate_limited == 5 and b.stats.queue_drop == 5
    rest, end = drain(b, 0.0)
    assert len(rest) == 5 and end == pytest.approx(0.5)
    assert balanced(b)


def test_burst_lets_a_quiet_link_send_at_once() -> None:
    b = pipe(rate=100.0, burst=300.0)
    out, _ = b.feed(0.0, [b"z" * 100] * 4)
    assert len(out) == 3 and b.held == 1  # 300 bytes at once, the 4th waits its turn
    assert b.deadline == pytest.approx(1.0)


def test_all_stages_together_balance_and_reproduce() -> None:
    kw = {
        "loss": 0.1,
        "duplicate": 0.1,
        "reorder": 0.1,
        "reorder_gap": 3,
        "delay": 0.01,
        "jitter": 0.002,
        "rate": 1e6,
    }

    def run(seed: int) -> tuple[list[int], dict[str, int]]:
        p = pipe(seed=seed, **kw)
        out: list[bytes] = []
        for i in range(100):
            got, _ = p.feed(i * 0.001, seqs(10))
            out += got
            assert balanced(p)
        rest, _ = drain(p, 0.1)
        assert balanced(p) and p.held == 0
        return nums(out + rest), p.stats.as_dict()

    a, sa = run(9)
    b, sb = run(9)
    assert a == b and sa == sb
    assert sa["passed"] == len(a)


def test_abandon_counts_what_was_held() -> None:
    d = pipe(delay=1.0)
    d.feed(0.0, seqs(4))
    assert d.abandon() == 4
    assert d.stats.abandoned == 4 and d.held == 0 and d.deadline is None
    assert balanced(d)


# ---------------------------------------------------------------- flow table


def test_flows_created_lazily_and_capped() -> None:
    t = FlowTable(max_flows=2, idle_timeout=10.0)
    a = t.admit("a", ("127.0.0.1", 1), 0.0)
    assert a is not None and t.admit("a", ("127.0.0.1", 1), 1.0) is a
    assert t.admit("b", ("127.0.0.1", 1), 1.0) is not None
    assert t.admit("c", ("127.0.0.1", 1), 2.0, count=5) is None
    assert t.admit("c", ("127.0.0.1", 1), 2.0) is None
    assert t.refused == 6 and t.created == 2 and len(t) == 2 and t.peak == 2


def test_idle_flows_expire_on_time() -> None:
    t = FlowTable(max_flows=8, idle_timeout=60.0)
    a = t.admit("a", ("127.0.0.1", 1), 0.0)
    b = t.admit("b", ("127.0.0.1", 1), 10.0)
    assert a is not None and b is not None
    assert t.next_expiry() == 60.0
    assert t.expire(59.999) == []
    t.touch(a, 30.0)  # traffic either way keeps it
    assert t.next_expiry() == 70.0
    assert t.expire(70.0) == [b]
    assert t.expire(89.0) == [] and t.expire(90.0) == [a]
    assert len(t) == 0 and t.expired == 2 and t.next_expiry() is None


def test_expired_flow_counters_are_kept() -> None:
    t = FlowTable(idle_timeout=1.0)
    f = t.admit("a", ("127.0.0.1", 1), 0.0)
    assert f is not None
    f.up_in, f.down_out = 5, 3
    t.expire(2.0)
    tot = t.totals()
    assert tot.counts["up_in"] == 5 and tot.counts["down_out"] == 3


def test_flow_with_held_datagrams_is_not_expired() -> None:
    cfg = ImpairConfig(delay=5.0)
    rng = ImpairRng(1, "up")
    t = FlowTable(idle_timeout=1.0, make_impairments=lambda: (Impairment(cfg, rng), None))
    f = t.admit("a", ("127.0.0.1", 1), 0.0)
    assert f is not None and f.up is not None
    f.up.feed(0.0, [b"x"])
    assert t.expire(2.0) == []
    f.up.poll(5.0)
    assert t.expire(3.0) == [f]


def test_table_rejects_bad_limits() -> None:
    with pytest.raises(UsageError, match="invalid max_flows 0"):
        FlowTable(max_flows=0)
    with pytest.raises(UsageError, match="invalid idle_timeout 0"):
        FlowTable(idle_timeout=0)
