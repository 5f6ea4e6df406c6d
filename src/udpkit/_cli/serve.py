"""`udpkit serve`: bind, serve on the engine (or the stream loop), report and summarise."""

from __future__ import annotations

import argparse
import os
import signal
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from udpkit._cli import common, options
from udpkit._cli.common import DEFAULT_HOST, DEFAULT_REPLY, EXIT_NETWORK, EXIT_OK
from udpkit._cli.common import Out as _Out
from udpkit._core.errors import NetworkError, UsageError

if TYPE_CHECKING:
    from udpkit._core.serving import Handler
    from udpkit._loops.record import Recorder
    from udpkit._loops.server import DatagramServer, ServeStats, StreamServer

# ---------------------------------------------------------------- arguments


def add_parser(sub: common.SubParsers) -> None:
    """Register ``serve`` on the ``udpkit`` subcommand parsers."""
    serve = common.add_command(
        sub,
        "serve",
        help="listen, print each message and reply (the textbook's UDP server)",
        description="Listen on HOST PORT (default 127.0.0.1 5005), print every datagram "
        "with its sender, and reply 'Hello UDP Client'.",
    )
    serve.add_argument(
        "host",
        nargs="?",
        default=None,
        metavar="HOST",
        help="address to bind (default 127.0.0.1; '' or 0.0.0.0 for all)",
    )
    serve.add_argument(
        "port",
        nargs="?",
        default=None,
        metavar="PORT",
        help="port number or service name (default 5005, 12345 with --tcp; 0 picks a free port)",
    )
    serve.add_argument(
        "-p",
        "--port",
        dest="port_option",
        metavar="PORT",
        help="the port, given as an option (handy with --join, where HOST is not needed)",
    )
    mode = serve.add_mutually_exclusive_group()
    mode.add_argument(
        "--reply",
        metavar="TEXT",
        default=DEFAULT_REPLY,
        help=f"reply with TEXT (default {DEFAULT_REPLY!r})",
    )
    mode.add_argument("--echo", action="store_true", help="reply with the message received")
    mode.add_argument("--no-reply", action="store_true", help="never reply")
    serve.add_argument(
        "--count", type=options.COUNT, metavar="N", help="exit after N messages (100, 10k)"
    )
    serve.add_argument(
        "--buffer-size",
        type=options.BUFFER_SIZE,
        default=65535,
        metavar="BYTES",
        help="receive buffer in bytes (default 65535: the largest datagram; 1024, 64K); "
        "longer datagrams are reported as truncated with their real length",
    )
    _add_multicast_and_recording(serve)
    serve.add_argument(
        "--quiet", "-q", action="store_true", help="print nothing per message: count only"
    )
    _add_performance(serve)
    _add_policy(serve)
    options.add_format(
        serve,
        "textbook",
        "output: textbook (the textbook's lines; 'seed' is an old name for it), line, hex "
        "or json (JSON Lines)",
    )
    options.add_transport(serve)


def _add_multicast_and_recording(serve: argparse.ArgumentParser) -> None:
    mc = serve.add_argument_group("multicast")
    mc.add_argument(
        "--join",
        action="append",
        default=[],
        metavar="GROUP[@IFACE]",
        help="join a multicast group (repeatable); without HOST, binds the group's wildcard",
    )
    mc.add_argument(
        "--source", metavar="ADDR", help="with --join: source-specific membership (SSM)"
    )
    rec = serve.add_argument_group("recording")
    rec.add_argument(
        "--record",
        metavar="FILE",
        help="write every datagram received to FILE (.jsonl or .pcap); read it with 'udpkit read'",
    )
    rec.add_argument("--force", action="store_true", help="with --record: overwrite FILE")
    rec.add_argument(
        "--record-continue",
        action="store_true",
        help="if the disk fails, keep serving unrecorded (default: stop, exit 1)",
    )
    serve.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST default 127.0.0.1)",
    )


def _add_performance(serve: argparse.ArgumentParser) -> None:
    perf = serve.add_argument_group("performance (UDP and Unix datagram)")
    perf.add_argument(
        "--workers",
        default="1",
        metavar="N",
        help="serve with N processes sharing the port (SO_REUSEPORT); 'auto' = one per core",
    )
    perf.add_argument(
        "--no-batch",
        action="store_true",
        help="use the portable recvfrom/sendto path instead of recvmmsg/sendmmsg",
    )
    perf.add_argument(
        "--gro",
        action="store_true",
        help="receive with UDP GRO (fastest; the kernel then counts a dropped coalesced "
        "buffer as one drop)",
    )
    options.add_busy_poll(perf)
    options.add_rcvbuf(perf, "the system's")


