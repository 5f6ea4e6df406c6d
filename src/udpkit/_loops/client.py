"""Client exchanges: send a message and wait for the answer, with deadlines.

One monotonic deadline per attempt, computed once and passed to every wait;
``retries`` resends after an attempt's deadline passes with no answer.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from udpkit._core.errors import (
    AddressError,
    ConnectionRefused,
    MessageTooLarge,
    NetworkError,
    Timeout,
    UsageError,
)
from udpkit._net.addr import Address, format_sockaddr, resolve
from udpkit._net.domains import parse_domain
from udpkit._net.sockets import Datagram, DatagramSocket, Destination, udp_connect

if TYPE_CHECKING:
    from udpkit._net.stream import StreamSocket

__all__ = ["first_answering", "request", "request_all", "request_first", "stream_request"]

_T = TypeVar("_T")

# After a stream reply starts, a pause this long with nothing more means the
# server has said all it will say to this message (it may keep the connection).
_STREAM_IDLE_GAP = 0.25


def _check_call(
    call: str, sock: object, kind: type, message: object, hint: str = "", *, uses: str = "recv"
) -> None:
    """A wrong guess at a signature is a :class:`UsageError` naming what was expected.

    ``request("127.0.0.1", 5005, b"x")`` used to end in a bare ``AttributeError``.
    Anything with the methods used (``send`` and ``uses``) passes: a test's
    scripted socket is a seam, not a mistake.
    """
    if not isinstance(sock, kind) and not (hasattr(sock, "send") and hasattr(sock, uses)):
        raise UsageError(
            f"{call}() takes a udpkit {kind.__name__} first, not {type(sock).__name__} "
            f"{sock!r:.60}{hint}"
        )
    if not isinstance(message, bytes | bytearray | memoryview):
        fix = " (encode text: 'text'.encode())" if isinstance(message, str) else ""
        raise UsageError(
            f"{call}() takes the message as bytes, not {type(message).__name__} "
            f"{message!r:.60}{fix}"
        )


_BY_ADDRESS = (
    " (from udpkit.udp_connect(host, port) or udpkit.udp_bind(...)); to ask a host "
    "and port directly: udpkit.request_first(host, port, message)"
)


def _check_timing(timeout: float, retries: int) -> None:
    if not timeout >= 0:  # also rejects NaN
        raise UsageError(f"invalid timeout {timeout!r}: must be a number of seconds >= 0")
    if retries < 0:
        raise UsageError(f"invalid retries {retries!r}: must be a whole number >= 0")


def _path_mtu_error(exc: NetworkError, size: int) -> NetworkError:
    """The last attempt's ICMP "fragmentation needed" / "packet too big", said plainly."""
    what = str(exc).rpartition(": ")[0] or "receive"  # "receive from HOST:PORT"
    return NetworkError(
        errno.EMSGSIZE,
        f"{what}: the path MTU is smaller than the {size}-byte datagram (ICMP "
        "fragmentation needed / packet too big, again after a resend): send less, or "
        "allow more resends (--retries N, or retries=N)",
    )


def _send(sock: DatagramSocket, message: bytes, to: Destination | None) -> None:
    """Send once; a kernel EMSGSIZE left over from an earlier datagram's ICMP is retried."""
    try:
        sock.send(message, to)
    except MessageTooLarge as exc:
        cause = exc.__cause__
        if not (isinstance(cause, OSError) and cause.errno == errno.EMSGSIZE):
            raise  # over the family's limit: checked before sending, final
        # An ICMP packet-too-big for an earlier datagram is reported on the next
        # call, and that call sends nothing (the report is consumed): send again.
        # A datagram the kernel itself refuses fails the same way again.
        sock.send(message, to)


