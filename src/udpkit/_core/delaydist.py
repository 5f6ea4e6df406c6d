"""Delay jitter distributions, as ``tc netem`` defines them, and their correlation.

A distribution is its quantile function ``Q(u)`` on ``0 <= u < 1``, in units of the
jitter: the applied delay is ``delay + jitter * Q(u)``, never below 0.  The four
shapes are netem's (iproute2's ``netem/*.c`` table generators, from NIST Net):

===============  ===========================================================
``uniform``      ``2u - 1``: spread evenly over ``delay ± jitter`` (udpkit's
                 ``--delay 20±5`` of old)
``normal``       the standard normal quantile, clipped at ±4 as netem's table
``pareto``       Pareto with shape 3 shifted to mean 0 and scaled by 4/3, at most 4
``paretonormal`` ``(normal + 3 * pareto) / 4`` taken at the same ``u``, as netem's
                 table is built: a normal body with a Pareto tail
===============  ===========================================================

Each quantile function is sampled once into a table of :data:`TABLE_SIZE` + 1
points and read with linear interpolation: one multiply, two list reads and a
blend per datagram, and the percentiles of the delays applied are the
distribution's own (the tests check p50/p90/p99 within 0.2 ms).

Correlation (``--delay-correlation 25%``) is a Gaussian copula: a hidden standard
normal ``x`` follows ``x' = rho x + sqrt(1 - rho**2) e`` (``e`` a fresh normal) and
``u = Phi(x')``.  Successive
delays are then correlated while each delay still has exactly the distribution
asked for (netem's own correlation mixes uniforms, which narrows the spread).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from statistics import NormalDist

__all__ = ["DISTRIBUTIONS", "TABLE_SIZE", "Jitter", "quantile", "table"]

TABLE_SIZE = 4096
# netem's tables are 16-bit with a scale of 8192: values are clipped to ±4 jitters.
_CLIP = 4.0
_NORMAL = NormalDist()


def _uniform(u: float) -> float:
    return 2.0 * u - 1.0


def _normal(u: float) -> float:
    if u <= 0.0 or u >= 1.0:
        return -_CLIP if u <= 0.0 else _CLIP
    return max(-_CLIP, min(_CLIP, _NORMAL.inv_cdf(u)))


def _pareto(u: float) -> float:
    if u >= 1.0:
        return _CLIP
    # netem: (1 / (1-u)^(1/a) - a/(a-1)) * 4/3 with a = 3 (mean 0).
    x: float = (1.0 - u) ** (-1.0 / 3.0)
    return min(_CLIP, (x - 1.5) * (4.0 / 3.0))


def _paretonormal(u: float) -> float:
    return (_normal(u) + 3.0 * _pareto(u)) / 4.0


DISTRIBUTIONS: dict[str, Callable[[float], float]] = {
    "uniform": _uniform,
    "normal": _normal,
    "pareto": _pareto,
    "paretonormal": _paretonormal,
}


def quantile(name: str, u: float) -> float:
    """The exact quantile of distribution ``name`` at ``u`` (in jitters)."""
    return DISTRIBUTIONS[name](u)


@cache
def table(name: str) -> tuple[float, ...]:
    """``Q(i / TABLE_SIZE)`` for ``i`` in ``0..TABLE_SIZE`` (built once per name).

    The end points of the normal quantile are infinite; they are clipped at ±4
    as netem clips its table.
    """
    q = DISTRIBUTIONS[name]
    return tuple(q(i / TABLE_SIZE) for i in range(TABLE_SIZE + 1))


class Jitter:
    """Draws jitter values (in jitters) of one distribution, optionally correlated.

    Args:
        name: a key of :data:`DISTRIBUTIONS`.
        correlation: 0-1, how much each draw depends on the previous one.
        random: the stream's ``random()`` (0 <= x < 1).
        gauss: the stream's ``gauss(mu, sigma)`` (used only with correlation).
    """

    __slots__ = ("_gauss", "_random", "_rest", "_rho", "_table", "_x")

    def __init__(
        self,
        name: str,
        correlation: float,
        random: Callable[[], float],
        gauss: Callable[[float, float], float],
    ) -> None:
        self._table = table(name)
        self._random = random
        self._gauss = gauss
        self._rho = correlation
        self._rest = math.sqrt(1.0 - correlation * correlation)
        self._x = 0.0

    def reshape(self, name: str, correlation: float) -> None:
        """Change the distribution and correlation, keeping the stream and hidden state."""
        self._table = table(name)
        self._rho = correlation
        self._rest = math.sqrt(1.0 - correlation * correlation)

    def draw(self) -> float:
        """One value of the distribution."""
        if self._rho:
            self._x = x = self._rho * self._x + self._rest * self._gauss(0.0, 1.0)
            u = 0.5 * (1.0 + math.erf(x * 0.7071067811865476))
        else:
            u = self._random()
        pos = u * TABLE_SIZE
        i = int(pos)
        if i >= TABLE_SIZE:
            return self._table[TABLE_SIZE]
        t = self._table
        lo = t[i]
        return lo + (t[i + 1] - lo) * (pos - i)
