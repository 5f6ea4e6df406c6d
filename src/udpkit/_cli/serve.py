"""`udpkit serve`: bind, serve on the engine (or the stream loop), report and summarise."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from udpkit._cli import common, options
from udpkit._cli.common import DEFAULT_REPLY, EXIT_NETWORK, EXIT_OK
from udpkit._cli.common import Out as _Out
from udpkit._core.errors import UsageError

if TYPE_CHECKING:
    from udpkit._core.serving import Handler
    from udpkit._loops.record import Recorder
    from udpkit._loops.server import DatagramServer, ServeStats, StreamServer

_UNBLOCK_AFTER = 0.25  # seconds stdout may hold serve up once a stop came


class _Output(common.GuardedOutput):
    """stdout for the banner and the datagrams: a closed or stuck reader never
    keeps serve from stopping, nor from printing its summary.

    A closed pipe (``udpkit serve | head -2``) stops the servers, so the summary
    follows on stderr.  After SIGINT/SIGTERM, writes get :data:`_UNBLOCK_AFTER`
    seconds in all (a SIGALRM timer), then one that hangs is broken off
    (``udpkit serve | sleep 60``: a stop used to wait until the pipe drained).
    The budget is shared, not per write, so the engine's drain of what is
    queued, which prints too, still has its time.  Either way stdout then
    points at /dev/null and nothing more is written.
    """

    def __init__(self, out: _Out) -> None:
        super().__init__(out, _UNBLOCK_AFTER, shared=True, on_closed=self._closed)
        self.stop_servers: Callable[[], None] = lambda: None

    def _closed(self, why: str) -> None:
        common.quiet_stdout()  # the final flush must neither fail nor hang
        if why == common.OUTPUT_CLOSED:
            self.stop_servers()


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
    common.lone_port(args.host, args.port, "serve")  # `serve 5006` means the port
    port = args.port
    if port is None:
        port = common.DEFAULT_TCP_PORT if args.tcp else common.DEFAULT_UDP_PORT
    if stream:
        host = args.host if args.host is not None else default_host(family)
        endpoints: list[Any] = [tcp_listen(host, port, family=family)]
    else:
        endpoints = list(
            bind_server(
                args.host, port, family=family, workers=workers, join=args.join, source=args.source
            )
        )
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


def _summary(st: ServeStats, stopped_by: int | None, closed: str | None = None) -> str:
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
    elif closed is not None:
        text += f" (stopped: {closed})"  # standard output's reader went away
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
    out: _Output,
    err: _Out,
    recorder: Recorder | None,
) -> list[Any]:
    """One server per socket, showing and answering as the options ask."""
    from udpkit._cli.format import format_datagram
    from udpkit._core.policy import Policy
    from udpkit._loops.server import DatagramServer, StreamServer

    fmt = args.format

    def observe(batch: Sequence[Any]) -> None:
        # One clock read, one write and one flush per batch: lines still appear
        # as datagrams arrive, and every format shows one batch's time alike.
        when = time.time()
        out.write(
            "".join(format_datagram(fmt, d.data, d.peer, length=d.length, when=when) for d in batch)
        )

    observer = None if args.quiet else observe
    if stream:
        servers: list[Any] = [StreamServer(endpoints[0], handler, bufsize=args.buffer_size,
                                           count=args.count, observer=observer)]  # fmt: skip
    else:
        policy_args = _policy_args(args)
        notices = None if args.quiet else _refusal_notices(args, handler, err)
        servers = [
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
                else Policy(**policy_args, local=ep.local_address, on_refused=notices),
                recorder=recorder,
            )
            for ep in endpoints
        ]

    def stop_servers() -> None:
        for server in servers:
            server.stop()  # in a worker the others are closed already: a no-op

    out.stop_servers = stop_servers
    return servers


def _refusal_notices(args: argparse.Namespace, handler: Handler | None, err: _Out) -> Any:
    """The policy's ``on_refused``: the first refusal of each reason told on stderr,
    then at most one every few seconds, with who, why and the flag that allows it."""
    from udpkit._cli.format import format_refusal
    from udpkit._core.notices import Refusal, RefusalNotices
    from udpkit._core.serving import Fixed

    notices: RefusalNotices
    limit = args.rate_limit
    limit_text = None if limit is None else f"{limit.rate:g}/s:{limit.burst}"
    if limit_text and args.rate_limit_prefix:
        limit_text += " per /24 or /56 prefix"

    def tell(refusal: Refusal) -> None:
        err.write(
            format_refusal(
                refusal.reason,
                refusal.peer,
                suppressed=refusal.suppressed,
                amplification=args.amplification,
                rate_limit=limit_text,
                fixed_reply=isinstance(handler, Fixed),
                interval=notices.interval,
            )
        )

    notices = RefusalNotices(tell)
    return notices


def _announce(  # noqa: PLR0917 - what the banner and the warnings need
    args: argparse.Namespace, transport: str, endpoints: Sequence[Any], where: str,
    answers: bool, out: _Output, err: _Out,
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
    server: DatagramServer | StreamServer, args: argparse.Namespace, out: _Output, err: _Out
) -> tuple[ServeStats, list[int]]:
    """Serve in this process until done or stopped; SIGUSR1 prints the counters."""
    from udpkit._loops.sigwake import on_signals

    def counters() -> None:
        err.write(_summary(server.stats, None).replace(": ", ": counters: ", 1))

    def stop() -> None:
        server.stop()
        out.stopped()

    with on_signals(stop, counters) as stopped:
        try:
            if args.metrics:
                err.write(f"udpkit: metrics at {server.start_metrics(args.metrics)}\n")
            return server.serve(), stopped
        finally:
            server.close()  # stops the metrics (may wait 0.5 s): a stop meanwhile is noted


def run_serve(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    from udpkit._loops.server import reply_handler
    from udpkit._loops.sigwake import stops_held

    transport = common.transport(args)
    stream = transport in ("TCP", "Unix stream")
    workers = _check_args(args, transport, stream)
    mode = "echo" if args.echo else "none" if args.no_reply else "reply"
    handler = reply_handler(mode, os.fsencode(args.reply))
    _policy_args(args)  # bad values are reported before anything is bound
    endpoints, where = _bind(args, stream, workers)
    output = _Output(out)
    recorder: Recorder | None = None
    try:
        # From here on a stop must reach the server's own handler (which drains
        # and counts): held until it is in place, also by the recorder's thread.
        with stops_held(), output.breaking_off():
            if args.record is not None:
                from udpkit._loops.record import Recorder

                on_full = "continue" if args.record_continue else "stop"
                local = endpoints[0].sock.getsockname()
                recorder = Recorder(args.record, force=args.force, on_full=on_full, local=local)
            _set_rcvbuf(args, endpoints, err)
            servers = _servers(
                args, endpoints, handler, stream=stream, out=output, err=err, recorder=recorder
            )
            _announce(args, transport, endpoints, where, handler is not None, output, err)
            stats, stopped = _run(servers, args, output, err)
    finally:
        for ep in endpoints:
            ep.close()
        if recorder is not None:
            recorder.close()  # drains the queue; idempotent
    return _finish(stats, stopped, output.closed, recorder, err)


def _set_rcvbuf(args: argparse.Namespace, endpoints: Sequence[Any], err: _Out) -> None:
    from udpkit._net.sockets import set_receive_buffer

    if args.rcvbuf is not None:
        for ep in endpoints:
            got = set_receive_buffer(ep.sock, args.rcvbuf)
        err.write(common.rcvbuf_note(args.rcvbuf, got))


def _run(
    servers: Sequence[Any], args: argparse.Namespace, out: _Output, err: _Out
) -> tuple[ServeStats, list[int]]:
    """Serve: in this process, or in one worker process per server."""
    from udpkit._loops.workers import run_workers

    if len(servers) > 1:
        return run_workers(servers, on_stop=out.stopped)
    return _serve_one(servers[0], args, out, err)


def _finish(
    stats: ServeStats,
    stopped: list[int],
    closed: str | None,
    recorder: Recorder | None,
    err: _Out,
) -> int:
    """The summary line, and the exit code a failed recording asks for."""
    if recorder is not None:
        # The recorder has written its queue out since serve() returned: final figures.
        rec = recorder.stats
        stats.record = {
            "recorded": rec.recorded,
            "record_dropped": rec.record_dropped,
            "record_errors": rec.record_errors,
        }
    err.write(_summary(stats, stopped[0] if stopped else None, closed))
    if recorder is not None and recorder.failure is not None:
        err.write(f"udpkit: recording stopped: {recorder.failure}\n")
        if recorder.fatal:
            return EXIT_NETWORK
    return EXIT_OK