def request(
    sock: DatagramSocket,
    message: bytes,
    to: Destination | None = None,
    *,
    timeout: float = 2.0,
    retries: int = 0,
    bufsize: int = 65535,
) -> tuple[Datagram, int]:
    """Send ``message`` and return the first datagram that comes back.

    Args:
        sock: the socket to use; connected (``to`` is ``None``) or not.
        message: the payload (zero-length is allowed).
        to: the destination for an unconnected socket (e.g. a broadcast address).
        timeout: seconds to wait for an answer after each send.
        retries: how many times to resend when an attempt gets no answer.
        bufsize: receive buffer; a longer answer comes back marked truncated.

    Returns:
        ``(reply, attempts)``: the answer and how many attempts it took (a resend
        after "packet too big" is part of its attempt).

    Raises:
        Timeout: no answer after ``retries + 1`` attempts.
        ConnectionRefused: nothing listens at the destination (ICMP port
            unreachable, seen on a connected socket) on the last attempt.
        NetworkError: ``errno.EMSGSIZE``: the last attempt drew ICMP
            "fragmentation needed" / "packet too big" again after its resend
            (the path MTU is smaller than the datagram).  One such report per
            attempt is soft: the kernel has learned the path MTU, and the
            attempt is resent at once, fragmented to it.
        MessageTooLarge: over the family's largest datagram (at once).
        UsageError: negative ``timeout`` or ``retries``; ``sock`` not a
            :class:`~udpkit.DatagramSocket` or ``message`` not bytes.
    """
    _check_call("request", sock, DatagramSocket, message, _BY_ADDRESS)
    _check_timing(timeout, retries)
    for attempt in range(1, retries + 2):
        # Only the last attempt's outcome counts: a server that came up
        # after a refused attempt but stays silent is a timeout, not "refused".
        last = attempt > retries
        resent = False
        deadline = time.monotonic() + timeout
        _send(sock, message, to)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                return sock.recv(bufsize, timeout=left), attempt
            except Timeout:
                break
            except ConnectionRefused:
                if last:
                    raise
                # Nobody listens yet: wait out this attempt before resending,
                # so retries give a starting server time instead of spinning.
                time.sleep(max(0.0, deadline - time.monotonic()))
                break
            except NetworkError as exc:
                if exc.errno != errno.EMSGSIZE:
                    raise
                # ICMP "fragmentation needed" / "packet too big": a router dropped
                # the datagram for its size (never over the limit: that is
                # checked before sending).  The kernel has learned the path MTU
                # and fragments a resend to fit, so the attempt is resent at
                # once, one time; a second report in the attempt ends it (soft,
                # like a refusal) and, on the last attempt, is the error.
                if resent:
                    if last:
                        raise _path_mtu_error(exc, len(message)) from exc
                    break
                resent = True
                deadline = time.monotonic() + timeout
                _send(sock, message, to)
    tries = "attempt" if retries == 0 else "attempts"
    raise Timeout(f"no reply within {timeout:g} s ({retries + 1} {tries})")


def request_all(
    sock: DatagramSocket,
    message: bytes,
    to: Destination | None = None,
    *,
    timeout: float = 2.0,
    bufsize: int = 65535,
    limit: int = 4096,
) -> list[Datagram]:
    """Send ``message`` once and collect every datagram that comes back within ``timeout``.

    For discovery: a request to a broadcast address or a multicast group is
    answered by every responder, each from its own address (use an unconnected
    socket, as :func:`udpkit.udp_bind` makes, and pass ``to``).

    Args:
        sock: the socket to use; connected (``to`` is ``None``) or not.
        message: the payload (zero-length is allowed).
        to: the destination for an unconnected socket.
        timeout: seconds to collect for, from the send.
        bufsize: receive buffer; a longer answer comes back marked truncated.
        limit: stop after this many replies.

    Returns:
        The replies in arrival order (empty when none came).

    Raises:
        ConnectionRefused: on a connected socket, nothing listens at the peer.
        UsageError: a negative ``timeout`` or a ``limit`` below 1; ``sock``
            not a :class:`~udpkit.DatagramSocket` or ``message`` not bytes.
    """
    _check_call("request_all", sock, DatagramSocket, message, _BY_ADDRESS)
    _check_timing(timeout, 0)
    if limit < 1:
        raise UsageError(f"invalid limit {limit!r}: must be 1 or more replies")
    deadline = time.monotonic() + timeout
    sock.send(message, to)
    replies: list[Datagram] = []
    while len(replies) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            replies.append(sock.recv(bufsize, timeout=left))
        except Timeout:
            break
        except ConnectionRefused:
            if to is None:
                raise  # a connected socket has one peer, and nothing listens there
            continue  # one responder's port was closed: the others may still answer
    return replies


