"""Ping accounting without I/O: numbered probes out, replies matched by number.

A ping run sends bench probes (:mod:`udpkit._core.probe`: magic, a random
``run_id``, the sequence number and the send time) one at a time: the next
probe leaves ``interval`` after the previous one, and not before the previous
one was answered or timed out.  Every datagram that comes back is matched by
its ``run_id`` and number, never by arrival order, so a reply that comes late
(after its probe timed out), twice, or out of order is told apart from loss.

Both kinds of peer answer a probe: a plain echo (``udpkit serve --echo``,
``socat ... EXEC:cat``) sends the bytes back unchanged (kind ``PROBE``), and
``udpkit reflect`` sends them back marked ``REFLECTED``.  Anything else that
arrives (a fixed reply such as ``Hello UDP Client``, another run's probes) is
counted as *unmatched* and never shown.

:class:`PingSession` holds the schedule and the figures; it reads no clock and
touches no socket: every method takes ``now`` (integer nanoseconds of a
monotonic clock), so it is tested with a hand-driven clock.  The loop that
owns the socket is :class:`udpkit._loops.ping.Pinger`.
"""

from __future__ import annotations

from typing import NamedTuple

from udpkit._core.errors import UsageError
from udpkit._core.probe import HEADER, HEADER_SIZE, MAGIC, MAX_PROBE_SIZE, VERSION, Kind
from udpkit._core.stats import LatencyHistogram, SequenceTracker

__all__ = [
    "DUPLICATE",
    "ERROR",
    "LATE",
    "REPLY",
    "TIMEOUT",
    "UNMATCHED",
    "PingEvent",
    "PingResult",
    "PingSession",
]

# PingEvent.kind values.
REPLY = "reply"  # the first reply to the probe still awaited
LATE = "late"  # the first reply to an earlier probe (it had timed out, or a later one was sent)
DUPLICATE = "duplicate"  # another reply to a probe already answered
TIMEOUT = "timeout"  # the awaited probe got no reply within the timeout
UNMATCHED = "unmatched"  # a datagram that is no reply to this run's probes
ERROR = "error"  # the probe could not be sent, or the peer's host refused it (ICMP)

_U64 = (1 << 64) - 1
_ANSWERS = (Kind.PROBE, Kind.REFLECTED)  # an echo's reply, a reflector's reply


class PingEvent(NamedTuple):
    """One thing that happened to a probe (or an unmatched datagram).

    ``seq`` is -1 for an unmatched datagram; ``rtt_ns`` is -1 where there is
    no round trip (timeout, error, unmatched); ``length`` is the datagram's
    size in bytes (0 where nothing arrived); ``detail`` says why for an error.
    """

    kind: str
    seq: int
    rtt_ns: int = -1
    length: int = 0
    detail: str = ""


class PingResult(NamedTuple):
    """The figures of a ping run (so far).

    Counts are probes or datagrams.  ``received`` counts distinct probes
    answered, late ones included; ``lost = sent - received`` (a probe still
    awaited when the run stopped counts as lost, as ``ping`` counts it).
    ``timeouts`` are probes whose reply did not come within the timeout
    (``late`` of them were answered afterwards), ``errors`` probes that could
    not be sent or that the peer's host refused.  ``rtt`` holds the round trip
    of every first reply, late ones included.  ``peer`` is ``"reflector"``
    when ``udpkit reflect`` answered, ``"echo"`` for a plain echo, ``None``
    before any reply.
    """

    size: int
    sent: int
    received: int
    duplicates: int
    reordered: int
    late: int
    timeouts: int
    unmatched: int
    errors: int
    duration_ns: int
    rtt: LatencyHistogram
    peer: str | None

    @property
    def lost(self) -> int:
        """Probes sent and never answered."""
        return max(self.sent - self.received, 0)

    @property
    def loss_ratio(self) -> float:
        """``lost / sent`` (0.0 before any probe)."""
        return self.lost / self.sent if self.sent else 0.0

    def figures(self) -> dict[str, int | float | str | None]:
        """Every figure, the unit in each key's name (``rtt_p50_ms``, ``sent_datagrams``).

        Round-trip figures are ``None`` when no reply came.
        """
        rtt = self.rtt

        def ms(ns: float) -> float | None:
            return round(ns / 1e6, 6) if rtt.count else None

        return {
            "size_bytes": self.size,
            "sent_datagrams": self.sent,
            "received_datagrams": self.received,
            "lost_datagrams": self.lost,
            "loss_ratio": round(self.loss_ratio, 9),
            "duplicate_datagrams": self.duplicates,
            "reordered_datagrams": self.reordered,
            "late_datagrams": self.late,
            "timeout_datagrams": self.timeouts,
            "unmatched_datagrams": self.unmatched,
            "error_datagrams": self.errors,
            "rtt_min_ms": ms(rtt.min_ns),
            "rtt_mean_ms": ms(rtt.mean_ns),
            "rtt_p50_ms": ms(rtt.percentile(50.0)),
            "rtt_p90_ms": ms(rtt.percentile(90.0)),
            "rtt_p99_ms": ms(rtt.percentile(99.0)),
            "rtt_max_ms": ms(rtt.max_ns),
            "duration_s": round(self.duration_ns / 1e9, 6),
            "peer": self.peer,
        }


