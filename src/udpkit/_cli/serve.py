"""`udpkit serve`: bind, serve on the engine (or the stream loop), report and summarise."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from udpkit._cli import options
from udpkit._cli.common import (
    DEFAULT_HOST,
    DEFAULT_REPLY,
    DEFAULT_TCP_PORT,
    DEFAULT_UDP_PORT,
    EXIT_CODES_HELP,
    EXIT_NETWORK,
    EXIT_OK,
)
from udpkit._cli.common import Out as _Out
from udpkit._cli.common import check_unix_args as _check_unix_args
from udpkit._cli.common import family as _family
from udpkit._cli.common import transport as _transport
from udpkit._core.errors import NetworkError, UdpkitError, UsageError

# ---------------------------------------------------------------- arguments


def add_parser(sub: Any) -> None:
    """Register ``serve`` on the ``udpkit`` subcommand parsers."""
    serve = sub.add_parser(
        "serve",
        help="listen, print each message and reply (the textbook's UDP server)",
        description="Listen on HOST PORT (default 127.0.0.1 5005), print every datagram "
        "with its sender, and reply 'Hello UDP Client'.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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


def _bind_serve(args: argparse.Namespace, stream: bool, workers: int) -> tuple[list[Any], str]:
    """Open the serving socket(s): one, or ``workers`` sharing a port with SO_REUSEPORT."""
    from udpkit._net import sockets as _sockets
    from udpkit._net import unix as _unix
    from udpkit._net.addr import Address, format_sockaddr, resolve

    if args.unix is not None:
        if stream:
            return [_unix.unix_stream_listen(args.unix)], args.unix
        return [_unix.unix_datagram_bind(args.unix)], args.unix
    from udpkit._net.mcast import group_family, join_group, parse_group

    groups = [parse_group(g) for g in args.join]
    if groups and stream:
        raise UsageError("--join is for UDP: multicast has no streams")
    if args.source and not groups:
        raise UsageError("--source goes with --join GROUP")
    family = _family(args)
    host = args.host
    if host is None:
        # The default follows the family: -6 alone means ::1, never 127.0.0.1.
        v6 = family == socket.AF_INET6
        if groups:
            # Group traffic is addressed to the group, not to loopback: bind the
            # wildcard of -4/-6, or else of the first group's family.
            if family == socket.AF_UNSPEC:
                v6 = group_family(groups[0][0]) == socket.AF_INET6
            host = "::" if v6 else "0.0.0.0"
        else:
            host = "::1" if v6 else DEFAULT_HOST
    port = args.port
    if port is None:
        port = DEFAULT_TCP_PORT if args.tcp else DEFAULT_UDP_PORT
    # A name's addresses are tried in order: the first that binds is served.
    candidates = resolve(
        host,
        port,
        family=family,
        passive=True,
        proto="tcp" if stream else "udp",
        type=socket.SOCK_STREAM if stream else socket.SOCK_DGRAM,
    )
    if len(candidates) == 1:  # refused before binding, whatever bind would say
        for group, _iface in groups:
            _check_group(group, candidates[0].host, candidates[0].family)
    endpoints: list[Any] = []
    try:
        if stream:
            from udpkit._net import stream as _stream  # TCP code loads only for --tcp

            endpoints.append(
                _sockets.first_that_binds(
                    candidates, lambda a: _stream.tcp_listen(a.host, a.port, family=a.family)
                )[1]
            )
        else:

            def dual(a: Address) -> bool | None:
                # An IPv6 wildcard serves IPv4 too (dual stack) unless -6 asks for IPv6 only.
                return bool(args.ipv6) if a.family == socket.AF_INET6 else None

            addr, first = _sockets.first_that_binds(
                candidates,
                lambda a: _sockets.udp_bind(
                    a.host,
                    a.port,
                    family=a.family,
                    reuse_port=workers > 1,
                    v6only=dual(a),
                    # Group receivers share the group's port, as with socat or VLC.
                    reuse_addr=bool(groups),
                ),
            )
            endpoints.append(first)
            if len(candidates) > 1:  # a single address was checked before binding
                for group, _iface in groups:
                    _check_group(group, addr.host, addr.family)
            v6only = dual(addr)
            # The rest join the port the first one got (it may have been 0).
            bound_port = first.local_address[1]
            for _ in range(workers - 1):
                endpoints.append(
                    _sockets.udp_bind(
                        addr.host,
                        bound_port,
                        family=addr.family,
                        reuse_port=True,
                        v6only=v6only,
                        reuse_addr=bool(groups),
                    )
                )
            if len(endpoints) > 1:
                # SO_REUSEPORT spreads unicast only: the kernel gives each socket of
                # the port its own copy of a group datagram.  So only the first
                # socket joins, and the others opt out of every group (with
                # IP_MULTICAST_ALL on, a wildcard socket hears any group another
                # socket on the host joined).  The first keeps the default without
                # --join, like a single socket; join_group turns it off with --join.
                for ep in endpoints[0 if groups else 1 :]:
                    _multicast_all_off(ep.sock)
            for group, iface in groups:
                join_group(endpoints[0].sock, group, iface=iface, source=args.source)
    except UdpkitError as exc:
        for ep in endpoints:
            ep.close()
        if not isinstance(exc, NetworkError):
            raise
        host_text = args.host or ""
        if args.port is None and host_text.isdigit() and int(host_text) <= 65535:
            raise type(exc)(
                exc.errno,
                f"{exc} (did you mean port {host_text}? give the host first: "
                f"udpkit serve {DEFAULT_HOST} {host_text})",
            ) from exc
        raise
    return endpoints, format_sockaddr(endpoints[0].sock.getsockname())


def _check_group(group: str, bound: str, family: int) -> None:
    """Refuse a --join that the socket bound to ``bound`` could never hear.

    Raises:
        AddressError: ``group`` is an address but not a multicast group.
        UsageError: the group is of the other family (an IPv4 group on an IPv6
            socket, or the reverse), or ``bound`` is a unicast address (or
            another group): Linux delivers a group's datagrams only to sockets
            bound to the wildcard or to the group itself.
    """
    from udpkit._net.mcast import group_family

    own = group_family(group)
    if own is None:
        return  # a name: join_group resolves it and reports what is wrong
    if own != family:
        if own == socket.AF_INET:
            raise UsageError(
                f"cannot join IPv4 group {group} on an IPv6 socket (serving on {bound}): "
                f"serve on an IPv4 address (-4, or HOST 0.0.0.0) to join {group}, "
                "or join an IPv6 group (ff00::/8)"
            )
        raise UsageError(
            f"cannot join IPv6 group {group} on an IPv4 socket (serving on {bound}): "
            f"serve on an IPv6 address (-6, or HOST '::') to join {group}, "
            "or join an IPv4 group (224.0.0.0/4)"
        )
    packed = socket.inet_pton(family, bound.split("%", 1)[0])
    if not any(packed) or packed == socket.inet_pton(family, group.split("%", 1)[0].strip("[]")):
        return
    wildcard = "''" if family == socket.AF_INET else "'::'"
    raise UsageError(
        f"serving on {bound}, udpkit would never receive group {group}: Linux delivers group "
        f"datagrams only to sockets bound to the wildcard or to the group; bind {wildcard} "
        f"(or give no HOST) or {group}"
    )


def _multicast_all_off(sock: socket.socket) -> None:
    """IP_MULTICAST_ALL (and IPV6_MULTICAST_ALL) off: hear only the groups joined here.

    Raises:
        NetworkError: the kernel refused.
    """
    if not sys.platform.startswith("linux"):
        return
    from udpkit._core.errors import map_oserror
    from udpkit._net.mcast import IP_MULTICAST_ALL, IPV6_MULTICAST_ALL

    try:
        # A dual-stack IPv6 socket hears IPv4 groups too: both levels.
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
    except OSError as exc:
        raise map_oserror(
            exc, "cannot turn off IP_MULTICAST_ALL for --workers", "use --workers 1"
        ) from exc


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


def _summary(st: Any, stopped_by: int | None) -> str:
    from udpkit._cli import format as _format

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
    for name, n in getattr(st, "record", {}).items():
        if n or name != "record_errors":
            extra[name] = n
    refused = sum(n for k, n in st.policy.items() if k.startswith("unreplyable_"))
    if refused:
        extra["replies_refused"] = refused
    text = _format.format_summary(
        st.received, st.bytes_received, st.peers, st.truncated, **extra
    ).rstrip("\n")
    if st.peers_estimated:
        text = text.replace(" from ", " from ~", 1)  # an estimate past 4,096 peers
    if stopped_by is not None:
        text += f" (stopped by {signal.Signals(stopped_by).name})"
    return text + "\n"


def run_serve(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    from udpkit._cli import format as _format
    from udpkit._loops import server as _server
    from udpkit._loops import workers as _workers
    from udpkit._net import sockets as _sockets
    from udpkit._net.addr import resolve_one

    transport = _transport(args)
    if args.port_option is not None:
        if args.port is not None:
            raise UsageError(f"port given twice: {args.port!r} and --port {args.port_option!r}")
        args.port = args.port_option
    _check_unix_args(args, (args.host, args.port))
    stream = transport in ("TCP", "Unix stream")
    workers = _workers.parse_workers(args.workers)
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
    fmt = args.format
    mode = "echo" if args.echo else "none" if args.no_reply else "reply"
    handler = _server.reply_handler(mode, os.fsencode(args.reply))
    format_datagram = _format.format_datagram

    def observe(batch: Sequence[_sockets.Datagram]) -> None:
        # One write and one flush per batch: lines still appear as datagrams
        # arrive, but printing costs no system call per datagram.
        out.write("".join(format_datagram(fmt, d.data, d.peer, length=d.length) for d in batch))

    if args.record is not None and workers > 1:
        raise UsageError("--record cannot be combined with --workers: record with one worker")
    if args.record is not None and stream:
        raise UsageError("--record records datagrams: not with --tcp or --stream")
    recorder: Any = None
    observer: Any = None if args.quiet else observe
    policy_args = {
        "allow": args.allow,
        "deny": args.deny,
        "rate_limit": args.rate_limit,
        "rate_limit_prefix": args.rate_limit_prefix,
        "log_only": args.rate_limit_log_only,
        "amplification": args.amplification,
        "trust": args.trust,
    }
    from udpkit._core.policy import Policy, wildcard_warning

    Policy(**policy_args)  # bad values are reported before anything is bound
    endpoints, where = _bind_serve(args, stream, workers)
    stops = {signal.SIGINT, signal.SIGTERM}
    # From here on a stop must reach the server's own handler (which drains and
    # counts), so stops wait, blocked, until that handler is in place.  Blocked
    # before the recorder's thread starts, so that thread inherits the block: a
    # stop the kernel handed to it ran the CLI's raising handler (no summary).
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        if args.record is not None:
            from udpkit._loops.record import Recorder

            recorder = Recorder(
                args.record,
                force=args.force,
                on_full="continue" if args.record_continue else "stop",
                local=endpoints[0].sock.getsockname(),
            )
        if args.rcvbuf is not None:
            for ep in endpoints:
                got = _sockets.set_receive_buffer(ep.sock, args.rcvbuf)
            err.write(_rcvbuf_note(args.rcvbuf, got))

        def make(ep: Any) -> _server.DatagramServer | _server.StreamServer:
            if stream:
                return _server.StreamServer(
                    ep, handler, bufsize=args.buffer_size, count=args.count, observer=observer
                )
            return _server.DatagramServer(
                ep,
                handler,
                bufsize=args.buffer_size,
                count=args.count,
                observer=observer,
                count_peers=not args.quiet or handler is not None,
                fast=False if args.no_batch else None,
                gro=args.gro,
                busy_poll_us=args.busy_poll,
                policy=Policy(**policy_args, local=ep.local_address)
                if ep.family != socket.AF_UNIX
                else None,
                recorder=recorder,
            )

        servers = [make(ep) for ep in endpoints]
        if recorder is not None:
            recorder.stop_server = servers[0].stop  # a failed disk ends serving, counted
        stopped: list[int] = []
        try:
            text, to_stderr = _format.banner(fmt, transport)
            (err if to_stderr else out).write(text)
            note = f", {workers} workers" if workers > 1 else ""
            err.write(f"udpkit: listening on {where} ({transport}{note})\n")
            if args.unix is None:
                # The address actually bound (the default follows -4/-6 and --join).
                bound = str(endpoints[0].sock.getsockname()[0])
                for warning in (
                    wildcard_warning(bound, handler is not None),
                    _broadcast_warning(endpoints[0].sock, workers),
                ):
                    if warning:
                        err.write(f"udpkit: {warning.rstrip()}\n")

            if workers > 1:
                stats = _workers.run_workers(
                    endpoints,
                    [s for s in servers if isinstance(s, _server.DatagramServer)],
                    stopped,
                )
            else:
                server = servers[0]
                stop_metrics = None
                if args.metrics:
                    from udpkit._loops.metrics import serve_metrics
                    from udpkit._net.addr import split_hostport

                    mhost, mport = split_hostport(args.metrics, default_host=DEFAULT_HOST)
                    maddr = resolve_one(mhost, mport, type=socket.SOCK_STREAM, proto="tcp")
                    stop_metrics, url = serve_metrics(
                        # A fresh snapshot per scrape: `stats` is computed on access.
                        (maddr.host, maddr.port),
                        lambda: server.stats.as_dict(),  # noqa: PLW0108
                    )
                    err.write(f"udpkit: metrics at {url}\n")

                def on_signal(signum: int, _frame: object) -> None:
                    stopped.append(signum)
                    server.stop()

                def on_usr1(_signum: int, _frame: object) -> None:
                    err.write(_summary(server.stats, None).replace(": ", ": counters: ", 1))

                old = {s: signal.signal(s, on_signal) for s in stops}
                old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_usr1)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
                try:
                    stats = server.serve()
                finally:
                    server.close()
                    if stop_metrics is not None:
                        stop_metrics()  # may wait 0.5 s: a second stop meanwhile is noted
                    for s, h in old.items():
                        signal.signal(s, h)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        for ep in endpoints:
            ep.close()
        if recorder is not None:
            recorder.close()  # drains the queue; idempotent
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


def _rcvbuf_note(asked: int, got: int) -> str:
    if got >= asked:
        return f"udpkit: receive buffer {got} bytes (asked {asked})\n"
    return (
        f"udpkit: receive buffer {got} bytes, less than the {asked} asked: the kernel caps it at "
        "net.core.rmem_max (raise it with sysctl, or run as root for SO_RCVBUFFORCE)\n"
    )
