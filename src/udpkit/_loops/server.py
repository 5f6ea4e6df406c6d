"""Servers: a datagram socket on the engine, and the textbook's stream server.

:class:`DatagramServer` is what ``udpkit serve`` runs: it builds one
:class:`~udpkit._core.serving.ServeStep` (the answer, the policy, what to show, the
recorder) and hands it to the batching :class:`~udpkit._loops.engine.Engine`; its
:attr:`~DatagramServer.stats` gather every counter, live.  What to answer is a
*handler* ``(datagram) -> reply | None`` (or ECHO, or a Fixed reply) and what
to show an *observer*, called once per admitted batch; the CLI builds both, a
library user passes their own.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from udpkit._core.counters import add_counters, counters_dict
from udpkit._core.datagram import Peer
from udpkit._core.errors import NetworkError, Timeout, UsageError, map_oserror
from udpkit._core.policy import Policy
from udpkit._core.serving import ECHO, BatchObserver, Fixed, Handler, PeerSet, ServeStep, _unnamed
from udpkit._loops.engine import Engine, EngineStats
from udpkit._loops.sigwake import signals_wake
from udpkit._net.kernel import Waker, errno_name
from udpkit._net.sockets import Datagram, DatagramSocket
from udpkit._net.stream import StreamListener, StreamSocket

if TYPE_CHECKING:
    from udpkit._loops.record import Recorder

__all__ = [
    "BatchObserver",
    "DatagramServer",
    "ServeStats",
    "StreamServer",
    "reply_handler",
]


@dataclass
class ServeStats:
    """What a server saw and did; every message is in exactly one bucket.

    ``received`` counts every datagram (whole or truncated) and ``bytes_received``
    their real lengths; ``truncated`` those longer than the receive buffer.
    ``kernel_drops`` is what the kernel dropped before udpkit could read it
    (``None`` where the platform cannot tell), so on one host
    ``sent == received + kernel_drops`` exactly.  ``peers`` is ``None`` when not
    counted (``--quiet`` with no replies); it is exact up to 4,096 peers and an
    estimate (``peers_estimated``) past that, so spoofed sources cannot grow memory.
    """

    received: int = 0
    bytes_received: int = 0
    truncated: int = 0
    truncated_bytes_lost: int = 0
    replies: int = 0
    bytes_sent: int = 0
    reply_errors: dict[str, int] = field(default_factory=dict)
    handler_errors: int = 0
    unreplyable: int = 0
    kernel_drops: int | None = None
    peers: int | None = None
    peers_estimated: bool = False
    policy: dict[str, int] = field(default_factory=dict)
    record: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """The counters as a plain dict (ready for JSON)."""
        return counters_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeStats:
        """Rebuild counters from :meth:`as_dict` output (e.g. sent by a worker)."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def merge(self, other: ServeStats) -> None:
        """Add ``other``'s counters to these (summing workers).

        Unknown (``None``) figures stay unknown only when both sides are unknown.
        SO_REUSEPORT sends each peer to one worker, so peer counts add up.
        """
        add_counters(self, other)


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
        return Fixed(text)
    if mode == "echo":
        return ECHO
    if mode == "none":
        return None
    raise ValueError(f"unknown reply mode {mode!r}: use 'reply', 'echo' or 'none'")


class _Metrics:
    """:meth:`start_metrics` for both servers: their live :attr:`stats` for Prometheus."""

    _stop_metrics: Callable[[], None] | None = None

    @property
    def stats(self) -> ServeStats:
        raise NotImplementedError  # each server's own

    def start_metrics(self, where: str | tuple[str, int | str]) -> str:
        """Serve :attr:`stats` for Prometheus from a thread, until :meth:`close`.

        Every scrape reads the counters afresh; nothing is copied on the hot path.

        Args:
            where: ``"[HOST:]PORT"`` (host 127.0.0.1) or ``(host, port)`` to listen on (TCP).

        Returns:
            The URL, ``http://HOST:PORT/metrics``.

        Raises:
            UsageError: prometheus-client is not installed, or metrics already run.
            AddressError: a bad host or port.
            NetworkError: the address cannot be bound.
        """
        from udpkit._loops.metrics import serve_metrics

        if self._stop_metrics is not None:
            raise UsageError("metrics are served already: one start_metrics() per server")
        # A fresh snapshot per scrape: `stats` is computed on access.
        self._stop_metrics, url = serve_metrics(where, lambda: self.stats)
        return url

    def _close_metrics(self) -> None:
        stop_metrics, self._stop_metrics = self._stop_metrics, None
        if stop_metrics is not None:
            stop_metrics()  # may wait 0.5 s for the metrics thread