class PingSession:
    """The schedule and the figures of one ping run; no clock, no socket.

    The loop asks :meth:`due_ns` when the next probe may leave, builds it with
    :meth:`probe` and sends it, hands every datagram that arrives to
    :meth:`datagram`, calls :meth:`expire` when :meth:`deadline_ns` has
    passed, and stops when :meth:`finished` says so.

    Args:
        run_id: this run's number (0 to 2**32-1), carried by every probe; pick it
            at random so two runs (or a stale reply of an earlier one) never mix.
        start_ns: the clock when the run starts; the first probe is due then.
        size: each probe's size in bytes (the UDP payload), at least the
            32-byte probe header.
        interval_ns: from one probe to the next (0: the next as soon as the
            previous is answered).
        timeout_ns: how long a probe is awaited before it counts as timed out.
        count: probes to send (``None``: until stopped).

    Raises:
        UsageError: a value out of range, named.
    """

    def __init__(
        self,
        *,
        run_id: int,
        start_ns: int,
        size: int = 64,
        interval_ns: int = 1_000_000_000,
        timeout_ns: int = 1_000_000_000,
        count: int | None = None,
    ) -> None:
        if not HEADER_SIZE <= size <= MAX_PROBE_SIZE:
            raise UsageError(
                f"invalid size {size!r}: must be {HEADER_SIZE}-{MAX_PROBE_SIZE} bytes "
                f"(a probe's header takes {HEADER_SIZE})"
            )
        if interval_ns < 0:
            raise UsageError(f"invalid interval {interval_ns!r} ns: must be >= 0")
        if timeout_ns <= 0:
            raise UsageError(f"invalid timeout {timeout_ns!r} ns: must be > 0")
        if count is not None and count < 1:
            raise UsageError(f"invalid count {count!r}: must be >= 1 (or None: until stopped)")
        if not 0 <= run_id < 1 << 32:
            raise UsageError(f"invalid run_id {run_id!r}: must be 0 to 2**32-1")
        self.run_id = run_id
        self.start_ns = start_ns
        self.size = size
        self.interval_ns = interval_ns
        self.timeout_ns = timeout_ns
        self.count = count
        self._pad = bytes(size - HEADER_SIZE)
        self.sent = 0
        self.timeouts = 0
        self.late = 0
        self.unmatched = 0
        self.errors = 0
        self.reflected = 0  # replies marked REFLECTED (udpkit reflect)
        self.echoed = 0  # replies sent back unchanged (a plain echo)
        self.tracker = SequenceTracker()
        self.rtt = LatencyHistogram()
        self.last_ns = start_ns  # the latest `now` seen: the run's end so far
        self._next_ns = start_ns  # the next probe is due then (and the open one is settled)
        self._open = -1  # the number of the probe awaited, -1 when none
        self._open_sent_ns = 0
        self._open_deadline_ns = 0

    # -- the schedule ----------------------------------------------------------------

    @property
    def awaiting(self) -> int:
        """The number of the probe awaited now, -1 when none."""
        return self._open

    @property
    def awaiting_since_ns(self) -> int:
        """When the probe awaited now was sent (meaningless when none is)."""
        return self._open_sent_ns

    def due_ns(self) -> int | None:
        """When the next probe may leave; ``None`` when ``count`` probes were sent.

        One probe is outstanding at most: while one is awaited the next is due
        no earlier than that probe's timeout (a reply settles it sooner).
        """
        if self.count is not None and self.sent >= self.count:
            return None
        if self._open >= 0:
            return max(self._next_ns, self._open_deadline_ns)
        return self._next_ns

    def deadline_ns(self) -> int | None:
        """The next moment the loop must act without a datagram; ``None``: never.

        That is the awaited probe's timeout or the next probe's departure,
        whichever comes first.
        """
        due = self.due_ns()
        if self._open >= 0:
            return self._open_deadline_ns if due is None else min(due, self._open_deadline_ns)
        return due

    def finished(self) -> bool:
        """True when ``count`` probes were sent and none is awaited any more."""
        return self.count is not None and self.sent >= self.count and self._open < 0

    def probe(self, now: int) -> bytes:
        """Build the next probe, stamped ``now``, and await it.  Send it at once.

        A probe still awaited is settled as timed out first (the loop normally
        calls :meth:`expire` before, so this only happens if it did not).
        """
        if self._open >= 0:
            self._time_out()
        seq = self.sent
        self.sent = seq + 1
        self._open = seq
        self._open_sent_ns = now
        self._open_deadline_ns = now + self.timeout_ns
        self._next_ns = now + self.interval_ns
        self.last_ns = max(self.last_ns, now)
        return HEADER.pack(MAGIC, VERSION, Kind.PROBE, self.run_id, seq, now & _U64, 0) + self._pad

    def expire(self, now: int) -> PingEvent | None:
        """Time out the awaited probe if its timeout has passed; return that event."""
        self.last_ns = max(self.last_ns, now)
        if self._open < 0 or now < self._open_deadline_ns:
            return None
        return self._time_out()

    def _time_out(self) -> PingEvent:
        seq, self._open = self._open, -1
        self.timeouts += 1
        return PingEvent(TIMEOUT, seq)

    def error(self, now: int, detail: str) -> PingEvent:
        """The awaited probe failed: its send failed or the peer's host refused it.

        Such a probe is not awaited any more (the next leaves at its normal
        time); it counts as sent and lost.  With no probe awaited (an ICMP
        error about an earlier one) the error is counted against the latest.
        """
        self.last_ns = max(self.last_ns, now)
        seq = self._open if self._open >= 0 else self.sent - 1
        self._open = -1
        self.errors += 1
        return PingEvent(ERROR, seq, detail=detail)

    # -- what comes back -------------------------------------------------------------

    def datagram(self, data: bytes | bytearray | memoryview, now: int) -> PingEvent:
        """Classify one datagram from the peer, received at ``now``.

        A reply is a datagram that starts with one of this run's probe headers
        (as sent, or marked ``REFLECTED``) for a number already sent, stamped
        within the run; its round trip is ``now`` minus the send time (the
        time kept here for the awaited probe, the stamp for an earlier one).
        Everything else is counted as unmatched; nothing raises.
        """
        self.last_ns = max(self.last_ns, now)
        n = len(data)
        if n < HEADER_SIZE:
            return self._unmatched(n)
        magic, version, kind, run_id, seq, sent_ns, _ = HEADER.unpack_from(data)
        if (
            magic != MAGIC
            or version != VERSION
            or run_id != self.run_id
            or kind not in _ANSWERS
            or seq >= self.sent
        ):
            return self._unmatched(n)
        if seq == self._open:
            rtt = now - self._open_sent_ns
        elif self.start_ns <= sent_ns <= now:
            rtt = now - sent_ns
        else:  # our header, a stamp from outside the run: not trusted for a round trip
            return self._unmatched(n)
        tracker = self.tracker
        dups, old = tracker.duplicates, tracker.out_of_window
        tracker.observe(seq)
        if tracker.out_of_window != old:  # too old to tell from a duplicate
            return self._unmatched(n)
        if tracker.duplicates != dups:
            return PingEvent(DUPLICATE, seq, rtt, n)
        if kind == Kind.REFLECTED:
            self.reflected += 1
        else:
            self.echoed += 1
        self.rtt.record(rtt)
        if seq == self._open:
            self._open = -1
            return PingEvent(REPLY, seq, rtt, n)
        self.late += 1
        return PingEvent(LATE, seq, rtt, n)

    def _unmatched(self, n: int) -> PingEvent:
        self.unmatched += 1
        return PingEvent(UNMATCHED, -1, length=n)

    # -- the figures -----------------------------------------------------------------

    def result(self) -> PingResult:
        """The figures so far (a probe still awaited counts as lost)."""
        t = self.tracker
        peer = "reflector" if self.reflected else ("echo" if self.echoed else None)
        rtt = LatencyHistogram()
        rtt.merge(self.rtt)  # a copy: the run's own goes on counting
        return PingResult(
            size=self.size,
            sent=self.sent,
            received=t.unique,
            duplicates=t.duplicates,
            reordered=t.reordered,
            late=self.late,
            timeouts=self.timeouts,
            unmatched=self.unmatched,
            errors=self.errors,
            duration_ns=self.last_ns - self.start_ns,
            rtt=rtt,
            peer=peer,
        )
