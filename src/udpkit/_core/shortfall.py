"""Why a bench run sent slower than it was asked to: the under-rate verdict.

No I/O: the run's own counters go in, a verdict comes out.  A run whose send
rate stays under 90 % of the asked rate says so, with the causes its counters
show, in the order they are checked:

==================  ==============================================================
socket_buffer_full  the kernel said EAGAIN (send buffer full; bench retried) or
                    ENOBUFS (a queue below the socket full; the probe was lost)
kernel_refusals     the kernel refused probes with another error (an ICMP error
                    about an earlier probe, no route, ...): each lost at the sender
sender_cpu          the send loop never idled (under 5 % of the run asleep):
                    Python, not the path, set the pace
window              ``--window N``: the loop idled, waiting for replies to free
                    a slot; the round trip set the pace
==================  ==============================================================

A full socket buffer also keeps the loop busy (it retries at once), so
``sender_cpu`` is only named when the buffer never filled.  Nothing is said for
``max`` (no asked rate) or a run of fewer than two probes (no rate to measure).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["SHORT_RATIO", "RateShortfall", "rate_shortfall"]

SHORT_RATIO = 0.9  # under this share of the asked rate, the run says so
_BUSY = 0.05  # a loop asleep less than this share of the run never idled
_FULL = frozenset({"ENOBUFS"})  # a queue below the socket full


@dataclass(frozen=True)
class RateShortfall:
    """A send rate under :data:`SHORT_RATIO` of the asked one, and why.

    ``causes`` are codes (``socket_buffer_full``, ``kernel_refusals``,
    ``sender_cpu``, ``window``; ``unknown`` when no counter explains it) and
    ``reasons`` one sentence for each, in the same order.
    """

    asked_per_s: float
    achieved_per_s: float
    idle_ratio: float
    causes: tuple[str, ...]
    reasons: tuple[str, ...]

    @property
    def ratio(self) -> float:
        """The achieved rate as a share of the asked one."""
        return self.achieved_per_s / self.asked_per_s

    def message(self, size: int) -> str:
        """One line for stderr: both rates (datagrams and bits of ``size``-byte probes) and why."""
        got = f"{self.achieved_per_s:.0f} datagrams/s ({_bits(self.achieved_per_s * size * 8)})"
        asked = f"{self.asked_per_s:.0f} ({_bits(self.asked_per_s * size * 8)})"
        return f"sent {got}, {self.ratio:.0%} of the {asked} asked; likely cause: " + "; ".join(
            self.reasons
        )


def _bits(per_s: float) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_s >= factor:
            return f"{per_s / factor:.4g} {prefix}bit/s"
    return f"{per_s:.0f} bit/s"


def _counts(errors: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(errors.items()))


def rate_shortfall(
    *,
    asked_per_s: float | None,
    sent: int,
    seconds: float,
    idle_seconds: float,
    blocked: int,
    errors: Mapping[str, int],
    window: int | None = None,
) -> RateShortfall | None:
    """The verdict on a run's send rate, or ``None`` when it kept up (or nothing was asked).

    Args:
        asked_per_s: the asked rate, datagrams/s of all flows (``None``: as fast as possible).
        sent: datagrams the kernel took.
        seconds: the send phase's length.
        idle_seconds: how long the send loop slept in that time.
        blocked: sends the kernel cut short with EAGAIN (retried).
        errors: sends the kernel refused, by errno name (each probe lost).
        window: ``--window N``, if the run had one.
    """
    if asked_per_s is None or sent < 2 or seconds <= 0:
        return None
    achieved = sent / seconds
    if achieved >= SHORT_RATIO * asked_per_s:
        return None
    idle = min(max(idle_seconds / seconds, 0.0), 1.0)
    causes: list[str] = []
    reasons: list[str] = []
    full = {k: v for k, v in errors.items() if k in _FULL}
    refused = {k: v for k, v in errors.items() if k not in _FULL}
    if blocked or full:
        said = [f"EAGAIN {blocked} times (retried)"] if blocked else []
        if full:
            said.append(f"{_counts(full)} (probes lost)")
        causes.append("socket_buffer_full")
        reasons.append(f"the socket send buffer was full: the kernel said {' and '.join(said)}")
    if refused:
        causes.append("kernel_refusals")
        reasons.append(f"the kernel refused probes: {_counts(refused)} (each lost at the sender)")
    if idle < _BUSY and not (blocked or full):
        causes.append("sender_cpu")
        reasons.append(
            f"the sender's CPU: the send loop never idled ({idle:.0%} of the run asleep); "
            "ask for less, or send larger datagrams (-l) for more bits/s"
        )
    elif window is not None and idle >= _BUSY:
        causes.append("window")
        reasons.append(
            f"the window: at most {window} probe{'s' * (window != 1)} outstanding, each for a "
            "round trip (raise --window, or drop it for a paced run)"
        )
    if not causes:
        causes.append("unknown")
        reasons.append(
            f"none bench can see (the send loop idled {idle:.0%} of the run, no send was "
            "refused): another process taking the CPU, or timer slack"
        )
    return RateShortfall(asked_per_s, achieved, idle, tuple(causes), tuple(reasons))
