"""`udpkit send` and `udpkit demo`: the textbook's client, and both sides in one process."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from typing import Any

from udpkit._cli import options
from udpkit._cli.common import (
    DEFAULT_HOST,
    DEFAULT_MESSAGE,
    DEFAULT_REPLY,
    DEFAULT_TCP_PORT,
    DEFAULT_UDP_PORT,
    EXIT_CODES_HELP,
    EXIT_OK,
)
from udpkit._cli.common import Out as _Out
from udpkit._cli.common import check_unix_args as _check_unix_args
from udpkit._cli.common import family as _family
from udpkit._cli.common import transport as _transport
from udpkit._core.errors import AddressError, ConnectionRefused, NetworkError, Timeout, UsageError

# ---------------------------------------------------------------- arguments


def add_parser(sub: Any) -> None:
    """Register ``send`` and ``demo`` on the ``udpkit`` subcommand parsers."""
    send = sub.add_parser(
        "send",
        help="send a message and print the reply (the textbook's UDP client)",
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

    demo = sub.add_parser(
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


def run_send(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    from udpkit._core.escape import safe_repr
    from udpkit._loops import client as _client
    from udpkit._net import sockets as _sockets
    from udpkit._net import unix as _unix
    from udpkit._net.addr import is_broadcast, is_multicast, resolve, resolve_one, split_hostport

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
    if args.all:
        clash = (
            "--tcp"
            if args.tcp
            else "--stream"
            if stream
            else "--no-wait"
            if args.no_wait
            else "--retries"
            if args.retries
            else None
        )
        if clash:
            raise UsageError(
                f"--all cannot be combined with {clash}: it sends one datagram and collects "
                "every reply within --timeout"
            )

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
            from udpkit._net import stream as _stream  # TCP code loads only for --tcp

            conn = _stream.tcp_connect(
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
        candidates = resolve(host, port, family=_family(args))
        addr = candidates[0]
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
                from udpkit._net.mcast import set_multicast_send

                try:
                    set_multicast_send(sock.sock, ttl=args.ttl, loop=args.loop, iface=args.iface)
                except BaseException:
                    sock.close()
                    raise
            to = addr.sockaddr
        else:
            return _send_unicast(candidates, message, bind, args, out=out, err=err)
    with sock:
        return _exchange(sock, to, message, args, out=out, err=err)


def _send_unicast(
    candidates: Sequence[Any],
    message: bytes,
    bind: tuple[str, str] | None,
    args: argparse.Namespace,
    *,
    out: _Out,
    err: _Out,
) -> int:
    """Send to a host's first address that works, as a host name promises.

    A name such as ``localhost`` may give ``::1`` first while the server listens
    on 127.0.0.1 only: an address that cannot be reached, or that answers ICMP
    port unreachable (so nobody received the datagram), makes way for the next.
    A silent one does not: the server may just be slow, and a second copy would
    reach it twice.
    """
    from udpkit._net.addr import format_sockaddr
    from udpkit._net.sockets import udp_connect

    for i, addr in enumerate(candidates):
        last = i == len(candidates) - 1
        try:
            sock = udp_connect(
                addr.host, addr.port, bind=bind, family=addr.family, broadcast=args.broadcast
            )
        except (NetworkError, AddressError) as exc:  # AddressError: --bind of the other family
            if last:
                raise
            err.write(f"udpkit: {exc}; trying {format_sockaddr(candidates[i + 1])}\n")
            continue
        with sock:
            try:
                return _exchange(sock, None, message, args, out=out, err=err)
            except ConnectionRefused:
                if last:
                    raise
                err.write(
                    f"udpkit: nothing listens at {format_sockaddr(addr)} (ICMP port "
                    f"unreachable); trying {format_sockaddr(candidates[i + 1])}\n"
                )
    raise AssertionError("unreachable: resolve() gives at least one address")


def _exchange(
    sock: Any, to: Any, message: bytes, args: argparse.Namespace, *, out: _Out, err: _Out
) -> int:
    """Send ``message`` on ``sock`` and show the reply (or every reply with --all)."""
    from udpkit._loops import client as _client

    if args.no_wait:
        sock.send(message, to)
        return EXIT_OK
    if args.all:
        replies = _client.request_all(
            sock, message, to, timeout=args.timeout, bufsize=args.buffer_size
        )
        for dgram in replies:
            _show_reply(dgram, to is not None, out, err)
        if not replies:
            raise Timeout(f"no reply within {args.timeout:g} s")
        err.write(f"udpkit: {len(replies)} {'reply' if len(replies) == 1 else 'replies'}\n")
        return EXIT_OK
    dgram, _attempts = _client.request(
        sock, message, to, timeout=args.timeout, retries=args.retries, bufsize=args.buffer_size
    )
    _show_reply(dgram, to is not None, out, err)
    return EXIT_OK


def _show_reply(dgram: Any, unconnected: bool, out: _Out, err: _Out) -> None:
    from udpkit._core.escape import safe_repr
    from udpkit._net.addr import format_sockaddr

    out.write(f"Message from Server\n{safe_repr(dgram.data)}\n")
    if dgram.truncated:
        out.write(f"(truncated: {dgram.length} bytes, {len(dgram.data)} kept)\n")
    if unconnected:
        err.write(f"udpkit: reply from {format_sockaddr(dgram.peer)}\n")


def run_demo(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    import threading

    from udpkit._cli import format as _format
    from udpkit._core.escape import safe_repr
    from udpkit._loops import client as _client
    from udpkit._loops import server as _server
    from udpkit._net import sockets as _sockets
    from udpkit._net import stream as _stream
    from udpkit._net.addr import format_sockaddr

    lock = threading.Lock()

    def say(side: str, text: str) -> None:
        with lock:
            for line in text.splitlines():
                out.write(f"[{side}] {line}\n")

    def observe(batch: Sequence[_sockets.Datagram]) -> None:
        for d in batch:
            say("server", _format.format_datagram("textbook", d.data, d.peer, length=d.length))

    handler = _server.reply_handler("reply", DEFAULT_REPLY.encode())
    message = DEFAULT_MESSAGE.encode()
    server: _server.DatagramServer | _server.StreamServer
    if args.tcp:
        listener = _stream.tcp_listen(DEFAULT_HOST, 0)
        endpoint: _sockets.DatagramSocket | _stream.StreamListener = listener
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
            _format.banner("textbook", transport)[0].rstrip("\n")
            + f" on {format_sockaddr(endpoint.sock.getsockname())}",
        )
        thread = threading.Thread(target=server.serve, name="udpkit-demo-server", daemon=True)
        thread.start()
        try:
            say("client", f"sending {safe_repr(message)} to {DEFAULT_HOST}:{port}")
            if args.tcp:
                with _stream.tcp_connect(DEFAULT_HOST, port, timeout=2.0) as conn:
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
