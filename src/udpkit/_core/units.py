"""One grammar for the numbers users type: sizes, rates, durations, probabilities, counts.

Every option of every command reads its number through one of these functions,
so a suffix means the same thing everywhere:

========================  ==============================================================
sizes (bytes)             ``65536``, ``64K`` / ``64k`` / ``64KiB`` / ``64KB`` (x1024),
                          ``8M`` (x1024**2), ``1G`` (x1024**3), a trailing ``B`` allowed;
                          as iperf3's ``-l``/``-w`` and ``tc`` read them
rates (per second)        ``10000``, ``10k`` / ``10K`` (x1000), ``2.5M`` (x10**6),
                          ``1G`` (x10**9), as iperf3's ``-b``; ``/s`` allowed; bit rates
                          (``100Mbps``, ``1Gb/s``, ``10Mbit``) and byte rates (``500kB/s``)
                          only where the option says so
bench rates               ``--rate``: datagrams/s (``20k``, ``20kpps``), bits or bytes with
                          their unit, ``max``; ``-b``: bits/s as iperf3 reads them
                          (``100M``, ``100Mbit``, ``1Gbps``; ``0`` or ``max``: unlimited)
durations                 ``250us``, ``500ms``, ``2s``, ``5min``; a bare number is in the
                          option's own unit (seconds for timeouts, milliseconds for
                          ``--delay``), so what users typed before keeps its meaning
probabilities             ``0.05`` or ``5%``, 0-1
counts                    ``100``, ``10k``, ``1M`` (x1000; whole numbers only)
========================  ==============================================================

A lone lowercase ``m`` is refused everywhere it could be read two ways: milli or
mega in a rate or size (write ``M``), minutes or milliseconds in a duration
(write ``min`` or ``ms``).  Exponents (``1e3``) are not numbers here: a suffix
says it.

Nothing here does I/O.  Every function raises :class:`~udpkit._core.errors.UsageError`
naming the option and the text and saying what would be right, e.g.
``invalid --rcvbuf '8X': a size in bytes like 65536, 64K or 8M``.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from udpkit._core.errors import UsageError

__all__ = [
    "Rate",
    "parse_bit_rate",
    "parse_count",
    "parse_delay",
    "parse_duration",
    "parse_probability",
    "parse_probe_rate",
    "parse_rate",
    "parse_size",
]

# A decimal number, then whatever follows it (the unit, spaces removed).
_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)(.*?)\s*", re.DOTALL)

_BINARY = {"": 1, "K": 1 << 10, "k": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_DECIMAL = {"": 1, "k": 1_000, "K": 1_000, "M": 1_000_000, "G": 1_000_000_000}
_SIZE_UNIT = re.compile(r"(?:([kKMG])(?:iB|B)?|B)?")
# prefix, then b/bit (bits), B (bytes) or p (packets: pps), then per second (/s, or ps).
_RATE_UNIT = re.compile(r"([kKMG]?)(bit|b|B|p)?(/s|ps)?")
_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0}
_UNIT_NAME = {1e-6: "microseconds", 1e-3: "milliseconds", 1.0: "seconds", 60.0: "minutes"}

_MEGA_HINT = "lowercase 'm' could mean milli: write M for mega"
_MINUTE_HINT = "'m' could mean minutes or milliseconds: write min or ms"


def _split(text: object) -> tuple[float, str] | None:
    """``(number, unit)`` with the unit's spaces removed, or None if no number leads."""
    m = _NUMBER.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return None
    return float(m.group(1)), re.sub(r"\s+", "", m.group(2))


def _refuse(option: str, text: object, what: str) -> UsageError:
    return UsageError(f"invalid {option} {text!r}: {what}")


def _whole(value: float) -> int | None:
    return int(value) if math.isfinite(value) and value == int(value) else None


def _num(x: float) -> str:
    x = round(x, 9)  # 60 s in ms is 60000, not 60000.00000000001
    return str(int(x)) if x == int(x) else f"{x:g}"


