"""``udpkit connect HOST PORT`` and ``udpkit listen [HOST] PORT``: a session like ``nc -u``.

Each line typed or piped on stdin is one datagram (``--chunk N``: stdin is a
stream cut into N-byte datagrams); what arrives is printed as it arrives.
The loop is :class:`udpkit._loops.session.Session`; this module parses the
arguments, opens the socket, renders what arrives and prints the summary.

Only argparse is imported at the top: registering the commands costs the other
commands no start-up time.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from udpkit._cli import options
from udpkit._cli.common import FORMATS, SubParsers, Writer, add_command

if TYPE_CHECKING:
    import socket

    from udpkit._loops.session import SessionStats, Sink

__all__ = ["SESSION_FORMATS", "add_parser", "run_connect", "run_listen"]

# serve's and read's formats, and raw: the payload bytes as they came.
SESSION_FORMATS = (*FORMATS, "raw")
_DEFAULT_WAIT = 1.0

# ---------------------------------------------------------------- the parsers

_FORMAT_HELP = (
    "how to print what arrives: line (default: the payload as one line, control characters "
    "escaped), raw (the payload bytes as they are, for pipes and files; escaped like line "
    "on a terminal), hex (a header and hexdump -C rows), json (one object per datagram: "
    "time, peer, length, payload_b64, text) or textbook (as serve prints it)"
)

# Each command's usage, one-line help and description.
_USAGE = {
    "connect": "udpkit connect [options] HOST PORT",
    "listen": "udpkit listen [options] [HOST] PORT",
}
_HELP = {
    "connect": "a session like 'nc -u HOST PORT': lines of stdin out, replies printed",
    "listen": "a session like 'nc -ul PORT': datagrams printed, lines of stdin to the last peer",
}
_DESCRIPTION = {
    "connect": "Send each line of stdin to HOST PORT as one datagram (the newline kept, as "
    "'nc -u HOST PORT' does) and print every reply as it arrives. When stdin ends, wait "
    "until no datagram has come for --wait seconds, then print a summary on stderr and "
    "exit. 'Nothing listens there' (ICMP port unreachable) is counted and said once.",
    "listen": "Listen on PORT (127.0.0.1 unless HOST is given, as 'udpkit serve'; HOST "
    "0.0.0.0 or :: listens on every interface) like 'nc -ul PORT': print every datagram "
    "as it arrives, and send each line of stdin to the peer that spoke last. Stdin's end "
    "does not stop it; Ctrl-C, SIGTERM, --count or --idle does, with a summary on stderr.",
}

_EPILOG = """\
examples:
  udpkit listen 9000                          # in one terminal
  udpkit connect 127.0.0.1 9000               # in another: type lines
  udpkit connect --chunk 1400 HOST 9000 < file
  udpkit listen --format raw 9000 > file      # the payload bytes, as they came

exit codes:
  0    stdin ended (connect), --count or --idle reached, or the output pipe closed
  1    network or runtime error (port in use, permission denied)
  2    bad arguments
  130  stopped by SIGINT (Ctrl-C); 143 by SIGTERM (the summary is printed first)
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chunk",
        type=options.CHUNK,
        metavar="N",
        help="send stdin as a stream cut into N-byte datagrams (1400, 8K) instead of a "
        "datagram per line; what is there is sent at once, never held for a newline",
    )
    options.add_format(p, "line", _FORMAT_HELP, SESSION_FORMATS)
    p.add_argument(
        "--count", type=options.COUNT, metavar="N", help="end after N datagrams received"
    )
    options.add_rcvbuf(p, "4M")
    p.add_argument(
        "--no-batch",
        action="store_true",
        help="receive with recvfrom instead of recvmmsg batches",
    )
    p.add_argument("-u", "--udp", action="store_true", help="accepted for nc habits: always UDP")
    options.add_family_flags(p)
    options.allow_negative_values(p)


