"""asyncio API: UDP endpoints with ``await recv()``/``await send()`` and a batching server.

Example (a complete program; it starts its own server)::

    import asyncio

    import udpkit.aio


    def shout(dgram: udpkit.Datagram) -> bytes:
        return dgram.data.upper()


    async def main() -> None:
        async with await udpkit.aio.serve("127.0.0.1", 0, shout) as server:
            host, port = server.local_address
            async with await udpkit.aio.open_udp(host, port) as ep:
                await ep.send(b"hello")
                print((await ep.recv()).data)
                reply = await ep.request(b"again", timeout=1.0, retries=2)
                print(reply.data)
            async with await udpkit.aio.bind_udp("127.0.0.1", 0) as ep:
                await ep.send(b"", to=(host, port))  # zero-length datagrams are sent too
                async for dgram in ep:
                    print(dgram.length, dgram.peer == (host, port))
                    break
            print(server.stats.received)


    asyncio.run(main())

It prints ``b'HELLO'``, ``b'AGAIN'``, ``0 True`` and ``3``.

How it differs from ``loop.create_datagram_endpoint``:

* reads in batches on readiness (``recvmmsg`` on Linux, until the socket is empty)
  into a bounded queue; when the queue is full it stops reading, so the kernel's
  buffer fills and the kernel counts what it drops (``stats.kernel_drops``);
  nothing is thrown away uncounted;
* sends are queued and go out together (``sendmmsg``/GSO) when the task next
  waits; on a full send buffer ``send`` waits for room instead of raising;
* zero-length datagrams are sent, and every udpkit host form works, including
  ``"<broadcast>"`` (with ``broadcast=True``); an endpoint opened to a broadcast
  or multicast address is never connected, so replies from any host arrive;
* under light load a lone datagram is read with one ``recvfrom_into`` (cheaper
  than a batch call) and batches resume as soon as datagrams queue up;
  ``busy_poll_us`` trades a busy core for the wake-up latency of each round trip;
* ICMP errors (ECONNREFUSED, EHOSTUNREACH, ...) are soft: counted in
  ``stats.icmp_errors`` and kept in ``last_error``; ``recv`` keeps working.
  Only :meth:`Endpoint.request` on a connected endpoint raises
  :class:`~udpkit.ConnectionRefused`.

An endpoint must be created and used inside one running event loop (asyncio's
selector loop or uvloop: it needs ``loop.add_reader``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar

from ._addr import MAX_UDP_PAYLOAD, Address, is_broadcast, is_multicast, resolve_one
from ._errors import (
    ConnectionRefused,
    MessageTooLarge,
    NetworkError,
    PermissionDenied,
    Timeout,
    Unsupported,
    UsageError,
    map_oserror,
)
from ._mmsg import (
    MM,
    MSG_DONTWAIT,
    MSG_TRUNC,
    NAME_SPACE,
    SOL_UDP,
    UDP_GRO,
    MsgArray,
    decode_sockaddr,
    errno_name,
    fast_path_available,
    libc_mmsg,
    proc_drops,
    send_batch,
)
from ._policy import ADMIT, Policy
from ._sockets import Datagram, DatagramSocket, udp_bind, udp_connect

__all__ = [
    "Endpoint",
    "EndpointStats",
    "Handler",
    "Server",
    "bind_udp",
    "open_udp",
    "serve",
]

Handler = Callable[[Datagram], "bytes | Sequence[bytes] | None"]
"""The engine's handler type: given a datagram, the reply (or replies) for its peer, or None."""

_LINUX = sys.platform.startswith("linux")
_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})
# Errors the kernel reports on a later call for an earlier datagram (ICMP): soft, counted.
_ICMP = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EMSGSIZE,
        errno.ETIMEDOUT,
        errno.EPROTO,
    }
)
# On a first send these can only be about an earlier datagram; others are this one's fault.
_EARLIER = frozenset({errno.ECONNREFUSED, errno.ECONNRESET})
_PEER_CACHE_MAX = 4096
# A server reads at most this many batches per readiness, so one flooded socket
# cannot starve the other tasks of the loop (epoll is level-triggered: it comes back).
_SERVER_BATCHES = 16
# With busy polling, a reader gives the loop's other tasks a turn at least this often (s).
_BUSY_SLICE = 0.001
_RECV_FLAGS = MSG_TRUNC | MSG_DONTWAIT
# recvfrom_into's flags: the real length where the kernel reports it (Linux), else none
# (the portable buffer then holds 64 KiB, any datagram); the socket is non-blocking.
_ONE_FLAGS = _RECV_FLAGS if _LINUX else 0
_new = tuple.__new__
_T = TypeVar("_T", bound="_Core")


