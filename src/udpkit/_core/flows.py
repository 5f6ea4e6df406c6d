"""The relay's flow table, without I/O: client address -> :class:`Flow`.

Nothing here touches a socket or reads a clock: every call that depends on time
takes ``now``.  Each flow carries its two :class:`~udpkit._core.impair.Impairment`
pipelines (client -> target, target -> client); the table creates them lazily,
caps how many flows live at once and expires idle ones, keeping the counters of
the flows that ended.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from udpkit._core.datagram import SockAddr
from udpkit._core.errors import UsageError
from udpkit._core.impair import Impairment, ImpairStats

__all__ = ["COUNTERS", "Flow", "FlowTable", "FlowTotals"]


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
