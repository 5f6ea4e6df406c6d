"""The ``udpkit`` command line: a thin layer over the library.

Exit codes (also in ``udpkit --help`` and the README):
  0  success (and ``serve`` stopped by SIGINT/SIGTERM)
  1  network or runtime error: port in use, nothing listening, permission denied
  2  bad arguments or input
  3  no reply before the timeout
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from ._errors import AddressError, NetworkError, Timeout, UdpkitError, UsageError
from ._escape import escape_controls

EXIT_OK = 0
EXIT_NETWORK = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3

EXIT_CODES_HELP = """\
exit codes:
  0  success (serve stopped by SIGINT or SIGTERM also exits 0)
  1  network or runtime error: port in use, nothing listening, permission denied
  2  bad arguments or input
  3  no reply before the timeout
"""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_UDP_PORT = "5005"
DEFAULT_TCP_PORT = "12345"  # the seed's simple TCP client connects to 12345
DEFAULT_MESSAGE = "Hello UDP Server"
DEFAULT_REPLY = "Hello UDP Client"
# The same as udpkit._format.FORMATS (a test checks): importing _format here
# would put json and datetime on every command's start-up.
FORMATS = ("seed", "line", "hex", "json")


class _Stopped(Exception):
    """Raised in the main thread by the SIGTERM handler."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _line(text: str) -> str:
    # Error messages quote what the user typed (a port, a path, argv itself),
    # which may hold ESC sequences or newlines: escape them here, once, so
    # every error is one terminal-safe line whatever the layer below wrote.
    return escape_controls(text) + "\n"


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, _line(f"{self.prog}: error: {message} (see '{self.prog} --help')"))


# ---------------------------------------------------------------- argument types


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: must be a whole number >= 1")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a whole number >= 0")
    return value


def _buffer_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1 << 24:
        raise argparse.ArgumentTypeError(
            f"invalid buffer size {text!r}: must be a whole number of bytes, 1-16777216"
        )
    return value