def add_parser(sub: SubParsers) -> None:
    """Register ``udpkit connect`` and ``udpkit listen`` on the subcommand parsers."""
    connect, listen = (
        add_command(
            sub,
            name,
            usage=_USAGE[name],
            help=_HELP[name],
            description=_DESCRIPTION[name],
            epilog=_EPILOG,
        )
        for name in ("connect", "listen")
    )
    connect.add_argument("address", nargs="*", metavar="HOST PORT", help="where to send")
    connect.add_argument(
        "-w",
        "--wait",
        type=options.WAIT,
        default=_DEFAULT_WAIT,
        metavar="SECONDS",
        help="after stdin ends, wait until no datagram has come for SECONDS (default 1; "
        "500ms works), then end",
    )
    connect.add_argument(
        "--bind",
        type=options.BIND,
        metavar="[HOST:]PORT",
        help="send from this local address (e.g. 54312 or 127.0.0.1:54312)",
    )
    _common(connect)

    listen.add_argument("address", nargs="*", metavar="[HOST] PORT", help="where to listen")
    listen.add_argument(
        "-w",
        "--idle",
        type=options.IDLE,
        metavar="SECONDS",
        help="end after SECONDS without a datagram in or out (default: never)",
    )
    listen.add_argument(
        "-k",
        "--keep-open",
        action="store_true",
        help="accepted for nc habits: listen always keeps listening",
    )
    _common(listen)


# ---------------------------------------------------------------- addresses


def _connect_address(pos: Sequence[str]) -> tuple[str, str]:
    from udpkit._cli.common import DEFAULT_HOST, destination
    from udpkit._core.errors import UsageError

    if not pos:
        raise UsageError(
            f"missing HOST and PORT: write udpkit connect HOST PORT, "
            f"e.g. udpkit connect {DEFAULT_HOST} 5005"
        )
    if len(pos) > 2:
        raise UsageError(f"too many arguments: {' '.join(pos[2:])}: expected HOST PORT")
    return destination(pos[0], pos[1] if len(pos) == 2 else None, "connect")


def _listen_address(pos: Sequence[str], family: int) -> tuple[str, str]:
    import socket

    from udpkit._cli.common import DEFAULT_HOST
    from udpkit._core.errors import UsageError
    from udpkit._net.addr import split_hostport

    default = "::1" if family == socket.AF_INET6 else DEFAULT_HOST
    if len(pos) == 2:
        return pos[0], pos[1]
    if not pos:
        raise UsageError("missing PORT: write udpkit listen [HOST] PORT, e.g. udpkit listen 5005")
    if len(pos) > 2:
        raise UsageError(f"too many arguments: {' '.join(pos[2:])}: expected [HOST] PORT")
    text = pos[0]
    if ":" in text and not text.isdigit():  # HOST:PORT or [IPV6]:PORT in one word
        host, port = split_hostport(text, default_host=default)
        return host or default, port
    return default, text


# ---------------------------------------------------------------- output


def _stdout_fd(out: Writer) -> int | None:
    stream = getattr(out, "stream", None)
    if stream is None:
        return None
    try:
        stream.flush()
        fd: int = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return fd