@dataclass
class EndpointStats:
    """What an endpoint or server saw and did.

    On one host, ``datagrams sent to it == received + kernel_drops``: every
    datagram is either read (and counted in ``received``, whole or truncated) or
    dropped and counted by the kernel.

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

    def as_dict(self) -> dict[str, object]:
        """Return the counters as a plain dict (ready for JSON)."""
        d = dict(self.__dict__)
        d["icmp_errors"] = dict(self.icmp_errors)
        d["send_errors"] = dict(self.send_errors)
        return d


def _count(table: dict[str, int], code: int | None) -> None:
    name = errno_name(code)
    table[name] = table.get(name, 0) + 1


def _resolve_waiter(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Core:
    """Socket, batched reads, queued batched sends and counters, shared by Endpoint and Server."""

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
            raise UsageError(
                f"{type(self).__name__} needs a running event loop: create it inside a coroutine"
            ) from None
        if not 1 <= bufsize <= 1 << 24:
            raise UsageError(f"invalid bufsize {bufsize!r}: must be 1-16777216 bytes")
        if not 1 <= batch <= 1024:
            raise UsageError(f"invalid batch {batch!r}: must be 1-1024 datagrams")
        if send_queue < 1:
            raise UsageError(f"invalid send_queue {send_queue!r}: must be 1 or more datagrams")
        if not 0 <= busy_poll_us <= 1_000_000:
            raise UsageError(
                f"invalid busy_poll_us {busy_poll_us!r}: must be 0-1000000 microseconds"
            )
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
        if _LINUX and inet:
            # A coalesced GRO buffer would be read as one datagram: keep it off.
            with contextlib.suppress(OSError):
                raw.setsockopt(SOL_UDP, UDP_GRO, 0)
        try:
            self._connected: Any = raw.getpeername()
        except OSError:
            self._connected = None
        self._st = EndpointStats()
        self.last_error: NetworkError | None = None
        """The latest soft error (an ICMP report, a datagram not sent), or None."""
        self._refusals = 0  # bumped on every ECONNREFUSED seen, for request()
        self._fatal: NetworkError | None = None
        self._closed = False
        self._reading = False
        self._writing = False
        self._out_data: list[bytes] = []
        self._out_to: list[Any] = []
        self._flush_soon = False
        self._retried = False
        self._peers: dict[Any, Any] = {}
        self._busy = busy_poll_us / 1e6
        # Light load (the last read found one datagram): read the next with one
        # recvfrom_into, which costs less than a batch call, and batch again once
        # datagrams queue up.
        self._light = True
        if self._fast:
            self._rx = MsgArray(batch, bufsize)
            self._tmpl = memoryview(self._rx.template)
            self._one = bytearray(bufsize)
            self._oneview = memoryview(self._one)
        else:
            size = bufsize if _LINUX else max(bufsize, 65536)
            self._buf = bytearray(size)
            self._bufview = memoryview(self._buf)
            self._one, self._oneview = self._buf, self._bufview
        self._onesize = len(self._one)
        self._resume()

    # -- properties ----------------------------------------------------------------

    @property
    def sock(self) -> socket.socket:
        """The underlying socket (for setsockopt, e.g. joining a multicast group)."""
        return self._sock

    @property
    def local_address(self) -> Any:
        """The local socket address, e.g. ``("127.0.0.1", 40123)``."""
        try:
            return self._sock.getsockname()
        except OSError as exc:
            raise map_oserror(exc, "cannot read the local address") from exc

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
        self.last_error = map_oserror(OSError(code, errno_name(code)), what)
        if code == errno.ECONNREFUSED:
            self._refusals += 1

    def _recv_failed(self, code: int) -> list[Datagram] | None:
        """A receive errno: [] when nothing waits, None to read on; fatal ones stop reading."""
        if code in _AGAIN:
            return []
        if code == errno.EINTR:
            return None
        if code in _ICMP:
            self._soft_error(code, "receive")
            return None
        self._fatal = self.last_error = map_oserror(
            OSError(code, errno_name(code)), "receive on the endpoint's socket"
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
        peers = self._peers_of(rx, n)
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

    def _peers_of(self, rx: MsgArray, n: int) -> list[Any]:
        # Decoding a sockaddr costs more than a dict lookup on its raw bytes.
        cache = self._peers
        nv = rx.names_view
        keys: list[Any]
        if self._v4:
            keys = rx.name_keys_v4(n)
            width = 16
        else:
            blob = nv[: n * NAME_SPACE].tobytes()
            keys = [blob[o : o + 28] for o in range(0, n * NAME_SPACE, NAME_SPACE)]
            width = 28
        out = []
        for i, k in enumerate(keys):
            p = cache.get(k)
            if p is None:
                if len(cache) >= _PEER_CACHE_MAX:
                    cache.clear()
                p = cache[k] = decode_sockaddr(
                    nv[i * NAME_SPACE : i * NAME_SPACE + width].tobytes()
                )
            out.append(p)
        return out

    def _recv_portable(self, vlen: int) -> list[Datagram] | None:
        out: list[Datagram] = []
        st = self._st
        bs = self._bufsize
        flags = MSG_TRUNC if _LINUX else 0
        while len(out) < vlen:
            try:
                ln, peer = self._sock.recvfrom_into(self._buf, len(self._buf), flags)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                code = exc.errno or errno.EIO
                if out:  # the error is consumed: note it, deliver what was read
                    if code in _ICMP:
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

    def _enqueue(self, data: bytes, to: Any) -> None:
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
                if code in _ICMP and not self._retried:
                    # Most likely an earlier datagram's ICMP report, consumed now: retry once.
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

    def _send1(self, payload: bytes, to: Any) -> int:
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

        Idempotent. The socket is closed (the endpoint owns it).
        """
        if self._closed:
            return
        if self._out_data and not self._writing:
            self._flush()
        for _ in self._out_data:
            _count(self._st.send_errors, errno.EAGAIN)
        self._out_data.clear()
        self._out_to.clear()
        drops = proc_drops(self._fd)
        if drops is not None:
            self._st.kernel_drops = drops
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._closed = True
        self._on_close()
        self._owner.close()

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


