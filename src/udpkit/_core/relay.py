"""The relay's policy, without I/O: the flow table and the impairment pipeline.

Nothing here touches a socket or reads a clock: every call that depends on time
takes ``now`` (seconds, any monotonic origin).  :mod:`udpkit._loops.relay` owns the sockets
and the clock and drives these objects; the tests drive them by hand.

An :class:`Impairment` is one direction of one flow.  Datagrams go through its
stages in this order, each stage keeping the order the previous one produced::

    loss -> reorder (hold back) -> duplicate -> delay (FIFO) -> rate (token bucket)

so the only reordering a receiver can see is the one the reorder stage counted
(jitter never reorders: a datagram is never released before the one ahead of it).
Decisions come from one seeded RNG per direction, split into one stream per
stage, so enabling ``--duplicate`` does not change which datagrams ``--loss`` drops.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from udpkit._core import units
from udpkit._core.counters import add_counters, counters_dict
from udpkit._core.datagram import SockAddr
from udpkit._core.errors import UsageError

__all__ = [
    "Flow",
    "FlowTable",
    "ImpairConfig",
    "ImpairRng",
    "ImpairStats",
    "Impairment",
]

# A delay queue longer than this drops (and counts) instead of growing without bound.
DELAY_QUEUE_LIMIT = 1 << 17
# Float slack when comparing tokens: a refill computed for a deadline must suffice at it.
_EPS = 1e-9


# ---------------------------------------------------------------- impairments


@dataclass(frozen=True)
class ImpairConfig:
    """What to do to one direction.  All times are seconds.

    Attributes:
        loss: probability a datagram is dropped.
        duplicate: probability a datagram is sent twice (the copy right after it).
        reorder: probability a datagram is held back ...
        reorder_gap: ... until this many later datagrams have passed it ...
        reorder_max: ... or at most this long.
        delay: added to every datagram; ``jitter`` spreads it uniformly by +-jitter.
        rate: token bucket rate in bytes/s (``None``: unlimited), ``burst`` its depth
            in bytes (``None``: 10 ms worth, at least 1500); ``queue_limit`` datagrams
            may wait for tokens, more are dropped and counted.
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_gap: int = 3
    reorder_max: float = 0.1
    delay: float = 0.0
    jitter: float = 0.0
    rate: float | None = None
    burst: float | None = None
    queue_limit: int = 1000

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise UsageError(f"invalid {name} {p!r}: must be a probability 0-1")
        if self.reorder_gap < 1:
            raise UsageError(f"invalid reorder_gap {self.reorder_gap!r}: must be 1 or more")
        if not self.reorder_max > 0:
            raise UsageError(f"invalid reorder_max {self.reorder_max!r}: must be > 0 seconds")
        if self.delay < 0 or self.jitter < 0:
            raise UsageError(
                f"invalid delay {self.delay!r}±{self.jitter!r}: both must be 0 or more"
            )
        if self.rate is not None and not self.rate > 0:
            raise UsageError(f"invalid rate {self.rate!r}: must be bytes/s > 0")
        if self.burst is not None and not self.burst > 0:
            raise UsageError(f"invalid burst {self.burst!r}: must be bytes > 0")
        if self.queue_limit < 0:
            raise UsageError(f"invalid queue_limit {self.queue_limit!r}: must be 0 or more")

    @classmethod
    def from_text(
        cls,
        *,
        loss: str = "0",
        duplicate: str = "0",
        reorder: str = "0",
        reorder_gap: str = "3",
        reorder_max: str = "100ms",
        delay: str = "0",
        rate: str | None = None,
        burst: str | None = None,
    ) -> ImpairConfig:
        """Build a config from the text ``udpkit relay`` takes for the same options.

        Each value is read by :mod:`udpkit._core.units`, as the command line reads
        it: probabilities ``0.05`` or ``5%``; ``reorder_max`` and ``delay`` in
        milliseconds when bare (``20``, ``20ms±5ms``, ``1s``); ``rate`` in bytes/s
        (``500k``, ``1.5M``: powers of 1000); ``burst`` in bytes (``64K``: 1024).

        Raises:
            UsageError: a value that does not parse, naming the option.
        """
        delay_s, jitter = units.parse_delay(delay, "--delay")
        return cls(
            loss=units.parse_probability(loss, "--loss"),
            duplicate=units.parse_probability(duplicate, "--duplicate"),
            reorder=units.parse_probability(reorder, "--reorder"),
            reorder_gap=units.parse_count(reorder_gap, "--reorder-gap", low=1),
            reorder_max=units.parse_duration(reorder_max, "--reorder-max", default_unit="ms"),
            delay=delay_s,
            jitter=jitter,
            rate=None
            if rate is None
            else units.parse_rate(rate, "--rate", unit="bytes/s", byte=True).value,
            burst=None if burst is None else float(units.parse_size(burst, "--burst", low=1)),
        )

    @property
    def active(self) -> bool:
        """Whether this config changes anything at all (else the relay's fast path runs)."""
        return bool(
            self.loss or self.duplicate or self.reorder or self.delay or self.jitter or self.rate
        )

    @property
    def bucket_depth(self) -> float:
        """The token bucket's depth in bytes."""
        if self.burst is not None:
            return self.burst
        return max(1500.0, (self.rate or 0.0) / 100)


