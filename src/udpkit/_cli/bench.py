"""The ``bench`` and ``reflect`` commands: arguments, the run, its stop, what is printed.

bench answers to iperf3's and sockperf's words where they mean the same thing:
``-c HOST -p PORT``, ``-u``, ``-b/--bitrate`` (bits/s), ``-l/--length`` and
``-m/--msg-size`` (the datagram size), ``-t/--time``, ``-P/--parallel``,
``-J/--json``, ``--mps`` (sockperf's datagrams/s).  ``-R`` is refused with what
to run instead: the reflector answers probes, it never sends on its own.

Ctrl-C or SIGTERM ends the run early and prints the figures of what ran (exit
130 or 143); a closed output pipe ends it too, the figures then on stderr.  The
text itself (JSON document, rows, table, plot) is :mod:`udpkit._cli.benchreport`.
"""

from __future__ import annotations

import argparse
import math
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from udpkit._cli import options
from udpkit._cli.common import (
    GuardedOutput,
    SubParsers,
    Writer,
    add_command,
    destination,
    lone_port,
)
from udpkit._cli.common import family as _family
from udpkit._core import units
from udpkit._core.errors import UsageError

# Registering the parsers must cost no start-up: the measuring modules load on use.
if TYPE_CHECKING:
    from udpkit._core.stats import IntervalRow
    from udpkit._loops.bench import BenchConfig, BenchResult
    from udpkit._loops.reflect import Reflector

__all__ = ["add_parser", "bench_command", "config_from_args", "run_reflect"]

DEFAULT_REFLECT_PORT = "5202"

EPILOG = """\
rates: --rate counts datagrams/s (20k, 20kpps; 100Mbps or 5MB/s with a unit; max);
  -b counts bits/s as iperf3 reads it (-b 100M is 100 Mbit/s; -b 0 is max). A bare
  --rate 100M is refused: 100 million datagrams/s is beyond any sender.
  A run that sends under 90 % of the asked rate says so on stderr, with the cause.
exit codes:
  0    the run ended and its figures were printed (also when its output pipe closed:
       the figures then go to stderr)
  1    network or runtime error: nothing listening, no route, permission denied
  2    bad arguments
  3    no answer to the opening exchange
  130  stopped by Ctrl-C (SIGINT); 143 by SIGTERM: the figures of what ran are printed
       first (the JSON document with --json, "stopped_by" set)
"""

_REVERSE = (
    "-R (reverse) does not fit bench's probes: the reflector answers them and never "
    "sends on its own. A run against 'udpkit reflect' already measures the way back "
    "(the 'return' row: its loss, duplicates, reordering); for a paced stream the other "
    "way, run 'udpkit reflect' here and 'udpkit bench THIS-HOST PORT' on the far host"
)


def _argtype(parse: Callable[[str, str], units.Rate], option: str) -> Callable[[str], units.Rate]:
    def convert(text: str) -> units.Rate:
        try:
            return parse(text, option)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.lstrip("-")
    return convert


# bench's own rates (no other command has them): units.Rate, infinite for max.
PROBE_RATE = _argtype(units.parse_probe_rate, "--rate")
BIT_RATE = _argtype(units.parse_bit_rate, "-b")


# ---------------------------------------------------------------- arguments