def _range_text(low: float, high: float, unit: str) -> str:
    unit = f" {unit}" if unit else ""
    if high == math.inf or high >= 2**62:
        return f"must be {_num(low)}{unit} or more"
    return f"must be {_num(low)}-{_num(high)}{unit}"


# ---------------------------------------------------------------- sizes and counts


def parse_size(text: str, option: str, *, low: int = 0, high: int = 2**62) -> int:
    """Parse a size in bytes: ``65536``, ``64K``, ``8M``, ``1G``, ``64KiB``, ``100B``.

    K/k, M and G are powers of 1024.  A fraction is fine when the result is a
    whole number of bytes (``1.5K`` is 1536).

    Raises:
        UsageError: another form, a fraction of a byte, or outside ``low``-``high``.
    """
    parts = _split(text)
    unit = _SIZE_UNIT.fullmatch(parts[1]) if parts else None
    if parts is None or unit is None:
        hint = f" ({_MEGA_HINT})" if parts and parts[1][:1] == "m" else ""
        raise _refuse(option, text, f"a size in bytes like 65536, 64K or 8M{hint}")
    value = _whole(parts[0] * _BINARY[unit.group(1) or ""])
    if value is None:
        raise _refuse(option, text, "must be a whole number of bytes")
    if not low <= value <= high:
        raise _refuse(option, text, _range_text(low, high, "bytes"))
    return value


def parse_count(text: str, option: str, *, low: int = 0, high: int = 2**62) -> int:
    """Parse a whole number, with an optional k/K, M or G suffix (powers of 1000).

    Raises:
        UsageError: another form, a fraction, or outside ``low``-``high``.
    """
    parts = _split(text)
    if parts is None or parts[1] not in _DECIMAL:
        hint = f" ({_MEGA_HINT})" if parts and parts[1] == "m" else ""
        raise _refuse(option, text, f"a whole number like 100 or 10k{hint}")
    value = _whole(parts[0] * _DECIMAL[parts[1]])
    if value is None:
        raise _refuse(option, text, "must be a whole number")
    if not low <= value <= high:
        raise _refuse(option, text, _range_text(low, high, ""))
    return value


# ---------------------------------------------------------------- rates


class Rate(NamedTuple):
    """A rate as typed: ``value`` per second, in ``unit``.

    ``unit`` is ``""`` for the option's own unit (datagrams for ``bench --rate``
    and ``serve --rate-limit``, bytes for ``relay --rate``), ``"bit"`` or
    ``"byte"`` when the text said so (``100Mbps``, ``500kB/s``).
    """

    value: float
    unit: str

    def per_item(self, size: int) -> float:
        """Items of ``size`` bytes per second (a bit or byte rate divided by the size)."""
        if self.unit == "bit":
            return self.value / (size * 8)
        if self.unit == "byte":
            return self.value / size
        return self.value


