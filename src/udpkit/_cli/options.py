"""The command line's option types and shared option groups.

One argparse ``type=`` validator per option, built on :mod:`udpkit._core.units`,
and used by every command that has the option: ``--rcvbuf 8M`` or ``--timeout
500ms`` mean the same, with the same limits, in every command that has it.  A
bad value is one line naming the option and the text and saying what would be
right (exit code 2).

Two options are spelled alike but are not the same option, and keep their own
limits: bench's ``--interval`` is the time per live row (at least 10 ms: each
row is a report, not a probe), ping's is the time between probes (0 means
flat-out ping-pong, the next probe as soon as the previous is answered); and
the session's ``--format`` has ``raw`` besides serve's and read's four, since
only a session writes the payload bytes as they came.

Only argparse and the unit grammar are imported: registering the commands costs
no start-up time.  Values arrive parsed (``int`` bytes, ``float`` seconds, ...).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from udpkit._cli.common import FORMATS, format_name
from udpkit._core import units
from udpkit._core.errors import UsageError

if TYPE_CHECKING:
    from udpkit._core.policy_rules import RateLimit

__all__ = [
    "BENCH_RATE",
    "BIND",
    "BUFFER_SIZE",
    "BURST",
    "BUSY_POLL",
    "BUSY_POLL_BARE_US",
    "BYTE_RATE",
    "CHUNK",
    "COUNT",
    "DELAY",
    "DUPLICATE",
    "DURATION",
    "IDLE",
    "IDLE_TIMEOUT",
    "INTERVAL",
    "LINGER",
    "LOSS",
    "MAX_FLOWS",
    "PARALLEL",
    "PROBE_INTERVAL",
    "PROBE_SIZE",
    "RATE_LIMIT",
    "RCVBUF",
    "REORDER",
    "REORDER_GAP",
    "REORDER_MAX",
    "RETRIES",
    "SEED",
    "SPIN_US",
    "TIMEOUT",
    "TTL",
    "WAIT",
    "WINDOW",
    "add_busy_poll",
    "add_family_flags",
    "add_format",
    "add_rcvbuf",
    "add_transport",
    "add_ttl",
    "allow_negative_values",
]

T = TypeVar("T")

# One second of spinning is already far past any useful busy-poll.
_SPIN_MAX = 1.0
_DAY = 86400.0


def _argtype(parse: Callable[..., T], option: str, **limits: object) -> Callable[[str], T]:
    """An argparse ``type=`` calling ``parse(text, option, **limits)``."""

    def convert(text: str) -> T:
        try:
            return parse(text, option, **limits)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.lstrip("-").replace("-", "_")
    return convert


def _microseconds(text: str, option: str) -> int:
    seconds = units.parse_duration(text, option, default_unit="us", high=_SPIN_MAX)
    return round(seconds * 1e6)


def _bench_rate(text: str, option: str) -> units.Rate:
    if text.strip().lower() == "max":
        return units.Rate(math.inf, "")  # as fast as possible
    return units.parse_rate(text, option, unit="datagrams/s", bits=True, byte=True)


def _byte_rate(text: str, option: str) -> float:
    return units.parse_rate(text, option, unit="bytes/s", byte=True).value


def _hostport(text: str, option: str) -> tuple[str, str]:
    from udpkit._core.errors import AddressError
    from udpkit._net.addr import split_hostport  # only when the option is given

    try:
        return split_hostport(text, default_host="")
    except AddressError as exc:
        raise UsageError(str(exc)) from None  # "argument --bind: invalid address ..."


def _rate_limit(text: str, option: str) -> RateLimit:
    from udpkit._core.policy_rules import parse_rate_limit  # only when the option is given

    return parse_rate_limit(text)


# ---------------------------------------------------------------- one validator per option

# Counts (whole numbers, k/M/G = powers of 1000).
COUNT = _argtype(units.parse_count, "--count", low=1)  # serve, bench
RETRIES = _argtype(units.parse_count, "--retries", low=0)  # send
TTL = _argtype(units.parse_count, "--ttl", low=0, high=255)  # send, bench
WINDOW = _argtype(units.parse_count, "--window", low=1, high=65536)  # bench
PARALLEL = _argtype(units.parse_count, "--parallel", low=1, high=128)  # bench
MAX_FLOWS = _argtype(units.parse_count, "--max-flows", low=1)  # relay
REORDER_GAP = _argtype(units.parse_count, "--reorder-gap", low=1)  # relay
SEED = _argtype(units.parse_count, "--seed", low=0)  # relay

# Sizes in bytes (K/M/G = powers of 1024).
BUFFER_SIZE = _argtype(units.parse_size, "--buffer-size", low=1, high=1 << 24)  # serve, send
# serve, reflect, connect, listen
RCVBUF = _argtype(units.parse_size, "--rcvbuf", low=1, high=2**31 - 1)
PROBE_SIZE = _argtype(units.parse_size, "--size", low=32, high=65507)  # bench, ping
BURST = _argtype(units.parse_size, "--burst", low=1)  # relay
# connect, listen: up to the largest IPv6 payload (the session checks its family's own).
CHUNK = _argtype(units.parse_size, "--chunk", low=1, high=65527)

# Durations, in seconds unless the option's unit is smaller (then an int or seconds).
# send, bench, ping: more than 0, as a timeout of 0 gives up before any reply can come.
TIMEOUT = _argtype(units.parse_duration, "--timeout", above_low=True, high=_DAY)
DURATION = _argtype(units.parse_duration, "--duration", low=0.001, high=_DAY)  # bench
INTERVAL = _argtype(units.parse_duration, "--interval", low=0.01, high=3600.0)  # bench's rows
PROBE_INTERVAL = _argtype(units.parse_duration, "--interval", high=3600.0)  # ping: 0 flat out
LINGER = _argtype(units.parse_duration, "--linger", high=60.0)  # bench
IDLE_TIMEOUT = _argtype(units.parse_duration, "--idle-timeout", above_low=True)  # relay
# connect: 0 ends as soon as stdin does; listen: 0 would end before any datagram came.
WAIT = _argtype(units.parse_duration, "--wait", high=_DAY)
IDLE = _argtype(units.parse_duration, "--idle", above_low=True, high=_DAY)
REORDER_MAX = _argtype(
    units.parse_duration, "--reorder-max", default_unit="ms", above_low=True, high=_DAY
)  # relay
BUSY_POLL = _argtype(_microseconds, "--busy-poll")  # serve, reflect: int microseconds
SPIN_US = _argtype(_microseconds, "--spin-us")  # relay: int microseconds
DELAY = _argtype(units.parse_delay, "--delay")  # relay: (delay, jitter) seconds

# Rates.
BENCH_RATE = _argtype(_bench_rate, "--rate")  # bench: units.Rate, infinite for 'max'
BYTE_RATE = _argtype(_byte_rate, "--rate")  # relay: bytes/s
RATE_LIMIT = _argtype(_rate_limit, "--rate-limit")  # serve: RateLimit

# Addresses.
BIND = _argtype(_hostport, "--bind")  # send, connect: (host, port), host "" for any

# Probabilities (0.05 or 5%).
LOSS = _argtype(units.parse_probability, "--loss")  # relay
DUPLICATE = _argtype(units.parse_probability, "--duplicate")  # relay
REORDER = _argtype(units.parse_probability, "--reorder")  # relay


# ---------------------------------------------------------------- shared option groups


# What an option group is added to: a parser or one of its argument groups.
_Container = argparse._ActionsContainer


def add_family_flags(p: _Container) -> None:
    """``-4``/``-6``: IPv4 or IPv6 only (mutually exclusive)."""
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("-4", "--ipv4", action="store_true", help="use IPv4 only")
    fam.add_argument("-6", "--ipv6", action="store_true", help="use IPv6 only")


def allow_negative_values(p: argparse.ArgumentParser) -> None:
    """Let ``-1`` reach the validators of a parser that has ``-4``/``-6``."""
    # With options spelled like numbers (-4, -6) argparse takes every negative
    # number for an option: `--timeout -1` would be "expected one argument" and
    # port `-1` "unrecognized". Clearing the flag keeps -4/-6 (exact matches
    # come first) and lets -1 reach its validator, which names it.
    p._has_negative_number_optionals.clear()


def add_transport(p: argparse.ArgumentParser) -> None:
    """The transport group of serve and send: --tcp, --unix, --stream, -4/-6."""
    tr = p.add_argument_group("transport")
    tr.add_argument("--tcp", action="store_true", help="use TCP (default port 12345)")
    tr.add_argument(
        "--unix", metavar="PATH", help="use a Unix-domain socket at PATH ('@name': abstract)"
    )
    tr.add_argument(
        "--stream", action="store_true", help="with --unix: a stream socket (default datagram)"
    )
    add_family_flags(tr)
    allow_negative_values(p)


#: What a bare ``--busy-poll`` spins, in microseconds: a round trip on loopback
#: or a LAN (tens of microseconds) is caught without sleeping, and an idle
#: server gives a core back within 50 us.
BUSY_POLL_BARE_US = 50

_BUSY_POLL_HELP = (
    "spin up to US microseconds (or 50us, 1ms; at most 1s) on an empty socket before "
    f"sleeping (lower latency); without US, {BUSY_POLL_BARE_US}"
)


def add_busy_poll(
    p: _Container, *, bare: int = BUSY_POLL_BARE_US, help: str = _BUSY_POLL_HELP
) -> None:
    """``--busy-poll [US]`` (serve, reflect, ping): the value may be left out (``bare``).

    ``--busy-poll`` before HOST PORT stays bare: :class:`udpkit._cli.common.Parser`
    does not let it take a word that is no duration.
    """
    p.add_argument(
        "--busy-poll",
        type=BUSY_POLL,
        nargs="?",
        const=bare,
        default=0,
        metavar="US",
        help=help,
    )


def add_rcvbuf(p: _Container, default: str) -> None:
    """``--rcvbuf BYTES`` (serve, reflect, connect, listen)."""
    p.add_argument(
        "--rcvbuf",
        type=RCVBUF,
        metavar="BYTES",
        help=f"ask for a kernel receive buffer of BYTES (65536, 4M) and report what the "
        f"kernel gave (default {default})",
    )


def add_ttl(p: _Container, help: str) -> None:
    """``--ttl N`` (send, bench)."""
    p.add_argument("--ttl", type=TTL, metavar="N", help=help)


def add_format(p: _Container, default: str, help: str, choices: tuple[str, ...] = FORMATS) -> None:
    """``--format``: one of :data:`FORMATS` (``seed`` still accepted), or of ``choices``."""
    p.add_argument("--format", type=format_name, choices=choices, default=default, help=help)
