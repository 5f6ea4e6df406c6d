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
from udpkit._core.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from udpkit._core.impairconfig import ImpairConfig
    from udpkit._core.relaystats import RelayStats
    from udpkit._core.scenario import Scenario
    from udpkit._loops.relay import Relay

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
    p.add_argument(
        "listen", metavar="LISTEN", nargs="?", help="[HOST:]PORT to listen on (host 127.0.0.1)"
    )
    p.add_argument(
        "target", metavar="TARGET", nargs="?", help="[HOST:]PORT to forward to (host 127.0.0.1)"
    )
    add_routes(p)
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


# The fault options: (field, metavar, help).  Each value is read by the parser
# ImpairConfig.from_text uses for the field (udpkit._core.impairconfig.FIELDS),
# so an option and a scenario's field mean the same and refuse the same words.
_FAULT_OPTIONS = (
    ("loss", "P", "lose each datagram with probability P (0.05 or 5%%)"),
    ("loss_burst", "N", "... in bursts of N datagrams on average (Gilbert-Elliott; --loss is "
     "the long-run rate: --loss 5%% --loss-burst 4)"),
    ("gilbert", "P,R[,1-H,1-K]", "Gilbert-Elliott's four parameters, as netem's gemodel: "
     "good->bad, bad->good, loss when bad (100%%), loss when good (0%%)"),
    ("duplicate", "P", "send twice with probability P"),
    ("reorder", "P", "hold back with probability P (see --reorder-gap)"),
    ("reorder_gap", "N", "release a held datagram after N later ones passed (default 3)"),
    ("reorder_max", "MS", "... or after this many milliseconds (default 100; 2s)"),
    ("delay", "MS[±J]", "add MS milliseconds, J jitter (20±5, 20ms+-5ms, 1s)"),
    ("jitter", "MS", "jitter of --delay: ± for uniform, the scale for the others (5, 5ms)"),
    ("delay_dist", "NAME", "jitter's distribution, as netem's: uniform (default), normal, "
     "pareto, paretonormal"),
    ("delay_correlation", "P", "how much each delay depends on the last (25%%; the "
     "distribution stays the one asked)"),
    ("rate", "BYTES/S", "a link of this many bytes/s: datagrams queue behind it and leave "
     "one after the other (125000, 500k, 1.5M: powers of 1000)"),
    ("burst", "BYTES", "bytes the link may send at once after a quiet spell (64K; default 0)"),
    ("queue", "BYTES|MS", "bytes that may wait for the link (64K) or time at the rate (50ms); "
     "more is dropped, counted queue_drop (default: 1000 datagrams)"),
    ("mtu_blackhole", "BYTES", "datagrams over BYTES vanish (counted mtu_drop)"),
    ("truncate", "BYTES", "cut datagrams over BYTES to BYTES (counted truncated)"),
    ("corrupt", "P", "flip one random bit in a fraction P of datagrams (counted corrupted)"),
)  # fmt: skip