def parse_rate(
    text: str,
    option: str,
    *,
    unit: str = "datagrams/s",
    bits: bool = False,
    byte: bool = False,
    packets: bool = False,
) -> Rate:
    """Parse a rate: ``10000``, ``10k``, ``2.5M``, ``1G`` (powers of 1000), ``/s`` optional.

    Args:
        text: what the user typed.
        option: the option's name, for the message.
        unit: what a bare number counts, for the message (``"datagrams/s"``, ``"bytes/s"``).
        bits: also accept bit rates (``100Mbps``, ``1Gb/s``, ``10Mbit``, ``8bit/s``).
        byte: also accept byte rates (``500kB/s``, ``10kB``).
        packets: also accept ``pps`` (``20kpps``): the option's own unit, said.

    Returns:
        The value per second and which unit it is in.

    Raises:
        UsageError: another form, a unit the option does not take, or not > 0.
    """
    forms = [f"{unit} like 10000 or 10k" + (" or 10kpps" if packets else "")]
    if bits:
        forms.append("bits/s like 100Mbps or 1Gbit/s")
    if byte:
        forms.append("bytes/s like 500kB/s")
    parts = _split(text)
    m = _RATE_UNIT.fullmatch(parts[1]) if parts else None
    kind = {None: "", "bit": "bit", "b": "bit", "B": "byte", "p": "p"}[m.group(2)] if m else ""
    if (
        parts is None
        or m is None
        or (kind == "bit" and not bits)
        or (kind == "byte" and not byte)
        or (kind == "p" and (not packets or m.group(3) != "ps"))
        or (m.group(3) == "ps" and kind not in ("bit", "p"))
    ):
        hint = f" ({_MEGA_HINT})" if parts and parts[1][:1] == "m" else ""
        raise _refuse(option, text, f"a rate in {' or '.join(forms)}{hint}")
    value = parts[0] * _DECIMAL[m.group(1)]
    if not 0 < value < math.inf:
        raise _refuse(option, text, "must be more than 0")
    return Rate(value, "" if kind == "p" else kind)


_BIG = {"M": "million", "G": "billion"}


def parse_probe_rate(text: str, option: str = "--rate", *, bitrate: str = "-b") -> Rate:
    """Parse a datagram rate the way ``bench --rate`` (sockperf's ``--mps``) reads it.

    ``20k`` or ``20kpps`` datagrams/s, bits or bytes of payload with their unit
    (``100Mbps``, ``5MB/s``), or ``max`` (``Rate(inf, "")``: as fast as possible).
    A bare ``M`` or ``G`` is refused: 100 million datagrams/s is beyond any
    sender, and an iperf3 user typing ``100M`` means bits; the message names
    both readings and ``bitrate``, the option that reads bits.

    Raises:
        UsageError: another form, not > 0, or a bare M/G multiplier.
    """
    if isinstance(text, str) and text.strip().lower() == "max":
        return Rate(math.inf, "")
    rate = parse_rate(text, option, unit="datagrams/s", bits=True, byte=True, packets=True)
    parts = _split(text)
    assert parts is not None  # parse_rate read a number
    prefix = parts[1][:1]
    if rate.unit == "" and prefix in _BIG and not parts[1].endswith("ps"):
        n = _num(parts[0])
        raise _refuse(
            option,
            text,
            f"{option} {n}{prefix} means {n} {_BIG[prefix]} datagrams/s, which no sender "
            f"reaches; for {n} {prefix}bit/s write {bitrate} {n}{prefix} (or {option} "
            f"{n}{prefix}bps); {n}{prefix}pps if you do mean datagrams",
        )
    return rate


# iperf3 reads -b's suffix by its first letter, either case: 100m is 100 Mbit/s there,
# and a milli-bit rate is never meant, so lowercase m and g are mega and giga here.
_BIT_RATE = re.compile(r"([kKmMgG]?)(?:bits?|b)?(?:/s|ps)?")


def parse_bit_rate(text: str, option: str = "-b") -> Rate:
    """Parse a bit rate as iperf3's ``-b/--bitrate`` reads it: ``100M`` is 100 Mbit/s.

    k, M, G are powers of 1000 (either case, as iperf3 takes them); a unit may
    follow (``100Mbit``, ``100Mbps``, ``1Gb/s``).  ``0`` or ``max`` is unlimited
    (iperf3's ``-b 0``), returned as ``Rate(inf, "")``.

    Returns:
        ``Rate(bits per second, "bit")``, or ``Rate(inf, "")`` for unlimited.

    Raises:
        UsageError: another form (bytes are refused: ``-b`` counts bits).
    """
    if isinstance(text, str) and text.strip().lower() == "max":
        return Rate(math.inf, "")
    parts = _split(text)
    m = _BIT_RATE.fullmatch(parts[1]) if parts else None
    if parts is None or m is None:
        hint = ""
        if parts and re.fullmatch(r"[kKMG]?B(/s|ps)?", parts[1]):
            hint = f"; {option} counts bits (iperf3's reading): for bytes/s write --rate {text}"
        raise _refuse(
            option, text, f"a bit rate like 100M (bits/s, as iperf3 -b), 1Gbps, or 0 for "
            f"unlimited{hint}"
        )  # fmt: skip
    value = parts[0] * _DECIMAL[m.group(1).upper()]
    if value == 0:
        return Rate(math.inf, "")
    if not value < math.inf:
        raise _refuse(option, text, "a bit rate like 100M, 1Gbps, or 0 for unlimited")
    return Rate(value, "bit")


