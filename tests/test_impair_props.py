"""Property: every datagram is in exactly one place after every step of any run.

Random configs (every fault, any mix), and random runs of feeds, polls,
reconfigures, blackouts, drains and abandons on a hand-driven clock.  After each
step ``fed + duplicated == passed + held + drops by kind`` (``unaccounted() == 0``),
``held`` is what the queues hold, what came out is what ``passed`` says, and the
next deadline is in the future (the loop never spins on a stale one).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from udpkit._core.impair import Impairment, ImpairRng
from udpkit._core.impairconfig import DELAY_DISTS, ImpairConfig

probability = st.sampled_from([0.0, 0.0, 0.05, 0.3, 1.0])
maybe_ms = st.sampled_from([0.0, 0.0, 0.001, 0.02])


@st.composite
def configs(draw: st.DrawFn) -> ImpairConfig:
    loss = draw(st.sampled_from([0.0, 0.05, 0.3]))
    burst = draw(st.sampled_from([None, 1.0, 4.0])) if loss else None
    gilbert = None
    if not loss and draw(st.booleans()):
        gilbert = draw(st.tuples(probability, probability, probability, probability))
    rate = draw(st.sampled_from([None, None, 1e4, 1e6]))
    return ImpairConfig(
        loss=loss,
        loss_burst=burst,
        gilbert=gilbert,
        duplicate=draw(probability),
        reorder=draw(probability),
        reorder_gap=draw(st.integers(1, 4)),
        reorder_max=draw(st.sampled_from([0.001, 0.05])),
        delay=draw(maybe_ms),
        jitter=draw(maybe_ms),
        delay_dist=draw(st.sampled_from(DELAY_DISTS)),
        delay_correlation=draw(st.sampled_from([0.0, 0.5])),
        keep_order=draw(st.booleans()),
        rate=rate,
        burst=draw(st.sampled_from([None, 3000.0])) if rate else None,
        queue=draw(st.sampled_from([None, 2000.0])) if rate else None,
        queue_limit=draw(st.sampled_from([1000, 3])),
        mtu_blackhole=draw(st.sampled_from([None, 100])),
        truncate=draw(st.sampled_from([None, 0, 50])),
        corrupt=draw(probability),
    )


steps = st.lists(
    st.one_of(
        st.tuples(st.just("feed"), st.lists(st.integers(0, 300), max_size=20)),
        st.tuples(st.just("wait"), st.sampled_from([0.0, 0.0005, 0.01, 0.2])),
        st.tuples(st.just("poll_due"), st.none()),
        st.tuples(st.just("reconfigure"), configs()),
        st.tuples(st.just("blackout"), st.booleans()),
        st.tuples(st.just("drain"), st.none()),
        st.tuples(st.just("abandon"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), seed=st.integers(0, 5), run=steps)
def test_every_datagram_is_in_one_place_after_every_step(
    cfg: ImpairConfig, seed: int, run: list[tuple[str, object]]
) -> None:
    imp = Impairment(cfg, ImpairRng(seed, "up"))
    now = 0.0
    out_total = 0
    for op, arg in run:
        got: list[bytes] = []
        if op == "feed":
            assert isinstance(arg, list)
            got, _ = imp.feed(now, [bytes(n) for n in arg])
        elif op == "wait":
            assert isinstance(arg, float)
            now += arg
            got, _ = imp.poll(now)
        elif op == "poll_due" and imp.deadline is not None:
            now = max(now, imp.deadline)
            got, _ = imp.poll(now)
        elif op == "reconfigure":
            assert isinstance(arg, ImpairConfig)
            imp.reconfigure(arg, now)
        elif op == "blackout":
            imp.set_blackout(bool(arg))
        elif op == "drain":
            got = imp.drain(now)
            assert imp.held == 0 and imp.deadline is None
        elif op == "abandon":
            imp.abandon()
            assert imp.held == 0
        out_total += len(got)
        stats = imp.stats
        assert stats.unaccounted() == 0, (op, stats)
        assert stats.held == imp.held
        assert stats.passed == out_total
        if op in ("wait", "poll_due") and imp.deadline is not None:
            assert imp.deadline > now, (op, imp.deadline, now)
        if imp.held == 0:
            assert imp.deadline is None
    # Whatever is left drains out whole.
    held = imp.held
    assert len(imp.drain(now)) == held
    assert imp.stats.unaccounted() == 0