def _rcvbuf_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError(
            f"invalid receive buffer {text!r}: must be a whole number of bytes, 1-2147483647"
        )
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"invalid timeout {text!r}: must be a number of seconds >= 0"
        )
    return value


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for ``udpkit`` (exposed for docs and tests)."""
    parser = _Parser(
        prog="udpkit",
        description="Listen for, send, echo and measure UDP datagrams.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"udpkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        tr = p.add_argument_group("transport")
        tr.add_argument("--tcp", action="store_true", help="use TCP (default port 12345)")
        tr.add_argument(
            "--unix", metavar="PATH", help="use a Unix-domain socket at PATH ('@name': abstract)"
        )
        tr.add_argument(
            "--stream", action="store_true", help="with --unix: a stream socket (default datagram)"
        )
        fam = tr.add_mutually_exclusive_group()
        fam.add_argument("-4", "--ipv4", action="store_true", help="use IPv4 only")
        fam.add_argument("-6", "--ipv6", action="store_true", help="use IPv6 only")
        # With options spelled like numbers (-4, -6) argparse takes every
        # negative number for an option: `--timeout -1` would be "expected one
        # argument" and port `-1` "unrecognized". Clearing the flag keeps -4/-6
        # (exact matches come first) and lets -1 reach its validator.
        p._has_negative_number_optionals.clear()

    serve = sub.add_parser(
        "serve",
        help="listen, print each message and reply (the seed's UDP server)",
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
    serve.add_argument("--count", type=_count, metavar="N", help="exit after N messages")
    serve.add_argument(
        "--buffer-size",
        type=_buffer_size,
        default=65535,
        metavar="N",
        help="receive buffer in bytes (default 65535: the largest datagram); "
        "longer datagrams are reported as truncated with their real length",
    )
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
    serve.add_argument(
        "--quiet", "-q", action="store_true", help="print nothing per message: count only"
    )
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
    perf.add_argument(
        "--busy-poll",
        type=_nonneg_int,
        default=0,
        metavar="US",
        help="spin up to US microseconds on an empty socket before sleeping (lower latency)",
    )
    perf.add_argument(
        "--rcvbuf",
        type=_rcvbuf_size,
        metavar="BYTES",
        help="ask for a kernel receive buffer of BYTES and report what the kernel gave",
    )
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
        metavar="N/s[:BURST]",
        help="per-source token bucket, e.g. 100/s:200",
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
    serve.add_argument(
        "--format",
        choices=FORMATS,
        default="seed",
        help="output: seed (the textbook's), line, hex or json (JSON Lines)",
    )
    common(serve)

    send = sub.add_parser(
        "send",
        help="send a message and print the reply (the seed's UDP client)",
        description="Send MESSAGE (default 'Hello UDP Server') to HOST PORT (default "
        "127.0.0.1 5005) and print the reply. MESSAGE '-' reads standard input. "
        "With --unix PATH the only positional argument is MESSAGE.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument(
        "args", nargs="*", metavar="[HOST] [PORT] [MESSAGE]", help="destination and message"
    )
    send.add_argument(
        "--bind",
        metavar="[HOST:]PORT",
        help="local address to send from (the seed's client binds port 54312)",
    )
    send.add_argument(
        "--timeout",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="how long to wait for each reply (default 2)",
    )
    send.add_argument(
        "--retries",
        type=_nonneg_int,
        default=0,
        metavar="N",
        help="resend up to N times when no reply comes (default 0)",
    )
    send.add_argument("--no-wait", action="store_true", help="send and exit without waiting")
    send.add_argument(
        "--broadcast",
        action="store_true",
        help="allow broadcast (SO_BROADCAST); needed for '<broadcast>'",
    )
    mcs = send.add_argument_group("multicast")
    mcs.add_argument("--ttl", type=_nonneg_int, metavar="N", help="multicast hop limit (0-255)")
    loop = mcs.add_mutually_exclusive_group()
    loop.add_argument(
        "--loop",
        dest="loop",
        action="store_true",
        default=None,
        help="deliver to this host's own group members too (the OS default)",
    )
    loop.add_argument("--no-loop", dest="loop", action="store_false", help="do not loop back")
    mcs.add_argument("--iface", metavar="IFACE", help="send multicast out of IFACE")
    send.add_argument(
        "--hex", action="store_true", help="MESSAGE is hex digits (spaces and colons allowed)"
    )
    send.add_argument(
        "--buffer-size",
        type=_buffer_size,
        default=65535,
        metavar="N",
        help="reply buffer in bytes (default 65535)",
    )
    common(send)

    demo = sub.add_parser(
        "demo",
        help="run the seed's server and client together and show both sides",
        description="Start a server on a free loopback port and a client in one process, "
        "and print both sides of the textbook exchange.",
    )
    demo.add_argument("--tcp", action="store_true", help="show the TCP exchange instead")
    # Measurement and relay commands live in their own modules; those modules
    # import only argparse at the top, so registering them costs no start-up.
    for name in ("_cmd_relay", "_cmd_bench", "_cmd_record"):
        try:
            module = importlib.import_module(f"udpkit.{name}")
        except ImportError:  # pragma: no cover - while a command is being written
            continue
        module.add_parser(sub)
    return parser


# ---------------------------------------------------------------- output


class _Out:
    """Writes whole lines and flushes at once, so pipes and files see each
    message as it arrives; a closed stdout ends the program quietly."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _family(args: argparse.Namespace) -> int:
    if getattr(args, "ipv4", False):
        return socket.AF_INET
    if getattr(args, "ipv6", False):
        return socket.AF_INET6
    return socket.AF_UNSPEC


def _transport(args: argparse.Namespace) -> str:
    if args.unix is not None:
        return "Unix stream" if args.stream or args.tcp else "Unix datagram"
    if args.stream:
        raise UsageError("--stream goes with --unix PATH; for TCP use --tcp")
    return "TCP" if args.tcp else "UDP"


def _check_unix_args(args: argparse.Namespace, extra: Sequence[object]) -> None:
    if args.unix is not None and any(x is not None for x in extra):
        raise UsageError("with --unix PATH give no HOST or PORT (the path is the address)")
    if args.unix is not None and (args.ipv4 or args.ipv6):
        raise UsageError("--ipv4/--ipv6 do not apply to --unix sockets")


# ---------------------------------------------------------------- serve


