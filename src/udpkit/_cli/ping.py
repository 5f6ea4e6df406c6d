"""``udpkit ping HOST PORT``: the command line over :class:`udpkit._loops.ping.Pinger`.

Output like ``ping``: a header line, a line per probe as it is settled
(``seq=3 time=0.081 ms``, ``seq=4 timeout``, ``seq=5 duplicate``), and on the
end, Ctrl-C or SIGTERM the statistics of what ran.  ``-J`` prints one JSON
document instead, every key carrying its unit.

Only argparse and the option validators are imported at the top: registering
the command costs no start-up, and ``--help`` loads no socket code.
"""

from __future__ import annotations

import argparse
import signal
from typing import TYPE_CHECKING, NoReturn

from udpkit._cli import options
from udpkit._cli.common import (
    GuardedOutput,
    SubParsers,
    Writer,
    add_command,
    destination,
    family,
)

if TYPE_CHECKING:
    from udpkit._core.pingstats import PingEvent, PingResult
    from udpkit._loops.ping import Pinger

__all__ = ["add_parser", "ping_document", "run_ping", "summary"]

_WHOLE_WAIT = -1  # --busy-poll without a value: spin for the whole wait for a reply


EPILOG = (
    "exit codes:\n"
    "  0  at least one reply came (also when stopped by Ctrl-C or SIGTERM)\n"
    "  1  no reply at all, or a network error (nothing listening, no route)\n"
    "  2  bad arguments\n"
    "Ctrl-C (SIGINT) or SIGTERM stops it and prints the statistics of what ran; a\n"
    "closed output pipe ends it quietly, the statistics then on stderr.\n"
    "Replies are matched to probes by number: a reply after its timeout is shown\n"
    "and counted as late; a second reply as a duplicate; a datagram that is no\n"
    "echo of a probe is counted as unmatched and never shown.\n"
)


def add_parser(sub: SubParsers) -> None:
    """Register ``udpkit ping`` on the ``udpkit`` subcommand parsers."""
    p = add_command(
        sub,
        "ping",
        help="measure round-trip time to any UDP echo, like ping",
        description="Send numbered, timestamped probes to HOST PORT, one at a time, where "
        "'udpkit serve --echo', 'udpkit reflect' or any UDP echo answers, and print each "
        "round trip as it comes, then loss, duplicates, reordering and min/p50/p90/p99/max.",
        epilog=EPILOG,
    )
    p.add_argument("host", metavar="HOST", help="the echo's address or name")
    p.add_argument(
        "port", nargs="?", default=None, metavar="PORT", help="the echo's port (number or name)"
    )
    p.add_argument(
        "-c",
        "--count",
        type=options.COUNT,
        metavar="N",
        help="stop after N probes (default: until Ctrl-C)",
    )
    p.add_argument(
        "-i",
        "--interval",
        type=options.PROBE_INTERVAL,
        default=1.0,
        metavar="SECONDS",
        help="from one probe to the next (default 1; 0.2 or 200ms; 0: the next as soon as "
        "the previous is answered)",
    )
    p.add_argument(
        "-s",
        "--size",
        type=options.PROBE_SIZE,
        default=64,
        metavar="BYTES",
        help="probe size, the UDP payload (default 64, at least the 32-byte probe header)",
    )
    p.add_argument(
        "-W",
        "--timeout",
        type=options.TIMEOUT,
        default=None,
        metavar="SECONDS",
        help="how long to await each reply before the next probe (default 1, or the "
        "interval if longer); a reply after it counts as late",
    )
    options.add_busy_poll(
        p,
        bare=_WHOLE_WAIT,
        help="spin on the socket instead of sleeping while a reply is awaited (lower "
        "round-trip time, one core busy); with US, spin that long first "
        "(--busy-poll=50us; at most 1s)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only the statistics at the end")
    p.add_argument(
        "-J", "--json", action="store_true", help="print one JSON document at the end, nothing else"
    )
    options.add_family_flags(p)
    options.allow_negative_values(p)


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """HOST and PORT; a lone port (or ``HOST:PORT`` in one word) is told apart.

    Raises:
        UsageError: PORT missing, or a lone number where the host goes.
    """
    return destination(args.host, args.port, "ping")


