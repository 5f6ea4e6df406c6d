"""The one unit grammar: every form it reads, and every refusal naming the input."""

from __future__ import annotations

import re

import pytest

from udpkit._core.errors import UsageError
from udpkit._core.units import (
    Rate,
    parse_bit_rate,
    parse_count,
    parse_delay,
    parse_duration,
    parse_probability,
    parse_probe_rate,
    parse_rate,
    parse_size,
)

# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("65536", 65536),
        ("0", 0),
        ("64K", 65536),
        ("64k", 65536),
        ("64KiB", 65536),
        ("64KB", 65536),
        ("8M", 8 << 20),
        ("8MiB", 8 << 20),
        ("8MB", 8 << 20),
        ("1G", 1 << 30),
        ("1GiB", 1 << 30),
        ("100B", 100),
        ("1.5K", 1536),
        (".5K", 512),
        (" 4 M ", 4 << 20),
    ],
)
def test_size(text: str, value: int) -> None:
    assert parse_size(text, "--rcvbuf") == value


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("8X", "a size in bytes like 65536, 64K or 8M"),
        ("", "a size in bytes"),
        ("-1", "a size in bytes"),
        ("1e6", "a size in bytes"),
        ("K", "a size in bytes"),
        ("10iB", "a size in bytes"),
        ("8m", "write M for mega"),
        ("8mb", "write M for mega"),
        ("1.1K", "a whole number of bytes"),
        ("0.5", "a whole number of bytes"),
        ("nan", "a size in bytes"),
    ],
)
def test_size_refusals_name_the_input(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"invalid --rcvbuf {text!r}: ")) as info:
        parse_size(text, "--rcvbuf")
    assert says in str(info.value)


def test_size_range_is_the_callers() -> None:
    assert parse_size("2G", "--x", low=1, high=2**31) == 2**31
    with pytest.raises(UsageError, match=r"invalid --x '2G': must be 1-2147483647 bytes"):
        parse_size("2G", "--x", low=1, high=2**31 - 1)
    with pytest.raises(UsageError, match=r"invalid --x '0': must be 1 bytes or more"):
        parse_size("0", "--x", low=1)


# ---------------------------------------------------------------- counts


@pytest.mark.parametrize(
    ("text", "value"),
    [("100", 100), ("10k", 10_000), ("10K", 10_000), ("2M", 2_000_000), ("1G", 10**9),
     ("1.5k", 1500), ("0", 0)],
)  # fmt: skip
def test_count(text: str, value: int) -> None:
    assert parse_count(text, "--count") == value


@pytest.mark.parametrize(
    ("text", "low", "high", "says"),
    [
        ("x", 0, 2**62, "a whole number like 100 or 10k"),
        ("-1", 0, 2**62, "a whole number like 100 or 10k"),
        ("1.5", 0, 2**62, "must be a whole number"),
        ("10m", 0, 2**62, "write M for mega"),
        ("10KiB", 0, 2**62, "a whole number like 100 or 10k"),
        ("0", 1, 2**62, "must be 1 or more"),
        ("256", 0, 255, "must be 0-255"),
    ],
)
def test_count_refusals_name_the_input(text: str, low: int, high: int, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"invalid --n {text!r}: ")) as info:
        parse_count(text, "--n", low=low, high=high)
    assert says in str(info.value)


# ---------------------------------------------------------------- rates


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10000", Rate(10_000.0, "")),
        ("10k", Rate(10_000.0, "")),
        ("10K", Rate(10_000.0, "")),
        ("2.5M", Rate(2.5e6, "")),
        ("1G", Rate(1e9, "")),
        ("10k/s", Rate(10_000.0, "")),
        ("10 / s", Rate(10.0, "")),
        ("0.5/s", Rate(0.5, "")),
        ("100Mbps", Rate(1e8, "bit")),
        ("100Mbit", Rate(1e8, "bit")),
        ("100Mbit/s", Rate(1e8, "bit")),
        ("1Gb/s", Rate(1e9, "bit")),
        ("8bit/s", Rate(8.0, "bit")),
        ("512kbps", Rate(512e3, "bit")),
        ("500kB/s", Rate(500e3, "byte")),
        ("10kB", Rate(10e3, "byte")),
        ("1.5MB/s", Rate(1.5e6, "byte")),
    ],
)
def test_rate(text: str, value: Rate) -> None:
    assert parse_rate(text, "--rate", bits=True, byte=True) == value


