"""The relay's policy, without I/O: where its parts live.

* :mod:`udpkit._core.impairconfig`: :class:`ImpairConfig`, what to do to one
  direction, and the text each fault reads;
* :mod:`udpkit._core.impair`: :class:`Impairment`, the fault pipeline of one
  direction of one flow, with its exact counters (:class:`ImpairStats`);
* :mod:`udpkit._core.delaydist`: the jitter distributions;
* :mod:`udpkit._core.flows`: the flow table.

This module gathers their names for the relay's loop and for users of old.
"""

from __future__ import annotations

from udpkit._core.flows import COUNTERS, Flow, FlowTable, FlowTotals
from udpkit._core.impair import DELAY_QUEUE_LIMIT, DROP_KINDS, Impairment, ImpairRng, ImpairStats
from udpkit._core.impairconfig import ImpairConfig

__all__ = [
    "COUNTERS",
    "DELAY_QUEUE_LIMIT",
    "DROP_KINDS",
    "Flow",
    "FlowTable",
    "FlowTotals",
    "ImpairConfig",
    "ImpairRng",
    "ImpairStats",
    "Impairment",
]