def _make_sink(fmt: str, out: Writer) -> Sink:
    """The session's sink for ``fmt``: renders a batch and writes it at once."""
    from udpkit._core.escape import escape_bytes

    fd = _stdout_fd(out)
    write_bytes: Callable[[bytes], None]
    if fd is not None:

        def write_bytes(data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

    else:  # a text writer (a test's StringIO): bytes as UTF-8, invalid bytes kept

        def write_bytes(data: bytes) -> None:
            out.write(data.decode("utf-8", "surrogateescape"))

    if fmt == "raw" and (fd is None or not os.isatty(fd)):

        def raw(payloads: list[bytes], _peers: list[object], _when: float) -> None:
            write_bytes(b"".join(payloads))

        return raw
    if fmt in ("line", "raw"):  # raw on a terminal is shown as line: never raw there

        def text_line(data: bytes) -> str:
            if data.endswith(b"\n"):
                data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
            return escape_bytes(data) + "\n"

        def lines(payloads: list[bytes], _peers: list[object], _when: float) -> None:
            write_bytes("".join(map(text_line, payloads)).encode("utf-8", "surrogateescape"))

        return lines
    from udpkit._cli.format import format_datagram

    def formatted(payloads: list[bytes], peers: list[object], when: float) -> None:
        text = "".join(
            format_datagram(fmt, p, peer, when=when)
            for p, peer in zip(payloads, peers, strict=True)
        )
        write_bytes(text.encode("utf-8", "surrogateescape"))

    return formatted


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def summary(stats: SessionStats, stopped_by: int | None = None) -> str:
    """The one-line summary of a session (for stderr), newline included.

    E.g. ``udpkit: sent 3 datagrams (18 bytes); received 3 datagrams (18 bytes)
    from 1 peer; kernel drops 0``, then ``; errors ECONNREFUSED=1``, ``; unsent
    2 (no peer yet)``, ``; 1 long line cut`` when they happened, and ``(stopped
    by SIGTERM)``.
    """
    import signal

    peers = f"{'at least ' if stats.peers_capped else ''}{_plural(stats.peers, 'peer')}"
    drops = "unknown" if stats.kernel_drops is None else str(stats.kernel_drops)
    text = (
        f"udpkit: sent {_plural(stats.sent, 'datagram')} ({_plural(stats.bytes_sent, 'byte')}); "
        f"received {_plural(stats.received, 'datagram')} "
        f"({_plural(stats.bytes_received, 'byte')}) from {peers}; kernel drops {drops}"
    )
    if stats.errors:
        text += "; errors " + " ".join(f"{k}={v}" for k, v in sorted(stats.errors.items()))
    if stats.unsent:
        text += f"; unsent {stats.unsent}"
    if stats.cut_lines:
        text += f"; {_plural(stats.cut_lines, 'long line')} cut"
    if stopped_by is not None:
        text += f" (stopped by {signal.Signals(stopped_by).name})"
    if stats.kernel_drops:
        text += (
            "\nudpkit: the kernel dropped datagrams that arrived faster than this end read "
            "them: a larger --rcvbuf, a faster --format (raw) or a slower sender helps"
        )
    return text + "\n"


# ---------------------------------------------------------------- the commands


def run_connect(args: argparse.Namespace, out: Writer, err: Writer) -> int:
    """``udpkit connect``: returns the exit code (see the epilog)."""
    from udpkit._cli.common import family
    from udpkit._loops.sigwake import stops_held
    from udpkit._net.addr import resolve_one
    from udpkit._net.sockets import udp_connect

    host, port = _connect_address(args.address)
    dest = resolve_one(host, port, family=family(args))
    bind: tuple[str, str] | None = args.bind
    # A stop during the set-up waits for the session's handler: the summary is printed.
    with stops_held(), udp_connect(dest.host, dest.port, family=dest.family, bind=bind) as sock:
        return _run(sock.sock, args, out, err, wait=args.wait, idle=None)


def run_listen(args: argparse.Namespace, out: Writer, err: Writer) -> int:
    """``udpkit listen``: returns the exit code (see the epilog)."""
    from udpkit._cli.common import family
    from udpkit._loops.sigwake import stops_held
    from udpkit._net.addr import format_sockaddr
    from udpkit._net.sockets import udp_bind

    host, port = _listen_address(args.address, family(args))
    with stops_held(), udp_bind(host, port, family=family(args)) as sock:
        err.write(f"udpkit: listening on {format_sockaddr(sock.sock.getsockname())} (UDP)\n")
        return _run(sock.sock, args, out, err, wait=None, idle=args.idle)


def _run(
    sock: socket.socket,
    args: argparse.Namespace,
    out: Writer,
    err: Writer,
    *,
    wait: float | None,
    idle: float | None,
) -> int:
    from udpkit._cli.common import line, quiet_stdout, rcvbuf_note
    from udpkit._core.errors import NetworkError
    from udpkit._loops.session import Session, SessionConfig, Stopped
    from udpkit._loops.sigwake import on_signals
    from udpkit._net.kernel import DEFAULT_RCVBUF
    from udpkit._net.sockets import set_receive_buffer

    rcvbuf: int | None = args.rcvbuf
    asked = rcvbuf or DEFAULT_RCVBUF
    try:
        got = set_receive_buffer(sock, asked)
    except NetworkError:
        got = asked
    if rcvbuf is not None:
        err.write(rcvbuf_note(asked, got))  # as serve and reflect say what they got
    config = SessionConfig(
        chunk=args.chunk,
        count=args.count,
        wait=wait,
        idle=idle,
        fast=False if args.no_batch else None,
    )
    sink = _make_sink(args.format, out)

    def notice(text: str) -> None:
        err.write(line(f"udpkit: {text}"))

    with (
        Session(
            sock,
            sink,
            config,
            stdin_fd=_stdin_fd(),
            notice=notice,
        ) as session,
        on_signals(session.stop) as stopped,
    ):
        try:
            session.run()
        except Stopped:
            pass
        except BrokenPipeError:
            quiet_stdout()  # the reader has gone: end quietly, summary on stderr
        stopped_by = stopped[0] if stopped else None
        err.write(summary(session.stats, stopped_by))
    return 0 if stopped_by is None else 128 + stopped_by


def _stdin_fd() -> int | None:
    try:
        fd = sys.stdin.fileno() if sys.stdin is not None else 0
        os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return None
    return fd
