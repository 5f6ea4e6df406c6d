"""Measurement without I/O: sequence tracking, jitter, latency histogram, interval meters.

Nothing here reads a clock or touches a socket: every timestamp is an argument
(integer nanoseconds), so the figures are tested with a hand-driven clock and
the bench and reflector loops stay the only places that know the time.

- :class:`SequenceTracker`: received, unique, duplicates, RFC 4737 reordered
  packets and reordering extent, for sequence numbers counted from 0.
- :class:`Jitter`: RFC 3550 interarrival jitter.
- :class:`LatencyHistogram`: an HDR-style log-linear histogram, 3 significant
  digits (every value is reported within 1/1024 = 0.1 % of itself, never
  below it), with percentiles, exact min/max/mean and a CDF.
- :class:`IntervalMeter`: per-interval counters, the rows of live output.
- :func:`split_loss`: lost datagrams split into sender, path and receiver kernel.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "IntervalMeter",
    "IntervalRow",
    "Jitter",
    "LatencyHistogram",
    "LossSplit",
    "SequenceTracker",
    "split_loss",
]

# Sequence numbers remembered for duplicate detection: 4 Mi numbers, 512 KiB of bitmap.
# A number further ahead than this of the highest seen is refused as garbage, so an
# untrusted sender cannot make the bitmap grow without bound.
_WINDOW = 1 << 22


class SequenceTracker:
    """Classify arrivals of numbered datagrams (numbers counted from 0 by the sender).

    RFC 4737 terms: ``next_expected`` is one past the highest number seen; an
    arrival below it that was never seen is *reordered*, and its *extent* is
    how many (unique) arrivals ago the first datagram with a higher number came
    (RFC 4737 section 4.2).  Duplicates are counted and take no part in the
    reordering figures (the RFC's rule).  Loss needs the sender's count:
    ``lost = sent - unique``.

    Args:
        window: how many numbers below the highest are remembered for duplicate
            detection; older ones, and jumps further ahead, count as ``out_of_window``.
    """

    __slots__ = (
        "_base",
        "_bits",
        "_run_idx",
        "_run_len",
        "_run_seq",
        "_window",
        "duplicates",
        "extent_max",
        "extent_sum",
        "next_expected",
        "out_of_window",
        "received",
        "reordered",
        "unique",
    )

    def __init__(self, window: int = _WINDOW) -> None:
        if window < 8:
            raise ValueError(f"invalid window {window!r}: must be 8 or more sequence numbers")
        self.received = 0  # every arrival, duplicates included
        self.unique = 0
        self.duplicates = 0
        self.reordered = 0
        self.extent_max = 0
        self.extent_sum = 0
        self.out_of_window = 0
        self.next_expected = 0
        self._window = window
        self._bits = bytearray()  # bit (seq - _base): seen
        self._base = 0  # a multiple of 8
        # Runs of "advancing" arrivals (each raised next_expected): run k covers
        # numbers _run_seq[k] .. +_run_len[k]-1, which arrived as unique arrivals
        # _run_idx[k] .. +_run_len[k]-1.  In-order traffic is a single run.
        self._run_seq: list[int] = []
        self._run_idx: list[int] = []
        self._run_len: list[int] = []

    @property
    def highest(self) -> int:
        """The highest number seen, -1 before any."""
        return self.next_expected - 1

    @property
    def reordered_ratio(self) -> float:
        """RFC 4737 reordered ratio: reordered / unique arrivals (0.0 before any)."""
        return self.reordered / self.unique if self.unique else 0.0

    def lost(self, sent: int) -> int:
        """Datagrams numbered below ``sent`` that never arrived (needs numbers 0..sent-1)."""
        return max(sent - self.unique, 0)

    # -- the bitmap ------------------------------------------------------------------

    def _room(self, seq: int) -> None:
        need = ((seq - self._base) >> 3) + 1
        bits = self._bits
        if need > len(bits):
            bits.extend(bytes(max(need - len(bits), 4096)))
            if len(bits) * 8 > 2 * self._window:
                self._trim()

    def _trim(self) -> None:
        # Forget numbers more than `window` below the highest: a late arrival that
        # old cannot be told from a duplicate any more (it is counted out_of_window).
        new_base = max((self.next_expected - self._window) & ~7, self._base)
        cut = (new_base - self._base) >> 3
        if cut <= 0:
            return
        del self._bits[:cut]
        self._base = new_base
        # Runs wholly below the base can no longer be asked about.
        k = 0
        while k < len(self._run_seq) - 1 and self._run_seq[k] + self._run_len[k] <= new_base:
            k += 1
        if k:
            del self._run_seq[:k], self._run_idx[:k], self._run_len[:k]

    def _set_range(self, start: int, n: int) -> None:
        """Mark numbers start..start+n-1 seen (all at or above next_expected)."""
        self._room(start + n - 1)
        bits = self._bits
        lo = start - self._base
        hi = lo + n  # exclusive
        while lo < hi and lo & 7:
            bits[lo >> 3] |= 1 << (lo & 7)
            lo += 1
        full = (hi - lo) >> 3
        if full:
            bits[lo >> 3 : (lo >> 3) + full] = b"\xff" * full
            lo += full << 3
        while lo < hi:
            bits[lo >> 3] |= 1 << (lo & 7)
            lo += 1

    # -- arrivals --------------------------------------------------------------------

    def _advance(self, seq: int, n: int) -> None:
        """Arrivals seq..seq+n-1, in order, all above everything seen so far."""
        idx = self.unique
        rs, rl = self._run_seq, self._run_len
        if rs and rs[-1] + rl[-1] == seq and self._run_idx[-1] + rl[-1] == idx:
            rl[-1] += n
        else:
            rs.append(seq)
            self._run_idx.append(idx)
            rl.append(n)
        self.unique = idx + n
        self.next_expected = seq + n

    def observe(self, seq: int) -> None:
        """Record one arrival of number ``seq``."""
        self.received += 1
        nxt = self.next_expected
        if seq >= nxt:
            if seq - nxt >= self._window:
                self.out_of_window += 1
                return
            self._room(seq)
            off = seq - self._base
            self._bits[off >> 3] |= 1 << (off & 7)
            self._advance(seq, 1)
            return
        off = seq - self._base
        if off < 0:
            self.out_of_window += 1
            return
        mask = 1 << (off & 7)
        if self._bits[off >> 3] & mask:
            self.duplicates += 1
            return
        self._bits[off >> 3] |= mask
        extent = self.unique - self._first_arrival_above(seq)
        self.unique += 1
        self.reordered += 1
        self.extent_sum += extent
        self.extent_max = max(self.extent_max, extent)

    def observe_many(self, seqs: Sequence[int]) -> None:
        """Record arrivals in the order given; a consecutive in-order batch costs O(1) Python."""
        n = len(seqs)
        if not n:
            return
        first = seqs[0]
        nxt = self.next_expected
        if (
            first == nxt
            and seqs[-1] == first + n - 1
            and n < self._window
            and list(seqs) == list(range(first, first + n))
        ):
            self.received += n
            self._set_range(first, n)
            self._advance(first, n)
            return
        for s in seqs:
            self.observe(s)

    def _first_arrival_above(self, seq: int) -> int:
        """The unique-arrival index of the earliest arrival numbered above ``seq``.

        That arrival raised next_expected (anything above ``seq`` that did not
        came after one that did), and advancing arrivals have increasing numbers,
        so it is the advancing arrival with the smallest number above ``seq``.
        """
        rs = self._run_seq
        k = bisect_right(rs, seq) - 1
        if k >= 0 and seq + 1 < rs[k] + self._run_len[k]:
            return self._run_idx[k] + (seq + 1 - rs[k])
        return self._run_idx[k + 1]


class Jitter:
    """RFC 3550 (section 6.4.1) interarrival jitter, in nanoseconds.

    ``J += (|D| - J) / 16`` where D is the change in transit time (arrival
    minus send timestamp) between consecutive arrivals.  The two clocks may
    differ by any constant offset: only differences count.
    """

    __slots__ = ("_transit", "jitter_ns", "samples")

    def __init__(self) -> None:
        self.jitter_ns = 0.0
        self.samples = 0
        self._transit: int | None = None

    def observe(self, send_ns: int, arrival_ns: int) -> None:
        """Record an arrival at ``arrival_ns`` of a datagram stamped ``send_ns``."""
        transit = arrival_ns - send_ns
        if self._transit is not None:
            d = transit - self._transit
            self.jitter_ns += ((d if d >= 0 else -d) - self.jitter_ns) / 16.0
        self._transit = transit
        self.samples += 1


_SUB_BITS = 11  # 2048 sub-buckets: 3 significant decimal digits, as HdrHistogram's default


def _index(v: int) -> int:
    if v < 1 << _SUB_BITS:
        return v
    shift = v.bit_length() - _SUB_BITS
    return (shift << (_SUB_BITS - 1)) + (v >> shift)


def _bucket_high(idx: int) -> int:
    """The highest value that lands in bucket ``idx``."""
    if idx < 1 << _SUB_BITS:
        return idx
    shift = (idx >> (_SUB_BITS - 1)) - 1
    m = idx - (shift << (_SUB_BITS - 1))
    return ((m + 1) << shift) - 1


@dataclass
class LatencyHistogram:
    """Latencies in integer nanoseconds, HDR-style log-linear buckets.

    Values below 2048 ns are kept exactly; above, each power of two is split
    into 1024 buckets, so a reported percentile is at most 0.1 % above the true
    value (HdrHistogram with 3 significant digits reports the same way: the
    highest value equivalent to the bucket).  Negative values count as 0.
    """

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total_ns: int = 0
    min_ns: int = 0
    max_ns: int = 0

    def record(self, value_ns: int) -> None:
        """Record one value."""
        v = value_ns if value_ns > 0 else 0
        idx = v if v < 2048 else _index(v)
        c = self.counts
        c[idx] = c.get(idx, 0) + 1
        if not self.count or v < self.min_ns:
            self.min_ns = v
        self.max_ns = max(self.max_ns, v)
        self.count += 1
        self.total_ns += v

    def record_many(self, values: Iterable[int]) -> None:
        """Record several values."""
        for v in values:
            self.record(v)

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s values to these."""
        if not other.count:
            return
        for idx, n in other.counts.items():
            self.counts[idx] = self.counts.get(idx, 0) + n
        self.min_ns = other.min_ns if not self.count else min(self.min_ns, other.min_ns)
        self.max_ns = max(self.max_ns, other.max_ns)
        self.count += other.count
        self.total_ns += other.total_ns

    @property
    def mean_ns(self) -> float:
        """The exact mean (0.0 when empty)."""
        return self.total_ns / self.count if self.count else 0.0

    def percentile(self, p: float) -> int:
        """The value at or below which ``p`` percent of the values lie (0 when empty).

        Raises:
            ValueError: ``p`` outside 0-100.
        """
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"invalid percentile {p!r}: must be 0-100")
        if not self.count:
            return 0
        if p >= 100.0:
            return self.max_ns
        if p <= 0.0:
            return self.min_ns
        # round(): 99.9 / 100 * 10000 is 9990.000000000002, which must stay rank 9990.
        rank = max(1, math.ceil(round(p / 100.0 * self.count, 6)))
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            if seen >= rank:
                return max(min(_bucket_high(idx), self.max_ns), self.min_ns)
        return self.max_ns  # unreachable: counts add up to count

    def cdf(self) -> list[tuple[int, float]]:
        """``(value_ns, fraction of values <= value)`` per occupied bucket, ascending."""
        out: list[tuple[int, float]] = []
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            out.append((min(_bucket_high(idx), self.max_ns), seen / self.count))
        return out