def add_parser(sub: SubParsers) -> None:
    """Register ``bench`` and ``reflect`` on the CLI's subparsers."""
    bench = add_command(
        sub,
        "bench",
        help="measure a UDP path: throughput, loss per direction, reordering, jitter, RTT",
        description="Send numbered, timestamped probes to HOST PORT, where 'udpkit reflect' "
        "(loss, duplicates and reordering per direction) or 'udpkit serve --echo' (round "
        "trip only) answers, and report what happened to them.",
        epilog=EPILOG,
    )
    _add_target(bench)
    _add_load(bench)
    bench.add_argument(
        "--interval",
        "-i",
        type=options.INTERVAL,
        default=1.0,
        metavar="S",
        help="seconds per live row (default 1; 500ms)",
    )
    bench.add_argument(
        "--one-way", action="store_true", help="the reflector only counts: no echoes"
    )
    bench.add_argument(
        "--timeout",
        type=options.TIMEOUT,
        default=0.5,
        metavar="S",
        help="with --window: a probe's slot frees after S (default 500ms)",
    )
    bench.add_argument(
        "--linger",
        type=options.LINGER,
        default=1.0,
        metavar="S",
        help="longest wait for late replies (default 1 second)",
    )
    bench.add_argument(
        "--json", "-J", action="store_true", help="print one JSON document on stdout"
    )
    bench.add_argument("--plot", metavar="FILE.png", help="latency CDF and throughput plot")
    bench.add_argument("--quiet", "-q", action="store_true", help="no live rows")
    bench.add_argument("--no-batch", action="store_true", help="recv one datagram a call")
    bench.add_argument("--iface", metavar="IFACE", help="to a multicast group: send out of IFACE")
    options.add_ttl(bench, "to a multicast group: hop limit (0-255)")
    options.add_family_flags(bench)
    options.allow_negative_values(bench)
    _add_reflect(sub)


def _add_target(bench: argparse.ArgumentParser) -> None:
    """HOST PORT, or iperf3's ``-c HOST [-p PORT]``; ``-u`` and ``-R`` as iperf3 users type them."""
    bench.add_argument("host", nargs="?", metavar="HOST")
    bench.add_argument("port", nargs="?", metavar="PORT")  # missing: said by destination()
    bench.add_argument(
        "--client",
        "-c",
        metavar="HOST",
        help=f"HOST, as iperf3 -c takes it (then PORT defaults to {DEFAULT_REFLECT_PORT}, "
        "reflect's)",
    )
    bench.add_argument(
        "--port", "-p", dest="port_option", metavar="PORT", help="PORT, given as an option"
    )
    bench.add_argument("--udp", "-u", action="store_true", help="UDP: always (iperf3's -u)")
    bench.add_argument(
        "--reverse", "-R", action="store_true", help="iperf3's reverse mode: refused, saying why"
    )


def _add_load(bench: argparse.ArgumentParser) -> None:
    """What to send: size, rate (datagrams or bits), how long or how many, flows, window."""
    bench.add_argument(
        "--size",
        "-l",
        "--length",
        "-m",
        "--msg-size",
        dest="size",
        type=options.PROBE_SIZE,
        default=64,
        metavar="BYTES",
        help="datagram size, as iperf3 -l and sockperf -m (default 64; 1K is 1024)",
    )
    rate = bench.add_mutually_exclusive_group()
    rate.add_argument(
        "--rate",
        "--mps",
        dest="rate",
        type=PROBE_RATE,
        metavar="RATE",
        help="datagrams/s (20k, 20kpps), bits/s of payload (100Mbps, 1Gb/s), bytes/s of "
        "payload (5MB/s) or 'max'; all flows together (default 1k, or max with --window)",
    )
    rate.add_argument(
        "--bitrate",
        "-b",
        dest="bitrate",
        type=BIT_RATE,
        metavar="BITS",
        help="bits/s of payload as iperf3 -b reads it: 100M is 100 Mbit/s (also 100Mbit, "
        "1Gbps); 0 is as fast as possible",
    )
    bench.add_argument(
        "--duration",
        "-t",
        "--time",
        dest="duration",
        type=options.DURATION,
        metavar="S",
        help="how long to send (default 10 seconds; 500ms, 2min)",
    )
    bench.add_argument(
        "--count",
        "-n",
        type=options.COUNT,
        metavar="N",
        help="probes per flow (then no time limit)",
    )
    bench.add_argument(
        "--window", type=options.WINDOW, metavar="N", help="request/response: N probes outstanding"
    )
    bench.add_argument(
        "--parallel", "-P", type=options.PARALLEL, default=1, metavar="N", help="flows (default 1)"
    )