class DatagramServer(_Metrics):
    """Receive datagrams on a socket, report each batch, and answer through a handler.

    Built on the batching engine: each received batch goes through one
    :class:`~udpkit._core.serving.ServeStep` (admission, answer, reply budget,
    counters) and its replies go out together.  Every datagram is either
    delivered whole, or counted (truncated, dropped by the kernel, refused by
    the policy, or unanswerable).

    Args:
        sock: a bound datagram socket (UDP, UDP-Lite or Unix datagram).
        handler: the reply: a handler ``(Datagram) -> reply | None``,
            :data:`udpkit.ECHO`, a :class:`udpkit.Fixed` reply, or ``None`` to
            never reply.  ECHO and Fixed replies are sent a whole batch at a time,
            straight from the receive buffers, when nothing needs each datagram.
        bufsize: receive buffer; larger datagrams are kept truncated and counted.
        count: stop after this many datagrams (``None``: run until ``stop()``).
        observer: called with every batch of admitted datagrams, before the replies.
        count_peers: count distinct peers.
        fast: ``None`` picks recvmmsg/sendmmsg where available; ``False``
            forces the portable ``recvfrom``/``sendto`` path.
        gro: receive with UDP GRO (fastest; the kernel then counts a dropped
            coalesced buffer as one drop, so keep it off for exact accounting).
        busy_poll_us: spin this long on an empty socket before sleeping.
        policy: admission and reply rules; by default a :class:`~udpkit.Policy`
            that trusts loopback and holds every other source to the
            anti-amplification budget (replies never exceed the bytes received).
            Datagrams it refuses are counted, not shown, not answered.
        recorder: a :class:`~udpkit.Recorder` that writes every admitted datagram;
            its counters are part of :attr:`stats` (``record``) at every moment.
            A recorder with no ``stop_server`` of its own stops this server when
            its disk fails (with ``on_full="stop"``).

    Prometheus metrics of the live counters: :meth:`start_metrics`.
    """

    def __init__(
        self,
        sock: DatagramSocket,
        handler: Handler | None,
        *,
        bufsize: int = 65535,
        count: int | None = None,
        observer: BatchObserver | None = None,
        count_peers: bool = True,
        fast: bool | None = None,
        gro: bool = False,
        busy_poll_us: int = 0,
        policy: Policy | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        if not isinstance(sock, DatagramSocket):
            raise UsageError(
                f"DatagramServer() takes a udpkit DatagramSocket, not {type(sock).__name__} "
                f"{sock!r:.60} (from udpkit.udp_bind(host, port) or udpkit.bind_server(...))"
            )
        self.sock = sock
        self.count = count
        self.recorder = recorder
        if recorder is not None and recorder.stop_server is None:
            recorder.stop_server = self.stop  # a failed disk ends serving, counted
        if policy is None and sock.family != socket.AF_UNIX:
            policy = Policy(local=sock.local_address)
        self.policy = policy
        shown = observer
        if recorder is not None:
            shown = self._record_and_show(recorder, observer)
        self.step = ServeStep(handler, policy=policy, observer=shown, count_peers=count_peers)
        self.engine = Engine(
            sock.sock,
            self.step,
            bufsize=bufsize,
            fast=fast,
            gro=gro,
            busy_poll_us=busy_poll_us,
        )

    @staticmethod
    def _record_and_show(recorder: Recorder, observer: BatchObserver | None) -> BatchObserver:
        record = recorder.record_batch

        def record_and_show(batch: Sequence[Datagram]) -> None:
            record(batch, time.time())  # the wall clock, read once per batch
            if observer is not None:
                observer(batch)

        return record_and_show

    @property
    def stats(self) -> ServeStats:
        """The counters so far, every one of them live (final once :meth:`serve` returned)."""
        self.engine.read_kernel_drops()  # fresh, for SIGUSR1 and metrics mid-run
        es: EngineStats = self.engine.stats
        step = self.step
        peers = step.peers
        record: dict[str, int] = {}
        if self.recorder is not None:
            rec = self.recorder.stats
            record = {
                "recorded": rec.recorded,
                "record_dropped": rec.record_dropped,
                "record_errors": rec.record_errors,
            }
        return ServeStats(
            received=es.rx_datagrams,
            bytes_received=es.rx_bytes,
            truncated=es.truncated,
            truncated_bytes_lost=es.truncated_bytes_lost,
            replies=es.tx_datagrams,
            bytes_sent=es.tx_bytes,
            reply_errors=dict(es.send_errors),
            handler_errors=step.stats.handler_errors,
            unreplyable=step.stats.unreplyable,
            kernel_drops=es.kernel_drops,
            peers=None if peers is None else peers.count,
            peers_estimated=False if peers is None else peers.estimated,
            policy={} if self.policy is None else self.policy.counters,
            record=record,
        )

    def serve(self) -> ServeStats:
        """Serve until ``count`` datagrams arrived or :meth:`stop` was called.

        Returns:
            The final counters.
        """
        self.engine.run(count=self.count)
        return self.stats

    def stop(self) -> None:
        """End :meth:`serve` soon (within 0.1 s); safe from threads and signal handlers."""
        self.engine.stop()

    def close(self) -> None:
        """Release the engine's wake-up sockets and stop the metrics (not the served socket)."""
        self.engine.close()
        self._close_metrics()


class StreamServer(_Metrics):
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
        observer: BatchObserver | None = None,
    ) -> None:
        if not isinstance(listener, StreamListener):
            raise UsageError(
                f"StreamServer() takes a udpkit StreamListener, not {type(listener).__name__} "
                f"{listener!r:.60} (from udpkit.tcp_listen(host, port))"
            )
        self.listener = listener
        self.handler = handler
        self.bufsize = bufsize
        self.count = count
        self.observer = observer
        self._stats = ServeStats(peers=0)
        self._peers = PeerSet()
        self._waker = Waker()
        self._stopping = False

    @property
    def stats(self) -> ServeStats:
        """The counters so far (final once :meth:`serve` returned)."""
        return self._stats

    def stop(self) -> None:
        """Ask :meth:`serve` to end; safe from any thread and from signal handlers."""
        self._stopping = True
        self._waker.wake()

    def close(self) -> None:
        """Release the wake-up sockets and stop the metrics (the listener is the caller's)."""
        self._waker.close()
        self._close_metrics()

    def serve(self) -> ServeStats:
        """Serve until ``count`` messages arrived or :meth:`stop` was called."""
        waker = self._waker
        listen_fd = self.listener.sock.fileno()
        conns: dict[int, tuple[StreamSocket, Peer]] = {}
        waker.register(listen_fd)
        try:
            with signals_wake(waker.signal_fd):
                while not self._done():
                    # Empty after stop() or a signal (SIGUSR1 asks for counters and
                    # serving goes on): the loop's test decides.
                    for fd in waker.wait(None):
                        if self._done():
                            break
                        if fd == listen_fd:
                            try:
                                conn, peer = self.listener.accept(timeout=0)
                            except (Timeout, NetworkError):
                                continue
                            conns[conn.sock.fileno()] = (conn, peer)
                            waker.register(conn.sock.fileno())
                            continue
                        conn, peer = conns[fd]
                        if not self._serve_chunk(conn, peer):
                            waker.unregister(fd)
                            del conns[fd]
                            conn.close()
        finally:
            waker.unregister(listen_fd)
            for fd, (conn, _) in conns.items():
                waker.unregister(fd)
                conn.close()
        return self.stats

    def _done(self) -> bool:
        return self._stopping or (self.count is not None and self.stats.received >= self.count)

    def _serve_chunk(self, conn: StreamSocket, peer: Peer) -> bool:
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
        # An unnamed Unix client has no address: count each connection as a peer.
        dgram = Datagram(data, peer if not _unnamed(peer) else ("unix", id(conn)), len(data))
        self._peers.add((dgram.peer,))
        stats.peers = self._peers.count
        stats.peers_estimated = self._peers.estimated
        if self.observer is not None:
            self.observer((Datagram(data, peer, len(data)),))
        reply = self.handler(dgram) if self.handler is not None else None
        if reply is None:
            return True
        replies = [reply] if isinstance(reply, bytes | bytearray | memoryview) else list(reply)
        try:
            for r in replies:
                if not self._send_until_stopped(conn, bytes(r)):
                    stats.reply_errors["stopped"] = stats.reply_errors.get("stopped", 0) + 1
                    return False
                stats.replies += 1
                stats.bytes_sent += len(r)
        except NetworkError as exc:
            name = errno_name(exc.errno)
            stats.reply_errors[name] = stats.reply_errors.get(name, 0) + 1
            return False
        return True

    def _send_until_stopped(self, conn: StreamSocket, data: bytes) -> bool:
        """Send all of ``data``; False if :meth:`stop` came first.

        A blocking sendall to a client that never reads never returns, and the
        stop flag a signal handler sets is only looked at between chunks: wait
        for room in 0.1 s slices instead, so SIGINT/SIGTERM end serve promptly.
        """
        sock = conn.sock
        view = memoryview(data)
        sock.settimeout(0.1)
        try:
            while view:
                if self._stopping:
                    return False
                try:
                    n = sock.send(view)
                except TimeoutError:
                    continue  # no room yet: look at the stop flag again
                except OSError as exc:
                    raise map_oserror(exc, "send to client") from exc
                view = view[n:]
        finally:
            sock.settimeout(None)
        return True
