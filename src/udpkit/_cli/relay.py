"""``udpkit relay LISTEN TARGET``: the command line over :class:`udpkit._loops.relay.Relay`.

Only argparse is imported at the top: registering the command costs the other
commands no start-up time.  Option values are parsed by the validators of
:mod:`udpkit._cli.options`, so a bad one is one line naming it (exit code 2).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from udpkit._cli import options
from udpkit._cli.common import SubParsers, Writer, add_command

if TYPE_CHECKING:
    from udpkit._core.relay import ImpairConfig

DEFAULT_LISTEN_HOST = "127.0.0.1"


def add_parser(sub: SubParsers) -> None:
    """Register ``relay`` and its options on the ``udpkit`` subcommand parser."""
    p = add_command(
        sub,
        "relay",
        help="forward UDP between clients and a target, optionally impairing it",
        description="Forward datagrams from clients of LISTEN to TARGET and the replies back, "
        "one upstream socket per client.  Impairments apply to both directions (see "
        "--direction), each direction with its own seeded random streams.  Counters are "
        "printed on stderr on SIGINT/SIGTERM (then exit 0) and on SIGUSR1.",
    )
    p.add_argument("listen", metavar="LISTEN", help="[HOST:]PORT to listen on (host 127.0.0.1)")
    p.add_argument("target", metavar="TARGET", help="[HOST:]PORT to forward to (host 127.0.0.1)")
    p.add_argument(
        "--idle-timeout",
        type=options.IDLE_TIMEOUT,
        default=60.0,
        metavar="SECONDS",
        help="end a flow after this long without traffic (default 60; 500ms, 5min)",
    )
    p.add_argument(
        "--max-flows",
        type=options.MAX_FLOWS,
        default=1024,
        metavar="N",
        help="clients at once; datagrams from more are refused and counted (default 1024)",
    )
    _add_impairments(p)
    p.add_argument(
        "--spin-us",
        type=options.SPIN_US,
        default=50,
        metavar="US",
        help="after traffic, poll without sleeping this long (lower latency; 0: off; default 50)",
    )
    p.add_argument(
        "--no-batch", action="store_true", help="use recvfrom/sendto instead of recvmmsg/sendmmsg"
    )


def _add_impairments(p: argparse.ArgumentParser) -> None:
    imp = p.add_argument_group("impairments (per direction, reproducible with --seed)")
    imp.add_argument(
        "--loss",
        type=options.LOSS,
        default=0.0,
        metavar="P",
        help="drop with probability P (0.05 or 5%%)",
    )
    imp.add_argument(
        "--duplicate",
        type=options.DUPLICATE,
        default=0.0,
        metavar="P",
        help="send twice with probability P",
    )
    imp.add_argument(
        "--reorder",
        type=options.REORDER,
        default=0.0,
        metavar="P",
        help="hold back with probability P (see --reorder-gap)",
    )
    imp.add_argument(
        "--reorder-gap",
        type=options.REORDER_GAP,
        default=3,
        metavar="N",
        help="release a held datagram after N later ones passed (default 3)",
    )
    imp.add_argument(
        "--reorder-max",
        type=options.REORDER_MAX,
        default=0.1,
        metavar="MS",
        help="... or after this many milliseconds (default 100; 2s)",
    )
    imp.add_argument(
        "--delay",
        type=options.DELAY,
        default=(0.0, 0.0),
        metavar="MS[±J]",
        help="add MS milliseconds, +-J jitter (20±5, 20ms+-5ms, 1s)",
    )
    imp.add_argument(
        "--rate",
        type=options.BYTE_RATE,
        metavar="BYTES/S",
        help="token bucket rate in bytes/s (125000, 500k, 1.5M: powers of 1000)",
    )
    imp.add_argument(
        "--burst",
        type=options.BURST,
        metavar="BYTES",
        help="token bucket depth (1500, 64K: powers of 1024; default 10 ms worth)",
    )
    imp.add_argument(
        "--direction",
        choices=("both", "up", "down"),
        default="both",
        help="which direction to impair: up = client to target (default both)",
    )
    imp.add_argument(
        "--seed", type=options.SEED, metavar="N", help="seed the random streams (default: random)"
    )


def impair_config(args: argparse.Namespace) -> ImpairConfig | None:
    """Build the :class:`ImpairConfig` the (parsed) options ask for (``None``: no impairment)."""
    from udpkit._core.relay import ImpairConfig

    delay, jitter = args.delay
    cfg = ImpairConfig(
        loss=args.loss,
        duplicate=args.duplicate,
        reorder=args.reorder,
        reorder_gap=args.reorder_gap,
        reorder_max=args.reorder_max,
        delay=delay,
        jitter=jitter,
        rate=args.rate,
        burst=None if args.burst is None else float(args.burst),
    )
    return cfg if cfg.active else None


def run(args: argparse.Namespace, out: Writer, err: Writer) -> int:
    """Run ``udpkit relay`` until SIGINT/SIGTERM; return the exit code.

    Raises:
        UsageError: a bad option value.
        AddressError: a bad LISTEN or TARGET.
        NetworkError: LISTEN cannot be bound.
    """
    import contextlib
    import signal

    from udpkit._core.errors import AddressError, NetworkError
    from udpkit._core.relaystats import RelayStats, format_stats
    from udpkit._loops.relay import Relay
    from udpkit._loops.sigwake import on_signals, stops_held
    from udpkit._net.addr import format_sockaddr, resolve_one, split_hostport
    from udpkit._net.kernel import DEFAULT_RCVBUF
    from udpkit._net.sockets import set_receive_buffer, udp_bind

    cfg = impair_config(args)
    lhost, lport = split_hostport(args.listen, default_host=DEFAULT_LISTEN_HOST)
    thost, tport = split_hostport(args.target, default_host=DEFAULT_LISTEN_HOST)
    target = resolve_one(thost, tport)
    if target.port == 0:
        raise AddressError(f"invalid target '{args.target}': port 0 cannot receive; give a port")

    def report(st: RelayStats) -> None:
        err.write(format_stats(st))

    # Stops wait until the relay's own handlers are in place, so a stop always
    # ends with the counters printed.
    with stops_held(), udp_bind(lhost, lport) as listener:
        # Clients' datagrams queue here while the relay is not scheduled (the default
        # ~208 KiB is ~13 ms of 64-byte datagrams at 20k/s): as much as bench and reflect ask.
        with contextlib.suppress(NetworkError):
            set_receive_buffer(listener.sock, DEFAULT_RCVBUF)
        relay = Relay(
            listener,
            target,
            idle_timeout=args.idle_timeout,
            max_flows=args.max_flows,
            impair_up=cfg if args.direction in ("both", "up") else None,
            impair_down=cfg if args.direction in ("both", "down") else None,
            seed=args.seed,
            fast=False if args.no_batch else None,
            spin_us=args.spin_us,
            on_report=report,
        )
        where = format_sockaddr(listener.sock.getsockname())
        with on_signals(relay.stop, relay.request_report) as stopped:
            try:
                err.write(f"udpkit: listening on {where} (UDP, relay to {target})\n")
                stats = relay.run()
            finally:
                relay.close()
    text = format_stats(stats)
    if stopped:
        first, _, rest = text.partition("\n")
        text = f"{first} (stopped by {signal.Signals(stopped[0]).name})\n{rest}"
    err.write(text)
    return 0