def _bind_serve(args: argparse.Namespace, stream: bool, workers: int) -> tuple[list[Any], str]:
    """Open the serving socket(s): one, or ``workers`` sharing a port with SO_REUSEPORT."""
    from . import _sockets, _unix
    from ._addr import format_sockaddr, resolve_one

    if args.unix is not None:
        if stream:
            return [_unix.unix_stream_listen(args.unix)], args.unix
        return [_unix.unix_datagram_bind(args.unix)], args.unix
    from ._mcast import join_group, parse_group

    groups = [parse_group(g) for g in args.join]
    if groups and stream:
        raise UsageError("--join is for UDP: multicast has no streams")
    if args.source and not groups:
        raise UsageError("--source goes with --join GROUP")
    host = DEFAULT_HOST if args.host is None else args.host
    if args.host is None and groups:
        # Group traffic is addressed to the group, not to 127.0.0.1: bind the wildcard.
        host = "::" if ":" in groups[0][0] else "0.0.0.0"
    port = args.port
    if port is None:
        port = DEFAULT_TCP_PORT if args.tcp else DEFAULT_UDP_PORT
    addr = resolve_one(
        host,
        port,
        family=_family(args),
        passive=True,
        proto="tcp" if stream else "udp",
        type=socket.SOCK_STREAM if stream else socket.SOCK_DGRAM,
    )
    endpoints: list[Any] = []
    try:
        if stream:
            endpoints.append(_sockets.tcp_listen(addr.host, addr.port, family=addr.family))
        else:
            # An IPv6 wildcard serves IPv4 too (dual stack) unless -6 asks for IPv6 only.
            v6only = bool(args.ipv6) if addr.family == socket.AF_INET6 else None
            first = _sockets.udp_bind(
                addr.host, addr.port, family=addr.family, reuse_port=workers > 1, v6only=v6only
            )
            endpoints.append(first)
            # The rest join the port the first one got (it may have been 0).
            bound_port = first.local_address[1]
            for _ in range(workers - 1):
                endpoints.append(
                    _sockets.udp_bind(
                        addr.host, bound_port, family=addr.family, reuse_port=True, v6only=v6only
                    )
                )
            for ep in endpoints:
                for group, iface in groups:
                    join_group(ep.sock, group, iface=iface, source=args.source)
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


def _summary(st: Any, stopped_by: int | None) -> str:
    from . import _format

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
    if st.peers_capped:
        text = text.replace(" peers,", "+ peers,", 1)
    if stopped_by is not None:
        text += f" (stopped by {signal.Signals(stopped_by).name})"
    return text + "\n"


def _cmd_serve(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    from . import _format, _server, _sockets, _workers
    from ._addr import resolve_one

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

    def observe_and_record(batch: Sequence[_sockets.Datagram]) -> None:
        recorder.record_batch(batch, time.time())  # one clock read per batch
        if not args.quiet:
            observe(batch)

    observer: Any = None if args.quiet else observe
    if args.record is not None:
        observer = observe_and_record
    policy_args = {
        "allow": args.allow,
        "deny": args.deny,
        "rate_limit": args.rate_limit,
        "rate_limit_prefix": args.rate_limit_prefix,
        "log_only": args.rate_limit_log_only,
        "amplification": args.amplification,
        "trust": args.trust,
    }
    from ._policy import Policy, wildcard_warning

    Policy(**policy_args)  # bad values are reported before anything is bound
    endpoints, where = _bind_serve(args, stream, workers)
    try:
        if args.record is not None:
            from ._record import Recorder

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
            )

        servers = [make(ep) for ep in endpoints]
        if recorder is not None:
            recorder.stop_server = servers[0].stop  # a failed disk ends serving, counted
        stopped: list[int] = []
        stops = {signal.SIGINT, signal.SIGTERM}
        # From "listening" on, a stop must reach the server's own handler (which
        # drains and counts), so signals wait until that handler is in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        try:
            text, to_stderr = _format.banner(fmt, transport)
            (err if to_stderr else out).write(text)
            note = f", {workers} workers" if workers > 1 else ""
            err.write(f"udpkit: listening on {where} ({transport}{note})\n")
            if args.unix is None:
                warning = wildcard_warning(args.host, handler is not None)
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
                    from ._addr import split_hostport
                    from ._metrics import serve_metrics

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
                    for s, h in old.items():
                        signal.signal(s, h)
                    server.close()
                    if stop_metrics is not None:
                        stop_metrics()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    finally:
        for ep in endpoints:
            ep.close()
        if recorder is not None:
            recorder.close()  # drains the queue; idempotent
    if recorder is not None:
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


# ---------------------------------------------------------------- send