class Endpoint(_Core):
    """A UDP endpoint for asyncio: ``await recv()``, ``await send()``, ``async for``.

    Usually made by :func:`open_udp` or :func:`bind_udp`; the constructor wraps a
    socket you made (the endpoint owns it from then on, and closes it).

    Args:
        sock: a bound (or connected) datagram socket, or a :class:`~udpkit.DatagramSocket`.
        queue_size: datagrams read ahead at most; when full, reading stops and
            the kernel buffers (and then counts drops).
        bufsize: bytes kept per datagram; longer ones arrive truncated (``length`` tells).
        batch: datagrams per receive call.
        send_queue: queued sends at most before ``send`` waits for the kernel.
        fast: ``None`` uses recvmmsg where available, ``False`` forces the portable path.
        default_to: where ``send(data)`` goes on an unconnected socket.
        busy_poll_us: when nothing is queued, ``recv`` first keeps reading without
            sleeping for up to this many microseconds (0: off). It trades a busy
            CPU for the wake-up latency of a round trip; the loop's other tasks
            still get a turn at least every millisecond.

    Raises:
        UsageError: no running event loop, or a bad size.
        Unsupported: ``fast=True`` where recvmmsg is missing, or a loop without add_reader.
    """

    def __init__(
        self,
        sock: DatagramSocket | socket.socket,
        *,
        queue_size: int = 512,
        bufsize: int = 65535,
        batch: int = 64,
        send_queue: int = 1024,
        fast: bool | None = None,
        default_to: Any = None,
        busy_poll_us: int = 0,
    ) -> None:
        if queue_size < 1:
            sock.close()
            raise UsageError(f"invalid queue_size {queue_size!r}: must be 1 or more datagrams")
        self._queue: collections.deque[Datagram] = collections.deque()
        self._max = queue_size
        self._low = max(queue_size // 2, queue_size - batch)
        self._waiters: list[asyncio.Future[None]] = []
        self._send_waiters: list[asyncio.Future[None]] = []
        self._known: dict[Any, Any] = {}
        self._follow = False
        self._yielded = 0.0  # perf_counter when a busy-polling recv last let the loop run
        super().__init__(
            sock,
            bufsize=bufsize,
            batch=min(batch, queue_size),
            send_queue=send_queue,
            fast=fast,
            busy_poll_us=busy_poll_us,
        )
        # Where send(data) goes: None sends on the connected socket without an address.
        self._default: Any = None
        self._has_default = self._connected is not None or default_to is not None
        if default_to is not None:
            try:
                self._default = self._resolve(default_to)[0]
            except BaseException:
                self.close()
                raise

    @property
    def peer(self) -> Any:
        """The connected peer's address, or ``None`` when the socket is not connected."""
        return self._connected

    @property
    def queued(self) -> int:
        """Datagrams read from the socket and waiting for :meth:`recv`."""
        return len(self._queue)

    def _on_readable(self) -> None:
        if self._light and self._waiters:
            # Light load and a task waiting: hand it one datagram now and look for
            # more after it has run (a batch call costs more than a lone recvfrom).
            d = self._recv_one()
            if d is not None:
                self._queue.append(d)
                self._wake()
                if not self._follow:
                    self._follow = True
                    self._loop.call_soon(self._follow_up)
                return
        self._read_batches()

    def _follow_up(self) -> None:
        self._follow = False
        if self._reading:
            self._read_batches()

    def _read_batches(self) -> None:
        q = self._queue
        room = self._max - len(q)
        got_total = 0
        while room > 0:
            got = self._recv_batch(min(self._batch, room))
            if got is None:
                continue
            if not got:
                break
            q.extend(got)
            room -= len(got)
            got_total += len(got)
            if len(got) < self._batch:
                break  # a short read emptied the socket: skip the EAGAIN call
        self._light = self._fast and got_total <= 1
        if room <= 0:
            self._pause()  # backpressure: the kernel queue fills and counts its drops
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        for f in self._waiters:
            if not f.done():
                f.set_result(None)
        self._waiters.clear()

    def _on_close(self) -> None:
        self._wake()
        for f in self._send_waiters:
            if not f.done():
                f.set_result(None)
        self._send_waiters.clear()

    def _drained(self) -> None:
        for f in self._send_waiters:
            if not f.done():
                f.set_result(None)
        self._send_waiters.clear()

    async def _wait(self, timeout: float | None) -> None:
        """Sleep until a datagram, an error, close(), or ``timeout`` seconds."""
        if self._out_data and not self._writing:
            self._flush()  # about to sleep: what this task queued goes out now, in one batch
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(fut)
        handle = None if timeout is None else self._loop.call_later(timeout, _resolve_waiter, fut)
        try:
            await fut
        finally:
            self._yielded = time.perf_counter()
            if handle is not None:
                handle.cancel()

    def _take(self) -> Datagram:
        d = self._queue.popleft()
        if not self._reading and len(self._queue) <= self._low:
            self._resume()
        return d

    async def recv(self, *, timeout: float | None = None) -> Datagram:
        """Receive the next datagram.

        Args:
            timeout: seconds to wait at most; ``None`` waits as long as it takes.

        Returns:
            The datagram: ``data``, ``peer`` and real ``length`` (``b""``/0 for an empty one).

        Raises:
            Timeout: nothing arrived within ``timeout``.
            UsageError: the endpoint is closed.
            NetworkError: the socket itself failed (not an ICMP report: those are soft).
        """
        if self._queue:
            return self._take()
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._busy:
            d = await self._busy_recv(timeout)
            if d is not None:
                return d
        while True:
            if self._queue:
                return self._take()
            self._check_open()
            if self._fatal is not None:
                raise self._fatal
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise Timeout(f"no datagram on {self.local_address!r} within {timeout:g} s")
            await self._wait(left)

    async def _busy_recv(self, timeout: float | None) -> Datagram | None:
        """Busy-poll up to ``busy_poll_us`` (and ``timeout``): a datagram, or None to sleep."""
        clock = time.perf_counter
        now = clock()
        end = now + (self._busy if timeout is None else min(self._busy, timeout))
        while self._reading:  # paused means queued datagrams; closed or failed: sleep path
            if now - self._yielded >= _BUSY_SLICE:
                await asyncio.sleep(0)  # the loop's other tasks get their turn
                self._yielded = now = clock()
                if self._queue:
                    return self._take()
                if not self._reading:
                    break
            if self._out_data and not self._writing:
                self._flush()  # what this task queued goes out before the spin
            if not self._light:
                self._read_batches()  # datagrams were queuing up: read them in one call
                if self._queue:
                    return self._take()
            else:
                d = self._recv_one()
                if d is not None:
                    self._light = False  # it was waiting already: the next read takes a batch
                    return d
            d = self._spin(min(end, self._yielded + _BUSY_SLICE))
            if d is not None:
                return d
            now = clock()
            if now >= end:
                break
        return None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Datagram:
        if self._queue:
            return self._take()
        try:
            return await self.recv()
        except UsageError:
            if self._closed:
                raise StopAsyncIteration from None
            raise

    def _resolve(self, to: Any) -> tuple[Any, bool]:
        """``to`` as a sockaddr, and whether it is new; raises for a bad or forbidden one."""
        dest = self._known.get(to)
        if dest is not None:
            return dest, False
        if isinstance(to, Address):
            if to.family != self._sock.family:
                raise UsageError(f"cannot send to {to} from a {self._sock.family.name} socket")
            addr = to
        elif isinstance(to, tuple) and self._sock.family in (socket.AF_INET, socket.AF_INET6):
            if len(to) == 4:
                addr = Address(self._sock.family, to)
            elif len(to) == 2:
                addr = resolve_one(to[0], to[1], family=self._sock.family)
            else:
                raise UsageError(f"invalid destination {to!r}: give (host, port)")
        elif isinstance(to, str | bytes) and self._sock.family == socket.AF_UNIX:
            return to, True
        else:
            raise UsageError(f"invalid destination {to!r}: give (host, port) or an Address")
        if is_broadcast(addr) and not self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST):
            raise PermissionDenied(
                errno.EACCES,
                f"send to {to!r}: broadcast needs SO_BROADCAST: open the endpoint with "
                "broadcast=True",
            )
        if len(self._known) >= _PEER_CACHE_MAX:
            self._known.clear()
        self._known[to] = addr.sockaddr
        return addr.sockaddr, True

    def _send_now(self, data: bytes, dest: Any, new: bool) -> bool:
        """Send at once (nothing is queued); False when it must be queued instead.

        Raises for this datagram's own errors; reports about earlier datagrams are soft.
        """
        try:
            if dest is None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, dest)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            code = exc.errno or 0
            if code == errno.EMSGSIZE:
                raise MessageTooLarge(
                    f"message of {len(data)} bytes is too large for {dest!r}: the kernel "
                    "refused it (the path MTU or SO_SNDBUF may be smaller)"
                ) from exc
            if code in _EARLIER or (code in _ICMP and not new):
                self._soft_error(code, f"send to {dest!r}")
                return False  # queued: the flush resends it once
            if code == errno.EACCES:
                raise PermissionDenied(
                    errno.EACCES,
                    f"send to {dest!r}: permission denied: a broadcast address needs "
                    "broadcast=True",
                ) from exc
            raise map_oserror(exc, f"send to {dest!r}") from exc
        self._st.sent += 1
        self._st.sent_bytes += len(data)
        return True

    async def send(self, data: bytes | bytearray | memoryview, to: Any = None) -> None:
        """Send one datagram (``b""`` sends a zero-length one).

        Datagrams are queued and go out together when the task next waits (or on
        the loop's next turn); when the kernel's send buffer is full this waits
        for room. Errors about earlier datagrams (ICMP) are soft: see ``last_error``.

        Args:
            data: the payload.
            to: the destination: ``(host, port)`` in any udpkit host form
                (``"<broadcast>"``, integers, names, ``"fe80::1%eth0"``), a full
                IPv6 sockaddr, or an :class:`~udpkit.Address`; ``None`` for the
                connected peer (or the endpoint's default destination).

        Raises:
            MessageTooLarge: larger than the family's largest datagram, or refused (EMSGSIZE).
            PermissionDenied: a broadcast destination without ``broadcast=True``.
            AddressError: a destination that does not resolve.
            UsageError: no destination on an unconnected endpoint, or the endpoint is closed.
            NetworkError: the first send to a destination failed (e.g. no route).
        """
        self._check_open()
        if self._limit is not None and len(data) > self._limit:
            raise MessageTooLarge(
                f"message of {len(data)} bytes is too large: the largest datagram of this "
                f"family carries {self._limit} bytes"
            )
        payload = data if type(data) is bytes else bytes(data)
        if to is None:
            dest = self._default
            if not self._has_default:
                raise UsageError(
                    "send needs a destination: this endpoint is not connected, pass to="
                )
            new = False
        else:
            dest, new = self._resolve(to)
        # Batch only when there is a backlog (more datagrams to answer, or sends queued);
        # otherwise waiting for a batch would only add latency. A new destination is
        # always tried at once, so its errors (no route, broadcast refused) raise here.
        if not self._out_data and (new or not self._queue) and self._send_now(payload, dest, new):
            return
        self._enqueue(payload, dest)
        if len(self._out_data) >= self._send_high:
            if not self._writing:
                self._flush()
            while len(self._out_data) >= self._send_high and not self._closed:
                fut: asyncio.Future[None] = self._loop.create_future()
                self._send_waiters.append(fut)
                await fut

    async def request(
        self,
        data: bytes | bytearray | memoryview,
        to: Any = None,
        *,
        timeout: float = 2.0,
        retries: int = 0,
    ) -> Datagram:
        """Send ``data`` and return the next datagram received, resending on silence.

        Each attempt gets its own monotonic deadline, ``timeout`` seconds after its send.

        Args:
            data: the request payload.
            to: as for :meth:`send`.
            timeout: seconds each attempt waits for an answer.
            retries: how many times to resend after an attempt's deadline passes.

        Returns:
            The first datagram that arrives (any peer, for a broadcast or multicast request).

        Raises:
            Timeout: no answer after ``retries + 1`` attempts.
            ConnectionRefused: on a connected endpoint, nothing listens at the peer
                (ICMP port unreachable) on the last attempt.
            UsageError: negative ``timeout`` or ``retries``, or a closed endpoint.
        """
        if not timeout >= 0:
            raise UsageError(f"invalid timeout {timeout!r}: must be a number of seconds >= 0")
        if retries < 0:
            raise UsageError(f"invalid retries {retries!r}: must be a whole number >= 0")
        for attempt in range(retries + 1):
            seen = self._refusals
            deadline = time.monotonic() + timeout
            await self.send(data, to)
            while True:
                if self._queue:
                    return self._take()
                self._check_open()
                if self._fatal is not None:
                    raise self._fatal
                left = deadline - time.monotonic()
                if self._refusals != seen and self._connected is not None:
                    if attempt == retries:
                        raise ConnectionRefused(
                            errno.ECONNREFUSED,
                            f"request to {self._connected!r}: nothing is listening there "
                            "(ICMP port unreachable)",
                        )
                    # Nobody listens yet: wait out this attempt, so a starting server gets time.
                    if left > 0:
                        await asyncio.sleep(left)
                    break
                if left <= 0:
                    break
                await self._wait(left)
        tries = "attempt" if retries == 0 else "attempts"
        raise Timeout(f"no reply to the request within {timeout:g} s ({retries + 1} {tries})")


