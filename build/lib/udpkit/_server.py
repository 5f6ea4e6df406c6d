"""Serving loops: receive, report and reply, for datagram and stream sockets.

The loops own no policy: what to answer is a *handler* ``(data) -> reply | None``
and what to show is an *observer* called once per message.  The CLI builds both;
a library user passes their own.
"""

from __future__ import annotations

import contextlib
import select
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._errors import NetworkError, Timeout, UdpkitError
from ._sockets import Datagram, DatagramSocket, StreamListener, StreamSocket

__all__ = ["DatagramServer", "Handler", "ServeStats", "StreamServer", "reply_handler"]

Handler = Callable[[bytes], "bytes | None"]
"""Given the payload received, return the reply to send, or ``None`` for no reply."""

Observer = Callable[[Datagram], None]

# Counting distinct peers must not let spoofed sources grow memory without bound.
_PEER_CAP = 65_536


@dataclass
class ServeStats:
    """What a server saw and did; every datagram is in exactly one bucket.

    ``received`` counts every datagram (whole or truncated); ``truncated`` those
    whose payload was larger than the receive buffer, and ``replies`` /
    ``reply_errors`` / ``unreplyable`` say what became of the answers.
    """

    received: int = 0
    bytes_received: int = 0
    truncated: int = 0
    replies: int = 0
    bytes_sent: int = 0
    reply_errors: dict[int, int] = field(default_factory=dict)
    unreplyable: int = 0
    _peers: set[Any] = field(default_factory=set, repr=False)
    peers_capped: bool = False

    @property
    def peers(self) -> int:
        """Distinct peers seen (a lower bound once ``peers_capped`` is true)."""
        return len(self._peers)

    def note_peer(self, peer: Any) -> None:
        """Record ``peer`` as seen, within a fixed memory bound."""
        if len(self._peers) < _PEER_CAP:
            self._peers.add(peer)
        elif peer not in self._peers:
            self.peers_capped = True


def reply_handler(mode: str, text: bytes = b"Hello UDP Client") -> Handler | None:
    """Build the handler for a CLI reply mode.

    Args:
        mode: ``"reply"`` (answer ``text``), ``"echo"`` (answer the payload) or
            ``"none"`` (stay silent).
        text: the fixed reply for ``"reply"``.

    Returns:
        A handler, or ``None`` for ``"none"``.

    Raises:
        ValueError: for an unknown mode.
    """
    if mode == "reply":
        return lambda _data: text
    if mode == "echo":
        return lambda data: data
    if mode == "none":
        return None
    raise ValueError(f"unknown reply mode {mode!r}: use 'reply', 'echo' or 'none'")


def _unnamed(peer: Any) -> bool:
    # An unbound Unix-domain client has no address to answer to.
    return peer is None or peer in ("", b"")