def _add_policy(serve: argparse.ArgumentParser) -> None:
    pol = serve.add_argument_group(
        "policy (UDP and Unix datagram; refused datagrams are counted, never answered)"
    )
    pol.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="accept only sources in CIDR (repeatable)",
    )
    pol.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="CIDR",
        help="drop sources in CIDR (repeatable; deny wins over allow)",
    )
    pol.add_argument(
        "--rate-limit",
        type=options.RATE_LIMIT,
        metavar="N/s[:BURST]",
        help="per-source token bucket, e.g. 100/s:200 or 10k/s",
    )
    pol.add_argument(
        "--rate-limit-prefix",
        action="store_true",
        help="rate-limit by /24 (IPv4) and /56 (IPv6) prefix instead of by address",
    )
    pol.add_argument(
        "--rate-limit-log-only",
        action="store_true",
        help="count what the rate limit would drop, but drop nothing",
    )
    pol.add_argument(
        "--amplification",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="replies to an untrusted source never exceed FACTOR x the bytes it sent "
        "(default 1, at most 3)",
    )
    pol.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="CIDR",
        help="sources exempt from the amplification budget (default: loopback only)",
    )


def _bind(args: argparse.Namespace, stream: bool, workers: int) -> tuple[list[Any], str]:
    """Open the serving socket(s) and say where: one, or ``workers`` sharing a port."""
    from udpkit._net.addr import format_sockaddr
    from udpkit._net.binding import bind_server, default_host
    from udpkit._net.stream import tcp_listen
    from udpkit._net.unix import unix_datagram_bind, unix_stream_listen

    if args.unix is not None:
        bind_unix = unix_stream_listen if stream else unix_datagram_bind
        return [bind_unix(args.unix)], args.unix
    if stream and (args.join or args.source):
        raise UsageError("--join and --source are for UDP: multicast has no streams")
    family = common.family(args)
    port = args.port
    if port is None:
        port = common.DEFAULT_TCP_PORT if args.tcp else common.DEFAULT_UDP_PORT
    try:
        if stream:
            host = args.host if args.host is not None else default_host(family)
            endpoints: list[Any] = [tcp_listen(host, port, family=family)]
        else:
            endpoints = list(
                bind_server(
                    args.host,
                    port,
                    family=family,
                    workers=workers,
                    join=args.join,
                    source=args.source,
                )
            )
    except NetworkError as exc:
        host_text = args.host or ""
        if args.port is None and host_text.isdigit() and int(host_text) <= 65535:
            raise type(exc)(
                exc.errno,
                f"{exc} (did you mean port {host_text}? give the host first: "
                f"udpkit serve {DEFAULT_HOST} {host_text})",
            ) from exc
        raise
    return endpoints, format_sockaddr(endpoints[0].sock.getsockname())


def _broadcast_warning(sock: socket.socket, workers: int) -> str | None:
    """The warning for ``--workers`` > 1 on a wildcard that hears broadcasts, else None."""
    if workers < 2 or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    host = str(sock.getsockname()[0]).split("%", 1)[0]
    if any(socket.inet_pton(sock.family, host)):
        return None  # a unicast address: broadcasts to the subnet do not reach it
    if sock.family == socket.AF_INET6 and sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
        return None  # IPv6 only: IPv6 has no broadcast
    shown = "0.0.0.0" if sock.family == socket.AF_INET else "::"
    return (
        f"warning: with --workers {workers} on wildcard address {shown!r} every worker "
        "receives its own copy of each broadcast datagram (the kernel copies a broadcast to "
        "every socket); bind a unicast address, or use --workers 1, to answer broadcasts once"
    )