def stream_request(
    conn: StreamSocket, message: bytes, *, timeout: float = 2.0, bufsize: int = 65535
) -> bytes:
    """Send ``message`` on a stream connection and collect the answer.

    The answer ends at end-of-file, or when nothing more arrives for a short
    pause after it began (a server may keep the connection open).

    Raises:
        Timeout: nothing arrived within ``timeout`` seconds.
        UsageError: ``conn`` not a :class:`~udpkit.StreamSocket` (from
            :func:`udpkit.tcp_connect`) or ``message`` not bytes.
    """
    from udpkit._net.stream import StreamSocket

    _check_call(
        "stream_request", conn, StreamSocket, message, " (from udpkit.tcp_connect)", uses="send_all"
    )
    _check_timing(timeout, 0)
    conn.send_all(message)
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if chunks:
            left = min(left, _STREAM_IDLE_GAP) if left > 0 else _STREAM_IDLE_GAP
        if left <= 0:
            break
        try:
            data = conn.recv(bufsize, timeout=left)
        except Timeout:
            break
        if not data:
            break
        chunks.append(data)
    if not chunks:
        raise Timeout(f"no reply within {timeout:g} s")
    return b"".join(chunks)


def first_answering(
    addresses: Sequence[Address],
    exchange: Callable[[DatagramSocket], _T],
    *,
    bind: tuple[str | int | None, int | str] | None = None,
    broadcast: bool = False,
    on_skip: Callable[[str], None] | None = None,
) -> _T:
    """Run ``exchange`` on a socket connected to the first of a name's addresses that answers.

    A name such as ``localhost`` may give ``::1`` first while the server listens
    on 127.0.0.1 only: an address that cannot be reached (or bound from
    ``bind``), or whose exchange draws ICMP port unreachable (so nobody
    received the datagram), makes way for the next.  A silent one does not:
    the server may just be slow, and a second copy would reach it twice.

    Args:
        addresses: the name's addresses in order, as :func:`udpkit.resolve` gives them.
        exchange: what to do on the connected socket (e.g. send and wait for
            the reply); its result is returned.  The socket is closed after it.
        bind: the local ``(host, port)`` to send from, as for :func:`udpkit.udp_connect`.
        broadcast: set SO_BROADCAST.
        on_skip: told why an address was given up, and which one comes next
            (``"nothing listens at 127.0.0.1:5005 (ICMP port unreachable);
            trying ..."``).

    Returns:
        What ``exchange`` returned for the first address that answered.

    Raises:
        ConnectionRefused, NetworkError, AddressError: the last address's error,
            when none answered; Timeout or any other error of ``exchange`` at once.
        UsageError: no addresses.
    """
    if not addresses:
        raise UsageError("no addresses to try: resolve the name first (udpkit.resolve)")
    for i, addr in enumerate(addresses):
        last = i == len(addresses) - 1
        try:
            sock = udp_connect(
                addr.host, addr.port, bind=bind, family=addr.family, broadcast=broadcast
            )
        except (NetworkError, AddressError) as exc:  # AddressError: a bind of the other family
            if last:
                raise
            reason = str(exc)
        else:
            with sock:
                try:
                    return exchange(sock)
                except ConnectionRefused:
                    if last:
                        raise
                    reason = f"nothing listens at {format_sockaddr(addr)} (ICMP port unreachable)"
        if on_skip is not None:
            on_skip(f"{reason}; trying {format_sockaddr(addresses[i + 1])}")
    raise AssertionError("unreachable: the last address returns or raises")


def request_first(
    host: str | int | None,
    port: int | str,
    message: bytes,
    *,
    family: int | str = socket.AF_UNSPEC,
    bind: tuple[str | int | None, int | str] | None = None,
    timeout: float = 2.0,
    retries: int = 0,
    bufsize: int = 65535,
    on_skip: Callable[[str], None] | None = None,
) -> tuple[Datagram, int]:
    """:func:`request` to the first of ``host``'s addresses that answers (``udpkit send``'s way).

    Each address is tried as :func:`first_answering` says: the next one only
    when this one cannot be reached or nothing listens there.

    Args:
        host, port: any forms udpkit accepts; a name may give several addresses.
        message: the payload.
        family: AF_UNSPEC (every address of the name), AF_INET or AF_INET6.
        bind: the local ``(host, port)`` to send from.
        timeout, retries, bufsize: as for :func:`request`, per address.
        on_skip: told why an address was given up (see :func:`first_answering`).

    Returns:
        ``(reply, attempts)`` from the address that answered.

    Raises:
        AddressError: a bad host or port.
        Timeout: an address that was reached stayed silent (the next is not tried).
        ConnectionRefused: nothing listens at any of the addresses.
        NetworkError: none could be reached.
    """
    addresses = resolve(host, port, family=parse_domain(family))
    return first_answering(
        addresses,
        lambda sock: request(sock, message, timeout=timeout, retries=retries, bufsize=bufsize),
        bind=bind,
        on_skip=on_skip,
    )
