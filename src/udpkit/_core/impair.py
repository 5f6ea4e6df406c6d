"""The relay's fault pipeline for one direction of one flow, without I/O.

Nothing here touches a socket or reads a clock: every call that depends on time
takes ``now`` (seconds, any monotonic origin).  :mod:`udpkit._loops.relay` drives
an :class:`Impairment` per direction of each flow; the tests drive it by hand.

A datagram goes through these stages, top to bottom::

    blackout -> MTU black hole -> loss -> truncate -> corrupt      (filters: a table,
                                                                    built per config)
    -> reorder (hold back) -> duplicate -> delay (jitter) -> link (rate, queue)

The filters run over a whole batch, each a tight loop that only the faults
configured pay for; what they let through is numbered in arrival order and goes
through the stages that hold datagrams.  Reordering is counted where datagrams
leave, as a receiver sees it (RFC 4737: a datagram is reordered when one that
arrived after it left before it), whether the reorder stage or the jitter caused
it; a duplicate shares its original's delay, so it leaves right after it.

Every datagram fed in is in exactly one place at every instant (passed, held, or
dropped by one named reason); :meth:`ImpairStats.unaccounted` is that sum and is 0.

Decisions come from one seeded RNG per direction, split into one stream per
stage, so enabling ``--duplicate`` does not change which datagrams ``--loss``
drops, and the same seed with the same configs in the same order gives the same
outcome (:meth:`Impairment.reconfigure` keeps the streams).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from udpkit._core.counters import add_counters, counters_dict
from udpkit._core.delaydist import Jitter
from udpkit._core.impairconfig import ImpairConfig

__all__ = ["DELAY_QUEUE_LIMIT", "DROP_KINDS", "ImpairRng", "ImpairStats", "Impairment"]

# A delay queue longer than this drops (and counts ``overflow``) instead of growing.
DELAY_QUEUE_LIMIT = 1 << 17
# Why a datagram was thrown away: the ImpairStats fields that balance ``fed``.
DROP_KINDS = ("lost", "blackout_drop", "mtu_drop", "queue_drop", "overflow", "abandoned")


class ImpairRng:
    """One direction's random streams, derived from one seed.

    ``random.Random`` seeded with a string is reproducible across runs and
    platforms (it hashes the string with SHA-512).
    """

    __slots__ = ("corrupt", "duplicate", "jitter", "loss", "reorder", "seed")

    def __init__(self, seed: int, direction: str) -> None:
        self.seed = seed

        def stream(stage: str) -> random.Random:
            return random.Random(f"udpkit-relay/{seed}/{direction}/{stage}")

        self.loss = stream("loss")
        self.duplicate = stream("duplicate")
        self.reorder = stream("reorder")
        self.jitter = stream("jitter")
        self.corrupt = stream("corrupt")


@dataclass
class ImpairStats:
    """Exact counts of one pipeline (or a sum of them), by outcome.

    Every datagram fed in ends up in exactly one place, at every instant::

        fed + duplicated == passed + held + lost + blackout_drop + mtu_drop
                            + queue_drop + overflow + abandoned

    ``held`` is what sits in the reorder, delay and link queues now.  The other
    counts say what happened on the way, not where a datagram ended:
    ``reordered`` (left after a later one), ``delayed`` (waited in the delay
    stage), ``rate_limited`` (waited for the link), ``truncated``, ``corrupted``
    (delivered changed), ``drained`` (flushed early when the relay stopped).
    """

    fed: int = 0
    passed: int = 0
    held: int = 0
    lost: int = 0
    blackout_drop: int = 0
    mtu_drop: int = 0
    queue_drop: int = 0
    overflow: int = 0
    abandoned: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0
    rate_limited: int = 0
    truncated: int = 0
    corrupted: int = 0
    drained: int = 0

    def merge(self, other: ImpairStats) -> None:
        """Add ``other``'s counts to these."""
        add_counters(self, other)

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return cast("dict[str, int]", counters_dict(self))

    @property
    def dropped(self) -> int:
        """Every datagram the pipeline threw away, whatever the reason."""
        return (
            self.lost
            + self.blackout_drop
            + self.mtu_drop
            + self.queue_drop
            + self.overflow
            + self.abandoned
        )

    def unaccounted(self) -> int:
        """Datagrams in no place: ``fed + duplicated - passed - held - dropped``; always 0."""
        return self.fed + self.duplicated - self.passed - self.held - self.dropped


