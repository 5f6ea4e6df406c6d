"""What udpkit.aio's Endpoint and Server share (:class:`AioSocket`): the socket, batched
and single reads, queued batched sends, busy polling and the counters."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Self

from udpkit._core.counters import counters_dict
from udpkit._core.datagram import AnySockAddr, SockAddr
from udpkit._core.errors import NetworkError, Unsupported, UsageError, map_oserror
from udpkit._net.addr import MAX_UDP_PAYLOAD
from udpkit._net.kernel import (
    AGAIN,
    ICMP_ERRORS,
    LINUX,
    MSG_DONTWAIT,
    MSG_TRUNC,
    SOL_UDP,
    UDP_GRO,
    errno_name,
    proc_drops,
)
from udpkit._net.mcast import join_group, leave_group, set_multicast_send
from udpkit._net.mmsg import (
    MM,
    PEER_CACHE_MAX,
    MsgArray,
    PeerCache,
    fast_path_available,
    libc_mmsg,
)
from udpkit._net.sendmmsg import send_batch
from udpkit._net.sockets import Datagram, DatagramSocket

__all__ = [
    "BUSY_SLICE",
    "PEER_CACHE_MAX",
    "SERVER_BATCHES",
    "AioSocket",
    "EndpointStats",
    "resolve_waiter",
]
# A server reads at most this many batches per readiness, so one flooded socket
# cannot starve the other tasks of the loop (epoll is level-triggered: it comes back).
SERVER_BATCHES = 16
# With busy polling, a reader gives the loop's other tasks a turn at least this often (s).
BUSY_SLICE = 0.001
# Closing reads what the socket still holds for at most this long (s).
DRAIN_LIMIT = 0.1
_RECV_FLAGS = MSG_TRUNC | MSG_DONTWAIT
# recvfrom_into's flags: the real length where the kernel reports it (Linux), else none
# (the portable buffer then holds 64 KiB, any datagram); the socket is non-blocking.
_ONE_FLAGS = _RECV_FLAGS if LINUX else 0
_new = tuple.__new__


@dataclass
class EndpointStats:
    """What an endpoint or server saw and did.

    On one host, ``datagrams sent to it == received + kernel_drops``: every
    datagram is either read (and counted in ``received``, whole or truncated) or
    dropped and counted by the kernel. Of those read, ``stale`` and ``discarded``
    ones never reached the application.

    Attributes:
        received: datagrams read from the socket (including ``truncated`` ones).
        received_bytes: their real lengths, summed.
        truncated: datagrams longer than ``bufsize``, delivered cut (``length`` tells).
        sent: datagrams the kernel accepted.
        sent_bytes: their bytes.
        kernel_drops: the kernel's drop count for the socket (``/proc/net/udp``),
            ``None`` where the platform cannot tell.
        icmp_errors: soft errors by errno name (``{"ECONNREFUSED": 2}``).
        send_errors: datagrams not sent, by errno name.
        handler_errors: server handlers that raised or returned a non-bytes reply.
        pauses: how often reading stopped because the queue (or send buffer) was full.
        batches: receive calls that returned datagrams.
        stale: datagrams a request discarded: already waiting when it sent (they
            cannot be its answer), or rejected by its ``match``.
        discarded: datagrams read but never handed over: still queued when the
            endpoint closed, or read from the socket while closing.
        policy: a :class:`~udpkit.aio.Server`'s policy verdicts, the non-zero ones
            by name (``{"admitted": 9, "over_budget": 3}``): datagrams ``denied`` or
            ``rate_limited`` were never handled; replies ``over_budget`` (or to a
            never-reply source) were never sent. Empty for an endpoint.
    """

    received: int = 0
    received_bytes: int = 0
    truncated: int = 0
    sent: int = 0
    sent_bytes: int = 0
    kernel_drops: int | None = None
    icmp_errors: dict[str, int] = field(default_factory=dict)
    send_errors: dict[str, int] = field(default_factory=dict)
    handler_errors: int = 0
    pauses: int = 0
    batches: int = 0
    stale: int = 0
    discarded: int = 0
    policy: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """Return the counters as a plain dict (ready for JSON)."""
        return counters_dict(self)


def _count(table: dict[str, int], code: int | None) -> None:
    name = errno_name(code)
    table[name] = table.get(name, 0) + 1


def resolve_waiter(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _check_sizes(bufsize: int, batch: int, send_queue: int, busy_poll_us: int) -> None:
    if not 1 <= bufsize <= 1 << 24:
        raise UsageError(f"invalid bufsize {bufsize!r}: must be 1-16777216 bytes")
    if not 1 <= batch <= 1024:
        raise UsageError(f"invalid batch {batch!r}: must be 1-1024 datagrams")
    if send_queue < 1:
        raise UsageError(f"invalid send_queue {send_queue!r}: must be 1 or more datagrams")
    if not 0 <= busy_poll_us <= 1_000_000:
        raise UsageError(f"invalid busy_poll_us {busy_poll_us!r}: must be 0-1000000 microseconds")


class AioSocket:
    """A datagram socket on an asyncio loop: batched reads on readiness, queued batched sends,
    counters.  What :class:`~udpkit.aio.Endpoint` and :class:`~udpkit.aio.Server` are built on."""

    def __init__(
        self,
        sock: DatagramSocket | socket.socket,
        *,
        bufsize: int = 65535,
        batch: int = 64,
        send_queue: int = 1024,
        fast: bool | None = None,
        busy_poll_us: int = 0,
    ) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            sock.close()
            raise UsageError(
                f"{type(self).__name__} needs a running event loop: create it inside a coroutine"
            ) from None
        try:
            _check_sizes(bufsize, batch, send_queue, busy_poll_us)
        except UsageError:
            sock.close()  # the endpoint owns the socket from the start: never leak it
            raise
        self._owner = sock
        raw = sock.sock if isinstance(sock, DatagramSocket) else sock
        if raw.type != socket.SOCK_DGRAM:
            sock.close()
            raise UsageError(f"udpkit.aio needs a datagram socket, not {raw.type!r}")
        self._sock = raw
        self._fd = raw.fileno()
        inet = raw.family in (socket.AF_INET, socket.AF_INET6)
        can_fast = fast_path_available() and inet
        if fast and not can_fast:
            sock.close()
            raise Unsupported(
                errno.EOPNOTSUPP, "fast=True: recvmmsg is not available here; pass fast=None"
            )
        self._fast = can_fast if fast is None else fast
        self._v4 = raw.family == socket.AF_INET
        self._bufsize = bufsize
        self._batch = batch
        self._send_high = send_queue
        self._limit = MAX_UDP_PAYLOAD.get(raw.family) if inet else None
        raw.setblocking(False)
        if LINUX and inet:
            # A coalesced GRO buffer would be read as one datagram: keep it off.
            with contextlib.suppress(OSError):
                raw.setsockopt(SOL_UDP, UDP_GRO, 0)
        try:
            self._connected: SockAddr | None = raw.getpeername()
        except OSError:
            self._connected = None
        self._st = EndpointStats()
        self._last_local: AnySockAddr = None
        self.last_error: NetworkError | None = None
        """The latest soft error (an ICMP report, a datagram not sent), or None."""
        self._refusals = 0  # bumped on every ECONNREFUSED seen, for request()
        self._fatal: NetworkError | None = None
        self._closed = False
        self._reading = False
        self._writing = False
        self._out_data: list[bytes] = []
        self._out_to: list[SockAddr | None] = []
        self._flush_soon = False
        self._retried = False
        self._peers = PeerCache(self._v4)
        self._busy = busy_poll_us / 1e6
        # Light load (the last read found one datagram): read the next with one
        # recvfrom_into, which costs less than a batch call, and batch again once
        # datagrams queue up.
        self._light = True
        self._setup_buffers()
        self._resume()

    def _setup_buffers(self) -> None:
        """The receive buffers: a batch's (recvmmsg) and a single datagram's (recvfrom_into)."""
        bufsize = self._bufsize
        if self._fast:
            self._rx = MsgArray(self._batch, bufsize)
            self._tmpl = memoryview(self._rx.template)
            self._one = bytearray(bufsize)
            self._oneview = memoryview(self._one)
        else:
            size = bufsize if LINUX else max(bufsize, 65536)
            self._buf = bytearray(size)
            self._bufview = memoryview(self._buf)
            self._one, self._oneview = self._buf, self._bufview
        self._onesize = len(self._one)

    # -- properties ----------------------------------------------------------------

    @property
    def sock(self) -> socket.socket:
        """The underlying socket (for setsockopt, e.g. joining a multicast group)."""
        return self._sock

    @property
    def local_address(self) -> AnySockAddr:
        """The local socket address, e.g. ``("127.0.0.1", 40123)`` (still known after close)."""
        if self._closed:
            return self._last_local
        try:
            self._last_local = self._sock.getsockname()
        except OSError as exc:
            raise map_oserror(exc, "cannot read the local address") from exc
        return self._last_local

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def fast(self) -> bool:
        """True when reads use recvmmsg, False on the portable path."""
        return self._fast

    @property
    def stats(self) -> EndpointStats:
        """The counters, with ``kernel_drops`` read afresh from the kernel."""
        if not self._closed:
            drops = proc_drops(self._fd)
            if drops is not None:
                self._st.kernel_drops = drops
        return self._st

    # -- multicast ---------------------------------------------------------------------

    def join_group(
        self, group: str, *, iface: str | None = None, source: str | None = None
    ) -> None:
        """Join multicast ``group`` (source-specific with ``source``): :func:`udpkit.join_group`.

        The socket must be bound to the group's port, on the wildcard address
        (``bind_udp("", PORT)``) or the group itself.

        Raises:
            AddressError: not a multicast group of the socket's family, or no such ``iface``.
            NetworkError: the kernel refused (with no multicast route, name ``iface``).
        """
        self._check_open()
        join_group(self._sock, group, iface=iface, source=source)

    def leave_group(
        self, group: str, *, iface: str | None = None, source: str | None = None
    ) -> None:
        """Leave a group joined with :meth:`join_group` (the same arguments).

        Raises:
            NetworkError: the endpoint was not a member, or the kernel refused.
        """
        self._check_open()
        leave_group(self._sock, group, iface=iface, source=source)

    def set_multicast(
        self, *, ttl: int | None = None, loop: bool | None = None, iface: str | None = None
    ) -> None:
        """Set the hop limit, own-host loopback and outgoing interface for multicast sends.

        Raises:
            UsageError: ``ttl`` outside 0-255.
            AddressError: no such ``iface``.
            NetworkError: the kernel refused.
        """
        self._check_open()
        set_multicast_send(self._sock, ttl=ttl, loop=loop, iface=iface)

    # -- reading -----------------------------------------------------------------------

    def _resume(self) -> None:
        if not self._reading and not self._closed and self._fatal is None:
            try:
                self._loop.add_reader(self._fd, self._on_readable)
            except NotImplementedError:
                raise Unsupported(
                    errno.EOPNOTSUPP,
                    "udpkit.aio needs loop.add_reader (a selector event loop or uvloop), "
                    "not the Windows proactor loop",
                ) from None
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
            self._st.pauses += 1

    def _on_readable(self) -> None:
        raise NotImplementedError

    def _soft_error(self, code: int, what: str) -> None:
        _count(self._st.icmp_errors, code)
        self.last_error = map_oserror(OSError(code, os.strerror(code)), what)
        if code == errno.ECONNREFUSED:
            self._refusals += 1

    def _recv_failed(self, code: int) -> list[Datagram] | None:
        """A receive errno: [] when nothing waits, None to read on; fatal ones stop reading."""
        if code in AGAIN:
            return []
        if code == errno.EINTR:
            return None
        if code in ICMP_ERRORS:
            self._soft_error(code, "receive")
            return None
        self._fatal = self.last_error = map_oserror(
            OSError(code, os.strerror(code)), "receive on the endpoint's socket"
        )
        self._pause()
        self._on_close()  # wake every waiter: they raise the error
        return []

    def _recv_batch(self, vlen: int) -> list[Datagram] | None:
        """Read up to ``vlen`` datagrams: [] when none is waiting, None after a soft error."""
        if not self._fast:
            return self._recv_portable(vlen)
        rx = self._rx
        rx.hdr_view[: vlen * MM] = self._tmpl[: vlen * MM]
        n: int = libc_mmsg.recvmmsg(self._fd, rx.hdrs_addr, vlen, _RECV_FLAGS, None)
        if n <= 0:
            return [] if n == 0 else self._recv_failed(ctypes.get_errno())
        st = self._st
        st.batches += 1
        lens = rx.msg_lens(n)
        st.received += n
        st.received_bytes += sum(lens)
        _, peers = self._peers.peers(rx, n)
        bs = self._bufsize
        dv = rx.data_view
        if max(lens) <= bs:
            return [
                _new(Datagram, (dv[o : o + ln].tobytes(), p, ln))
                for o, ln, p in zip(range(0, n * bs, bs), lens, peers, strict=False)
            ]
        out = []
        for i, ln in enumerate(lens):
            kept = min(ln, bs)
            st.truncated += ln > bs
            out.append(_new(Datagram, (dv[i * bs : i * bs + kept].tobytes(), peers[i], ln)))
        return out

    def _recv_one(self) -> Datagram | None:
        """One datagram by ``recvfrom_into``; None when none waits, or on an error.

        A soft error is counted; a fatal one stops reading, as for a batch.
        """
        try:
            ln, peer = self._sock.recvfrom_into(self._one, self._onesize, _ONE_FLAGS)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self._recv_failed(exc.errno or errno.EIO)
            return None
        st = self._st
        st.received += 1
        st.received_bytes += ln
        st.batches += 1
        bs = self._bufsize
        if ln > bs:
            st.truncated += 1
            return _new(Datagram, (self._oneview[:bs].tobytes(), peer, ln))
        return _new(Datagram, (self._oneview[:ln].tobytes(), peer, ln))

    def _spin(self, end: float) -> Datagram | None:
        """Busy-poll: read one datagram without sleeping, until ``end`` (perf_counter)."""
        clock = time.perf_counter
        while not self._closed and self._fatal is None:
            d = self._recv_one()
            if d is not None:
                return d
            if clock() >= end:
                break
        return None

    def _recv_portable(self, vlen: int) -> list[Datagram] | None:
        out: list[Datagram] = []
        st = self._st
        bs = self._bufsize
        flags = MSG_TRUNC if LINUX else 0
        while len(out) < vlen:
            try:
                ln, peer = self._sock.recvfrom_into(self._buf, len(self._buf), flags)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                code = exc.errno or errno.EIO
                if out:  # the error is consumed: note it, deliver what was read
                    if code in ICMP_ERRORS:
                        self._soft_error(code, "receive")
                    break
                return self._recv_failed(code)
            st.received += 1
            st.received_bytes += ln
            st.truncated += ln > bs
            out.append(_new(Datagram, (self._bufview[: min(ln, bs)].tobytes(), peer, ln)))
        if out:
            st.batches += 1
        return out

    # -- sending -----------------------------------------------------------------------

    def _enqueue(self, data: bytes, to: SockAddr | None) -> None:
        self._out_data.append(data)
        self._out_to.append(to)
        if not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._flush_soon = False
        if self._out_data and not self._writing:
            self._flush()

    def _flush(self) -> bool:
        """Send what is queued, in runs to one destination; False when the kernel is full."""
        data, tos = self._out_data, self._out_to
        st = self._st
        total = len(data)
        i = 0
        full = False
        while i < total:
            to = tos[i]
            j = i + 1
            while j < total and tos[j] == to:
                j += 1
            try:
                k = send_batch(self._sock, data[i:j], to) if j - i > 1 else self._send1(data[i], to)
            except NetworkError as exc:
                code = exc.errno
                if code in ICMP_ERRORS and not self._retried and self._connected is not None:
                    # Most likely an earlier datagram's ICMP report, consumed now: retry once.
                    # (An unconnected socket hears no ICMP: its errors are its own.)
                    self._soft_error(code or 0, f"send to {to!r}")
                    self._retried = True
                    continue
                self._retried = False
                _count(st.send_errors, code)
                self.last_error = exc
                i += 1
                continue
            self._retried = False
            if k:
                st.sent += k
                st.sent_bytes += sum(map(len, data[i : i + k]))
                i += k
            if i < j:
                full = True
                break
        if i:
            del data[:i]
            del tos[:i]
        if full and not self._writing and not self._closed:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True
        return not full

    def _send1(self, payload: bytes, to: SockAddr | None) -> int:
        # One datagram: a plain sendto costs less than building a sendmmsg batch.
        try:
            if to is None:
                self._sock.send(payload)
            else:
                self._sock.sendto(payload, to)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            raise map_oserror(exc, f"send to {to!r}") from exc
        return 1

    def _on_writable(self) -> None:
        self._loop.remove_writer(self._fd)
        self._writing = False
        if self._flush():
            self._drained()

    def _drained(self) -> None:
        """Called when a full send buffer has emptied."""

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Close at once: queued sends get one non-blocking try, the rest count as EAGAIN.

        What the socket still holds is read first and counted (``received`` and
        ``discarded``), with what was queued and never taken, so the counters
        account for every datagram. Idempotent. The socket is closed (the
        endpoint owns it).
        """
        if self._closed:
            return
        if self._out_data and not self._writing:
            self._flush()
        for _ in self._out_data:
            _count(self._st.send_errors, errno.EAGAIN)
        self._out_data.clear()
        self._out_to.clear()
        if self._fatal is None:
            self._st.discarded += self._drain()
        self._st.discarded += self._unconsumed()
        drops = proc_drops(self._fd)
        if drops is not None:
            self._st.kernel_drops = drops
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        with contextlib.suppress(OSError):
            self._last_local = self._sock.getsockname()
        self._closed = True
        self._on_close()
        self._owner.close()

    def _drain(self) -> int:
        """Read what the socket holds (for at most ``DRAIN_LIMIT``); how many datagrams.

        A datagram left in the socket when it closes would vanish uncounted.
        """
        n = 0
        end = time.monotonic() + DRAIN_LIMIT
        while time.monotonic() < end:
            got = self._recv_batch(self._batch)
            if got is None:
                continue
            if not got:
                break
            n += len(got)
        return n

    def _unconsumed(self) -> int:
        """Datagrams read and not yet taken by the application."""
        return 0

    def _on_close(self) -> None:
        """Wake whatever waits on the endpoint."""

    async def aclose(self, timeout: float = 1.0) -> None:
        """Wait up to ``timeout`` seconds for queued sends to go out, then :meth:`close`."""
        end = time.monotonic() + timeout
        while self._out_data and not self._closed and time.monotonic() < end:
            if not self._writing and self._flush():
                break
            await asyncio.sleep(0.001)
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"{type(self).__name__} is closed: open a new one")
