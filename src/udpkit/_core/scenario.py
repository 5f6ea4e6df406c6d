"""Relay scenarios: routes and fault phases over time, read from TOML or JSON text.

No I/O and no clock: :func:`parse_scenario` reads text the caller loaded, and
:meth:`Scenario.phase_at` answers for a time ``t`` (seconds since the relay
started) that the caller passes in.  A file looks like this::

    seed = 7                      # optional: the same seed replays the same faults
    duration = "20s"              # optional: the relay stops after it

    [[route]]                     # any number; LISTEN=TARGET as on the command line
    name = "quic"
    listen = "127.0.0.1:4433"
    target = "127.0.0.1:4434"
    delay = "5ms"                 # base faults of this route, under every phase

    [[phase]]
    name = "bursts"
    from = "10s"                  # to = "15s"; a phase without `to` lasts until the next one
    to = "15s"
    loss = "30%"

    [[phase]]
    from = "15s"
    to = "16s"
    blackout = true

    [[event]]                     # an instant action
    at = "16s"
    rebind = true

A phase's fault fields override the route's base fields one by one; outside every
phase a route has its base faults.  ``routes = ["quic"]`` limits a phase or an
event to some routes, ``direction = "up"`` (or ``"down"``) a phase's faults to one
direction.  Fault fields are those of :meth:`ImpairConfig.from_text`, with the
same text as the command line options (``loss = "5%"``, ``delay = "20ms±5ms"``).
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field

from udpkit._core import units
from udpkit._core.errors import UsageError
from udpkit._core.relay import ImpairConfig

__all__ = [
    "DIRECTIONS",
    "Event",
    "Phase",
    "RouteText",
    "Scenario",
    "fault_fields",
    "impair_configs",
    "parse_scenario",
]

DIRECTIONS = ("both", "up", "down")
_ROUTE_KEYS = {"name", "listen", "target", "direction", "rebind_every", "nat_timeout"}
_PHASE_KEYS = {"name", "from", "to", "direction", "blackout", "routes"}
_EVENT_KEYS = {"at", "rebind", "routes"}
_TOP_KEYS = {"seed", "duration", "route", "routes", "phase", "phases", "event", "events"}


def fault_fields() -> frozenset[str]:
    """The fault field names a route, a phase or the control API accepts."""
    sig = inspect.signature(ImpairConfig.from_text)
    return frozenset(n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY)


def _text(value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UsageError(f"invalid {where} {value!r}: must be text or a number")
    return str(value)


def faults_from(obj: Mapping[str, object], where: str, skip: set[str]) -> dict[str, str]:
    """The fault fields of ``obj`` as text; any key neither a fault nor in ``skip`` is refused.

    Raises:
        UsageError: an unknown key, naming it and the keys that are known.
    """
    known = fault_fields()
    out: dict[str, str] = {}
    for key, value in obj.items():
        if key in skip:
            continue
        if key not in known:
            allowed = ", ".join(sorted(known | skip))
            raise UsageError(f"invalid key '{key}' in {where}: must be one of {allowed}")
        out[key] = _text(value, f"{where} {key}")
    return out


def impair_configs(
    faults: Mapping[str, str], direction: str = "both", where: str = "faults"
) -> tuple[ImpairConfig | None, ImpairConfig | None]:
    """``(up, down)`` configs for fault text applied in ``direction`` (``None``: nothing).

    Raises:
        UsageError: a field that does not parse, or a bad direction.
    """
    if direction not in DIRECTIONS:
        raise UsageError(f"invalid direction {direction!r} in {where}: must be both, up or down")
    try:
        cfg = ImpairConfig.from_text(**faults)
    except TypeError as exc:  # a field from_text does not take
        raise UsageError(f"invalid {where}: {exc}") from None
    if not cfg.active and not getattr(cfg, "blackout", False):
        return None, None
    return (
        cfg if direction in ("both", "up") else None,
        cfg if direction in ("both", "down") else None,
    )


def _seconds(value: object, where: str) -> float:
    if isinstance(value, bool):
        raise UsageError(f"invalid {where} {value!r}: must be a duration like 10, 500ms or 2min")
    if isinstance(value, int | float):
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"invalid {where} {value!r}: must be 0 seconds or more")
        return float(value)
    return units.parse_duration(_text(value, where), where)


def _flag(obj: Mapping[str, object], key: str, where: str) -> bool:
    v = obj.get(key, False)
    if not isinstance(v, bool):
        raise UsageError(f"invalid {where} {key} {v!r}: must be true or false")
    return v


def _names(obj: Mapping[str, object], where: str) -> tuple[str, ...] | None:
    v = obj.get("routes")
    if v is None:
        return None
    if isinstance(v, str):
        return (v,)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise UsageError(f"invalid {where} routes {v!r}: must be a list of route names")
    return tuple(v)


@dataclass(frozen=True)
class RouteText:
    """One route of a scenario: where it listens, where it forwards, its base faults."""

    name: str
    listen: str
    target: str
    faults: dict[str, str] = field(default_factory=dict)
    direction: str = "both"
    rebind_every: float | None = None
    nat_timeout: float | None = None


@dataclass(frozen=True)
class Phase:
    """Faults from ``start`` until ``end`` seconds (``None``: on and on)."""

    name: str
    start: float
    end: float | None
    faults: dict[str, str] = field(default_factory=dict)
    direction: str = "both"
    blackout: bool = False
    routes: tuple[str, ...] | None = None

    def applies(self, route: str) -> bool:
        """Whether this phase is about ``route``."""
        return self.routes is None or route in self.routes


@dataclass(frozen=True)
class Event:
    """An instant action at ``at`` seconds (today: a NAT rebinding)."""

    at: float
    rebind: bool = False
    routes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Scenario:
    """Routes, phases and events; replayed identically with the same seed."""

    seed: int | None = None
    duration: float | None = None
    routes: tuple[RouteText, ...] = ()
    phases: tuple[Phase, ...] = ()
    events: tuple[Event, ...] = ()

    def phase_at(self, t: float, route: str | None = None) -> Phase | None:
        """The phase in force at ``t`` (for ``route``, if given), or ``None`` (base faults)."""
        for ph in self.phases:
            inside = ph.start <= t and (ph.end is None or t < ph.end)
            if inside and (route is None or ph.applies(route)):
                return ph
        return None

    def next_change(self, t: float) -> float | None:
        """The first phase boundary or event strictly after ``t``, or ``None``."""
        times = [ph.start for ph in self.phases] + [
            ph.end for ph in self.phases if ph.end is not None
        ]
        times += [ev.at for ev in self.events]
        later = [x for x in times if x > t]
        return min(later) if later else None

    def events_between(self, t0: float, t1: float) -> list[Event]:
        """Events with ``t0 < at <= t1``, in time order."""
        return sorted((e for e in self.events if t0 < e.at <= t1), key=lambda e: e.at)

    def faults_at(self, t: float, route: RouteText) -> tuple[dict[str, str], str, bool, str]:
        """``(faults, direction, blackout, phase name)`` for ``route`` at ``t``."""
        ph = self.phase_at(t, route.name)
        if ph is None:
            return dict(route.faults), route.direction, False, "base"
        merged = {**route.faults, **ph.faults}
        direction = ph.direction if ph.faults else route.direction
        return merged, direction, ph.blackout, ph.name


def _load(text: str, source: str) -> dict[str, object]:
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"invalid scenario {source}: not JSON ({exc})") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"invalid scenario {source}: not TOML ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"invalid scenario {source}: must be a table (TOML) or an object (JSON)")
    return data


def _tables(data: dict[str, object], keys: tuple[str, str], source: str) -> list[dict[str, object]]:
    v = data.get(keys[0], data.get(keys[1], []))
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise UsageError(f"invalid scenario {source}: '{keys[0]}' must be a list of tables")
    return v


def _route(i: int, obj: dict[str, object], source: str) -> RouteText:
    where = f"route {i + 1} of {source}"
    for key in ("listen", "target"):
        if not isinstance(obj.get(key), str | int) or isinstance(obj.get(key), bool):
            raise UsageError(f"invalid {where}: '{key}' must be [HOST:]PORT")
    name = obj.get("name", f"r{i + 1}")
    if not isinstance(name, str) or not name or "/" in name:
        raise UsageError(f"invalid {where} name {name!r}: must be text without '/'")
    direction = str(obj.get("direction", "both"))
    faults = faults_from(obj, where, _ROUTE_KEYS)
    impair_configs(faults, direction, where)  # refuse bad text now, not mid-run
    every = obj.get("rebind_every")
    nat = obj.get("nat_timeout")
    return RouteText(
        name=name,
        listen=str(obj["listen"]),
        target=str(obj["target"]),
        faults=faults,
        direction=direction,
        rebind_every=None if every is None else _positive(every, f"{where} rebind_every"),
        nat_timeout=None if nat is None else _positive(nat, f"{where} nat_timeout"),
    )


def _positive(value: object, where: str) -> float:
    s = _seconds(value, where)
    if not s > 0:
        raise UsageError(f"invalid {where} {value!r}: must be more than 0 seconds")
    return s


def _phases(objs: list[dict[str, object]], source: str) -> tuple[Phase, ...]:
    raw: list[tuple[float, float | None, dict[str, object], str]] = []
    for i, obj in enumerate(objs):
        where = f"phase {i + 1} of {source}"
        if "from" not in obj:
            raise UsageError(f"invalid {where}: 'from' (its start, like 10s) is missing")
        start = _seconds(obj["from"], f"{where} from")
        end = None if obj.get("to") is None else _seconds(obj["to"], f"{where} to")
        if end is not None and end <= start:
            raise UsageError(
                f"invalid {where}: 'to' ({end:g} s) must be after 'from' ({start:g} s)"
            )
        raw.append((start, end, obj, where))
    raw.sort(key=lambda r: r[0])
    out: list[Phase] = []
    for k, (start, to, obj, where) in enumerate(raw):
        nxt = raw[k + 1][0] if k + 1 < len(raw) else None
        end = nxt if to is None else to
        name = obj.get("name", f"phase{k + 1}")
        if not isinstance(name, str) or not name:
            raise UsageError(f"invalid {where} name {name!r}: must be text")
        direction = str(obj.get("direction", "both"))
        faults = faults_from(obj, where, _PHASE_KEYS)
        impair_configs(faults, direction, where)
        out.append(
            Phase(
                name,
                start,
                end,
                faults,
                direction,
                _flag(obj, "blackout", where),
                _names(obj, where),
            )
        )
    for a, b in itertools.pairwise(out):
        overlap = a.end is None or a.end > b.start
        if overlap and (a.routes is None or b.routes is None or set(a.routes) & set(b.routes)):
            raise UsageError(
                f"invalid scenario {source}: phase '{a.name}' overlaps phase '{b.name}' "
                f"(from {b.start:g} s); phases of one route must not overlap"
            )
    return tuple(out)


def parse_scenario(text: str, source: str = "scenario") -> Scenario:
    """Read a scenario from TOML (or JSON: text starting with ``{``).

    Args:
        text: the file's content.
        source: how to name it in messages (the file name).

    Raises:
        UsageError: anything malformed, in one line naming the key and what would be right.
    """
    data = _load(text, source)
    for key in data:
        if key not in _TOP_KEYS:
            raise UsageError(
                f"invalid key '{key}' in {source}: must be one of seed, duration, route, "
                "phase, event"
            )
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise UsageError(f"invalid seed {seed!r} in {source}: must be a whole number 0 or more")
    dur = data.get("duration")
    routes = tuple(
        _route(i, o, source) for i, o in enumerate(_tables(data, ("route", "routes"), source))
    )
    names = [r.name for r in routes]
    if len(set(names)) != len(names):
        raise UsageError(f"invalid scenario {source}: route names must differ ({names})")
    phases = _phases(_tables(data, ("phase", "phases"), source), source)
    events: list[Event] = []
    for i, obj in enumerate(_tables(data, ("event", "events"), source)):
        where = f"event {i + 1} of {source}"
        for key in obj:
            if key not in _EVENT_KEYS:
                raise UsageError(
                    f"invalid key '{key}' in {where}: must be one of at, rebind, routes"
                )
        if "at" not in obj:
            raise UsageError(f"invalid {where}: 'at' (its time, like 16s) is missing")
        events.append(
            Event(
                _seconds(obj["at"], f"{where} at"), _flag(obj, "rebind", where), _names(obj, where)
            )
        )
    for ph in phases:
        for r in ph.routes or ():
            if routes and r not in names:
                raise UsageError(f"invalid phase '{ph.name}' in {source}: no route named '{r}'")
    return Scenario(
        seed=seed,
        duration=None if dur is None else _positive(dur, f"duration of {source}"),
        routes=routes,
        phases=phases,
        events=tuple(sorted(events, key=lambda e: e.at)),
    )