def _read_message(text: str, as_hex: bool) -> bytes:
    if text == "-":
        data = sys.stdin.buffer.read()
        if as_hex:
            text = data.decode("ascii", "replace")
        else:
            return data
    if as_hex:
        cleaned = "".join(text.replace(":", " ").split())
        try:
            return bytes.fromhex(cleaned)
        except ValueError:
            raise UsageError(
                f"invalid hex message {text[:40]!r}: use pairs of hex digits, e.g. '48 65 6c 6c 6f'"
            ) from None
    # surrogateescape: argv that is not UTF-8 is sent as the bytes typed.
    return text.encode("utf-8", "surrogateescape")


def _cmd_send(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    from . import _client, _sockets, _unix
    from ._addr import format_sockaddr, is_broadcast, is_multicast, resolve_one, split_hostport
    from ._escape import safe_repr

    transport = _transport(args)
    pos: list[str] = list(args.args)
    if args.unix is not None:
        if len(pos) > 1:
            raise UsageError(
                f"with --unix PATH the only argument is MESSAGE, got {len(pos)}: {pos!r}"
            )
        host = port = None
        text = pos[0] if pos else DEFAULT_MESSAGE
        _check_unix_args(args, ())
    else:
        if len(pos) > 3:
            raise UsageError(f"too many arguments {pos[3:]!r}: expected [HOST] [PORT] [MESSAGE]")
        host = pos[0] if len(pos) > 0 else DEFAULT_HOST
        port = pos[1] if len(pos) > 1 else (DEFAULT_TCP_PORT if args.tcp else DEFAULT_UDP_PORT)
        text = pos[2] if len(pos) > 2 else DEFAULT_MESSAGE
    message = _read_message(text, args.hex)
    stream = transport in ("TCP", "Unix stream")

    bind: tuple[str, str] | None = None
    if args.bind is not None:
        if args.unix is not None:
            raise UsageError("--bind does not apply to --unix sockets")
        bind = split_hostport(args.bind, default_host="")

    reply: bytes
    if stream:
        if args.unix is not None:
            conn = _unix.unix_stream_connect(args.unix, timeout=args.timeout)
        else:
            assert host is not None and port is not None
            addr = resolve_one(
                host, port, family=_family(args), type=socket.SOCK_STREAM, proto="tcp"
            )
            conn = _sockets.tcp_connect(
                addr.host, addr.port, family=addr.family, timeout=args.timeout, bind=bind
            )
        with conn:
            if args.no_wait:
                conn.send_all(message)
                return EXIT_OK
            reply = _client.stream_request(
                conn, message, timeout=args.timeout, bufsize=args.buffer_size
            )
        out.write(f"Message from Server\n{safe_repr(reply)}\n")
        return EXIT_OK

    to: Any = None
    if args.unix is not None:
        sock = _unix.unix_datagram_connect(args.unix)
    else:
        assert host is not None and port is not None
        addr = resolve_one(host, port, family=_family(args))
        multicast = is_multicast(addr)
        if (args.ttl is not None or args.loop is not None or args.iface) and not multicast:
            raise UsageError(f"--ttl, --loop and --iface are for multicast groups, not {host!r}")
        if args.broadcast or is_broadcast(addr) or multicast:
            # Replies to a broadcast (limited or a subnet's) or to a group come from
            # the responders' own addresses, which a connected socket filters out.
            local = bind if bind is not None else ("", "0")
            laddr = resolve_one(local[0], local[1], family=addr.family, passive=True)
            sock = _sockets.udp_bind(
                laddr.host, laddr.port, family=addr.family, broadcast=args.broadcast
            )
            if multicast:
                from ._mcast import set_multicast_send

                try:
                    set_multicast_send(sock.sock, ttl=args.ttl, loop=args.loop, iface=args.iface)
                except BaseException:
                    sock.close()
                    raise
            to = addr.sockaddr
        else:
            sock = _sockets.udp_connect(
                addr.host, addr.port, bind=bind, family=addr.family, broadcast=args.broadcast
            )
    with sock:
        if args.no_wait:
            sock.send(message, to)
            return EXIT_OK
        dgram, _attempts = _client.request(
            sock, message, to, timeout=args.timeout, retries=args.retries, bufsize=args.buffer_size
        )
    out.write(f"Message from Server\n{safe_repr(dgram.data)}\n")
    if dgram.truncated:
        out.write(f"(truncated: {dgram.length} bytes, {len(dgram.data)} kept)\n")
    if to is not None:
        err.write(f"udpkit: reply from {format_sockaddr(dgram.peer)}\n")
    return EXIT_OK


# ---------------------------------------------------------------- demo


def _cmd_demo(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    import threading

    from . import _client, _format, _server, _sockets
    from ._addr import format_sockaddr
    from ._escape import safe_repr

    lock = threading.Lock()

    def say(side: str, text: str) -> None:
        with lock:
            for line in text.splitlines():
                out.write(f"[{side}] {line}\n")

    def observe(batch: Sequence[_sockets.Datagram]) -> None:
        for d in batch:
            say("server", _format.format_datagram("seed", d.data, d.peer, length=d.length))

    handler = _server.reply_handler("reply", DEFAULT_REPLY.encode())
    message = DEFAULT_MESSAGE.encode()
    server: _server.DatagramServer | _server.StreamServer
    if args.tcp:
        listener = _sockets.tcp_listen(DEFAULT_HOST, 0)
        endpoint: _sockets.DatagramSocket | _sockets.StreamListener = listener
        server = _server.StreamServer(listener, handler, count=1, observer=observe)
        transport = "TCP"
    else:
        dsock = _sockets.udp_bind(DEFAULT_HOST, 0)
        endpoint = dsock
        server = _server.DatagramServer(dsock, handler, count=1, observer=observe)
        transport = "UDP"
    with endpoint:
        port = endpoint.sock.getsockname()[1]
        say(
            "server",
            _format.banner("seed", transport)[0].rstrip("\n")
            + f" on {format_sockaddr(endpoint.sock.getsockname())}",
        )
        thread = threading.Thread(target=server.serve, name="udpkit-demo-server", daemon=True)
        thread.start()
        try:
            say("client", f"sending {safe_repr(message)} to {DEFAULT_HOST}:{port}")
            if args.tcp:
                with _sockets.tcp_connect(DEFAULT_HOST, port, timeout=2.0) as conn:
                    reply = _client.stream_request(conn, message, timeout=2.0)
            else:
                with _sockets.udp_connect(DEFAULT_HOST, port) as csock:
                    reply = _client.request(csock, message, timeout=2.0)[0].data
            say("client", f"Message from Server\n{safe_repr(reply)}")
        finally:
            server.stop()
            thread.join(timeout=5)
            server.close()
    return EXIT_OK


# ---------------------------------------------------------------- main


def _lazy_command(module: str, func: str) -> Callable[[argparse.Namespace, _Out, _Out], int]:
    def command(args: argparse.Namespace, out: _Out, err: _Out) -> int:
        run: Callable[[argparse.Namespace, _Out, _Out], int] = getattr(
            importlib.import_module(f"udpkit.{module}"), func
        )
        return run(args, out, err)

    return command


def _on_sigterm(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def _quiet_stdout() -> None:
    # stdout is gone (e.g. `udpkit serve | head`): point it at /dev/null so the
    # interpreter's final flush does not complain, and end without a word.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``udpkit`` command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out, err = _Out(sys.stdout), _Out(sys.stderr)
    commands: dict[str, Callable[[argparse.Namespace, _Out, _Out], int]] = {
        "serve": _cmd_serve,
        "send": _cmd_send,
        "demo": _cmd_demo,
        "relay": _lazy_command("_cmd_relay", "run"),
        "bench": _lazy_command("_cmd_bench", "run_bench"),
        "reflect": _lazy_command("_cmd_bench", "run_reflect"),
        "read": _lazy_command("_cmd_record", "run_read"),
    }
    # Not possible outside the main thread (main() called from a library
    # user's thread): then SIGTERM keeps its default meaning.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, _on_sigterm)
    prog = f"udpkit {args.command}"
    try:
        return commands[args.command](args, out, err)
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except _Stopped as stop:
        return 128 + stop.signum
    except (Timeout, TimeoutError) as exc:
        hint = ""
        if args.command == "send":
            # The textbook's own server never answers: say the send itself worked.
            hint = "; the message was sent (--no-wait does not wait for a reply)"
        sys.stderr.write(_line(f"{prog}: {exc}{hint}"))
        return EXIT_TIMEOUT
    except (UsageError, AddressError) as exc:
        sys.stderr.write(_line(f"{prog}: error: {exc}"))
        return EXIT_USAGE
    except (NetworkError, UdpkitError) as exc:
        sys.stderr.write(_line(f"{prog}: error: {exc}"))
        return EXIT_NETWORK
    except OSError as exc:  # an OS error a layer below did not map: still one line
        sys.stderr.write(_line(f"{prog}: error: {exc.strerror or exc}"))
        return EXIT_NETWORK


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