def test_rate_in_items() -> None:
    assert Rate(512e3, "bit").per_item(64) == 1000.0
    assert Rate(640.0, "byte").per_item(64) == 10.0
    assert Rate(10.0, "").per_item(64) == 10.0


@pytest.mark.parametrize(
    ("text", "bits", "byte", "says"),
    [
        ("", True, True, "a rate in datagrams/s like 10000 or 10k"),
        ("fast", True, True, "bits/s like 100Mbps"),
        ("0", True, True, "must be more than 0"),
        ("-1k", True, True, "a rate in"),
        ("10m", True, True, "write M for mega"),
        ("10mbps", True, True, "write M for mega"),
        ("5T", True, True, "a rate in"),
        ("2g", True, True, "a rate in"),
        ("k", True, True, "a rate in"),
        ("100/m", True, True, "a rate in"),
        ("1e3", True, True, "a rate in"),
        ("10Bps", True, True, "a rate in"),
        ("100Mbps", False, True, "a rate in datagrams/s like 10000 or 10k or bytes/s"),
        ("10kB/s", True, False, "a rate in datagrams/s like 10000 or 10k or bits/s"),
    ],
)
def test_rate_refusals_name_the_input(text: str, bits: bool, byte: bool, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"invalid --rate {text!r}: ")) as info:
        parse_rate(text, "--rate", bits=bits, byte=byte)
    assert says in str(info.value)


# ---------------------------------------------------------------- bench's rates

INF = float("inf")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("20k", Rate(20e3, "")),  # datagrams/s, as before
        ("20kpps", Rate(20e3, "")),
        ("20k pps", Rate(20e3, "")),
        ("20k/s", Rate(20e3, "")),
        ("1Mpps", Rate(1e6, "")),  # a million datagrams/s, said so: accepted
        ("100Mbps", Rate(1e8, "bit")),
        ("100Mbit", Rate(1e8, "bit")),
        ("1Gb/s", Rate(1e9, "bit")),
        ("5MB/s", Rate(5e6, "byte")),
        ("max", Rate(INF, "")),
        ("MAX", Rate(INF, "")),
    ],
)
def test_probe_rate(text: str, value: Rate) -> None:
    assert parse_probe_rate(text) == value


@pytest.mark.parametrize(("text", "n", "word"), [("100M", "100", "million"),
                                                 ("2.5M", "2.5", "million"),
                                                 ("1G", "1", "billion"),
                                                 ("100M/s", "100", "million")])  # fmt: skip
def test_probe_rate_refuses_a_bare_mega_naming_both_readings(text: str, n: str, word: str) -> None:
    """`bench --rate 100M` (iperf3's -b 100M) once meant 100 million datagrams/s: bench
    sent flat out, the reflector dropped 69 %, and nothing said the rate was out of reach."""
    prefix = text.rstrip("/s")[-1]
    with pytest.raises(UsageError) as info:
        parse_probe_rate(text)
    assert str(info.value) == (
        f"invalid --rate {text!r}: --rate {n}{prefix} means {n} {word} datagrams/s, which no "
        f"sender reaches; for {n} {prefix}bit/s write -b {n}{prefix} (or --rate {n}{prefix}bps); "
        f"{n}{prefix}pps if you do mean datagrams"
    )


@pytest.mark.parametrize("text", ["10p", "10ps", "10mbps", "0", "fast", ""])
def test_probe_rate_refusals_name_the_input(text: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"invalid --rate {text!r}: ")):
        parse_probe_rate(text)


def test_pps_is_only_where_the_option_counts_datagrams() -> None:
    with pytest.raises(UsageError, match="a rate in bytes/s"):
        parse_rate("10kpps", "--rate", unit="bytes/s", byte=True)


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("100M", 1e8),  # iperf3 -b: bits/s, powers of 1000
        ("100m", 1e8),  # iperf3 reads either case; a milli-bit rate is never meant
        ("1G", 1e9),
        ("1g", 1e9),
        ("10k", 1e4),
        ("10K", 1e4),
        ("2.5M", 2.5e6),
        ("100Mbit", 1e8),
        ("100Mbits", 1e8),
        ("1Gbps", 1e9),
        ("100Mb/s", 1e8),
        ("100 Mbit/s", 1e8),
        ("5000", 5000.0),
    ],
)
def test_bit_rate_as_iperf3_reads_it(text: str, bits: float) -> None:
    assert parse_bit_rate(text) == Rate(bits, "bit")


