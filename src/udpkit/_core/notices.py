"""Refusal notices: who was refused and why, as it happens, without flooding anyone.

A :class:`~udpkit._core.policy.Policy` counts every refusal; given an
``on_refused`` callable it also calls it with ``(reason, peer, now)`` at the
places a refusal is counted (never on a batch decided whole, where nothing is
refused).  :class:`RefusalNotices` is that callable: a token per reason lets the
first refusal of each reason through at once and then at most one every
``interval`` seconds, counting the ones it holds back, so a flood of refused
datagrams costs one dictionary look-up each and never a line each.

No I/O and no clock: ``now`` is the caller's monotonic clock, the same one the
policy's rate limits read.  What to do with a notice (print it, log it) is the
``sink``'s business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from udpkit._core.datagram import Peer

__all__ = ["DEFAULT_NOTICE_INTERVAL", "Refusal", "RefusalNotices"]

DEFAULT_NOTICE_INTERVAL = 5.0  # seconds between two notices of one reason


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refusal worth telling: the peer refused, why, and how many went untold before it.

    Attributes:
        reason: the policy counter it was counted in: ``"denied"``,
            ``"rate_limited"``, ``"over_budget"`` or ``"unreplyable_<why>"``
            (``port0``, ``broadcast``, ``multicast``, ``unspecified``, ``self``,
            ``invalid``, ``denied``).
        peer: the source refused, as ``recvfrom`` gave it (unescaped: escape it
            before it reaches a terminal).
        suppressed: refusals of this reason since the previous notice of it
            that were counted but not told.
        first: whether this is the first notice of this reason.
    """

    reason: str
    peer: Peer
    suppressed: int = 0
    first: bool = True


class RefusalNotices:
    """A token per reason: the first refusal of each reason is told, then one per ``interval``.

    Pass it as ``Policy(on_refused=...)``; it calls ``sink`` with a
    :class:`Refusal` for each refusal it lets through.

    Args:
        sink: called with each :class:`Refusal` told (from the serving loop).
        interval: seconds between two notices of the same reason.
    """

    __slots__ = ("_due", "_held", "interval", "sink")

    def __init__(
        self, sink: Callable[[Refusal], object], *, interval: float = DEFAULT_NOTICE_INTERVAL
    ) -> None:
        if not interval >= 0:
            raise ValueError(f"invalid notice interval {interval!r}: must be 0 or more seconds")
        self.sink = sink
        self.interval = float(interval)
        self._due: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, reason: str, peer: Peer, now: float) -> None:
        """Note one refusal of ``reason`` from ``peer`` at ``now`` (the caller's clock, seconds)."""
        due = self._due.get(reason)
        if due is not None and now < due:
            held = self._held
            held[reason] = held.get(reason, 0) + 1
            return
        self._due[reason] = now + self.interval
        self.sink(Refusal(reason, peer, self._held.pop(reason, 0), due is None))

    @property
    def held(self) -> dict[str, int]:
        """Refusals per reason counted since that reason's last notice and not told yet."""
        return dict(self._held)