class _Held:
    """A datagram the reorder stage holds back."""

    __slots__ = ("data", "deadline", "left", "seq")

    def __init__(self, seq: int, data: bytes, left: int, deadline: float) -> None:
        self.seq = seq
        self.data = data
        self.left = left
        self.deadline = deadline


Filter = Callable[[list[bytes]], list[bytes]]


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
        self._rng = rng
        self._stats = ImpairStats()
        self._seq = 0  # arrival number of the next datagram past the filters
        self._top = -1  # highest arrival number that has left
        self._last = -1  # arrival number of the datagram that left last
        self._bad = False  # the Gilbert-Elliott channel's state
        self._blackout = False
        self._held: list[_Held] = []
        # (deadline, insertion number, arrival number, payload): a heap, so jitter
        # may let a datagram overtake; with keep_order deadlines never decrease.
        self._delayq: list[tuple[float, int, int, bytes]] = []
        self._pushed = 0
        self._last_deadline = -math.inf
        # (departure, arrival number, payload), in departure order.
        self._linkq: deque[tuple[float, int, bytes]] = deque()
        self._link_bytes = 0
        self._link_free = -math.inf
        self._jitter: Jitter | None = None
        self.deadline: float | None = None
        self._configure(config)

    # -- configuration -----------------------------------------------------------

    def _configure(self, config: ImpairConfig) -> None:
        """Set the faults (the table of filters and the holding stages' parameters)."""
        self.config = cfg = config
        filters: list[Filter] = []
        if cfg.mtu_blackhole is not None:
            filters.append(self._mtu_blackhole)
        ge = cfg.gilbert_params
        self._ge = ge
        if ge is not None:
            filters.append(self._gilbert_loss)
        elif cfg.loss:
            filters.append(self._bernoulli_loss)
        if cfg.truncate is not None:
            filters.append(self._truncate)
        if cfg.corrupt:
            filters.append(self._corrupt)
        self._filters = tuple(filters)
        self._delaying = bool(cfg.delay or cfg.jitter)
        if cfg.jitter:
            j = self._rng.jitter
            if self._jitter is None:
                self._jitter = Jitter(cfg.delay_dist, cfg.delay_correlation, j.random, j.gauss)
            else:
                self._jitter.reshape(cfg.delay_dist, cfg.delay_correlation)
        self._rate = cfg.rate
        self._inv_rate = 1.0 / cfg.rate if cfg.rate else 0.0
        self._burst_time = (cfg.burst or 0.0) * self._inv_rate
        self._queue_bytes = cfg.queue_bytes
        self._holding = bool(cfg.reorder or cfg.duplicate or self._delaying or cfg.rate)

    def reconfigure(self, config: ImpairConfig, now: float) -> None:
        """Change the faults from ``now`` on, keeping what is held and the RNG streams.

        Held datagrams keep their deadlines (a datagram delayed 3 s stays so
        when the delay is cleared); the loss channel keeps its state; the link
        keeps its backlog.  Nothing is released here: call :meth:`poll`.
        """
        del now  # the change takes effect at once; kept for a uniform timed API
        self._configure(config)

    def set_blackout(self, on: bool) -> None:
        """Drop every datagram that arrives while on (counted ``blackout_drop``).

        What is already held still leaves on time, as datagrams already on the
        wire do when a link goes down behind them.
        """
        self._blackout = bool(on)

    @property
    def blackout(self) -> bool:
        """Whether a blackout is on."""
        return self._blackout

    # -- the accounting ----------------------------------------------------------

    @property
    def held(self) -> int:
        """Datagrams inside the pipeline now (held back, delayed, or waiting for the link)."""
        return len(self._held) + len(self._delayq) + len(self._linkq)

    @property
    def stats(self) -> ImpairStats:
        """The counters, with ``held`` as of now."""
        st = self._stats
        st.held = len(self._held) + len(self._delayq) + len(self._linkq)
        return st

    # -- the calls ---------------------------------------------------------------

    def feed(self, now: float, payloads: Iterable[bytes]) -> tuple[list[bytes], float | None]:
        """Put datagrams in (in arrival order) at time ``now``.

        Args:
            now: the current time.
            payloads: an iterable of datagram bytes.

        Returns:
            ``(ready, deadline)``: datagrams to send now, and the next time to :meth:`poll`.
        """
        out: list[bytes] = []
        if self._held or self._delayq or self._linkq:
            self._advance(now, out)
        items = list(payloads)
        st = self._stats
        st.fed += len(items)
        if self._blackout:
            st.blackout_drop += len(items)
            items = []
        for stage in self._filters:
            if not items:
                break
            items = stage(items)
        if items:
            if self._holding:
                self._hold_in(now, items, out)
            else:
                self._seq += len(items)
                self._top = self._last = self._seq - 1
                out += items
        st.passed += len(out)
        self.deadline = self._next_deadline()
        return out, self.deadline

    def poll(self, now: float) -> tuple[list[bytes], float | None]:
        """Release what is due at ``now``.

        Returns:
            ``(ready, deadline)`` as for :meth:`feed`.
        """
        out: list[bytes] = []
        self._advance(now, out)
        self._stats.passed += len(out)
        self.deadline = self._next_deadline()
        return out, self.deadline

    def drain(self, now: float) -> list[bytes]:
        """Release everything held at once, in the order it would have left.

        What is due at ``now`` first, then the link's queue, the delay queue by
        deadline and what the reorder stage held back; the early ones are counted
        in ``drained`` as well as ``passed``.  For a relay stopping with ``--drain``.
        """
        out: list[bytes] = []
        self._advance(now, out)
        due = len(out)
        for _, seq, p in self._linkq:
            self._emit(seq, p, out)
        self._linkq.clear()
        self._link_bytes = 0
        q = self._delayq
        while q:
            _, _, seq, p = heapq.heappop(q)
            self._emit(seq, p, out)
        for h in self._held:
            self._emit(h.seq, h.data, out)
        self._held.clear()
        self._stats.drained += len(out) - due
        self._stats.passed += len(out)
        self.deadline = None
        return out

    def abandon(self) -> int:
        """Throw away everything held (the flow ends); count and return how many."""
        n = self.held
        self._held.clear()
        self._delayq.clear()
        self._linkq.clear()
        self._link_bytes = 0
        self._stats.abandoned += n
        self.deadline = None
        return n

    # -- filters (each over a batch, counting what it does) ---------------------------

    def _mtu_blackhole(self, items: list[bytes]) -> list[bytes]:
        mtu = self.config.mtu_blackhole
        assert mtu is not None
        kept = [p for p in items if len(p) <= mtu]
        self._stats.mtu_drop += len(items) - len(kept)
        return kept

    def _bernoulli_loss(self, items: list[bytes]) -> list[bytes]:
        loss = self.config.loss
        rand = self._rng.loss.random
        kept = [p for p in items if rand() >= loss]
        self._stats.lost += len(items) - len(kept)
        return kept

    def _gilbert_loss(self, items: list[bytes]) -> list[bytes]:
        # A datagram's fate is decided by the state the channel is in when it
        # arrives; then the channel moves (netem's loss_gilb_ell does the same).
        assert self._ge is not None
        p, r, loss_bad, loss_good = self._ge
        rand = self._rng.loss.random
        bad = self._bad
        kept: list[bytes] = []
        if loss_bad == 1.0 and loss_good == 0.0:  # simple Gilbert: one draw a datagram
            for x in items:
                if bad:
                    if rand() < r:
                        bad = False
                else:
                    kept.append(x)
                    if rand() < p:
                        bad = True
        else:
            for x in items:
                lose = loss_bad if bad else loss_good
                if rand() < (r if bad else p):
                    bad = not bad
                if not (lose and rand() < lose):
                    kept.append(x)
        self._bad = bad
        self._stats.lost += len(items) - len(kept)
        return kept

    def _truncate(self, items: list[bytes]) -> list[bytes]:
        n = self.config.truncate
        assert n is not None
        cut = 0
        for i, p in enumerate(items):
            if len(p) > n:
                items[i] = p[:n]
                cut += 1
        self._stats.truncated += cut
        return items

    def _corrupt(self, items: list[bytes]) -> list[bytes]:
        c = self.config.corrupt
        rand = self._rng.corrupt.random
        hit = 0
        for i, p in enumerate(items):
            if rand() < c and p:
                bit = int(rand() * len(p) * 8)
                b = bytearray(p)
                b[bit >> 3] ^= 1 << (bit & 7)
                items[i] = bytes(b)
                hit += 1
        self._stats.corrupted += hit
        return items

    # -- holding stages ----------------------------------------------------------------

    def _hold_in(self, now: float, items: list[bytes], out: list[bytes]) -> None:
        cfg = self.config
        reorder = cfg.reorder
        rand = self._rng.reorder.random
        held = self._held
        for p in items:
            seq = self._seq
            self._seq = seq + 1
            if reorder and rand() < reorder:
                held.append(_Held(seq, p, cfg.reorder_gap, now + cfg.reorder_max))
                continue
            self._onward(now, seq, p, out)
            if held:
                due = False
                for h in held:
                    h.left -= 1
                    due = due or h.left <= 0
                if due:
                    self._release_held(now, out, lambda h: h.left <= 0)

    def _release_held(self, now: float, out: list[bytes], due: Callable[[_Held], bool]) -> None:
        keep: list[_Held] = []
        for h in self._held:
            if due(h):
                self._onward(min(now, h.deadline), h.seq, h.data, out)
            else:
                keep.append(h)
        self._held[:] = keep  # in place: _hold_in keeps a reference

    def _onward(self, t: float, seq: int, p: bytes, out: list[bytes]) -> None:
        """Duplicate, delay and the link, from time ``t``."""
        copies = 1
        d = self.config.duplicate
        if d and self._rng.duplicate.random() < d:
            copies = 2
            self._stats.duplicated += 1
        if not self._delaying:
            for _ in range(copies):
                self._link_in(t, seq, p, out)
            return
        cfg = self.config
        delay = cfg.delay
        if self._jitter is not None and cfg.jitter:
            delay += cfg.jitter * self._jitter.draw()
        dl = t + delay if delay > 0 else t
        q = self._delayq
        if cfg.keep_order and dl < self._last_deadline:
            dl = self._last_deadline
        self._last_deadline = dl
        if dl <= t and not (q and cfg.keep_order):
            for _ in range(copies):
                self._link_in(t, seq, p, out)
            return
        for _ in range(copies):
            if len(q) >= DELAY_QUEUE_LIMIT:
                self._stats.overflow += 1
                continue
            self._pushed += 1
            heapq.heappush(q, (dl, self._pushed, seq, p))
            self._stats.delayed += 1

    def _link_in(self, t: float, seq: int, p: bytes, out: list[bytes]) -> None:
        """The bottleneck: a datagram leaves once the link has sent what is ahead and it.

        departure = max(t, link free) + size/rate, less the burst allowance; tail
        drop when the bytes waiting would pass the queue's size.
        """
        if self._rate is None:
            self._emit(seq, p, out)
            return
        q = self._linkq
        while q and q[0][0] <= t:  # the queue as it stands at t
            _, s, x = q.popleft()
            self._link_bytes -= len(x)
            self._emit(s, x, out)
        size = len(p)
        start = self._link_free if self._link_free > t else t
        finish = start + size * self._inv_rate
        depart = finish - self._burst_time
        if q and depart < q[-1][0]:
            depart = q[-1][0]  # FIFO even when --burst changed mid-run
        if depart <= t:
            self._link_free = finish
            self._emit(seq, p, out)
            return
        if len(q) >= self.config.queue_limit or self._link_bytes + size > self._queue_bytes:
            self._stats.queue_drop += 1
            return
        self._link_free = finish
        q.append((depart, seq, p))
        self._link_bytes += size
        self._stats.rate_limited += 1

    def _emit(self, seq: int, p: bytes, out: list[bytes]) -> None:
        # A copy leaves right after its original: a receiver counts it a duplicate,
        # not a second reordering.
        if seq < self._top:
            if seq != self._last:
                self._stats.reordered += 1
        else:
            self._top = seq
        self._last = seq
        out.append(p)

    def _advance(self, now: float, out: list[bytes]) -> None:
        if self._held and any(h.deadline <= now for h in self._held):
            self._release_held(now, out, lambda h: h.deadline <= now)
        q = self._delayq
        while q and q[0][0] <= now:
            dl, _, seq, p = heapq.heappop(q)
            self._link_in(dl, seq, p, out)
        lq = self._linkq
        while lq and lq[0][0] <= now:
            _, seq, p = lq.popleft()
            self._link_bytes -= len(p)
            self._emit(seq, p, out)

    def _next_deadline(self) -> float | None:
        best = math.inf
        if self._held:
            best = min(h.deadline for h in self._held)
        if self._delayq and self._delayq[0][0] < best:
            best = self._delayq[0][0]
        if self._linkq and self._linkq[0][0] < best:
            best = self._linkq[0][0]
        return None if best == math.inf else best