@dataclass
class IntervalRow:
    """One closed interval: named sums and peaks over ``[start_ns, end_ns)``."""

    start_ns: int
    end_ns: int
    sums: dict[str, int] = field(default_factory=dict)
    peaks: dict[str, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """The interval's length in seconds."""
        return (self.end_ns - self.start_ns) / 1e9

    def per_second(self, key: str) -> float:
        """``sums[key]`` divided by the interval's length (0.0 for an empty interval)."""
        s = self.seconds
        return self.sums.get(key, 0) / s if s > 0 else 0.0


class IntervalMeter:
    """Counters cut into fixed intervals from ``start_ns`` (the rows of live output).

    Args:
        start_ns: when the first interval begins.
        interval_ns: each interval's length (> 0).
    """

    def __init__(self, start_ns: int, interval_ns: int) -> None:
        if interval_ns <= 0:
            raise ValueError(f"invalid interval {interval_ns!r} ns: must be > 0")
        self.start_ns = start_ns
        self.interval_ns = interval_ns
        self.current = IntervalRow(start_ns, start_ns + interval_ns)
        self.rows: list[IntervalRow] = []

    def tick(self, now_ns: int) -> list[IntervalRow]:
        """Close every interval that ended at or before ``now_ns``; return the newly closed."""
        closed: list[IntervalRow] = []
        while now_ns >= self.current.end_ns:
            row = self.current
            closed.append(row)
            self.current = IntervalRow(row.end_ns, row.end_ns + self.interval_ns)
        self.rows.extend(closed)
        return closed

    def add(self, key: str, amount: int = 1) -> None:
        """Add ``amount`` to ``key`` in the current interval (call :meth:`tick` first)."""
        sums = self.current.sums
        sums[key] = sums.get(key, 0) + amount

    def peak(self, key: str, value: int) -> None:
        """Keep the largest ``value`` seen for ``key`` in the current interval."""
        peaks = self.current.peaks
        if value > peaks.get(key, value - 1):
            peaks[key] = value

    def finish(self, now_ns: int) -> list[IntervalRow]:
        """Close what is due, then the partial interval ending at ``now_ns``.

        The partial interval is kept only if something was counted in it (a
        run that ends just past an interval's end adds no empty sliver).

        Returns:
            The newly closed rows, the partial one last.
        """
        closed = self.tick(now_ns)
        if now_ns > self.current.start_ns and (self.current.sums or self.current.peaks):
            self.current.end_ns = now_ns
            closed.append(self.current)
            self.rows.append(self.current)
            self.current = IntervalRow(now_ns, now_ns + self.interval_ns)
        return closed


@dataclass(frozen=True)
class LossSplit:
    """Lost datagrams of one direction, by where they were lost.

    ``lost == sender + path + receiver_kernel``.  ``receiver_kernel`` is what the
    receiving socket's kernel counter accounts for; ``path`` is the rest (on a
    single host with no relay in between, "unexplained").  ``kernel_shared`` is
    set when the kernel counted more drops than this flow lost (other traffic
    shared the socket), so the split took only what fits.
    """

    lost: int
    sender: int
    path: int
    receiver_kernel: int
    kernel_shared: bool = False


def split_loss(
    numbered: int, arrived: int, sender_lost: int, kernel_drops: int | None
) -> LossSplit:
    """Split ``numbered - arrived`` lost datagrams by where they were lost.

    Args:
        numbered: datagrams the sender numbered (sent, or failed at the sender).
        arrived: distinct numbers the receiver saw.
        sender_lost: numbered datagrams the sender's kernel refused.
        kernel_drops: drops the receiving socket's kernel counted meanwhile
            (``None``: unknown, taken as 0).

    Returns:
        The split; every part is >= 0.
    """
    lost = max(numbered - arrived, 0)
    sender = min(max(sender_lost, 0), lost)
    drops = max(kernel_drops or 0, 0)
    kernel = min(drops, lost - sender)
    return LossSplit(lost, sender, lost - sender - kernel, kernel, drops > kernel)
