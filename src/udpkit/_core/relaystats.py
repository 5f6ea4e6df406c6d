"""The relay's statistics: :class:`RelayStats` snapshots and their text form.

:mod:`udpkit._loops.relay` gathers the counters (the kernel's drop counts too)
and names the peers; this module only holds them and renders them
(``format_stats``, what ``udpkit relay`` prints on SIGUSR1 and at exit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from udpkit._core.impair import ImpairStats

__all__ = ["FlowRow", "RelayStats", "format_stats"]


class FlowRow(TypedDict):
    """One live flow in :attr:`RelayStats.per_flow`."""

    peer: str  # the client, as text
    up_in: int
    up_out: int
    down_in: int
    down_out: int
    upstream_refused: int
    up: dict[str, int]  # the impairments' counters, client -> target
    down: dict[str, int]  # ... target -> client


@dataclass
class RelayStats:
    """A snapshot of a relay's counters (``Relay.stats``).

    ``up_*`` count client -> target, ``down_*`` target -> client; ``*_in`` what
    the relay received, ``*_out`` what it sent.  ``refused`` counts datagrams from
    new clients turned away because the table was full; ``upstream_refused`` the
    ICMP errors (ECONNREFUSED...) the upstream sockets reported.
    """

    flows: int = 0
    peak_flows: int = 0
    flows_created: int = 0
    flows_expired: int = 0
    refused: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    up: ImpairStats = field(default_factory=ImpairStats)
    down: ImpairStats = field(default_factory=ImpairStats)
    send_errors: dict[str, int] = field(default_factory=dict)
    kernel_drops: int | None = None
    seed: int | None = None
    per_flow: list[FlowRow] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """The counters as a plain dict (ready for JSON)."""
        return {
            "flows": self.flows,
            "peak_flows": self.peak_flows,
            "flows_created": self.flows_created,
            "flows_expired": self.flows_expired,
            "refused": self.refused,
            **self.counts,
            "up": self.up.as_dict(),
            "down": self.down.as_dict(),
            "send_errors": dict(self.send_errors),
            "kernel_drops": self.kernel_drops,
            "seed": self.seed,
            "per_flow": list(self.per_flow),
        }


# Always shown, in this order (parsers of the summary read ``out=N lost=N``), then the rarer kinds
# only when they happened: a line stays readable when one fault is on.
_IMPAIR_KEYS = (
    "lost",
    "duplicated",
    "reordered",
    "delayed",
    "rate_limited",
    "queue_drop",
    "overflow",
    "abandoned",
    "held",
)
_IMPAIR_RARE = ("blackout_drop", "mtu_drop", "truncated", "corrupted", "drained")


def _impair_text(st: ImpairStats | dict[str, int]) -> str:
    d = st if isinstance(st, dict) else st.as_dict()
    shown = [f"{k}={d.get(k, 0)}" for k in _IMPAIR_KEYS]
    shown += [f"{k}={d[k]}" for k in _IMPAIR_RARE if d.get(k)]
    return " ".join(shown)


def format_stats(stats: RelayStats, *, max_flows_shown: int = 16) -> str:
    """Render counters as ``key=value`` lines (totals first, then per live flow).

    Args:
        stats: a snapshot from ``Relay.stats``.
        max_flows_shown: per-flow lines at most (the busiest flows).

    Returns:
        Text ending in a newline.
    """
    c = stats.counts
    kd = "unavailable" if stats.kernel_drops is None else str(stats.kernel_drops)
    errs = sum(stats.send_errors.values())
    err_detail = ",".join(f"{k}:{v}" for k, v in sorted(stats.send_errors.items()))
    lines = [
        f"udpkit relay: flows={stats.flows} peak={stats.peak_flows} "
        f"created={stats.flows_created} expired={stats.flows_expired} "
        f"refused={stats.refused} upstream_refused={c.get('upstream_refused', 0)} "
        f"send_errors={errs}{'(' + err_detail + ')' if err_detail else ''} kernel_drops={kd}"
        + ("" if stats.seed is None else f" seed={stats.seed}"),
        f"udpkit relay: up in={c.get('up_in', 0)} out={c.get('up_out', 0)} "
        f"bytes_in={c.get('up_in_bytes', 0)} bytes_out={c.get('up_out_bytes', 0)} "
        + _impair_text(stats.up),
        f"udpkit relay: down in={c.get('down_in', 0)} out={c.get('down_out', 0)} "
        f"bytes_in={c.get('down_in_bytes', 0)} bytes_out={c.get('down_out_bytes', 0)} "
        + _impair_text(stats.down),
    ]
    rows = sorted(stats.per_flow, key=lambda r: -(r["up_in"] + r["down_in"]))
    for r in rows[:max_flows_shown]:
        # Every impairment counter per flow, as for the totals: a client's own flow
        # can be checked alone (bench keeps its control exchange on another flow).
        lines.append(
            f"udpkit relay:   flow {r['peer']} up in={r['up_in']} out={r['up_out']} "
            f"{_impair_text(r['up'])}; down in={r['down_in']} out={r['down_out']} "
            f"{_impair_text(r['down'])}; upstream_refused={r['upstream_refused']}"
        )
    if len(rows) > max_flows_shown:
        lines.append(f"udpkit relay:   ... and {len(rows) - max_flows_shown} more flows")
    return "\n".join(lines) + "\n"
