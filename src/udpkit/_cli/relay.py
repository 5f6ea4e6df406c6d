"""``udpkit relay LISTEN TARGET``: the command line over :class:`udpkit._loops.relay.Relay`.

Only argparse is imported at the top: registering the command costs the other
commands no start-up time.  Option values are checked in :func:`run`, so a bad
one is a :class:`~udpkit._core.errors.UsageError` naming it (exit code 2).
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_LISTEN_HOST = "127.0.0.1"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``relay`` and its options on the ``udpkit`` subcommand parser."""
    p = sub.add_parser(
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
        default="60",
        metavar="SECONDS",
        help="end a flow after this long without traffic (default 60)",
    )
    p.add_argument(
        "--max-flows",
        default="1024",
        metavar="N",
        help="clients at once; datagrams from more are refused and counted (default 1024)",
    )
    imp = p.add_argument_group("impairments (per direction, reproducible with --seed)")
    imp.add_argument("--loss", metavar="P", help="drop with probability P (0.05 or 5%%)")
    imp.add_argument("--duplicate", metavar="P", help="send twice with probability P")
    imp.add_argument(
        "--reorder", metavar="P", help="hold back with probability P (see --reorder-gap)"
    )
    imp.add_argument(
        "--reorder-gap",
        default="3",
        metavar="N",
        help="release a held datagram after N later ones passed (default 3)",
    )
    imp.add_argument(
        "--reorder-max",
        default="100",
        metavar="MS",
        help="... or after this many milliseconds (default 100)",
    )
    imp.add_argument("--delay", metavar="MS[±J]", help="add MS milliseconds, +-J jitter (20±5)")
    imp.add_argument("--rate", metavar="BYTES/S", help="token bucket rate (k/M/G suffixes)")
    imp.add_argument("--burst", metavar="BYTES", help="token bucket depth (default 10 ms worth)")
    imp.add_argument(
        "--direction",
        choices=("both", "up", "down"),
        default="both",
        help="which direction to impair: up = client to target (default both)",
    )
    imp.add_argument("--seed", metavar="N", help="seed the random streams (default: random)")
    p.add_argument(
        "--spin-us",
        default="50",
        metavar="US",
        help="after traffic, poll without sleeping this long (lower latency; 0: off; default 50)",
    )
    p.add_argument(
        "--no-batch", action="store_true", help="use recvfrom/sendto instead of recvmmsg/sendmmsg"
    )


def _int(text: str, option: str, low: int) -> int:
    from udpkit._core.errors import UsageError

    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise UsageError(f"invalid {option} {text!r}: must be a whole number >= {low}")
    return value


def _float(text: str, option: str, unit: str) -> float:
    from udpkit._core.errors import UsageError

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise UsageError(f"invalid {option} {text!r}: must be a number of {unit} > 0")
    return value


def impair_config(args: argparse.Namespace) -> Any:
    """Build the :class:`ImpairConfig` the options ask for (``None``: no impairment).

    Raises:
        UsageError: a bad option value.
    """
    from udpkit._core.relay import ImpairConfig, parse_delay, parse_probability, parse_rate

    delay, jitter = parse_delay(args.delay) if args.delay is not None else (0.0, 0.0)
    rate = parse_rate(args.rate, "--rate") if args.rate is not None else None
    burst = parse_rate(args.burst, "--burst") if args.burst is not None else None
    cfg = ImpairConfig(
        loss=parse_probability(args.loss, "--loss") if args.loss is not None else 0.0,
        duplicate=(
            parse_probability(args.duplicate, "--duplicate") if args.duplicate is not None else 0.0
        ),
        reorder=parse_probability(args.reorder, "--reorder") if args.reorder is not None else 0.0,
        reorder_gap=_int(args.reorder_gap, "--reorder-gap", 1),
        reorder_max=_float(args.reorder_max, "--reorder-max", "milliseconds") / 1000,
        delay=delay,
        jitter=jitter,
        rate=rate,
        burst=burst,
    )
    return cfg if cfg.active else None


def run(args: argparse.Namespace, out: Any, err: Any) -> int:
    """Run ``udpkit relay`` until SIGINT/SIGTERM; return the exit code.

    Raises:
        UsageError: a bad option value.
        AddressError: a bad LISTEN or TARGET.
        NetworkError: LISTEN cannot be bound.
    """
    import contextlib
    import signal

    from udpkit._core.errors import NetworkError
    from udpkit._loops.relay import _RCVBUF, Relay, format_stats
    from udpkit._net.addr import format_sockaddr, resolve_one, split_hostport
    from udpkit._net.sockets import set_receive_buffer, udp_bind

    idle = _float(args.idle_timeout, "--idle-timeout", "seconds")
    max_flows = _int(args.max_flows, "--max-flows", 1)
    seed = _int(args.seed, "--seed", 0) if args.seed is not None else None
    cfg = impair_config(args)
    lhost, lport = split_hostport(args.listen, default_host=DEFAULT_LISTEN_HOST)
    thost, tport = split_hostport(args.target, default_host=DEFAULT_LISTEN_HOST)
    target = resolve_one(thost, tport)
    if target.port == 0:
        from udpkit._core.errors import AddressError

        raise AddressError(f"invalid target '{args.target}': port 0 cannot receive; give a port")
    listener = udp_bind(lhost, lport)
    # Clients' datagrams queue here while the relay is not scheduled (the default
    # ~208 KiB is ~13 ms of 64-byte datagrams at 20k/s): as much as bench and reflect ask.
    with contextlib.suppress(NetworkError):
        set_receive_buffer(listener.sock, _RCVBUF)
    stops = {signal.SIGINT, signal.SIGTERM}
    stopped: list[int] = []
    # Signals wait until the relay's own handlers are in place, so a stop always
    # ends with the counters printed.
    signal.pthread_sigmask(signal.SIG_BLOCK, {*stops, signal.SIGUSR1})
    try:
        relay = Relay(
            listener,
            target,
            idle_timeout=idle,
            max_flows=max_flows,
            impair_up=cfg if args.direction in ("both", "up") else None,
            impair_down=cfg if args.direction in ("both", "down") else None,
            seed=seed,
            fast=False if args.no_batch else None,
            spin_us=_int(args.spin_us, "--spin-us", 0),
            on_report=lambda st: err.write(format_stats(st)),
        )
        try:

            def on_stop(signum: int, _frame: object) -> None:
                stopped.append(signum)
                relay.stop()

            def on_usr1(_signum: int, _frame: object) -> None:
                relay.request_report()

            old = {s: signal.signal(s, on_stop) for s in stops}
            # SIGUSR1 keeps this harmless handler afterwards: its default would kill.
            signal.signal(signal.SIGUSR1, on_usr1)
            try:
                where = format_sockaddr(listener.sock.getsockname())
                err.write(f"udpkit: listening on {where} (UDP, relay to {target})\n")
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {*stops, signal.SIGUSR1})
                stats = relay.run()
            finally:
                signal.pthread_sigmask(signal.SIG_BLOCK, {*stops, signal.SIGUSR1})
                for s, h in old.items():
                    signal.signal(s, h)
        finally:
            relay.close()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {*stops, signal.SIGUSR1})
        listener.close()
    text = format_stats(stats)
    if stopped:
        first, _, rest = text.partition("\n")
        text = f"{first} (stopped by {signal.Signals(stopped[0]).name})\n{rest}"
    err.write(text)
    return 0
