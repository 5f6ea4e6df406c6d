"""The fault models hit their targets: Gilbert-Elliott loss and the delay distributions.

Pure core with a hand-driven clock: 10**6 datagrams through the loss channel, 10**5
delays per distribution, each measured as a receiver would and held against the
configured figures (issue 13's targets: loss rate and mean burst within 2 %
relative, delay percentiles within 0.2 ms).
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from udpkit._core.delaydist import TABLE_SIZE, quantile, table
from udpkit._core.impair import Impairment, ImpairRng
from udpkit._core.impairconfig import ImpairConfig

N_LOSS = 10**6
BATCH = [i.to_bytes(4, "big") for i in range(1000)]


def loss_runs(cfg: ImpairConfig, seed: int, n: int = N_LOSS) -> tuple[float, float]:
    """Feed ``n`` datagrams; return (loss rate, mean length of a run of losses)."""
    imp = Impairment(cfg, ImpairRng(seed, "up"))
    runs = lost = 0
    prev = False
    for _ in range(n // len(BATCH)):
        out, dl = imp.feed(0.0, BATCH)
        assert dl is None
        passed = set(out)
        for x in BATCH:
            gone = x not in passed
            runs += gone and not prev
            lost += gone
            prev = gone
    assert lost == imp.stats.lost and imp.stats.unaccounted() == 0
    return lost / n, lost / runs


@pytest.mark.parametrize(("loss", "burst", "seed"), [(0.05, 4.0, 1), (0.05, 4.0, 2), (0.3, 5.0, 1)])
def test_gilbert_elliott_hits_loss_rate_and_burst_length(
    loss: float, burst: float, seed: int
) -> None:
    rate, mean = loss_runs(ImpairConfig(loss=loss, loss_burst=burst), seed)
    assert rate == pytest.approx(loss, rel=0.02)
    assert mean == pytest.approx(burst, rel=0.02)


def test_gilbert_four_parameters_as_netem() -> None:
    """p, r, 1-h, 1-k: the long-run loss is pi_bad (1-h) + pi_good (1-k)."""
    p, r, lose_bad, lose_good = 0.02, 0.25, 0.8, 0.01
    cfg = ImpairConfig.from_text(gilbert="2%,25%,80%,1%")
    assert cfg.gilbert == pytest.approx((p, r, lose_bad, lose_good))
    bad = p / (p + r)
    rate, _ = loss_runs(cfg, 3, n=300_000)
    assert rate == pytest.approx(bad * lose_bad + (1 - bad) * lose_good, rel=0.05)


def test_gilbert_defaults_follow_netem() -> None:
    assert ImpairConfig.from_text(gilbert="1%").gilbert == pytest.approx((0.01, 0.99, 1.0, 0.0))
    assert ImpairConfig.from_text(gilbert="1%,30%").gilbert == pytest.approx((0.01, 0.3, 1.0, 0.0))


def test_loss_burst_reproduces_with_the_seed_only() -> None:
    cfg = ImpairConfig.from_text(loss="10%", loss_burst="3")
    a = Impairment(cfg, ImpairRng(5, "up")).feed(0.0, BATCH)[0]
    b = Impairment(cfg, ImpairRng(5, "up")).feed(0.0, BATCH)[0]
    c = Impairment(cfg, ImpairRng(6, "up")).feed(0.0, BATCH)[0]
    assert a == b and a != c


# ---------------------------------------------------------------- delay


def applied_delays(cfg: ImpairConfig, n: int, seed: int = 1) -> list[float]:
    """Feed one datagram every 0.1 ms (10 k/s), poll at every deadline.

    Returns:
        The delay each datagram got, in the order they arrived.
    """
    imp = Impairment(cfg, ImpairRng(seed, "up"))
    sent: dict[bytes, float] = {}
    delays: dict[bytes, float] = {}

    def take(out: list[bytes], t: float) -> None:
        for p in out:
            delays[p] = t - sent.pop(p)

    for i in range(n):
        now = i * 1e-4
        while imp.deadline is not None and imp.deadline <= now:
            t = imp.deadline
            take(imp.poll(t)[0], t)
        p = i.to_bytes(4, "big")
        sent[p] = now
        take(imp.feed(now, [p])[0], now)
    while imp.deadline is not None:
        t = imp.deadline
        take(imp.poll(t)[0], t)
    assert not sent and imp.stats.unaccounted() == 0
    return [delays[i.to_bytes(4, "big")] for i in range(n)]


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@pytest.mark.parametrize("dist", ["uniform", "normal", "pareto", "paretonormal"])
@pytest.mark.parametrize("correlation", [0.0, 0.25])
def test_delay_percentiles_match_the_distribution(dist: str, correlation: float) -> None:
    delay, jitter = 0.020, 0.005
    cfg = ImpairConfig(delay=delay, jitter=jitter, delay_dist=dist, delay_correlation=correlation)
    got = sorted(applied_delays(cfg, 100_000))
    for q in (0.5, 0.9, 0.99):
        want = delay + jitter * quantile(dist, q)
        assert abs(percentile(got, q) - want) <= 0.0002, (dist, q, percentile(got, q), want)


def test_correlation_ties_each_delay_to_the_last() -> None:
    def lag1(values: list[float]) -> float:
        m = sum(values) / len(values)
        num = sum((a - m) * (b - m) for a, b in pairwise(values))
        return num / sum((a - m) ** 2 for a in values)

    cfg = ImpairConfig(delay=0.05, jitter=0.005, delay_dist="normal", keep_order=False)
    free = applied_delays(cfg, 20_000)
    tied = applied_delays(cfg.replace(delay_correlation=0.75), 20_000)
    # Each datagram's delay, in arrival order (they may leave in another order).
    assert abs(lag1(free)) < 0.05
    assert lag1(tied) > 0.6


def test_tables_are_the_quantile_functions() -> None:
    for name in ("uniform", "normal", "pareto", "paretonormal"):
        t = table(name)
        assert len(t) == TABLE_SIZE + 1
        assert t == tuple(sorted(t))  # a quantile function never decreases
        assert t[TABLE_SIZE // 2] == pytest.approx(quantile(name, 0.5))
    assert quantile("normal", 0.975) == pytest.approx(1.959964, abs=1e-5)
    assert quantile("pareto", 0.0) == pytest.approx(-2 / 3)
    assert quantile("pareto", 0.9) == pytest.approx((10 ** (1 / 3) - 1.5) * 4 / 3)
    assert quantile("pareto", 0.99) == 4.0  # netem's table is clipped at 4 jitters
    assert quantile("uniform", 0.0) == -1.0 and math.isclose(quantile("uniform", 0.75), 0.5)