def _summary(st: ServeStats, stopped_by: int | None) -> str:
    from udpkit._cli.format import format_summary

    extra: dict[str, int | str] = {}
    if st.replies:
        extra["replies"] = st.replies
    if st.reply_errors:
        extra["reply_errors"] = sum(st.reply_errors.values())
    if st.unreplyable:
        extra["unreplyable"] = st.unreplyable
    if st.handler_errors:
        extra["handler_errors"] = st.handler_errors
    if st.truncated:
        extra["truncated_bytes_lost"] = st.truncated_bytes_lost
    extra["kernel_drops"] = "unavailable" if st.kernel_drops is None else st.kernel_drops
    for name in ("denied", "rate_limited", "rate_limited_logged", "over_budget"):
        if st.policy.get(name):
            extra[name] = st.policy[name]
    for name, n in st.record.items():
        if n or name != "record_errors":
            extra[name] = n
    refused = sum(n for k, n in st.policy.items() if k.startswith("unreplyable_"))
    if refused:
        extra["replies_refused"] = refused
    text = format_summary(st.received, st.bytes_received, st.peers, st.truncated, **extra)
    text = text.rstrip("\n")
    if st.peers_estimated:
        text = text.replace(" from ", " from ~", 1)  # an estimate past 4,096 peers
    if stopped_by is not None:
        text += f" (stopped by {signal.Signals(stopped_by).name})"
    return text + "\n"


def _check_args(args: argparse.Namespace, transport: str, stream: bool) -> int:
    """Refuse option combinations that cannot work; return the number of workers."""
    from udpkit._loops.workers import parse_workers

    if args.port_option is not None:
        if args.port is not None:
            raise UsageError(f"port given twice: {args.port!r} and --port {args.port_option!r}")
        args.port = args.port_option
    common.check_unix_args(args, (args.host, args.port))
    workers = parse_workers(args.workers)
    if workers > 1 and transport != "UDP":
        raise UsageError(f"--workers {args.workers} works with UDP only, not {transport}")
    if workers > 1 and args.count is not None:
        raise UsageError("--count cannot be combined with --workers (each worker counts alone)")
    if stream and (args.no_batch or args.gro or args.busy_poll or args.rcvbuf):
        raise UsageError("--no-batch, --gro, --busy-poll and --rcvbuf apply to datagram sockets")
    if workers > 1 and args.metrics:
        raise UsageError("--metrics cannot be combined with --workers yet: run one worker")
    if args.gro and args.no_batch:
        raise UsageError("--gro needs the batched path: drop --no-batch")
    if args.gro and args.buffer_size < 65535:
        raise UsageError("--gro needs --buffer-size 65535 or more (coalesced buffers are large)")
    if args.record is not None and workers > 1:
        raise UsageError("--record cannot be combined with --workers: record with one worker")
    if args.record is not None and stream:
        raise UsageError("--record records datagrams: not with --tcp or --stream")
    return workers


def _policy_args(args: argparse.Namespace) -> dict[str, Any]:
    """The Policy options, checked at once (so bad values are reported before binding)."""
    from udpkit._core.policy import Policy

    kwargs = {
        "allow": args.allow,
        "deny": args.deny,
        "rate_limit": args.rate_limit,
        "rate_limit_prefix": args.rate_limit_prefix,
        "log_only": args.rate_limit_log_only,
        "amplification": args.amplification,
        "trust": args.trust,
    }
    Policy(**kwargs)
    return kwargs


def _servers(
    args: argparse.Namespace,
    endpoints: Sequence[Any],
    handler: Handler | None,
    *,
    stream: bool,
    out: _Out,
    recorder: Recorder | None,
) -> list[Any]:
    """One server per socket, showing and answering as the options ask."""
    from udpkit._cli.format import format_datagram
    from udpkit._core.policy import Policy
    from udpkit._loops.server import DatagramServer, StreamServer

    fmt = args.format

    def observe(batch: Sequence[Any]) -> None:
        # One write and one flush per batch: lines still appear as datagrams
        # arrive, but printing costs no system call per datagram.
        out.write("".join(format_datagram(fmt, d.data, d.peer, length=d.length) for d in batch))

    observer = None if args.quiet else observe
    if stream:
        return [StreamServer(endpoints[0], handler, bufsize=args.buffer_size, count=args.count,
                             observer=observer)]  # fmt: skip
    policy_args = _policy_args(args)
    return [
        DatagramServer(
            ep,
            handler,
            bufsize=args.buffer_size,
            count=args.count,
            observer=observer,
            count_peers=not args.quiet or handler is not None,
            fast=False if args.no_batch else None,
            gro=args.gro,
            busy_poll_us=args.busy_poll,
            policy=None
            if ep.family == socket.AF_UNIX
            else Policy(**policy_args, local=ep.local_address),
            recorder=recorder,
        )
        for ep in endpoints
    ]


