"""What the relay does to one direction: :class:`ImpairConfig`, and the text it reads.

One home for every fault's text: :data:`FIELDS` maps each field to the parser that
reads what users type for it (``udpkit relay --loss 5%``, a scenario phase
``{"loss": "5%", "loss_burst": "4"}``, ``ImpairConfig.from_text(loss="5%")``), on
the unit grammar of :mod:`udpkit._core.units`.  The command line's options use
the same parsers, so a value means the same and is refused with the same words
wherever it is typed.

Only the unit grammar is imported: the command line registers its options
without loading the pipeline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import cast

from udpkit._core import units
from udpkit._core.errors import UsageError

__all__ = ["DELAY_DISTS", "FIELDS", "ImpairConfig", "option_name"]

# The shapes of netem's delay tables (see udpkit._core.delaydist).
DELAY_DISTS = ("uniform", "normal", "pareto", "paretonormal")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def option_name(field: str) -> str:
    """The command-line option for a config field: ``loss_burst`` -> ``--loss-burst``."""
    return "--" + field.replace("_", "-")


# ---------------------------------------------------------------- field parsers


def _probability(field: str) -> Callable[[str], float]:
    return lambda text: units.parse_probability(text, option_name(field))


def _gilbert(text: str) -> tuple[float, float, float, float]:
    """``p,r[,1-h[,1-k]]`` as netem's ``loss gemodel`` takes them (0.01 or 1%)."""
    parts = [s.strip() for s in text.split(",")] if isinstance(text, str) else []
    if not 1 <= len(parts) <= 4 or not all(parts):
        raise UsageError(
            f"invalid --gilbert {text!r}: P,R[,1-H[,1-K]] as netem's gemodel, e.g. 1%,25% "
            "or 1%,25%,100%,0% (P good->bad, R bad->good, 1-H loss when bad, 1-K when good)"
        )
    values = [units.parse_probability(s, "--gilbert") for s in parts]
    # netem's defaults: R = 1-P, 1-H = 100 %, 1-K = 0 %.
    defaults = [values[0], 1.0 - values[0], 1.0, 0.0]
    values += defaults[len(values) :]
    return values[0], values[1], values[2], values[3]


def _loss_burst(text: str) -> float:
    parts = units._split(text)  # a mean length: any number of datagrams >= 1
    if parts is None or parts[1] != "" or parts[0] < 1:
        raise UsageError(
            f"invalid --loss-burst {text!r}: the mean number of datagrams lost in a row, "
            "1 or more (e.g. 4 or 2.5)"
        )
    return parts[0]


def _delay_dist(text: str) -> str:
    name = text.strip().lower().replace("-", "") if isinstance(text, str) else ""
    if name not in DELAY_DISTS:
        raise UsageError(f"invalid --delay-dist {text!r}: one of {', '.join(DELAY_DISTS)}")
    return name


def _keep_order(text: str) -> bool:
    word = text.strip().lower() if isinstance(text, str) else None
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise UsageError(f"invalid --keep-order {text!r}: true or false")


def _queue(text: str) -> tuple[str, float]:
    """``64K`` (bytes) or ``50ms`` (time at the rate): ``("bytes", n)`` or ``("time", s)``."""
    parts = units._split(text)
    if parts is not None and parts[1] in ("us", "µs", "ms", "s", "sec", "min"):
        return "time", units.parse_duration(text, "--queue", above_low=True)
    try:
        return "bytes", float(units.parse_size(text, "--queue", low=1))
    except UsageError:
        raise UsageError(
            f"invalid --queue {text!r}: bytes like 64K or 150000, or a time at the rate "
            "like 50ms (a bare number is bytes)"
        ) from None


def _size(field: str, low: int = 1) -> Callable[[str], int]:
    return lambda text: units.parse_size(text, option_name(field), low=low, high=65535)


# Each field: the parser of its text.  ``delay`` reads ``DELAY[±JITTER]`` (a pair);
# ``queue`` reads bytes or a time; the others give the field's value.
FIELDS: dict[str, Callable[[str], object]] = {
    "loss": _probability("loss"),
    "loss_burst": _loss_burst,
    "gilbert": _gilbert,
    "duplicate": _probability("duplicate"),
    "reorder": _probability("reorder"),
    "reorder_gap": lambda t: units.parse_count(t, "--reorder-gap", low=1),
    "reorder_max": lambda t: units.parse_duration(
        t, "--reorder-max", default_unit="ms", above_low=True, high=86400.0
    ),
    "delay": lambda t: units.parse_delay(t, "--delay"),
    "jitter": lambda t: units.parse_duration(t, "--jitter", default_unit="ms"),
    "delay_dist": _delay_dist,
    "delay_correlation": _probability("delay_correlation"),
    "keep_order": _keep_order,
    "rate": lambda t: units.parse_rate(t, "--rate", unit="bytes/s", byte=True).value,
    "burst": lambda t: units.parse_size(t, "--burst", low=1),
    "queue": _queue,
    "mtu_blackhole": _size("mtu_blackhole", low=0),
    "truncate": _size("truncate", low=0),
    "corrupt": _probability("corrupt"),
}


