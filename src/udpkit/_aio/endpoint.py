"""udpkit.aio.Endpoint: ``await recv()``, ``await send()``, ``async for`` and ``request``.

One responsibility: the asyncio face of one datagram socket, i.e. when to read,
when to send, and which waiting task gets each datagram.  The socket plumbing
(readiness callbacks, batches, the send queue) is in ``_aio/core.py``; which
running request a datagram answers is decided by the I/O-free
``udpkit._core.requests``; this module connects the two to the event loop and
its clock.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import socket
import time
from collections.abc import Callable
from typing import Self

from udpkit._aio.core import (
    BUSY_SLICE,
    PEER_CACHE_MAX,
    AioSocket,
    resolve_waiter,
)
from udpkit._core.datagram import AnySockAddr, Datagram, Payload, SockAddr
from udpkit._core.errors import (
    ConnectionRefused,
    MessageTooLarge,
    PermissionDenied,
    Timeout,
    UsageError,
    map_oserror,
)
from udpkit._core.requests import Request, Requests
from udpkit._net.addr import Address, is_broadcast, resolve_one
from udpkit._net.kernel import EARLIER, ICMP_ERRORS
from udpkit._net.sockets import DatagramSocket, Destination

__all__ = ["Endpoint"]


def _check_timeout(timeout: object) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise UsageError(f"invalid timeout {timeout!r}: must be a number of seconds >= 0")


_DONE, _TIMEOUT, _REFUSED = 0, 1, 2


class Endpoint(AioSocket):
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
            still get a turn about every millisecond.

    Attributes:
        last_error: the latest soft error (an ICMP report, a datagram not sent), or None.

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
        default_to: Destination | None = None,
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
        self._known: dict[Destination, SockAddr] = {}
        self._follow = False
        self._requests: asyncio.Lock | None = None
        # Running requests: those with ``match`` (concurrent, in start order), and the
        # one without (``request`` or ``request_all``: they take turns) as catch-all.
        self._reqs = Requests()
        self._askers = self._reqs.matching  # the same list: recv tests it per datagram
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
        self._default: SockAddr | None = None
        self._has_default = self._connected is not None or default_to is not None
        if default_to is not None:
            try:
                self._default = self._resolve(default_to)[0]
            except BaseException:
                self.close()
                raise

    @property
    def peer(self) -> AnySockAddr:
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
            if self._fatal is not None:
                return  # the socket failed: reading stopped and the waiters know
        self._read_batches()

    def _unconsumed(self) -> int:
        n = len(self._queue)
        self._queue.clear()
        return n

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
        handle = None if timeout is None else self._loop.call_later(timeout, resolve_waiter, fut)
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

        While requests with ``match`` are running, a datagram one of them accepts
        goes to that request, not here.

        Args:
            timeout: seconds to wait at most; ``None`` waits as long as it takes.

        Returns:
            The datagram: ``data``, ``peer`` and real ``length`` (``b""``/0 for an empty one).

        Raises:
            Timeout: nothing arrived within ``timeout``.
            UsageError: the endpoint is closed.
            NetworkError: the socket itself failed (not an ICMP report: those are soft).
        """
        if timeout is not None:
            _check_timeout(timeout)
        if self._queue and not self._askers:
            return self._take()
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._busy:
            left = timeout
            while True:
                d = await self._busy_recv(left)
                if d is None:
                    break
                if not self._askers or not self._give(d):
                    return d
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
        while True:
            while self._queue:
                d = self._take()
                if not self._askers or not self._give(d):
                    return d
            self._check_open()
            if self._fatal is not None:
                raise self._fatal
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise Timeout(f"no datagram on {self.local_address!r} within {timeout:g} s")
            await self._wait(left)

    async def _busy_recv(
        self, timeout: float | None, asker: Request | None = None
    ) -> Datagram | None:
        """Busy-poll up to ``busy_poll_us`` (and ``timeout``): a datagram, or None to sleep.

        The datagram is the caller's to route; with ``asker``, this also stops (None)
        once another task has routed enough to it.
        """
        clock = time.perf_counter
        now = clock()
        end = now + (self._busy if timeout is None else min(self._busy, timeout))
        while self._reading:  # paused means queued datagrams; closed or failed: sleep path
            if now - self._yielded >= BUSY_SLICE:
                await asyncio.sleep(0)  # the loop's other tasks get their turn
                self._yielded = now = clock()
                if asker is not None and asker.satisfied():
                    break
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
            d = self._spin(min(end, self._yielded + BUSY_SLICE))
            if d is not None:
                return d
            now = clock()
            if now >= end:
                break
        return None

    # -- routing datagrams to running requests -------------------------------------------

    def _give(self, d: Datagram) -> bool:
        """For recv(): whether a request with ``match`` took ``d`` (its task is woken)."""
        if self._reqs.claim(d) is None:
            return False
        if self._waiters:
            self._wake()
        return True

    def _route(self, d: Datagram) -> Request | None:
        """:meth:`Requests.route`, counting what no request takes as stale."""
        a = self._reqs.route(d)
        if a is None:
            self._st.stale += 1
        return a

    def _feed(self, me: Request) -> None:
        """Take queued datagrams until ``me`` is satisfied, routing each; wake the owners
        of what went to other requests. The rest stays queued (for recv)."""
        q = self._queue
        other = False
        while q and not me.satisfied():
            a = self._route(self._take())
            if a is not None and a is not me:
                other = True
        if other and self._waiters:
            self._wake()

    async def _collect(self, me: Request, deadline: float, seen: int | None) -> int:
        """Wait until ``me`` is satisfied (_DONE), ``deadline`` passes (_TIMEOUT) or, with
        ``seen``, a connected endpoint hears a new ICMP port unreachable (_REFUSED)."""
        while True:
            if me.satisfied():
                return _DONE
            if self._queue:
                self._feed(me)
                continue
            self._check_open()
            if self._fatal is not None:
                raise self._fatal
            if seen is not None and self._refusals != seen and self._connected is not None:
                return _REFUSED
            left = deadline - time.monotonic()
            if left <= 0:
                return _TIMEOUT
            if self._busy:
                spun = await self._busy_recv(left, me)
                if spun is not None:
                    a = self._route(spun)
                    if a is not None and a is not me and self._waiters:
                        self._wake()
                    continue
                if me.satisfied():
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    continue  # the checks above, then _TIMEOUT
            await self._wait(left)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Datagram:
        if self._queue and not self._askers:
            return self._take()
        try:
            return await self.recv()
        except UsageError:
            if self._closed:
                raise StopAsyncIteration from None
            raise

    def _resolve(self, to: Destination) -> tuple[SockAddr, bool]:
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
        peer = self._connected
        if peer is not None and tuple(addr.sockaddr[:2]) != tuple(peer[:2]):
            # The kernel would send it, but filters every answer out: say so now.
            raise UsageError(
                f"cannot send to {to!r}: this endpoint is connected to {peer!r}, and only "
                "its datagrams arrive; use bind_udp() for an endpoint that talks to anyone"
            )
        if len(self._known) >= PEER_CACHE_MAX:
            self._known.clear()
        self._known[to] = addr.sockaddr
        return addr.sockaddr, True

    def _send_now(self, data: bytes, dest: SockAddr | None, new: bool) -> bool:
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
            # Only a connected socket hears ICMP reports (Linux drops them for an
            # unconnected one): there, an error may be an earlier datagram's.
            if self._connected is not None and (
                code in EARLIER or (code in ICMP_ERRORS and not new)
            ):
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

    async def send(self, data: Payload, to: Destination | None = None) -> None:
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
            UsageError: ``data`` that is not bytes, no destination on an unconnected
                endpoint, or the endpoint is closed.
            NetworkError: the kernel refused this datagram (e.g. no route). A datagram
                queued behind others is counted in ``stats.send_errors`` and
                ``last_error`` instead, as one refused after an ICMP report is.
        """
        self._check_open()
        if type(data) is bytes:
            payload = data
        elif isinstance(data, bytes | bytearray | memoryview):
            payload = bytes(data)
        else:
            raise UsageError(
                f"cannot send {type(data).__name__} {data!r:.40}: give bytes "
                "(encode text first, e.g. 'hello'.encode())"
            )
        if self._limit is not None and len(payload) > self._limit:
            raise MessageTooLarge(
                f"message of {len(payload)} bytes is too large: the largest datagram of this "
                f"family carries {self._limit} bytes"
            )
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
        to: Destination | None = None,
        *,
        timeout: float = 2.0,
        retries: int = 0,
        match: Callable[[Datagram], bool] | None = None,
    ) -> Datagram:
        """Send ``data`` and return its answer, resending on silence.

        Each attempt gets its own monotonic deadline, ``timeout`` seconds after its
        send. UDP carries no request ids, so without ``match`` the first datagram
        after the send that no request with ``match`` accepts is the answer, and
        requests without ``match`` take turns on one endpoint (a concurrent call
        waits until the one before it has its answer or gives up), so answers
        never cross. Where the protocol can tell (an id, a source), pass ``match``:
        requests with ``match`` run concurrently, each datagram going to the
        (earliest started) request whose ``match`` accepts it, and a late answer
        to an earlier request (or a second answer to a resent one) is skipped and
        counted as stale instead. Datagrams already waiting when a request starts
        cannot be its answer: they go to the other running requests that accept
        them, and the rest are discarded and counted in ``stats.stale`` (as are
        datagrams a request with ``match`` takes while looking that no request
        accepts). While requests with ``match`` run, :meth:`recv` gets only what
        none of them accepts.

        Args:
            data: the request payload.
            to: as for :meth:`send`.
            timeout: seconds each attempt waits for an answer.
            retries: how many times to resend after an attempt's deadline passes.
            match: ``(Datagram) -> bool``: whether a datagram answers this request.
                It may be called from another task's ``request`` or ``recv``; if it
                raises, this request (only) raises that exception.

        Returns:
            The answer (from any peer, for a broadcast or multicast request).

        Raises:
            Timeout: no answer after ``retries + 1`` attempts.
            ConnectionRefused: on a connected endpoint, nothing listens at the peer
                (ICMP port unreachable) on the last attempt.
            UsageError: a bad ``timeout`` or ``retries``, or a closed endpoint.
            Exception: whatever ``match`` raised.
        """
        _check_timeout(timeout)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise UsageError(f"invalid retries {retries!r}: must be a whole number >= 0")
        if match is not None:
            return await self._request(data, to, timeout, retries, match)
        async with self._turn():
            return await self._request(data, to, timeout, retries, None)

    async def _request(
        self,
        data: bytes | bytearray | memoryview,
        to: Destination | None,
        timeout: float,
        retries: int,
        match: Callable[[Datagram], bool] | None,
    ) -> Datagram:
        self._discard_waiting()
        me = Request(match, 1)
        self._reqs.enter(me)
        try:
            for attempt in range(retries + 1):
                if me.got:  # arrived while the last attempt's time ran out: no resend
                    return me.got.pop(0)
                seen = self._refusals
                deadline = time.monotonic() + timeout
                await self.send(data, to)
                why = await self._collect(me, deadline, seen)
                if me.error is not None:
                    raise me.error
                if me.got:
                    return me.got.pop(0)
                if why == _REFUSED:
                    if attempt == retries:
                        raise ConnectionRefused(
                            errno.ECONNREFUSED,
                            f"request to {self._connected!r}: nothing is listening there "
                            "(ICMP port unreachable)",
                        )
                    # Nobody listens yet: wait out this attempt, so a starting server gets time.
                    left = deadline - time.monotonic()
                    if left > 0:
                        await asyncio.sleep(left)
            tries = "attempt" if retries == 0 else "attempts"
            raise Timeout(f"no reply to the request within {timeout:g} s ({retries + 1} {tries})")
        finally:
            self._st.stale += self._reqs.leave(me)

    def _turn(self) -> asyncio.Lock:
        """The lock requests without ``match`` take turns with (made on first use)."""
        if self._requests is None:
            self._requests = asyncio.Lock()
        return self._requests

    def _discard_waiting(self) -> None:
        """What arrived before a request is sent cannot be its answer: it goes to the
        other running requests that want it, the rest is dropped (``stale``)."""
        q = self._queue
        for _ in range(64):  # bounded: a flood must not keep the request from going out
            if self._reading:
                self._read_batches()  # what the kernel holds, into the queue
            n = len(q)
            if not n:
                return
            if self._reqs.active:
                routed = False
                while q:
                    if self._route(q.popleft()) is not None:
                        routed = True
                if routed and self._waiters:
                    self._wake()
            else:
                q.clear()
                self._st.stale += n
            if not self._reading and not self._closed and self._fatal is None:
                self._resume()

    async def request_all(
        self,
        data: bytes | bytearray | memoryview,
        to: Destination | None = None,
        *,
        timeout: float = 2.0,
        limit: int = 4096,
    ) -> list[Datagram]:
        """Send ``data`` once and collect every datagram that arrives within ``timeout``.

        For discovery: a request to a broadcast address or a group (an endpoint
        opened to one is not connected) is answered by every responder. It takes
        its turn with the :meth:`request` calls without ``match``; requests with
        ``match`` run concurrently and their answers (the datagrams their
        ``match`` accepts) are not collected here. What was waiting before the
        send goes to those requests, or is discarded (as ``stale``).

        Args:
            data: the request payload.
            to: as for :meth:`send`.
            timeout: seconds to collect for, from the send.
            limit: stop after this many datagrams.

        Returns:
            The datagrams in arrival order (empty when none came).

        Raises:
            UsageError: a negative ``timeout``, a ``limit`` below 1, or a closed endpoint.
        """
        _check_timeout(timeout)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UsageError(f"invalid limit {limit!r}: must be 1 or more datagrams")
        async with self._turn():
            self._discard_waiting()
            me = Request(None, limit)
            self._reqs.enter(me)
            try:
                deadline = time.monotonic() + timeout
                await self.send(data, to)
                await self._collect(me, deadline, None)
                out, me.got = me.got, []
                return out
            finally:
                self._st.stale += self._reqs.leave(me)