def _announce(  # noqa: PLR0917 - what the banner and the warnings need
    args: argparse.Namespace, transport: str, endpoints: Sequence[Any], where: str,
    answers: bool, out: _Out, err: _Out,
) -> None:  # fmt: skip
    """The banner, where the server listens, and the warnings for what it will hear."""
    from udpkit._cli.format import banner
    from udpkit._core.policy import wildcard_warning

    text, to_stderr = banner(args.format, transport)
    (err if to_stderr else out).write(text)
    workers = len(endpoints)
    note = f", {workers} workers" if workers > 1 else ""
    err.write(f"udpkit: listening on {where} ({transport}{note})\n")
    if args.unix is not None:
        return
    sock = endpoints[0].sock  # the address actually bound (it follows -4/-6 and --join)
    for warning in (
        wildcard_warning(str(sock.getsockname()[0]), answers),
        _broadcast_warning(sock, workers),
    ):
        if warning:
            err.write(f"udpkit: {warning.rstrip()}\n")


def _serve_one(
    server: DatagramServer | StreamServer, args: argparse.Namespace, err: _Out
) -> tuple[ServeStats, list[int]]:
    """Serve in this process until done or stopped; SIGUSR1 prints the counters."""
    from udpkit._loops.sigwake import on_signals

    def counters() -> None:
        err.write(_summary(server.stats, None).replace(": ", ": counters: ", 1))

    with on_signals(server.stop, counters) as stopped:
        try:
            if args.metrics:
                err.write(f"udpkit: metrics at {server.start_metrics(args.metrics)}\n")
            return server.serve(), stopped
        finally:
            server.close()  # stops the metrics (may wait 0.5 s): a stop meanwhile is noted


def run_serve(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    from udpkit._loops.server import reply_handler
    from udpkit._loops.sigwake import stops_held
    from udpkit._loops.workers import run_workers
    from udpkit._net.sockets import set_receive_buffer

    transport = common.transport(args)
    stream = transport in ("TCP", "Unix stream")
    workers = _check_args(args, transport, stream)
    mode = "echo" if args.echo else "none" if args.no_reply else "reply"
    handler = reply_handler(mode, os.fsencode(args.reply))
    _policy_args(args)  # bad values are reported before anything is bound
    endpoints, where = _bind(args, stream, workers)
    recorder: Recorder | None = None
    try:
        # From here on a stop must reach the server's own handler (which drains
        # and counts): held until it is in place, also by the recorder's thread.
        with stops_held():
            if args.record is not None:
                from udpkit._loops.record import Recorder

                on_full = "continue" if args.record_continue else "stop"
                local = endpoints[0].sock.getsockname()
                recorder = Recorder(args.record, force=args.force, on_full=on_full, local=local)
            if args.rcvbuf is not None:
                for ep in endpoints:
                    got = set_receive_buffer(ep.sock, args.rcvbuf)
                err.write(common.rcvbuf_note(args.rcvbuf, got))
            servers = _servers(args, endpoints, handler, stream=stream, out=out, recorder=recorder)
            _announce(args, transport, endpoints, where, handler is not None, out, err)
            if workers > 1:
                stats, stopped = run_workers(servers)
            else:
                stats, stopped = _serve_one(servers[0], args, err)
    finally:
        for ep in endpoints:
            ep.close()
        if recorder is not None:
            recorder.close()  # drains the queue; idempotent
    return _finish(stats, stopped, recorder, err)


def _finish(stats: ServeStats, stopped: list[int], recorder: Recorder | None, err: _Out) -> int:
    """The summary line, and the exit code a failed recording asks for."""
    if recorder is not None:
        # The recorder has written its queue out since serve() returned: final figures.
        rec = recorder.stats
        stats.record = {
            "recorded": rec.recorded,
            "record_dropped": rec.record_dropped,
            "record_errors": rec.record_errors,
        }
    err.write(_summary(stats, stopped[0] if stopped else None))
    if recorder is not None and recorder.failure is not None:
        err.write(f"udpkit: recording stopped: {recorder.failure}\n")
        if recorder.fatal:
            return EXIT_NETWORK
    return EXIT_OK