class ImpairRng:
    """One direction's random streams, derived from one seed.

    ``random.Random`` seeded with a string is reproducible across runs and
    platforms (it hashes the string with SHA-512).
    """

    __slots__ = ("duplicate", "jitter", "loss", "reorder", "seed")

    def __init__(self, seed: int, direction: str) -> None:
        self.seed = seed

        def stream(stage: str) -> random.Random:
            return random.Random(f"udpkit-relay/{seed}/{direction}/{stage}")

        self.loss = stream("loss")
        self.duplicate = stream("duplicate")
        self.reorder = stream("reorder")
        self.jitter = stream("jitter")


@dataclass
class ImpairStats:
    """Exact counts of one pipeline (or a sum of them).

    Every datagram fed in ends up in exactly one place:
    ``fed + duplicated == passed + lost + rate_dropped + overflow + abandoned + held``.
    ``delayed`` and ``rate_limited`` count datagrams that waited (in the delay stage,
    for tokens); ``reordered`` those released after a later datagram overtook them.
    """

    fed: int = 0
    passed: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0
    rate_limited: int = 0
    rate_dropped: int = 0
    overflow: int = 0
    abandoned: int = 0

    def merge(self, other: ImpairStats) -> None:
        """Add ``other``'s counts to these."""
        add_counters(self, other)

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return cast("dict[str, int]", counters_dict(self))

    @property
    def dropped(self) -> int:
        """Every datagram the pipeline threw away, whatever the reason."""
        return self.lost + self.rate_dropped + self.overflow + self.abandoned


class _Held:
    __slots__ = ("data", "deadline", "left", "seq")

    def __init__(self, seq: int, data: bytes, left: int, deadline: float) -> None:
        self.seq = seq
        self.data = data
        self.left = left
        self.deadline = deadline