class Server(_Core):
    """Serve a datagram socket from the event loop with an engine handler.

    Each readable event reads batches (up to 16 of ``batch`` datagrams), calls
    ``handler`` for every datagram, and sends the replies together. Under light
    load (one datagram per event) the first datagram is read with one plain
    ``recvfrom_into`` and answered before the batch call, which keeps a lone
    request's round trip short. When the kernel's send buffer is full, reading
    stops until it drains.

    Args:
        sock: a bound datagram socket; the server owns it.
        handler: ``(Datagram) -> bytes | Sequence[bytes] | None`` as for the engine;
            ``None`` only counts. A handler that raises is counted, not fatal.
        bufsize: bytes kept per datagram; longer ones reach the handler truncated.
        batch: datagrams per receive call.
        fast: ``None`` uses recvmmsg where available, ``False`` the portable path.
        policy: admission and reply rules, as for :class:`udpkit.DatagramServer`;
            by default loopback is trusted and every other source is held to the
            anti-amplification budget (replies never exceed the bytes it sent).
        busy_poll_us: after serving, keep reading without sleeping until this many
            microseconds pass with no datagram, answering each one as it arrives
            (0: off). It trades a busy CPU for the wake-up latency of a round trip;
            the loop's other tasks still get a turn at least every millisecond.

    Raises:
        UsageError: no running event loop, or a bad size.
    """

    def __init__(
        self,
        sock: DatagramSocket | socket.socket,
        handler: Handler | None,
        *,
        bufsize: int = 65535,
        batch: int = 64,
        fast: bool | None = None,
        policy: Policy | None = None,
        busy_poll_us: int = 0,
    ) -> None:
        self._handler = handler
        self._done: asyncio.Future[None] | None = None
        self._seen = 0.0  # perf_counter of the last datagram, for busy polling
        self._spin_soon = False
        super().__init__(sock, bufsize=bufsize, batch=batch, fast=fast, busy_poll_us=busy_poll_us)
        raw = self.sock
        if policy is None and raw.family in (socket.AF_INET, socket.AF_INET6):
            policy = Policy(local=raw.getsockname())
        self.policy = policy

    def _on_readable(self) -> None:
        served = self._serve_ready()
        if self._busy and served >= 0:
            self._busy_serve(served > 0)

    def _busy_serve(self, fresh: bool) -> None:
        """Keep answering without sleeping until ``busy_poll_us`` passes with no datagram.

        The loop gets control back every ``_BUSY_SLICE``; the spin then goes on
        from a ``call_soon`` callback while the budget lasts.
        """
        clock = time.perf_counter
        now = clock()
        if fresh:
            self._seen = now
        slice_end = now + _BUSY_SLICE
        while True:
            d = self._spin(min(self._seen + self._busy, slice_end))
            if d is None:
                break
            self._seen = clock()
            if not self._answer([d]) or self._serve_ready() < 0:
                return
        if (
            clock() < self._seen + self._busy
            and self._reading
            and not self._closed
            and not self._spin_soon
        ):
            self._spin_soon = True
            self._loop.call_soon(self._spin_on)

    def _spin_on(self) -> None:
        self._spin_soon = False
        if self._reading and not self._closed:
            self._on_readable()

    def _serve_ready(self) -> int:
        """Serve what is queued in the socket; the count, or -1 when reading paused or failed."""
        served = 0
        if self._light:
            d = self._recv_one()
            if d is not None:
                served = 1
                if not self._answer([d]):
                    return -1
        for _ in range(_SERVER_BATCHES):
            got = self._recv_batch(self._batch)
            if got is None:
                continue
            if not got:
                break
            served += len(got)
            if not self._answer(got):
                return -1
            if len(got) < self._batch:
                break  # the socket is empty: no EAGAIN call needed
        self._light = self._fast and served <= 1
        return -1 if self._fatal is not None or self._closed else served

    def _answer(self, got: list[Datagram]) -> bool:
        """Run the handler on ``got`` and send the replies; False when the send buffer is full."""
        handler = self._handler
        policy = self.policy
        now = time.monotonic()  # one clock read per batch, for every policy decision
        if handler is None:
            if policy is not None and policy.screens_arrivals:
                for d in got:
                    policy.admit(d.peer, d.length, now)  # counted, nothing to answer
            return True
        out_data, out_to = self._out_data, self._out_to
        for d in got:
            if policy is not None and policy.admit(d.peer, d.length, now) is not ADMIT:
                continue  # refused and counted by the policy: never answered
            try:
                r = handler(d)
            except Exception:
                self._st.handler_errors += 1
                continue
            if r is None:
                continue
            try:
                for x in [r] if isinstance(r, bytes | bytearray | memoryview) else r:
                    if not isinstance(x, bytes | bytearray | memoryview):
                        raise TypeError(f"reply {x!r}: must be bytes")
                    if policy is not None and not policy.may_reply(d.peer, len(x), now):
                        continue  # over budget or never-reply: counted by the policy
                    out_data.append(x if type(x) is bytes else bytes(x))
                    out_to.append(d.peer)
            except Exception:
                self._st.handler_errors += 1  # the replies before the bad one still go
        if out_data and not self._flush():
            self._pause()  # the send buffer is full: read again once it drains
            return False
        return True

    def _drained(self) -> None:
        self._resume()

    def _on_close(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` is called (the serving itself runs in the loop's callbacks).

        Raises:
            NetworkError: the socket failed.
        """
        if not self._closed:
            if self._done is None:
                self._done = self._loop.create_future()
            await self._done
        if self._fatal is not None:
            raise self._fatal


class _Opening(Generic[_T]):
    """What open_udp/bind_udp/serve return: ``await`` it, or use it in ``async with`` directly."""

    def __init__(self, make: Callable[[], Awaitable[_T]]) -> None:
        self._make = make
        self._obj: _T | None = None

    def __await__(self) -> Generator[Any, None, _T]:
        return self._make().__await__()

    async def __aenter__(self) -> _T:
        self._obj = await self._make()
        return self._obj

    async def __aexit__(self, *exc_info: object) -> None:
        if self._obj is not None:
            await self._obj.aclose()


def _guard(sock: DatagramSocket | socket.socket, build: Callable[[], _T]) -> _T:
    try:
        return build()
    except BaseException:
        sock.close()  # never leak the socket when the endpoint cannot be made
        raise


def open_udp(
    host: str | int | None,
    port: int | str,
    *,
    bind: tuple[str | int | None, int | str] | None = None,
    broadcast: bool = False,
    family: int = socket.AF_UNSPEC,
    queue_size: int = 512,
    bufsize: int = 65535,
    busy_poll_us: int = 0,
) -> _Opening[Endpoint]:
    """Open an endpoint that talks to ``host``:``port``.

    A unicast destination is connected (only its datagrams arrive, and ICMP
    reports are seen). A broadcast or multicast destination is not: the socket
    is bound (to ``bind``, else the wildcard) and ``send(data)`` goes there, so
    replies from every host arrive.

    Args:
        host: any udpkit host form: a name, ``"127.0.0.1"``, ``"::1"``,
            ``"fe80::1%eth0"``, an integer, ``""`` or ``"<broadcast>"``.
        port: a number, numeric string or service name.
        bind: a local ``(host, port)`` to bind first.
        broadcast: set SO_BROADCAST; needed for ``"<broadcast>"`` and subnet broadcasts.
        family: AF_UNSPEC, AF_INET or AF_INET6.
        queue_size: datagrams read ahead at most (see :class:`Endpoint`).
        bufsize: bytes kept per datagram.
        busy_poll_us: spin this long before sleeping in ``recv`` (see :class:`Endpoint`).

    Returns:
        An awaitable (``await open_udp(...)`` gives the :class:`Endpoint`) that
        also works as ``async with open_udp(...) as ep``.

    Raises:
        AddressError: a bad host or port.
        PermissionDenied: a broadcast destination without ``broadcast=True``.
        NetworkError: the OS refused (e.g. the bind address is in use).
    """

    async def make() -> Endpoint:
        dest = resolve_one(host, port, family=family)
        if is_broadcast(dest) and not broadcast:
            raise PermissionDenied(
                errno.EACCES,
                f"cannot open {host!r} port {port}: a broadcast address needs broadcast=True",
            )
        if is_broadcast(dest) or is_multicast(dest):
            local = bind if bind is not None else ("", 0)
            sock = udp_bind(local[0], local[1], family=dest.family, broadcast=broadcast)
            return _guard(
                sock,
                lambda: Endpoint(
                    sock,
                    queue_size=queue_size,
                    bufsize=bufsize,
                    default_to=dest,
                    busy_poll_us=busy_poll_us,
                ),
            )
        sock = udp_connect(dest.host, dest.port, bind=bind, family=dest.family, broadcast=broadcast)
        return _guard(
            sock,
            lambda: Endpoint(
                sock, queue_size=queue_size, bufsize=bufsize, busy_poll_us=busy_poll_us
            ),
        )

    return _Opening(make)


def bind_udp(
    host: str | int | None = "127.0.0.1",
    port: int | str = 0,
    *,
    broadcast: bool = False,
    family: int = socket.AF_UNSPEC,
    reuse_port: bool = False,
    queue_size: int = 512,
    bufsize: int = 65535,
    busy_poll_us: int = 0,
) -> _Opening[Endpoint]:
    """Open an endpoint bound to ``host``:``port`` that sends anywhere (``send(data, to=...)``).

    Args:
        host: any udpkit host form; ``""``/``None`` is every interface.
        port: a number, numeric string or service name; 0 picks a free port.
        broadcast: set SO_BROADCAST (to send to broadcast addresses).
        family: AF_UNSPEC, AF_INET or AF_INET6.
        reuse_port: set SO_REUSEPORT.
        queue_size: datagrams read ahead at most (see :class:`Endpoint`).
        bufsize: bytes kept per datagram.
        busy_poll_us: spin this long before sleeping in ``recv`` (see :class:`Endpoint`).

    Returns:
        An awaitable giving the :class:`Endpoint`, usable in ``async with`` directly too.

    Raises:
        AddressError: a bad host or port.
        AddressInUse: the address is taken.
        NetworkError: any other refusal.
    """

    async def make() -> Endpoint:
        sock = udp_bind(host, port, family=family, broadcast=broadcast, reuse_port=reuse_port)
        return _guard(
            sock,
            lambda: Endpoint(
                sock, queue_size=queue_size, bufsize=bufsize, busy_poll_us=busy_poll_us
            ),
        )

    return _Opening(make)


def serve(
    sock_or_host: DatagramSocket | socket.socket | str | int | None,
    port: int | str = 0,
    handler: Handler | None = None,
    *,
    broadcast: bool = False,
    family: int = socket.AF_UNSPEC,
    reuse_port: bool = False,
    bufsize: int = 65535,
    batch: int = 64,
    policy: Policy | None = None,
    busy_poll_us: int = 0,
) -> _Opening[Server]:
    """Start a :class:`Server` that answers with ``handler``; it serves until closed.

    Args:
        sock_or_host: a bound socket (the server takes it over), or a host to bind.
        port: the port to bind when a host is given.
        handler: the engine's handler type; ``None`` receives and counts only.
        broadcast: set SO_BROADCAST (replies to broadcast addresses).
        family: AF_UNSPEC, AF_INET or AF_INET6, when a host is given.
        reuse_port: set SO_REUSEPORT, when a host is given.
        bufsize: bytes kept per datagram.
        batch: datagrams per receive call.
        policy: admission and reply rules (see :class:`Server`; ``None``: the default).
        busy_poll_us: keep answering without sleeping this long (see :class:`Server`).

    Returns:
        An awaitable giving the running :class:`Server` (``async with`` closes it).

    Raises:
        AddressError: a bad host or port.
        AddressInUse: the address is taken.
        UsageError: a bad size, or a non-datagram socket.
    """

    async def make() -> Server:
        sock: DatagramSocket | socket.socket
        if isinstance(sock_or_host, DatagramSocket | socket.socket):
            sock = sock_or_host
        else:
            sock = udp_bind(
                sock_or_host, port, family=family, broadcast=broadcast, reuse_port=reuse_port
            )
        return _guard(
            sock,
            lambda: Server(
                sock,
                handler,
                bufsize=bufsize,
                batch=batch,
                policy=policy,
                busy_poll_us=busy_poll_us,
            ),
        )

    return _Opening(make)