def _shown(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ms(ns: int) -> str:
    # iputils ping's precision: three significant digits, at least one decimal below 100 ms.
    us = ns // 1000
    if us >= 100_000:
        return f"{us // 1000}"
    if us >= 10_000:
        return f"{us / 1000:.1f}"
    if us >= 1_000:
        return f"{us / 1000:.2f}"
    return f"{ns / 1e6:.3f}"


def _event_line(ev: PingEvent, peer: str) -> str:
    from udpkit._core import pingstats as ps

    kind = ev.kind
    if kind == ps.REPLY:
        return f"{ev.length} bytes from {peer}: seq={ev.seq} time={_ms(ev.rtt_ns)} ms\n"
    if kind == ps.LATE:
        return f"{ev.length} bytes from {peer}: seq={ev.seq} time={_ms(ev.rtt_ns)} ms (late)\n"
    if kind == ps.DUPLICATE:
        return f"{ev.length} bytes from {peer}: seq={ev.seq} duplicate\n"
    if kind == ps.TIMEOUT:
        return f"seq={ev.seq} timeout\n"
    if kind == ps.ERROR:
        return f"seq={ev.seq} {ev.detail}\n"
    return f"{ev.length} bytes from {peer}: unmatched (no reply to a probe of this run)\n"


def _percent(ratio: float) -> str:
    pct = ratio * 100
    if 0 < pct < 0.1:
        return f"{pct:.2g}"
    return f"{pct:.1f}".rstrip("0").rstrip(".")


def summary(shown: str, r: PingResult) -> str:
    """The statistics at the end, as ``ping`` prints them (with percentiles)."""
    extra = "".join(
        f", {n} {what if n == 1 else whats}"
        for n, what, whats in (
            (r.late, "late", "late"),
            (r.timeouts, "timeout", "timeouts"),
            (r.unmatched, "unmatched", "unmatched"),
            (r.errors, "error", "errors"),
        )
        if n
    )
    probes = "probe" if r.sent == 1 else "probes"
    text = (
        f"\n--- {shown} ping statistics ---\n"
        f"{r.sent} {probes} sent, {r.received} received, {_percent(r.loss_ratio)}% loss, "
        f"{r.duplicates} duplicates, {r.reordered} reordered{extra}, "
        f"time {round(r.duration_ns / 1e6)} ms\n"
    )
    h = r.rtt
    if h.count:
        figures = (h.min_ns, h.percentile(50), h.percentile(90), h.percentile(99), h.max_ns)
        text += "rtt min/p50/p90/p99/max = " + "/".join(f"{v / 1e6:.3f}" for v in figures)
        text += " ms\n"
    return text


def ping_document(
    args: argparse.Namespace, target: tuple[str, str], pinger: Pinger, stopped: str | None
) -> dict[str, object]:
    """The ``-J`` document: the run's settings, then every figure (units in key names)."""
    count: int | None = args.count
    doc: dict[str, object] = {
        "host": target[0],
        "port": target[1],
        "address": pinger.peer_text,
        "count_probes": count,
        "interval_s": pinger.interval,
        "timeout_s": pinger.timeout,
    }
    doc.update(pinger.result().figures())
    doc["stopped_by"] = stopped
    return doc


_UNBLOCK_AFTER = 0.5  # seconds a stopped run waits for a hung write to stdout


def _gone(why: str) -> NoReturn:
    """stdout is closed, or hung when a stop came: the run ends (its statistics on stderr)."""
    raise BrokenPipeError(why)


def run_ping(args: argparse.Namespace, out: Writer, err: Writer) -> int:
    """Ping as ``args`` say; lines and statistics go to ``out``, hints to ``err``.

    Returns:
        0 when at least one reply came, 1 when none did.

    Raises:
        UsageError, AddressError: a bad argument (exit code 2).
        NetworkError: the socket could not be opened (exit code 1).
        BrokenPipeError: ``out`` was closed, or hung when a stop came (the
            statistics then went to ``err``).
    """
    from udpkit._loops.ping import Pinger
    from udpkit._loops.sigwake import on_signals

    target = _target(args)
    interval: float = args.interval
    timeout: float | None = args.timeout
    busy: int = args.busy_poll
    if busy == _WHOLE_WAIT:
        busy = round((timeout or max(1.0, interval)) * 1e6)
    # A stop that lands while a write hangs (``udpkit ping ... | sleep 60``) breaks
    # it off; that, or a closed pipe, raises BrokenPipeError out of the write.
    stdout = GuardedOutput(out, _UNBLOCK_AFTER, on_closed=_gone, shared=True)
    with Pinger(
        target[0],
        target[1],
        count=args.count,
        interval=interval,
        size=args.size,
        timeout=timeout,
        busy_poll_us=busy,
        family=family(args),
    ) as pinger:

        def stop() -> None:
            pinger.stop()
            stdout.stopped()

        with stdout.breaking_off(), on_signals(stop) as stopped:
            try:
                received = _report(args, pinger, target, stdout, err, stopped=stopped)
            except BrokenPipeError:
                err.write(summary(_shown(*target), pinger.result()))
                raise BrokenPipeError from None
    return 0 if received else 1


def _report(
    args: argparse.Namespace,
    pinger: Pinger,
    target: tuple[str, str],
    stdout: GuardedOutput,
    err: Writer,
    *,
    stopped: list[int],
) -> int:
    """Print the run as it goes and its statistics; return the replies received."""
    from udpkit._core.pingstats import UNMATCHED

    shown = _shown(*target)
    peer = pinger.peer_text
    as_json: bool = args.json
    lines = not (args.quiet or as_json)
    hinted = False
    if not as_json:
        where = shown if peer == shown else f"{shown} ({peer})"
        stdout.write(f"PING {where}: {args.size} bytes per probe\n")
    for ev in pinger.events():
        if ev.kind == UNMATCHED and not hinted:
            hinted = True
            err.write(
                f"udpkit ping: {peer} sent {ev.length} bytes that are no echo of a "
                "probe (counted as unmatched): is it an echo? try 'udpkit serve "
                "--echo' or 'udpkit reflect' there\n"
            )
        if lines:
            stdout.write(_event_line(ev, peer))
    result = pinger.result()
    if as_json:
        import json

        by = signal.Signals(stopped[0]).name if stopped else None
        doc = ping_document(args, target, pinger, by)
        stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        stdout.write(summary(shown, result))
    return result.received