# ---------------------------------------------------------------- durations


def parse_duration(
    text: str,
    option: str,
    *,
    default_unit: str = "s",
    low: float = 0.0,
    high: float = math.inf,
    above_low: bool = False,
) -> float:
    """Parse a duration into seconds: ``250us``, ``500ms``, ``2s``, ``5min``.

    Args:
        text: what the user typed.
        option: the option's name, for the message.
        default_unit: the unit of a bare number (``"s"``, ``"ms"`` or ``"us"``).
        low, high: the allowed range in seconds (``high`` inclusive).
        above_low: the value must be more than ``low``, not equal to it.

    Raises:
        UsageError: another form, ``m`` (minutes or milliseconds?), or out of range.
    """
    scale = _SECONDS[default_unit]
    name = _UNIT_NAME[scale]
    parts = _split(text)
    if parts is None or parts[1] not in (*_SECONDS, ""):
        hint = f"; {_MINUTE_HINT}" if parts and parts[1] == "m" else ""
        raise _refuse(
            option, text, f"a duration like 10, 500ms or 2min (a bare number is {name}{hint})"
        )
    seconds = parts[0] * (_SECONDS[parts[1]] if parts[1] else scale)
    if not (low < seconds if above_low else low <= seconds) or not seconds <= high:
        if above_low:  # "0-86400 seconds" would read as if 0 were allowed
            most = "" if high == math.inf else f" and at most {_num(high / scale)}"
            raise _refuse(option, text, f"must be more than {_num(low / scale)}{most} {name}")
        raise _refuse(option, text, _range_text(low / scale, high / scale, name))
    return seconds


_JITTER = re.compile(r"±|\+/-|\+-")


def parse_delay(
    text: str, option: str = "--delay", *, default_unit: str = "ms"
) -> tuple[float, float]:
    """Parse ``DELAY[±JITTER]`` into ``(delay, jitter)`` in seconds.

    Each side is a duration; a bare number is in ``default_unit`` (milliseconds):
    ``20``, ``20±5``, ``20+-5``, ``20ms+-5ms``, ``0.5s±10ms``.

    Raises:
        UsageError: anything else, or a negative side.
    """
    sides = _JITTER.split(text) if isinstance(text, str) else []
    try:
        if len(sides) not in (1, 2):
            raise UsageError(text)
        values = [parse_duration(s, option, default_unit=default_unit) for s in sides]
    except UsageError:
        raise _refuse(
            option,
            text,
            f"a delay like 20, 20ms or 20ms±5ms (DELAY±JITTER; bare numbers are {default_unit})",
        ) from None
    return values[0], values[1] if len(values) == 2 else 0.0


# ---------------------------------------------------------------- probabilities


def parse_probability(text: str, option: str) -> float:
    """Parse ``0.05`` or ``5%`` into a probability 0-1.

    Raises:
        UsageError: another form, or outside 0-1 (0%-100%).
    """
    parts = _split(text)
    value = -1.0
    if parts is not None and parts[1] in ("", "%"):
        value = parts[0] / 100 if parts[1] == "%" else parts[0]
    if not 0.0 <= value <= 1.0:
        raise _refuse(option, text, "must be a probability 0-1 or a percentage, e.g. 0.05 or 5%")
    return value