def _fault(field: str) -> Callable[[str], object]:
    """An argparse ``type=`` reading ``field`` as :meth:`ImpairConfig.from_text` does."""

    def convert(text: str) -> object:
        from udpkit._core.impairconfig import FIELDS  # only when the option is given

        try:
            return FIELDS[field](text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = field
    return convert


def _add_impairments(p: argparse.ArgumentParser) -> None:
    imp = p.add_argument_group("impairments (per direction, reproducible with --seed)")
    for field, metavar, help in _FAULT_OPTIONS:
        imp.add_argument(
            "--" + field.replace("_", "-"), type=_fault(field), metavar=metavar, help=help
        )
    imp.add_argument(
        "--keep-order",
        action="store_true",
        help="jitter never lets a datagram overtake an earlier one (default: it may, as netem)",
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
    """Build the :class:`ImpairConfig` the (parsed) options ask for (``None``: no impairment).

    Raises:
        UsageError: options that do not go together (``--loss-burst`` without ``--loss``).
    """
    from udpkit._core.impairconfig import ImpairConfig

    values = {f: getattr(args, f) for f, _, _ in _FAULT_OPTIONS if getattr(args, f) is not None}
    if args.keep_order:
        values["keep_order"] = True
    cfg = ImpairConfig.from_values(values)
    return cfg if cfg.active else None


def _duration(option: str) -> Callable[[str], float]:
    from udpkit._core import units

    def convert(text: str) -> float:
        try:
            return units.parse_duration(text, option, above_low=True, high=86400.0)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def add_routes(p: argparse.ArgumentParser) -> None:
    """Routes, scenarios, NAT behaviour, live control and the stop (``run``'s options)."""
    g = p.add_argument_group("routes, scenarios, NAT and live control")
    g.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="[NAME=]LISTEN=TARGET",
        help="one more route in this process, with the same faults (repeatable)",
    )
    g.add_argument(
        "--scenario",
        metavar="FILE",
        help="TOML or JSON: routes, and fault phases over time (see README)",
    )
    g.add_argument(
        "--control",
        metavar="[HOST:]PORT",
        help="serve the JSON control API here (host 127.0.0.1; off by default)",
    )
    g.add_argument(
        "--drain",
        action="store_true",
        help="at stop, send what delay/rate/reorder queues hold (default: count it abandoned)",
    )
    g.add_argument(
        "--nat-rebind",
        type=_duration("--nat-rebind"),
        metavar="SECONDS",
        help="move every flow to a new upstream port this often, as a NAT rebinding does",
    )
    g.add_argument(
        "--nat-timeout",
        type=_duration("--nat-timeout"),
        metavar="SECONDS",
        help="a flow whose client is silent this long comes back on a new upstream port",
    )


def _route_args(args: argparse.Namespace, scenario: Scenario | None) -> list[tuple[str, str, str]]:
    """``(name, listen, target)`` for the positional pair and each ``--route``."""
    out: list[tuple[str, str, str]] = []
    if (args.listen is None) != (args.target is None):
        raise UsageError("relay: give both LISTEN and TARGET, or neither (with --route/--scenario)")
    if args.listen is not None:
        out.append(("r1", args.listen, args.target))
    for text in args.route:
        parts = text.split("=")
        if len(parts) == 2:
            parts.insert(0, f"r{len(out) + 1}")
        if len(parts) != 3 or not all(parts) or "/" in parts[0]:
            raise UsageError(
                f"invalid --route '{text}': must be [NAME=]LISTEN=TARGET, like 5300=127.0.0.1:53"
            )
        out.append((parts[0], parts[1], parts[2]))
    if not out and (scenario is None or not scenario.routes):
        raise UsageError("relay: give LISTEN TARGET, --route LISTEN=TARGET or a --scenario")
    return out


def _load_scenario(path: str | None) -> Scenario | None:
    from udpkit._core.scenario import parse_scenario

    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"invalid --scenario '{path}': {getattr(exc, 'strerror', exc)}") from None
    return parse_scenario(text, path)


def _summary(relay: Relay, stats: RelayStats, stopped: list[int]) -> str:
    import signal

    from udpkit._core.relaystats import format_stats

    text = format_stats(stats)
    if stopped:
        first, _, rest = text.partition("\n")
        text = f"{first} (stopped by {signal.Signals(stopped[0]).name})\n{rest}"
    return text + _route_lines(relay)


def _route_lines(relay: Relay) -> str:
    """Per route: held now, abandoned, NAT figures, and the counters of each phase."""
    lines: list[str] = []
    one = len(relay.routes) == 1 and relay.scenario is None
    for name, doc in relay.snapshot(flows=False).items():
        if one and not (doc["counters"]["rebinds"] or doc["counters"]["nat_timeouts"]):
            continue  # the totals above are this route's
        c = doc["counters"]
        lines.append(
            f"udpkit relay: route {name} {doc['route']} phase={doc['phase']} "
            f"up in={c['up_in']} out={c['up_out']} held={c['up_held']} "
            f"abandoned={c.get('up_abandoned', 0)}; down in={c['down_in']} "
            f"out={c['down_out']} held={c['down_held']} abandoned={c.get('down_abandoned', 0)}; "
            f"rebinds={c['rebinds']} nat_timeouts={c['nat_timeouts']}"
        )
        if len(doc["phases"]) > 1 or relay.scenario is not None:
            for ph, pc in doc["phases"].items():
                lines.append(
                    f"udpkit relay:   phase {ph}: up in={pc.get('up_in', 0)} "
                    f"out={pc.get('up_out', 0)} lost={pc.get('up_lost', 0)} "
                    f"blackout={pc.get('up_blackout_drop', 0)}; "
                    f"down in={pc.get('down_in', 0)} out={pc.get('down_out', 0)} "
                    f"lost={pc.get('down_lost', 0)} blackout={pc.get('down_blackout_drop', 0)}"
                )
    return "".join(line + "\n" for line in lines)