def _as_text(value: object) -> str:
    """A scenario file's number as the text a user would type (``0.3``, ``5``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and math.isfinite(value):
        return format(Decimal(repr(value)), "f")  # never '1e-05': the grammar has no exponents
    raise UsageError(f"invalid value {value!r}: a number or text like '5%' or '20ms'")


# ---------------------------------------------------------------- the config


@dataclass(frozen=True)
class ImpairConfig:
    """What to do to one direction.  Times are seconds, sizes bytes, rates bytes/s.

    Attributes:
        loss: probability a datagram is lost; with ``loss_burst``, the long-run loss
            rate of a Gilbert-Elliott channel whose losses come in runs of
            ``loss_burst`` on average.
        loss_burst: mean length of a run of losses (``None``: independent losses).
        gilbert: Gilbert-Elliott's four parameters as netem's ``gemodel`` takes
            them: ``(p, r, 1-h, 1-k)``: good->bad, bad->good, loss in bad, loss in good.
        duplicate: probability a datagram is sent twice (the copy right after it).
        reorder: probability a datagram is held back ...
        reorder_gap: ... until this many later datagrams have passed it ...
        reorder_max: ... or at most this long.
        delay: added to every datagram, spread by ``jitter`` with ``delay_dist``
            (``uniform``: ±jitter; ``normal``, ``pareto``, ``paretonormal``: jitter is
            the scale as in netem); ``delay_correlation`` ties each delay to the last.
        keep_order: jitter never lets a datagram overtake an earlier one (else,
            as in netem, a later datagram with less delay goes first).
        rate: a link of this many bytes/s: each datagram leaves when the link has
            sent the ones ahead of it and itself (``None``: unlimited); ``burst``
            bytes may go at once after a quiet spell (token bucket depth, default 0).
        queue: bytes that may wait for the link, or ``queue_time`` seconds of them;
            ``queue_limit`` datagrams at most.  More is dropped (tail drop).
        mtu_blackhole: datagrams over this many bytes vanish.
        truncate: datagrams over this many bytes are cut to it.
        corrupt: probability one random bit of a datagram is flipped.
    """

    loss: float = 0.0
    loss_burst: float | None = None
    gilbert: tuple[float, float, float, float] | None = None
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_gap: int = 3
    reorder_max: float = 0.1
    delay: float = 0.0
    jitter: float = 0.0
    delay_dist: str = "uniform"
    delay_correlation: float = 0.0
    keep_order: bool = False
    rate: float | None = None
    burst: float | None = None
    queue: float | None = None
    queue_time: float | None = None
    queue_limit: int = 1000
    mtu_blackhole: int | None = None
    truncate: int | None = None
    corrupt: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder", "delay_correlation", "corrupt"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise UsageError(f"invalid {name} {p!r}: must be a probability 0-1")
        self._check_loss_model()
        if self.reorder_gap < 1:
            raise UsageError(f"invalid reorder_gap {self.reorder_gap!r}: must be 1 or more")
        if not self.reorder_max > 0:
            raise UsageError(f"invalid reorder_max {self.reorder_max!r}: must be > 0 seconds")
        if self.delay < 0 or self.jitter < 0:
            raise UsageError(
                f"invalid delay {self.delay!r}±{self.jitter!r}: both must be 0 or more"
            )
        if self.delay_dist not in DELAY_DISTS:
            raise UsageError(
                f"invalid delay_dist {self.delay_dist!r}: one of {', '.join(DELAY_DISTS)}"
            )
        self._check_link()
        for name in ("mtu_blackhole", "truncate"):
            n = getattr(self, name)
            if n is not None and not 0 <= n <= 65535:
                raise UsageError(f"invalid {name} {n!r}: must be 0-65535 bytes")

    def _check_loss_model(self) -> None:
        if self.gilbert is not None:
            if self.loss or self.loss_burst is not None:
                raise UsageError(
                    "invalid --gilbert with --loss: give the loss rate (--loss 5%, "
                    "with --loss-burst 4 for bursts) or the four parameters, not both"
                )
            if len(self.gilbert) != 4 or not all(0.0 <= x <= 1.0 for x in self.gilbert):
                raise UsageError(f"invalid gilbert {self.gilbert!r}: four probabilities 0-1")
        if self.loss_burst is None:
            return
        if not self.loss_burst >= 1:
            raise UsageError(f"invalid loss_burst {self.loss_burst!r}: must be 1 or more")
        most = self.loss_burst / (self.loss_burst + 1)
        if not 0 < self.loss <= most:
            raise UsageError(
                f"invalid --loss {self.loss:g} with --loss-burst {self.loss_burst:g}: "
                f"bursts of {self.loss_burst:g} need a loss rate more than 0 and at most "
                f"{most:.4g} (at least one datagram passes between bursts)"
            )

    def _check_link(self) -> None:
        if self.rate is not None and not self.rate > 0:
            raise UsageError(f"invalid rate {self.rate!r}: must be bytes/s > 0")
        if self.burst is not None and not self.burst > 0:
            raise UsageError(f"invalid burst {self.burst!r}: must be bytes > 0")
        if self.rate is None and (self.burst is not None or self.queue or self.queue_time):
            what = "--burst" if self.burst is not None else "--queue"
            raise UsageError(
                f"invalid {what} without --rate: it sizes the rate limit's bucket or queue "
                "in bytes (for bursts of loss, use --loss-burst)"
            )
        if self.queue is not None and not self.queue > 0:
            raise UsageError(f"invalid queue {self.queue!r}: must be bytes > 0")
        if self.queue_time is not None and not self.queue_time > 0:
            raise UsageError(f"invalid queue_time {self.queue_time!r}: must be > 0 seconds")
        if self.queue_limit < 0:
            raise UsageError(f"invalid queue_limit {self.queue_limit!r}: must be 0 or more")

    # -- building ----------------------------------------------------------------

    @classmethod
    def from_text(
        cls,
        *,
        loss: object = None,
        loss_burst: object = None,
        gilbert: object = None,
        duplicate: object = None,
        reorder: object = None,
        reorder_gap: object = None,
        reorder_max: object = None,
        delay: object = None,
        jitter: object = None,
        delay_dist: object = None,
        delay_correlation: object = None,
        keep_order: object = None,
        rate: object = None,
        burst: object = None,
        queue: object = None,
        mtu_blackhole: object = None,
        truncate: object = None,
        corrupt: object = None,
    ) -> ImpairConfig:
        """Build a config from the text ``udpkit relay`` takes for the same options.

        Each keyword is a field of :data:`FIELDS` (``loss_burst`` is
        ``--loss-burst``); its value is read as the option reads it: probabilities
        ``0.05`` or ``5%``; ``delay``, ``jitter`` and ``reorder_max`` in milliseconds
        when bare (``20``, ``20ms±5ms``, ``1s``); ``rate`` in bytes/s (``500k``,
        ``1.5M``: powers of 1000); ``burst``, ``truncate``, ``mtu_blackhole`` in
        bytes; ``queue`` in bytes (``64K``: 1024) or a time (``50ms``); ``gilbert``
        as ``"1%,25%"`` or ``"1%,25%,100%,0%"``; ``keep_order`` true or false.
        Numbers (from a JSON or TOML scenario) are read as if typed; ``None``
        leaves a field at its default.

        Raises:
            UsageError: a value that does not parse, naming its option.
        """
        given = dict(locals())
        values = {
            name: FIELDS[name](_as_text(given[name])) for name in FIELDS if given[name] is not None
        }
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> ImpairConfig:
        """Build a config from values the :data:`FIELDS` parsers returned (the CLI's)."""
        kw: dict[str, object] = {}
        for name, value in values.items():
            if name == "delay":
                delay, jitter = cast("tuple[float, float]", value)
                kw["delay"] = delay
                if jitter:
                    if "jitter" in values:
                        raise UsageError(
                            "invalid --delay with ± and --jitter: give the jitter once"
                        )
                    kw["jitter"] = jitter
            elif name == "queue":
                kind, amount = cast("tuple[str, float]", value)
                kw["queue" if kind == "bytes" else "queue_time"] = amount
            elif name == "burst":
                kw["burst"] = float(value)  # type: ignore[arg-type]
            else:
                kw[name] = value
        return cls(**kw)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> ImpairConfig:
        """A copy with ``changes`` (field values, as the constructor takes them)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # -- derived -----------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether this config changes anything at all (else the relay's fast path runs)."""
        return bool(
            self.loss
            or self.gilbert
            or self.duplicate
            or self.reorder
            or self.delay
            or self.jitter
            or self.rate
            or self.mtu_blackhole is not None
            or self.truncate is not None
            or self.corrupt
        )

    @property
    def gilbert_params(self) -> tuple[float, float, float, float] | None:
        """``(p, r, 1-h, 1-k)`` of the loss channel, or ``None`` for independent losses.

        ``--loss L --loss-burst B`` is the simple Gilbert channel (every datagram
        lost while bad, none while good): ``r = 1/B`` makes runs of ``B`` on
        average, and ``p = L r / (1 - L)`` makes the bad state's share ``L``.
        """
        if self.gilbert is not None:
            return self.gilbert
        if self.loss_burst is None:
            return None
        r = 1.0 / self.loss_burst
        return self.loss * r / (1.0 - self.loss), r, 1.0, 0.0

    @property
    def queue_bytes(self) -> float:
        """Bytes that may wait for the link (``inf``: only ``queue_limit`` counts)."""
        if self.queue is not None:
            return self.queue
        if self.queue_time is not None and self.rate:
            return self.queue_time * self.rate
        return math.inf
