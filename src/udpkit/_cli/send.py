"""`udpkit send` and `udpkit demo`: the textbook's client, and both sides in one process."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from udpkit._cli import common, options
from udpkit._cli.common import DEFAULT_HOST, DEFAULT_MESSAGE, DEFAULT_REPLY, EXIT_OK
from udpkit._cli.common import Out as _Out
from udpkit._core.errors import PermissionDenied, Timeout, UsageError

if TYPE_CHECKING:
    from udpkit._core.datagram import Datagram, SockAddr
    from udpkit._net.addr import Address
    from udpkit._net.sockets import DatagramSocket

# ---------------------------------------------------------------- arguments


def add_parser(sub: common.SubParsers) -> None:
    """Register ``send`` and ``demo`` on the ``udpkit`` subcommand parsers."""
    send = common.add_command(
        sub,
        "send",
        help="send a message and print the reply (the textbook's UDP client)",
        description="Send MESSAGE (default 'Hello UDP Server') to HOST PORT (default "
        "127.0.0.1 5005) and print the reply. MESSAGE '-' reads standard input. "
        "With --unix PATH the only positional argument is MESSAGE.",
    )
    send.add_argument(
        "args", nargs="*", metavar="[HOST] [PORT] [MESSAGE]", help="destination and message"
    )
    send.add_argument(
        "--bind",
        type=options.BIND,
        metavar="[HOST:]PORT",
        help="local address to send from (the textbook's client binds port 54312)",
    )
    send.add_argument(
        "--timeout",
        type=options.TIMEOUT,
        default=2.0,
        metavar="SECONDS",
        help="how long to wait for each reply (default 2; 500ms, 1min)",
    )
    send.add_argument(
        "--retries",
        type=options.RETRIES,
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
    options.add_ttl(mcs, "multicast hop limit (0-255)")
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
        type=options.BUFFER_SIZE,
        default=65535,
        metavar="BYTES",
        help="reply buffer in bytes (default 65535; 1024, 64K)",
    )
    options.add_transport(send)

    demo = common.add_command(
        sub,
        "demo",
        help="run the textbook's server and client together and show both sides",
        description="Start a server on a free loopback port and a client in one process, "
        "and print both sides of the textbook exchange.",
    )
    demo.add_argument("--tcp", action="store_true", help="show the TCP exchange instead")


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


def _positionals(args: argparse.Namespace) -> tuple[str | None, str | None, str]:
    """``[HOST] [PORT] [MESSAGE]`` (only MESSAGE with --unix), defaults filled in."""
    pos: list[str] = list(args.args)
    if args.unix is not None:
        if len(pos) > 1:
            raise UsageError(
                f"with --unix PATH the only argument is MESSAGE, got {len(pos)}: {' '.join(pos)}"
            )
        common.check_unix_args(args, ())
        return None, None, pos[0] if pos else DEFAULT_MESSAGE
    if len(pos) > 3:
        raise UsageError(
            f"too many arguments: {' '.join(pos[3:])}: expected [HOST] [PORT] [MESSAGE] "
            "(quote a MESSAGE with spaces)"
        )
    common.lone_port(pos[0] if pos else None, pos[1] if len(pos) > 1 else None, "send")
    host = pos[0] if len(pos) > 0 else DEFAULT_HOST
    default_port = common.DEFAULT_TCP_PORT if args.tcp else common.DEFAULT_UDP_PORT
    port = pos[1] if len(pos) > 1 else default_port
    return host, port, pos[2] if len(pos) > 2 else DEFAULT_MESSAGE


def _check_all(args: argparse.Namespace, stream: bool) -> None:
    if not args.all:
        return
    clashes = {"--tcp": args.tcp, "--stream": stream, "--no-wait": args.no_wait}
    clashes["--retries"] = bool(args.retries)
    clash = next((name for name, on in clashes.items() if on), None)
    if clash:
        raise UsageError(
            f"--all cannot be combined with {clash}: it sends one datagram and collects "
            "every reply within --timeout"
        )


def run_send(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    from udpkit._loops.client import first_answering
    from udpkit._net.addr import is_broadcast, is_multicast, resolve
    from udpkit._net.unix import unix_datagram_connect

    transport = common.transport(args)
    host, port, text = _positionals(args)
    message = _read_message(text, args.hex)
    stream = transport in ("TCP", "Unix stream")
    _check_all(args, stream)
    bind: tuple[str, str] | None = args.bind
    if bind is not None and args.unix is not None:
        raise UsageError("--bind does not apply to --unix sockets")
    if stream:
        return _send_stream(args, host, port, message, bind, out)
    if args.unix is not None:
        with unix_datagram_connect(args.unix) as sock:
            return _exchange(sock, None, message, args, out=out, err=err)
    assert host is not None and port is not None
    candidates = resolve(host, port, family=common.family(args))
    addr = candidates[0]
    multicast = is_multicast(addr)
    if (args.ttl is not None or args.loop is not None or args.iface) and not multicast:
        raise UsageError(f"--ttl, --loop and --iface are for multicast groups, not '{host}'")
    try:
        if args.broadcast or is_broadcast(addr) or multicast:
            with _unconnected(addr, bind, args, multicast) as sock:
                return _exchange(sock, addr.sockaddr, message, args, out=out, err=err)
        # A name's next address is tried when this one cannot be reached or nobody listens.
        return first_answering(
            candidates,
            lambda sock: _exchange(sock, None, message, args, out=out, err=err),
            bind=bind,
            broadcast=args.broadcast,
            on_skip=lambda why: err.write(f"udpkit: {why}\n"),
        )
    except PermissionDenied as exc:
        if args.broadcast or "SO_BROADCAST" not in str(exc):
            raise
        # The kernel refuses a broadcast destination without SO_BROADCAST: name the flag.
        raise PermissionDenied(
            errno.EACCES,
            f"cannot send to {addr}: permission denied: it is a broadcast address; "
            "add --broadcast to send to it",
        ) from exc


def _unconnected(addr: Address, bind: tuple[str, str] | None, args: argparse.Namespace,
                 multicast: bool) -> DatagramSocket:  # fmt: skip
    """A socket for a broadcast or a group: its replies come from the responders' own
    addresses, which a connected socket would filter out."""
    from udpkit._net.addr import resolve_one
    from udpkit._net.mcast import set_multicast_send
    from udpkit._net.sockets import udp_bind

    local = bind if bind is not None else ("", "0")
    laddr = resolve_one(local[0], local[1], family=addr.family, passive=True)
    sock = udp_bind(laddr.host, laddr.port, family=addr.family, broadcast=args.broadcast)
    if multicast:
        try:
            set_multicast_send(sock.sock, ttl=args.ttl, loop=args.loop, iface=args.iface)
        except BaseException:
            sock.close()
            raise
    return sock


def _send_stream(  # noqa: PLR0917 - the parsed pieces of one command line
    args: argparse.Namespace,
    host: str | None,
    port: str | None,
    message: bytes,
    bind: tuple[str, str] | None,
    out: _Out,
) -> int:
    """``send --tcp`` or ``--unix PATH --stream``: one message, and the answer."""
    from udpkit._core.escape import safe_repr
    from udpkit._loops.client import stream_request
    from udpkit._net.addr import resolve_one
    from udpkit._net.stream import tcp_connect
    from udpkit._net.unix import unix_stream_connect

    if args.unix is not None:
        conn = unix_stream_connect(args.unix, timeout=args.timeout)
    else:
        assert host is not None and port is not None
        addr = resolve_one(
            host, port, family=common.family(args), type=socket.SOCK_STREAM, proto="tcp"
        )
        conn = tcp_connect(
            addr.host, addr.port, family=addr.family, timeout=args.timeout, bind=bind
        )
    with conn:
        if args.no_wait:
            conn.send_all(message)
            return EXIT_OK
        reply = stream_request(conn, message, timeout=args.timeout, bufsize=args.buffer_size)
    out.write(f"Message from Server\n{safe_repr(reply)}\n")
    return EXIT_OK


def _exchange(
    sock: DatagramSocket,
    to: SockAddr | None,
    message: bytes,
    args: argparse.Namespace,
    *,
    out: _Out,
    err: _Out,
) -> int:
    """Send ``message`` on ``sock`` and show the reply (or every reply with --all)."""
    from udpkit._loops.client import request, request_all

    if args.no_wait:
        sock.send(message, to)
        return EXIT_OK
    if args.all:
        replies = request_all(sock, message, to, timeout=args.timeout, bufsize=args.buffer_size)
        for dgram in replies:
            _show_reply(dgram, to is not None, out, err)
        if not replies:
            raise Timeout(f"no reply within {args.timeout:g} s")
        err.write(f"udpkit: {len(replies)} {'reply' if len(replies) == 1 else 'replies'}\n")
        return EXIT_OK
    dgram, _attempts = request(
        sock, message, to, timeout=args.timeout, retries=args.retries, bufsize=args.buffer_size
    )
    _show_reply(dgram, to is not None, out, err)
    return EXIT_OK


def _show_reply(dgram: Datagram, unconnected: bool, out: _Out, err: _Out) -> None:
    from udpkit._core.escape import safe_repr
    from udpkit._net.addr import format_sockaddr

    out.write(f"Message from Server\n{safe_repr(dgram.data)}\n")
    if dgram.truncated:
        out.write(f"(truncated: {dgram.length} bytes, {len(dgram.data)} kept)\n")
    if unconnected:
        err.write(f"udpkit: reply from {format_sockaddr(dgram.peer)}\n")


def run_demo(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    import threading

    from udpkit._cli.format import banner, format_datagram
    from udpkit._core.escape import safe_repr
    from udpkit._loops.client import request, stream_request
    from udpkit._loops.server import DatagramServer, StreamServer, reply_handler
    from udpkit._net.addr import format_sockaddr
    from udpkit._net.sockets import udp_bind, udp_connect
    from udpkit._net.stream import StreamListener, tcp_connect, tcp_listen

    lock = threading.Lock()

    def say(side: str, text: str) -> None:
        with lock:
            for line in text.splitlines():
                out.write(f"[{side}] {line}\n")

    def observe(batch: Sequence[Datagram]) -> None:
        for d in batch:
            say("server", format_datagram("textbook", d.data, d.peer, length=d.length))

    handler = reply_handler("reply", DEFAULT_REPLY.encode())
    message = DEFAULT_MESSAGE.encode()
    server: DatagramServer | StreamServer
    if args.tcp:
        listener = tcp_listen(DEFAULT_HOST, 0)
        endpoint: DatagramSocket | StreamListener = listener
        server = StreamServer(listener, handler, count=1, observer=observe)
        transport = "TCP"
    else:
        dsock = udp_bind(DEFAULT_HOST, 0)
        endpoint = dsock
        server = DatagramServer(dsock, handler, count=1, observer=observe)
        transport = "UDP"
    with endpoint:
        port = endpoint.sock.getsockname()[1]
        say(
            "server",
            banner("textbook", transport)[0].rstrip("\n")
            + f" on {format_sockaddr(endpoint.sock.getsockname())}",
        )
        thread = threading.Thread(target=server.serve, name="udpkit-demo-server", daemon=True)
        thread.start()
        try:
            say("client", f"sending {safe_repr(message)} to {DEFAULT_HOST}:{port}")
            if args.tcp:
                with tcp_connect(DEFAULT_HOST, port, timeout=2.0) as conn:
                    reply = stream_request(conn, message, timeout=2.0)
            else:
                with udp_connect(DEFAULT_HOST, port) as csock:
                    reply = request(csock, message, timeout=2.0)[0].data
            say("client", f"Message from Server\n{safe_repr(reply)}")
        finally:
            server.stop()
            thread.join(timeout=5)
            server.close()
    return EXIT_OK