def run(args: argparse.Namespace, out: Writer, err: Writer) -> int:
    """Run ``udpkit relay`` until SIGINT/SIGTERM; return the exit code.

    Raises:
        UsageError: a bad option value or scenario.
        AddressError: a bad LISTEN or TARGET.
        NetworkError: LISTEN cannot be bound.
    """
    import contextlib

    from udpkit._core.errors import AddressError, NetworkError
    from udpkit._core.scenario import impair_configs
    from udpkit._loops.relay import Relay, RouteSpec
    from udpkit._loops.relay_control import ControlServer
    from udpkit._loops.sigwake import on_signals, stops_held
    from udpkit._net.addr import format_sockaddr, resolve_one, split_hostport
    from udpkit._net.kernel import DEFAULT_RCVBUF
    from udpkit._net.sockets import set_receive_buffer, udp_bind

    scenario = _load_scenario(args.scenario)
    pairs = _route_args(args, scenario)
    cfg = impair_config(args)
    up = cfg if args.direction in ("both", "up") else None
    down = cfg if args.direction in ("both", "down") else None
    wanted: list[tuple[str, str, str, dict[str, str] | None]] = [(*p, None) for p in pairs]
    for rt in scenario.routes if scenario else ():
        wanted.append((rt.name, rt.listen, rt.target, rt.faults))
    control = None
    if args.control is not None:
        chost, cport = split_hostport(args.control, default_host=DEFAULT_LISTEN_HOST)
        if not cport.isdigit() or int(cport) > 65535:
            raise UsageError(f"invalid --control '{args.control}': must be [HOST:]PORT")
        control = (chost.strip("[]"), int(cport))

    def report(st: RelayStats) -> None:
        err.write(_summary(relay, st, []))

    with stops_held(), contextlib.ExitStack() as stack:
        specs: list[RouteSpec] = []
        for name, listen, target_text, faults in wanted:
            lhost, lport = split_hostport(listen, default_host=DEFAULT_LISTEN_HOST)
            thost, tport = split_hostport(target_text, default_host=DEFAULT_LISTEN_HOST)
            target = resolve_one(thost, tport)
            if target.port == 0:
                raise AddressError(f"invalid target '{target_text}': port 0 cannot receive")
            listener = stack.enter_context(udp_bind(lhost, lport))
            # Clients' datagrams queue here while the relay is not scheduled.
            with contextlib.suppress(NetworkError):
                set_receive_buffer(listener.sock, DEFAULT_RCVBUF)
            fu, fd = (up, down) if faults is None else impair_configs(faults, "both", name)
            specs.append(
                RouteSpec(listener, target, name, fu, fd, args.nat_rebind, args.nat_timeout, faults)
            )
        relay = Relay(
            routes=specs,
            idle_timeout=args.idle_timeout,
            max_flows=args.max_flows,
            seed=args.seed,
            scenario=scenario,
            drain=args.drain,
            fast=False if args.no_batch else None,
            spin_us=args.spin_us,
            on_report=report,
        )
        stack.callback(relay.close)
        if control is not None:
            srv = stack.enter_context(ControlServer(relay, *control))
            err.write(f"udpkit: control API on http://{format_sockaddr(srv.address)}/routes\n")
        with on_signals(relay.stop, relay.request_report) as stopped:
            for r in relay.routes.values():
                listen, _, to = r.where.partition(" -> ")
                err.write(f"udpkit: listening on {listen} (UDP, relay to {to}, route {r.name})\n")
            stats = relay.run()
            err.write(_summary(relay, stats, stopped))
    return 0