class _Stoppable:
    """A socketpair that makes ``stop()`` from any thread wake the loop at once."""

    def __init__(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False

    def stop(self) -> None:
        """Ask the loop to end; safe from any thread and from signal handlers."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _close_wakeup(self) -> None:
        self._wake_r.close()
        self._wake_w.close()


class DatagramServer(_Stoppable):
    """Receive datagrams on a socket, report each, and answer through a handler.

    Args:
        sock: a bound datagram socket (UDP, UDP-Lite or Unix datagram).
        handler: the reply policy, or ``None`` to never reply.
        bufsize: receive buffer; larger datagrams are kept truncated and counted.
        count: stop after this many datagrams (``None``: run until ``stop()``).
        observer: called with every datagram received, before the reply.
    """

    def __init__(
        self,
        sock: DatagramSocket,
        handler: Handler | None,
        *,
        bufsize: int = 65535,
        count: int | None = None,
        observer: Observer | None = None,
    ) -> None:
        super().__init__()
        self.sock = sock
        self.handler = handler
        self.bufsize = bufsize
        self.count = count
        self.observer = observer
        self.stats = ServeStats()

    def close(self) -> None:
        """Release the wake-up sockets (not the served socket, which the caller owns)."""
        self._close_wakeup()

    def serve(self) -> ServeStats:
        """Serve until ``count`` datagrams arrived or ``stop()`` was called.

        Returns:
            The final counters.
        """
        fd = self.sock.fileno()
        wake = self._wake_r.fileno()
        stats = self.stats
        while not self._stopping and (self.count is None or stats.received < self.count):
            readable, _, _ = select.select([fd, wake], [], [])
            if wake in readable:
                break
            try:
                dgram = self.sock.recv(self.bufsize, timeout=0)
            except Timeout:
                continue  # a spurious wake-up
            except NetworkError:
                # An ICMP error queued from an earlier reply (unconnected
                # sockets with IP_RECVERR): not fatal for a server.
                continue
            stats.received += 1
            stats.bytes_received += dgram.length
            if dgram.truncated:
                stats.truncated += 1
            stats.note_peer(dgram.peer)
            if self.observer is not None:
                self.observer(dgram)
            if self.handler is None:
                continue
            reply = self.handler(dgram.data)
            if reply is None:
                continue
            if _unnamed(dgram.peer):
                stats.unreplyable += 1
                continue
            try:
                stats.bytes_sent += self.sock.send(reply, dgram.peer)
                stats.replies += 1
            except (NetworkError, UdpkitError) as exc:
                code = exc.errno if isinstance(exc, OSError) and exc.errno else 0
                stats.reply_errors[code] = stats.reply_errors.get(code, 0) + 1
        return stats


class StreamServer(_Stoppable):
    """The seed's simple TCP server: every chunk a client sends is one message.

    Each message is reported and answered on its connection; a connection ends
    when the client closes its side.  Connections are served together from one
    thread with a selector, so one slow client cannot block the others.
    """

    def __init__(
        self,
        listener: StreamListener,
        handler: Handler | None,
        *,
        bufsize: int = 65535,
        count: int | None = None,
        observer: Observer | None = None,
    ) -> None:
        super().__init__()
        self.listener = listener
        self.handler = handler
        self.bufsize = bufsize
        self.count = count
        self.observer = observer
        self.stats = ServeStats()

    def close(self) -> None:
        """Release the wake-up sockets (the listener belongs to the caller)."""
        self._close_wakeup()

    def serve(self) -> ServeStats:
        """Serve until ``count`` messages arrived or ``stop()`` was called."""
        stats = self.stats
        conns: dict[int, tuple[StreamSocket, Any]] = {}
        with selectors.DefaultSelector() as sel:
            sel.register(self.listener.sock, selectors.EVENT_READ, "listen")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            try:
                while not self._stopping and (self.count is None or stats.received < self.count):
                    for key, _ in sel.select():
                        if key.data == "wake":
                            return stats
                        if key.data == "listen":
                            try:
                                conn, peer = self.listener.accept(timeout=0)
                            except (Timeout, NetworkError):
                                continue
                            conns[conn.sock.fileno()] = (conn, peer)
                            sel.register(conn.sock, selectors.EVENT_READ, "conn")
                            continue
                        conn, peer = conns[key.fd]
                        if not self._serve_chunk(conn, peer):
                            sel.unregister(conn.sock)
                            del conns[key.fd]
                            conn.close()
                        if self.count is not None and stats.received >= self.count:
                            break
            finally:
                for conn, _ in conns.values():
                    conn.close()
        return stats

    def _serve_chunk(self, conn: StreamSocket, peer: Any) -> bool:
        """Read one chunk and answer it; False when the connection is over."""
        stats = self.stats
        try:
            data = conn.recv(self.bufsize, timeout=0)
        except (Timeout, NetworkError):
            return False
        if not data:
            return False
        stats.received += 1
        stats.bytes_received += len(data)
        stats.note_peer(peer if peer not in ("", b"", None) else ("unix", id(conn)))
        if self.observer is not None:
            self.observer(Datagram(data, peer, len(data)))
        reply = self.handler(data) if self.handler is not None else None
        if reply is None:
            return True
        try:
            conn.send_all(reply)
        except NetworkError as exc:
            code = exc.errno or 0
            stats.reply_errors[code] = stats.reply_errors.get(code, 0) + 1
            return False
        stats.replies += 1
        stats.bytes_sent += len(reply)
        return True


def monotonic_deadline(timeout: float | None) -> float | None:
    """The monotonic instant ``timeout`` seconds from now (``None``: no deadline)."""
    return None if timeout is None else time.monotonic() + timeout