class Impairment:
    """One direction of one flow: feed datagrams in, take what to send now out.

    Like h11, "nothing to send yet" is a return value: :meth:`feed` and
    :meth:`poll` return ``(ready, deadline)``, the datagrams to send now in order
    and when to call :meth:`poll` next (``None``: nothing is waiting).

    Args:
        config: what to do.
        rng: the direction's random streams (shared by the direction's flows).
    """

    def __init__(self, config: ImpairConfig, rng: ImpairRng) -> None:
        self.config = config
        self.stats = ImpairStats()
        self._rng = rng
        self._seq = 0
        self._max_passed = -1
        self._held: list[_Held] = []
        self._delayq: deque[tuple[float, bytes]] = deque()
        self._rateq: deque[bytes] = deque()
        self._depth = config.bucket_depth
        self._tokens = self._depth
        self._refilled: float | None = None
        self.deadline: float | None = None

    @property
    def held(self) -> int:
        """Datagrams inside the pipeline now (held back, delayed, or waiting for tokens)."""
        return len(self._held) + len(self._delayq) + len(self._rateq)

    def feed(self, now: float, payloads: Iterable[bytes]) -> tuple[list[bytes], float | None]:
        """Put datagrams in (in arrival order) at time ``now``.

        Args:
            now: the current time.
            payloads: an iterable of datagram bytes.

        Returns:
            ``(ready, deadline)``: datagrams to send now, and the next time to :meth:`poll`.
        """
        out: list[bytes] = []
        self._advance(now, out)
        cfg = self.config
        st = self.stats
        loss = cfg.loss
        rand = self._rng.loss.random
        for p in payloads:
            st.fed += 1
            if loss and rand() < loss:
                st.lost += 1
                continue
            self._reorder_in(now, p, out)
        self._advance(now, out)
        st.passed += len(out)
        self.deadline = self._deadline(now)
        return out, self.deadline

    def poll(self, now: float) -> tuple[list[bytes], float | None]:
        """Release what is due at ``now``.

        Returns:
            ``(ready, deadline)`` as for :meth:`feed`.
        """
        out: list[bytes] = []
        self._advance(now, out)
        self.stats.passed += len(out)
        self.deadline = self._deadline(now)
        return out, self.deadline

    def abandon(self) -> int:
        """Throw away everything held (the flow ends); count and return how many."""
        n = self.held
        self._held.clear()
        self._delayq.clear()
        self._rateq.clear()
        self.stats.abandoned += n
        self.deadline = None
        return n

    # -- stages ------------------------------------------------------------------

    def _reorder_in(self, now: float, p: bytes, out: list[bytes]) -> None:
        cfg = self.config
        seq = self._seq
        self._seq += 1
        if cfg.reorder and self._rng.reorder.random() < cfg.reorder:
            self._held.append(_Held(seq, p, cfg.reorder_gap, now + cfg.reorder_max))
            return
        self._max_passed = seq
        self._dup_in(now, p, out)
        if self._held:
            for h in self._held:
                h.left -= 1
            if any(h.left <= 0 for h in self._held):
                self._release_held(now, out, lambda h: h.left <= 0)

    def _release_held(self, now: float, out: list[bytes], due: Callable[[_Held], bool]) -> None:
        keep: list[_Held] = []
        for h in self._held:
            if not due(h):
                keep.append(h)
                continue
            if self._max_passed > h.seq:
                self.stats.reordered += 1
            else:
                self._max_passed = h.seq
            self._dup_in(now, h.data, out)
        self._held = keep

    def _dup_in(self, now: float, p: bytes, out: list[bytes]) -> None:
        self._delay_in(now, p, out)
        d = self.config.duplicate
        if d and self._rng.duplicate.random() < d:
            self.stats.duplicated += 1
            self._delay_in(now, p, out)

    def _delay_in(self, now: float, p: bytes, out: list[bytes]) -> None:
        cfg = self.config
        if not (cfg.delay or cfg.jitter):
            self._rate_in(now, p, out)
            return
        d = cfg.delay
        if cfg.jitter:
            d += self._rng.jitter.uniform(-cfg.jitter, cfg.jitter)
        t = now + d
        q = self._delayq
        if q and q[-1][0] > t:
            t = q[-1][0]  # FIFO: jitter never lets a datagram overtake the one ahead
        if t <= now and not q:
            self._rate_in(now, p, out)
            return
        if len(q) >= DELAY_QUEUE_LIMIT:
            self.stats.overflow += 1
            return
        self.stats.delayed += 1
        q.append((t, p))

    def _refill(self, now: float) -> None:
        rate = self.config.rate
        assert rate is not None
        last = self._refilled
        if last is not None and now > last:
            self._tokens = min(self._depth, self._tokens + (now - last) * rate)
        if last is None or now > last:
            self._refilled = now

    def _rate_in(self, now: float, p: bytes, out: list[bytes]) -> None:
        if self.config.rate is None:
            out.append(p)
            return
        self._refill(now)
        # A datagram larger than the bucket may go when the bucket is full.
        need = min(len(p), self._depth)
        if not self._rateq and self._tokens + _EPS >= need:
            self._tokens -= len(p)
            out.append(p)
            return
        if len(self._rateq) >= self.config.queue_limit:
            self.stats.rate_dropped += 1
            return
        self.stats.rate_limited += 1
        self._rateq.append(p)

    def _advance(self, now: float, out: list[bytes]) -> None:
        if self._held and any(h.deadline <= now for h in self._held):
            self._release_held(now, out, lambda h: h.deadline <= now)
        q = self._delayq
        while q and q[0][0] <= now:
            self._rate_in(now, q.popleft()[1], out)
        rq = self._rateq
        if rq:
            self._refill(now)
            while rq and self._tokens + _EPS >= min(len(rq[0]), self._depth):
                p = rq.popleft()
                self._tokens -= len(p)
                out.append(p)

    def _deadline(self, now: float) -> float | None:
        best: float | None = None
        if self._held:
            best = min(h.deadline for h in self._held)
        if self._delayq:
            t = self._delayq[0][0]
            best = t if best is None or t < best else best
        if self._rateq:
            rate = self.config.rate
            assert rate is not None
            need = min(len(self._rateq[0]), self._depth) - self._tokens
            t = now + max(need, 0.0) / rate
            best = t if best is None or t < best else best
        return best


# ---------------------------------------------------------------- flows


@dataclass(eq=False)
class Flow:
    """One client address and what passed for it.

    ``up_*`` count client -> target, ``down_*`` target -> client; ``*_in`` what the
    relay received, ``*_out`` what the kernel accepted to send.  ``handle`` is the
    I/O layer's (its upstream socket); the table never looks at it.
    """

    key: Hashable
    peer: SockAddr
    created: float
    last_seen: float
    up: Impairment | None = None
    down: Impairment | None = None
    handle: Any = None
    up_in: int = 0
    up_in_bytes: int = 0
    up_out: int = 0
    up_out_bytes: int = 0
    down_in: int = 0
    down_in_bytes: int = 0
    down_out: int = 0
    down_out_bytes: int = 0
    send_errors: int = 0
    upstream_refused: int = 0


