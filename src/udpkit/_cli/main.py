"""The ``udpkit`` command line: a thin layer over the library.

This module builds the parser and maps errors to exit codes; each command lives
in its own ``_cmd_*`` module, imported only when that command runs.

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
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from udpkit._core.errors import AddressError, NetworkError, Timeout, UdpkitError, UsageError
from udpkit._core.escape import escape_controls

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
# The same as udpkit._cli.format.FORMATS (a test checks): importing _format here
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
    from udpkit import __version__

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
    send.add_argument(
        "--all",
        action="store_true",
        help="collect for the whole --timeout and print every reply (for a broadcast "
        "address or group, one per responder); default: the first reply",
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
    for name in ("_cli.relay", "_cli.bench", "_cli.read"):
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
        "serve": _lazy_command("_cli.serve", "run_serve"),
        "send": _lazy_command("_cli.send", "run_send"),
        "demo": _lazy_command("_cli.send", "run_demo"),
        "relay": _lazy_command("_cli.relay", "run"),
        "bench": _lazy_command("_cli.bench", "run_bench"),
        "reflect": _lazy_command("_cli.bench", "run_reflect"),
        "read": _lazy_command("_cli.read", "run_read"),
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
            hint = "; the message was sent (use --no-wait to send without waiting for a reply)"
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
