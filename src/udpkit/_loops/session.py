"""The loop behind ``udpkit connect`` and ``udpkit listen``: stdin to datagrams and back.

One thread sleeps (a :class:`~udpkit._net.kernel.Waker`) on the UDP socket,
standard input and a wake-up socket (what :meth:`Session.stop` and a signal
write to).

- **stdin to the network.** In line mode each line is one datagram, its
  newline kept (what ``nc -u`` sends when a line is typed); a line longer than
  the largest datagram is cut, and said so once. In chunk mode stdin is a
  stream cut into ``chunk``-byte datagrams: a read takes what is there (it
  never waits for a line), and a short piece waits for more only while more
  is already readable, so a file goes out in full-size datagrams and a typed
  word goes out at once. Datagrams leave in batches (``sendmmsg``, and UDP GSO
  when they have one size) through :func:`udpkit._net.sendmmsg.send_batch`.
- **The network to the sink.** Queued datagrams are read in batches
  (``recvmmsg`` on Linux), counted, then handed to the caller's ``sink`` with
  their peers and the wall-clock time, once per batch.
- **Where replies go.** A connected socket (``connect``) sends to its peer; an
  unbound listener (``listen``) sends to the peer that spoke last, and counts
  what stdin gave before anyone spoke as ``unsent`` (said once).
- **When it ends.** ``count`` datagrams received; for ``connect``, ``wait``
  seconds without a datagram once stdin has ended; for ``listen``, ``idle``
  seconds without traffic either way (stdin's end does not stop a listener, as
  with ``nc -l``); :meth:`Session.stop` (a signal handler calls it). Whatever
  is still queued on the socket is read before the end, so nothing that arrived
  is left uncounted, and the kernel's drop count for the socket is read last.

ICMP errors that a connected socket reports (``ECONNREFUSED`` when nothing
listens) are counted by errno name and reported once through ``notice``;
they never end the session.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from udpkit._core.datagram import Peer
from udpkit._core.errors import NetworkError, UsageError, map_oserror
from udpkit._loops.sigwake import signals_wake
from udpkit._net.addr import MAX_UDP_PAYLOAD, format_sockaddr
from udpkit._net.kernel import (
    AGAIN,
    ICMP_ERRORS,
    MSG_DONTWAIT,
    MSG_TRUNC,
    Waker,
    errno_name,
    proc_drops,
    wait_writable,
)
from udpkit._net.mmsg import MsgArray, PeerCache, fast_path_available, libc_mmsg
from udpkit._net.sendmmsg import send_batch

__all__ = ["Session", "SessionConfig", "SessionStats", "Sink", "Stopped"]

# What the sink gets once per received batch: payloads, their peers, wall-clock time.
Sink = Callable[[list[bytes], list[Any], float], None]

_BATCH = 64  # datagrams per recvmmsg
_ROUNDS = 16  # batches read per wake-up before stdin gets a turn
_BUFSIZE = 65535  # holds any UDP datagram over IPv4; MSG_TRUNC tells the rest
_READ = 1 << 16  # line mode: bytes per read of stdin
_CHUNK_READ = 1 << 18  # chunk mode: at most this many bytes per read of stdin
_DRAIN_ROUNDS = 1024  # batches read at the end: more than a full 4 MiB receive buffer holds
_PEERS_MAX = 1 << 16  # distinct peers counted exactly; past this "at least"


class Stopped(Exception):
    """Raised out of a blocked write by :meth:`Session.stop` (a signal), so a
    session whose output pipe is full still ends on Ctrl-C or SIGTERM."""


@dataclass(frozen=True)
class SessionConfig:
    """What a session does; every field has the meaning its option has.

    Attributes:
        chunk: ``None`` sends one datagram per line of stdin; N cuts stdin into
            N-byte datagrams.
        count: end after this many datagrams received (``None``: no limit).
        wait: after stdin's end, end once no datagram has come for this many
            seconds (``connect``); ``None`` keeps going.
        idle: end after this many seconds without a datagram in or out
            (``listen``); ``None`` keeps going.
        fast: ``None`` uses ``recvmmsg`` where it exists, ``False`` ``recvfrom``.
    """

    chunk: int | None = None
    count: int | None = None
    wait: float | None = None
    idle: float | None = None
    fast: bool | None = None


@dataclass
class SessionStats:
    """What a session did; read it after :meth:`Session.run`, however it ended."""

    sent: int = 0
    bytes_sent: int = 0
    received: int = 0
    bytes_received: int = 0
    peers: int = 0
    peers_capped: bool = False  # more than _PEERS_MAX distinct peers: ``peers`` is a floor
    unsent: int = 0  # datagrams from stdin with nobody to send them to yet
    cut_lines: int = 0  # lines longer than a datagram, sent in pieces
    errors: dict[str, int] = field(default_factory=dict)  # errno name -> count
    kernel_drops: int | None = None  # None: this platform cannot tell
    ended_by: str = ""  # "eof", "count", "wait", "idle", "stop"


class Session:
    """A ``nc -u``-style session on one UDP socket; :meth:`run` drives it.

    Args:
        sock: the UDP socket, bound (``listen``) or connected (``connect``); the
            session uses it but does not close it.
        sink: called with each received batch (see :data:`Sink`).
        config: what to do and when to end.
        stdin_fd: the descriptor to read datagrams from; ``None`` is an input
            that has ended already.
        notice: one line for the user (stderr), without the newline; called at
            most once per kind of event.
    """

    def __init__(
        self,
        sock: socket.socket,
        sink: Sink,
        config: SessionConfig,
        *,
        stdin_fd: int | None,
        notice: Callable[[str], None],
    ) -> None:
        if sock.type != socket.SOCK_DGRAM:
            raise UsageError(f"a session needs a datagram socket, not {sock.type!r}")
        limit = MAX_UDP_PAYLOAD.get(sock.family, 65507)
        if config.chunk is not None and not 1 <= config.chunk <= limit:
            raise UsageError(
                f"invalid chunk size {config.chunk}: must be 1-{limit} bytes "
                f"(the largest {'IPv6' if sock.family == socket.AF_INET6 else 'IPv4'} "
                "UDP datagram)"
            )
        self.sock = sock
        self.sink = sink
        self.config = config
        self.notice = notice
        self.stats = SessionStats()
        self._limit = limit
        self._fd = sock.fileno()
        self._stdin = stdin_fd
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        self._connected = peer is not None
        self._peer = peer
        self._peer_text = format_sockaddr(peer) if peer is not None else ""
        self._to: Peer = None  # listen: the latest peer
        self._peer_set: set[Peer] = set()
        self._pending = b""  # stdin bytes not sent yet (a partial line or chunk)
        self._said: set[str] = set()
        self._stop = False
        self._writing = False  # inside the sink: stop() raises Stopped there
        self._waker = Waker(self._fd)
        fast = config.fast
        usable = fast_path_available() and sock.family in (socket.AF_INET, socket.AF_INET6)
        if fast and not usable:
            raise UsageError("fast=True: recvmmsg is not available for this socket; pass None")
        self._rx: MsgArray | None = None
        self._cache: PeerCache | None = None
        if usable and fast is not False:
            self._rx = MsgArray(_BATCH, _BUFSIZE)
            self._rx.strip(names=True, control=False)
            self._cache = PeerCache(sock.family == socket.AF_INET)

    # -- control ------------------------------------------------------------------

    def stop(self) -> None:
        """End :meth:`run` soon; safe from a signal handler and from another thread.

        Called while the sink is writing (a full output pipe may block it for
        ever), it raises :class:`Stopped` there instead, which :meth:`run`
        passes on after its last counts.
        """
        self._stop = True
        self._waker.wake()
        if self._writing:
            self._writing = False
            raise Stopped

    def close(self) -> None:
        """Release the wake-up pair and poller (not the socket, which the caller owns)."""
        self._waker.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the loop -----------------------------------------------------------------

    def run(self) -> SessionStats:
        """Run until an end condition (see the module docstring); return the counts.

        Raises:
            Stopped: :meth:`stop` was called while the sink was blocked.
            Whatever the sink raises (``BrokenPipeError`` for a closed pipe);
            ``stats`` holds the counts up to then in every case.
        """
        st = self.stats
        waker = self._waker
        stdin = self._stdin
        # A regular file (or /dev/null) is always readable and epoll refuses it:
        # such an input is read on every turn instead of waited for.
        always = False
        if stdin is not None:
            try:
                waker.register(stdin)
            except OSError:
                always = True
        now = time.monotonic()
        eof_at: float | None = now if stdin is None else None
        last_traffic = now
        try:
            with signals_wake(waker.signal_fd):
                while not self._stop:
                    timeout = self._timeout(now, eof_at, last_traffic)
                    if timeout == 0.0:
                        break
                    ready = waker.wait(0.0 if always else timeout)
                    now = time.monotonic()
                    if always or self._fd in ready:
                        if self._receive(_ROUNDS):
                            last_traffic = now
                        if self._count_done():
                            st.ended_by = "count"
                            return st
                    if stdin is not None and (always or stdin in ready):
                        sent_before = st.sent
                        if not self._read_stdin():
                            if not always:
                                waker.unregister(stdin)
                            stdin = self._stdin = None
                            always = False
                            eof_at = now
                        if st.sent != sent_before:
                            last_traffic = now
                if self._stop:
                    st.ended_by = "stop"
                # The queue is read out before the end: every datagram that
                # arrived is counted (and shown), never left behind unseen.
                while not self._count_done() and self._receive(_DRAIN_ROUNDS):
                    pass
                return st
        finally:
            self._finish()

    def _timeout(self, now: float, eof_at: float | None, last_traffic: float) -> float | None:
        """Seconds to sleep in poll (``None``: until something happens); 0.0 means end."""
        cfg = self.config
        deadline: float | None = None
        why = ""
        if self._connected and eof_at is not None and cfg.wait is not None:
            deadline, why = max(eof_at, last_traffic) + cfg.wait, "wait"
        if cfg.idle is not None:
            idle_end = last_traffic + cfg.idle
            if deadline is None or idle_end < deadline:
                deadline, why = idle_end, "idle"
        if deadline is None:
            return None
        left = deadline - now
        if left <= 0:
            self.stats.ended_by = why
            return 0.0
        return left

    def _count_done(self) -> bool:
        count = self.config.count
        return count is not None and self.stats.received >= count

    def _finish(self) -> None:
        st = self.stats
        st.peers = len(self._peer_set)
        with contextlib.suppress(OSError):
            st.kernel_drops = proc_drops(self._fd)
        if not st.ended_by:
            st.ended_by = "stop" if self._stop else "eof"

    # -- receiving ------------------------------------------------------------------

    def _receive(self, rounds: int) -> bool:
        """Read up to ``rounds`` batches that are queued; True if any datagram came."""
        got = False
        for _ in range(rounds):
            want = _BATCH
            count = self.config.count
            if count is not None:
                want = min(want, count - self.stats.received)
                if want <= 0:
                    return got
            n = self._recv_fast(want) if self._rx is not None else self._recv_portable(want)
            if n:
                got = True
            if n < want:
                return got
        return got

    def _recv_fast(self, want: int) -> int:
        rx = self._rx
        cache = self._cache
        assert rx is not None and cache is not None
        rx.reset()
        n: int = libc_mmsg.recvmmsg(self._fd, rx.hdrs_addr, want, MSG_TRUNC | MSG_DONTWAIT, None)
        if n <= 0:
            code = ctypes.get_errno() if n < 0 else errno.EAGAIN
            self._recv_error(code)
            return 0
        lens = rx.msg_lens(n)
        view = rx.data_view
        size = _BUFSIZE
        payloads = [
            bytes(view[o : o + min(ln, size)])
            for o, ln in zip(range(0, n * size, size), lens, strict=True)
        ]
        if self._connected:
            peers = [self._peer] * n
        else:
            _keys, peers = cache.peers(rx, n)
        self._deliver(payloads, peers, sum(lens))
        return n

    def _recv_portable(self, want: int) -> int:
        payloads: list[bytes] = []
        peers: list[Peer] = []
        while len(payloads) < want:
            try:
                data, peer = self.sock.recvfrom(_BUFSIZE, MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._recv_error(exc.errno or 0)
                break
            payloads.append(data)
            peers.append(peer)
        if payloads:
            self._deliver(payloads, peers, sum(map(len, payloads)))
        return len(payloads)

    def _recv_error(self, code: int) -> None:
        if code in AGAIN or code == errno.EINTR:
            return
        if code in ICMP_ERRORS:
            self._count_error(code)
            return
        raise map_oserror(OSError(code, os.strerror(code)), "receive")

    def _deliver(self, payloads: list[bytes], peers: list[Peer], nbytes: int) -> None:
        st = self.stats
        st.received += len(payloads)
        st.bytes_received += nbytes
        if not st.peers_capped:
            self._peer_set.update(peers)
            if len(self._peer_set) > _PEERS_MAX:
                st.peers_capped = True
        st.peers = len(self._peer_set)
        self._to = peers[-1]
        self._writing = True
        try:
            self.sink(payloads, peers, time.time())
        finally:
            self._writing = False

    # -- sending ------------------------------------------------------------------

    def _read_stdin(self) -> bool:
        """Read what stdin holds and send it; False at its end (the rest sent)."""
        fd = self._stdin
        assert fd is not None
        chunk = self.config.chunk
        size = _READ if chunk is None else max(chunk, _CHUNK_READ // chunk * chunk)
        try:
            data = os.read(fd, size)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""  # an input that fails (EIO from a hung-up terminal) has ended
        if not data:
            if self._pending:
                self._send([self._pending])
                self._pending = b""
            return False
        buf = self._pending + data if self._pending else data
        if chunk is None:
            payloads, self._pending = self._lines(buf)
        else:
            cut = len(buf) - len(buf) % chunk
            payloads = [buf[i : i + chunk] for i in range(0, cut, chunk)]
            self._pending = buf[cut:]
            # A short piece waits for more only while more is already there.
            if self._pending and not _readable(fd):
                payloads.append(self._pending)
                self._pending = b""
        if payloads:
            self._send(payloads)
        return True

    def _lines(self, buf: bytes) -> tuple[list[bytes], bytes]:
        """Split ``buf`` into whole lines (newline kept) and the unfinished rest."""
        parts = buf.split(b"\n")
        rest = parts.pop()
        limit = self._limit
        out: list[bytes] = []
        for p in parts:
            line = p + b"\n"
            if len(line) <= limit:
                out.append(line)
            else:
                out.extend(self._cut(line))
        if len(rest) > limit:
            pieces = self._cut(rest)
            rest = pieces.pop() if len(pieces[-1]) < limit else b""
            out.extend(pieces)
        return out, rest

    def _cut(self, line: bytes) -> list[bytes]:
        limit = self._limit
        self.stats.cut_lines += 1
        self._say_once(
            "cut",
            f"a line of {len(line)} bytes is longer than the largest datagram ({limit} bytes): "
            "sent in pieces (--chunk N sends a stream in N-byte datagrams)",
        )
        return [line[i : i + limit] for i in range(0, len(line), limit)]

    def _send(self, payloads: Sequence[bytes]) -> None:
        st = self.stats
        to = None
        if not self._connected:
            to = self._to
            if to is None:
                st.unsent += len(payloads)
                self._say_once(
                    "nopeer",
                    "nobody to send to yet: what you type goes to the latest peer once one "
                    "has sent a datagram (counted as unsent until then)",
                )
                return
        k = 0
        retried = False
        while k < len(payloads):
            try:
                n = send_batch(self.sock, payloads[k:], to)
            except NetworkError as exc:
                self._count_error(exc.errno)
                if retried or exc.errno not in ICMP_ERRORS:
                    # The datagram itself cannot go: count it unsent, go on.
                    st.unsent += 1
                    k += 1
                    retried = False
                else:
                    # An ICMP error about an earlier datagram: this one may go now.
                    retried = True
                continue
            if n == 0:  # blocked (cannot happen on a blocking socket): wait a little
                wait_writable(self._fd, 0.1)
                continue
            st.sent += n
            st.bytes_sent += sum(map(len, payloads[k : k + n]))
            k += n
            retried = False

    def _count_error(self, code: int | None) -> None:
        name = errno_name(code)
        errors = self.stats.errors
        errors[name] = errors.get(name, 0) + 1
        if code == errno.ECONNREFUSED and self._connected:
            self._say_once(
                name, f"no listener at {self._peer_text} (ICMP port unreachable); counted"
            )
        else:
            self._say_once(name, f"{name} ({os.strerror(code or 0)}); counted")

    def _say_once(self, kind: str, text: str) -> None:
        if kind not in self._said:
            self._said.add(kind)
            self.notice(text)


def _readable(fd: int) -> bool:
    try:
        ready, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(ready)