def _add_reflect(sub: SubParsers) -> None:
    reflect = add_command(
        sub,
        "reflect",
        help="answer 'udpkit bench': echo probes and report what arrived",
        description="Echo bench probes and count each run's arrivals, so bench can tell "
        f"loss per direction. Default 127.0.0.1 {DEFAULT_REFLECT_PORT}.",
    )
    reflect.add_argument("host", nargs="?", default=None, metavar="HOST")
    reflect.add_argument("port", nargs="?", default=None, metavar="PORT")
    options.add_rcvbuf(reflect, "4M")
    options.add_busy_poll(reflect)
    reflect.add_argument("--no-batch", action="store_true", help="recvfrom/sendto, no recvmmsg")
    reflect.add_argument("--quiet", "-q", action="store_true", help="no per-run lines at the end")
    reflect.add_argument(
        "--join",
        action="append",
        default=[],
        metavar="GROUP[@IFACE]",
        help="join a multicast group (repeatable), for 'bench GROUP PORT --one-way'",
    )
    reflect.add_argument("--source", metavar="ADDR", help="with --join: source-specific")
    options.add_family_flags(reflect)
    options.allow_negative_values(reflect)


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """HOST and PORT from ``HOST PORT``, ``-c HOST [-p PORT]`` or ``HOST -p PORT``."""
    host: str | None = args.host
    port: str | None = args.port
    if args.client is not None:
        if host is not None and port is None:
            host, port = None, host  # `bench -c HOST PORT`: the one word is the port
        if host is not None:
            raise UsageError(f"HOST given twice: {host!r} and -c {args.client!r}")
        host = args.client
    if args.port_option is not None:
        if port is not None:
            raise UsageError(f"port given twice: {port!r} and -p {args.port_option!r}")
        port = args.port_option
    if host is None:
        raise UsageError("missing HOST: write udpkit bench HOST PORT (or -c HOST, as in iperf3)")
    if args.client is not None and port is None:
        lone_port(host, port, "bench")  # `-c 5202` is no host either
        port = DEFAULT_REFLECT_PORT  # iperf3's -c has a default port: reflect's
    return destination(host, port, "bench")  # `bench 5202`: the port


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Turn ``bench`` arguments (parsed by :mod:`udpkit._cli.options`) into a ``BenchConfig``."""
    from udpkit._loops.bench import BenchConfig

    if args.reverse:
        raise UsageError(_REVERSE)
    duration = args.duration
    if duration is None and args.count is None:
        duration = 10.0
    rate = args.rate or args.bitrate or units.Rate(math.inf if args.window else 1000.0, "")
    host, port = _target(args)
    return BenchConfig(
        host=host,
        port=port,
        family=_family(args),
        size=args.size,
        rate=None if rate.value == math.inf else rate.per_item(args.size),
        duration=duration,
        count=args.count,
        window=args.window,
        parallel=args.parallel,
        interval=args.interval,
        one_way=args.one_way,
        timeout=args.timeout,
        linger=args.linger,
        fast=False if args.no_batch else None,
        iface=args.iface,
        ttl=args.ttl,
    )


# ---------------------------------------------------------------- the run and its stop


_UNBLOCK_AFTER = 0.3  # seconds a stopped run gives a hung write to stdout


def bench_command(args: argparse.Namespace, out: Writer, err: Writer) -> int:
    """The ``bench`` command.

    Returns:
        0; 128 + the signal's number when SIGINT or SIGTERM stopped the run (its
        figures printed first).  Errors are raised: UsageError/AddressError exit 2,
        Timeout 3, NetworkError 1.
    """
    import threading

    from udpkit._cli.benchreport import ROW_HEADER, format_row
    from udpkit._core.errors import Timeout
    from udpkit._loops.bench import run_bench
    from udpkit._loops.sigwake import on_signals

    cfg = config_from_args(args)
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(
                f"--plot {args.plot!r} needs matplotlib: pip install matplotlib"
            ) from None
    stop = threading.Event()
    # A full pipe nobody reads (``udpkit bench ... | sleep 60``) never holds a stop
    # past a second: a write hanging then, and the figures' write, are broken off.
    stdout = GuardedOutput(out, _UNBLOCK_AFTER)
    live = None if args.quiet else (GuardedOutput(err, _UNBLOCK_AFTER) if args.json else stdout)
    header = [False]

    def on_rows(rows: list[IntervalRow]) -> None:
        if live is None or live.closed:
            return
        text = "".join(format_row(r) for r in rows)
        if not header[0]:
            header[0] = True
            text = ROW_HEADER + text
        if not live.write(text) and live is stdout:
            stop.set()  # the reader has gone: end the run, its figures go to stderr

    def on_stop() -> None:
        stop.set()
        stdout.stopped()

    with stdout.breaking_off(), on_signals(on_stop) as stopped:
        try:
            result = run_bench(cfg, on_rows, stop=stop)
        except Timeout:
            if not stopped:
                raise
            name = signal.Signals(stopped[0]).name
            err.write(f"udpkit bench: stopped by {name} before {cfg.host} answered\n")
            return 128 + stopped[0]
        by = signal.Signals(stopped[0]).name if stopped else None
        _print_run(args, result, by or ("closed stdout" if stdout.closed else None), stdout, err)
    return 128 + stopped[0] if stopped else 0


def _print_run(
    args: argparse.Namespace,
    result: BenchResult,
    by: str | None,
    stdout: GuardedOutput,
    err: Writer,
) -> None:
    """The figures: on stdout, or on stderr when stdout is closed or hung; then the
    under-rate note on stderr, then the plot."""
    import json

    from udpkit._cli.benchreport import bench_document, format_table, icmp_errors, plot

    doc = bench_document(result, by)
    table = format_table(doc, icmp_errors(result))
    text = json.dumps(doc, indent=2) + "\n" if args.json else table
    if not stdout.write(text, bounded=by is not None):
        from udpkit._cli.common import quiet_stdout

        quiet_stdout()  # nobody reads it: the interpreter's last flush must not hang
        err.write(table)
    if doc["under_rate"] is not None:
        err.write(f"udpkit bench: {doc['under_rate']['message']}\n")
    if args.plot is not None:
        plot(args.plot, result, doc)


# ---------------------------------------------------------------- reflect


def run_reflect(args: argparse.Namespace, out: Writer, err: Writer) -> int:
    """The ``reflect`` command: serve until SIGINT/SIGTERM, then print the counters.

    Returns:
        0.
    """
    from udpkit._loops.reflect import Reflector
    from udpkit._loops.sigwake import on_signals
    from udpkit._net.addr import format_sockaddr
    from udpkit._net.binding import bind_server

    # The same bind as serve's: loopback by default, the wildcard with --join.
    lone_port(args.host, args.port, "reflect")  # `reflect 5202` means the port
    port = DEFAULT_REFLECT_PORT if args.port is None else args.port
    (sock,) = bind_server(args.host, port, family=_family(args), join=args.join, source=args.source)
    with sock:
        refl = Reflector(
            sock,
            fast=False if args.no_batch else None,
            busy_poll_us=args.busy_poll or 0,
            **({} if args.rcvbuf is None else {"rcvbuf": args.rcvbuf}),  # else its default
        )
        where = format_sockaddr(sock.sock.getsockname())
        up = f"udpkit: listening on {where} (UDP, reflector, receive buffer {refl.rcvbuf} B)\n"

        def counters() -> None:
            err.write(_reflect_summary(refl, args.quiet))

        with on_signals(refl.stop, counters) as stopped:
            try:
                err.write(up)  # once a stop reaches the reflector's handler
                refl.run()
            finally:
                refl.close()
        note = f" (stopped by {signal.Signals(stopped[0]).name})" if stopped else ""
        err.write(_reflect_summary(refl, args.quiet).rstrip("\n") + note + "\n")
    return 0


def _reflect_summary(refl: Reflector, quiet: bool) -> str:
    st = refl.engine.stats
    drops = refl.engine.read_kernel_drops()
    lines = [
        f"udpkit reflect: {st.rx_datagrams} datagrams received, {st.tx_datagrams} sent, "
        f"{len(refl.runs)} runs, {refl.reports} reports, {refl.malformed} malformed, "
        f"{refl.ignored} ignored, kernel drops {'unavailable' if drops is None else drops}"
    ]
    if not quiet:
        for run_id, r in list(refl.runs.items())[-20:]:
            t = r.tracker
            lines.append(
                f"  run {run_id:08x}: received {t.received} (unique {t.unique}, duplicates "
                f"{t.duplicates}, reordered {t.reordered}), echoed {r.echoed}"
            )
    return "\n".join(lines) + "\n"