@pytest.mark.parametrize("text", ["0", "max", "Max"])
def test_bit_rate_zero_is_unlimited(text: str) -> None:
    assert parse_bit_rate(text) == Rate(INF, "")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("fast", "a bit rate like 100M (bits/s, as iperf3 -b), 1Gbps, or 0 for unlimited"),
        ("10M/100", "a bit rate like"),  # iperf3's burst form is not taken
        ("5MB/s", "-b counts bits (iperf3's reading): for bytes/s write --rate 5MB/s"),
        ("5T", "a bit rate like"),
        ("-1M", "a bit rate like"),
        ("1e6", "a bit rate like"),
    ],
)
def test_bit_rate_refusals_name_the_input(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"invalid -b {text!r}: ")) as info:
        parse_bit_rate(text)
    assert says in str(info.value)


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "default_unit", "seconds"),
    [
        ("2", "s", 2.0),
        ("0.5", "s", 0.5),
        ("500ms", "s", 0.5),
        ("250us", "s", 250e-6),
        ("250µs", "s", 250e-6),
        ("3s", "s", 3.0),
        ("3sec", "s", 3.0),
        ("2min", "s", 120.0),
        ("20", "ms", 0.02),  # relay --delay 20 stays 20 ms
        ("1s", "ms", 1.0),
        ("50", "us", 50e-6),  # --busy-poll 50 stays 50 us
        ("1ms", "us", 1e-3),
    ],
)
def test_duration(text: str, default_unit: str, seconds: float) -> None:
    got = parse_duration(text, "--timeout", default_unit=default_unit)
    assert got == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "kw", "says"),
    [
        ("soon", {}, "a duration like 10, 500ms or 2min (a bare number is seconds)"),
        ("-1", {}, "a duration like"),
        ("2m", {}, "write min or ms"),
        ("2h", {}, "a duration like"),
        ("1e3", {}, "a duration like"),
        ("100", {"low": 0.001, "high": 60.0}, "must be 0.001-60 seconds"),
        ("2s", {"default_unit": "us", "high": 1.0}, "must be 0-1000000 microseconds"),
        ("0", {"default_unit": "ms", "above_low": True}, "must be more than 0 milliseconds"),
        # Not "0-86400 seconds", which reads as if 0 were allowed.
        ("0", {"above_low": True, "high": 86400.0}, "must be more than 0 and at most 86400 sec"),
        ("x", {"default_unit": "ms"}, "a bare number is milliseconds"),
    ],
)
def test_duration_refusals_name_the_input(text: str, kw: dict[str, object], says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"invalid --timeout {text!r}: ")) as info:
        parse_duration(text, "--timeout", **kw)  # type: ignore[arg-type]
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("20", (0.02, 0.0)),
        ("20±5", (0.02, 0.005)),
        ("20+-5", (0.02, 0.005)),
        ("20+/-5", (0.02, 0.005)),
        ("20ms+-5ms", (0.02, 0.005)),
        ("20ms", (0.02, 0.0)),
        ("0.5s±10ms", (0.5, 0.01)),
        ("0.5", (0.0005, 0.0)),
        ("0", (0.0, 0.0)),
        (" 20 ± 5 ", (0.02, 0.005)),
    ],
)
def test_delay(text: str, value: tuple[float, float]) -> None:
    assert parse_delay(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "-5", "20±", "±5", "a", "20m", "20±5±1"])
def test_delay_refusals_name_the_input(text: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"invalid --delay {text!r}: ")) as info:
        parse_delay(text)
    assert "a delay like 20, 20ms or 20ms±5ms" in str(info.value)


# ---------------------------------------------------------------- probabilities


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0.0), ("0.05", 0.05), ("5%", 0.05), ("1", 1.0), ("100%", 1.0), (" 0.5 ", 0.5),
     ("2.5 %", 0.025)],
)  # fmt: skip
def test_probability(text: str, value: float) -> None:
    assert parse_probability(text, "--loss") == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "x", "-0.1", "1.5", "101%", "nan", "5%%", "5k"])
def test_probability_refusals_name_the_input(text: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"invalid --loss {text!r}: ")) as info:
        parse_probability(text, "--loss")
    assert "a probability 0-1 or a percentage, e.g. 0.05 or 5%" in str(info.value)


def test_units_is_io_free() -> None:
    """The grammar lives in the core: it imports nothing but the core's errors."""
    import ast
    from pathlib import Path

    from udpkit._core import units

    tree = ast.parse(Path(units.__file__).read_text())
    imported = {
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert imported <= {"__future__", "math", "re", "typing", "udpkit._core.errors"}