COUNTERS = (
    "up_in",
    "up_in_bytes",
    "up_out",
    "up_out_bytes",
    "down_in",
    "down_in_bytes",
    "down_out",
    "down_out_bytes",
    "send_errors",
    "upstream_refused",
)


@dataclass
class FlowTotals:
    """Flow counters summed (the flows that ended are kept in here)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    up: ImpairStats = field(default_factory=ImpairStats)
    down: ImpairStats = field(default_factory=ImpairStats)

    def add(self, flow: Flow) -> None:
        """Add one flow's counters."""
        c = self.counts
        for name in COUNTERS:
            c[name] += getattr(flow, name)
        if flow.up is not None:
            self.up.merge(flow.up.stats)
        if flow.down is not None:
            self.down.merge(flow.down.stats)


class FlowTable:
    """Client address -> :class:`Flow`, created lazily, capped, expired when idle.

    Flows are kept in order of last activity, so expiry looks only at the front.

    Args:
        max_flows: flows at once; a datagram from a new address beyond it is refused
            (counted in ``refused``), after idle flows have been expired.
        idle_timeout: seconds without traffic either way after which a flow ends.
        make_impairments: called for each new flow, returns its ``(up, down)`` pipelines.
    """

    def __init__(
        self,
        *,
        max_flows: int = 1024,
        idle_timeout: float = 60.0,
        make_impairments: Callable[[], tuple[Impairment | None, Impairment | None]] | None = None,
    ) -> None:
        if max_flows < 1:
            raise UsageError(f"invalid max_flows {max_flows!r}: must be 1 or more")
        if not idle_timeout > 0:
            raise UsageError(f"invalid idle_timeout {idle_timeout!r}: must be > 0 seconds")
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self._make = make_impairments
        self._flows: OrderedDict[Hashable, Flow] = OrderedDict()
        self.created = 0
        self.expired = 0
        self.refused = 0
        self.peak = 0
        self.retired = FlowTotals()

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def get(self, key: Hashable) -> Flow | None:
        """The flow for ``key``, or ``None`` (no side effects)."""
        return self._flows.get(key)

    def admit(self, key: Hashable, peer: SockAddr, now: float, count: int = 1) -> Flow | None:
        """The flow for ``key``, created if new; ``None`` if the table is full.

        Args:
            key: the client address in any hashable form.
            peer: the client address as shown to people (kept in the flow).
            now: the current time.
            count: datagrams that arrived for it; added to ``refused`` if refused.

        Returns:
            The flow (touched), or ``None``; then the caller must expire the
            flows :meth:`expire` returned, which this call may have retired.
        """
        flow = self._flows.get(key)
        if flow is not None:
            self.touch(flow, now)
            return flow
        if len(self._flows) >= self.max_flows:
            self.refused += count
            return None
        up, down = self._make() if self._make is not None else (None, None)
        flow = Flow(key, peer, now, now, up, down)
        self._flows[key] = flow
        self.created += 1
        self.peak = max(self.peak, len(self._flows))
        return flow

    def touch(self, flow: Flow, now: float) -> None:
        """Note traffic on ``flow`` at ``now`` (either direction)."""
        flow.last_seen = max(flow.last_seen, now)
        self._flows.move_to_end(flow.key)

    def next_expiry(self) -> float | None:
        """When the least recently active flow goes idle, or ``None`` with no flows."""
        for flow in self._flows.values():
            return flow.last_seen + self.idle_timeout
        return None

    def expire(self, now: float) -> list[Flow]:
        """Remove and return the flows idle for ``idle_timeout`` or more at ``now``.

        A flow still holding impaired datagrams is kept until they are out.
        """
        gone: list[Flow] = []
        limit = now - self.idle_timeout
        for flow in list(self._flows.values()):
            if flow.last_seen > limit:
                break
            if (flow.up is not None and flow.up.held) or (flow.down is not None and flow.down.held):
                self.touch(flow, now)  # still busy: idle again from now
                continue
            gone.append(flow)
        for flow in gone:
            self.remove(flow)
            self.expired += 1
        return gone

    def remove(self, flow: Flow) -> None:
        """Take ``flow`` out now (its counters go into ``retired``)."""
        if self._flows.pop(flow.key, None) is not None:
            self.retired.add(flow)

    def totals(self) -> FlowTotals:
        """Counters summed over every flow, live and ended."""
        t = FlowTotals(dict(self.retired.counts), ImpairStats(), ImpairStats())
        t.up.merge(self.retired.up)
        t.down.merge(self.retired.down)
        for flow in self._flows.values():
            t.add(flow)
        return t
