"""Counter records: how a dataclass of counts becomes JSON, and how two of them add up.

Every statistics record udpkit keeps (a server's, an engine's, an endpoint's,
an impairment pipeline's) is a dataclass of counts; these two functions are the
one rule for showing one and for summing them (workers, flows).
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["add_counters", "counters_dict"]


def counters_dict(counters: DataclassInstance) -> dict[str, object]:
    """``counters`` as a plain dict, ready for JSON.

    The fields in their order; dict and list values are copied, so the caller
    may keep the result while the counts go on.
    """
    out: dict[str, object] = {}
    for f in fields(counters):
        v = getattr(counters, f.name)
        if isinstance(v, dict):
            v = dict(v)
        elif isinstance(v, list):
            v = list(v)
        out[f.name] = v
    return out


def add_counters(total: DataclassInstance, other: DataclassInstance) -> None:
    """Add ``other``'s counts to ``total``'s, field by field (both of one class).

    Numbers add; ``{name: count}`` tables add name by name; an unknown figure
    (``None``) stays unknown only when both sides are unknown; a flag (a bool,
    such as "estimated") is set when either side has it.
    """
    for f in fields(total):
        mine, theirs = getattr(total, f.name), getattr(other, f.name)
        if theirs is None:
            continue
        if isinstance(theirs, bool):
            setattr(total, f.name, mine or theirs)
        elif isinstance(theirs, dict):
            for name, n in theirs.items():
                mine[name] = mine.get(name, 0) + n
        else:
            setattr(total, f.name, (mine or 0) + theirs)
