"""The datagram engine: the socket loop that drives a serving step.

One responsibility, hence one module past 600 lines: the serving socket loop
(receive a batch, hand it to the step, send what it answers), on the batched
path and on the portable one, with the counters that account for every datagram.

The engine owns a socket's I/O and the clock, nothing else; what to do with a
batch is the :class:`~udpkit._core.serving.ServeStep`'s business.  One datagram's
route, top to bottom:

1. :meth:`Engine._serve`, the loop, sleeps in ``recvmmsg`` itself
   (``MSG_WAITFORONE``; epoll only for a socket with a timeout) and takes
   everything queued, into buffers allocated once (:mod:`udpkit._net.mmsg`).
2. :meth:`Engine._took` reads the batch's lengths and sources from the headers
   and calls up once: ``step.serve_whole`` when the answer needs no Python per
   datagram (an echo, a fixed reply), else ``step.serve`` with one
   :class:`~udpkit.Datagram` each.
3. What the step returns goes out with ``sendmmsg`` (:mod:`udpkit._loops.replies`): a whole
   batch straight from the receive buffers, or the handler's replies packed
   into an arena; one peer's same-size replies as GSO runs.

Elsewhere, or when asked, a portable path (``recvfrom_into``/``sendto``)
behaves the same way, batch for batch.  Every datagram ends in a counter:
received (whole or truncated, with its real length), or dropped by the kernel
(``/proc/net/udp``, or ``SO_RXQ_OVFL`` where /proc cannot tell).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat

from udpkit._core.counters import add_counters, counters_dict
from udpkit._core.datagram import Payload, Peer, SockAddr
from udpkit._core.errors import Unsupported, UsageError, map_oserror
from udpkit._core.serving import Echo, Handler, ServeStep
from udpkit._loops.replies import SEND_WAIT, Replies
from udpkit._loops.sigwake import signals_wake
from udpkit._net.kernel import (
    AGAIN,
    ICMP_ERRORS,
    LINUX,
    MSG_DONTWAIT,
    MSG_TRUNC,
    MSG_WAITFORONE,
    SO_BUSY_POLL,
    SO_RXQ_OVFL,
    SOL_UDP,
    UDP_GRO,
    Waker,
    errno_name,
    proc_drops,
    wait_writable,
)
from udpkit._net.mmsg import MM, MsgArray, PeerCache, fast_path_available, libc_mmsg
from udpkit._net.sockets import Datagram

__all__ = [
    "Engine",
    "EngineStats",
]

_RECV_FLAGS = MSG_TRUNC | MSG_DONTWAIT
# Sleep in the receive call itself until the first datagram, then take what is queued.
_WAIT_FLAGS = MSG_TRUNC | MSG_WAITFORONE
# A receive asleep in the kernel wakes this often to look at stop() and the deadline
# (a signal to the main thread interrupts it at once).
_TICK = 0.1
_GRO_BUFSIZE = 65535
_COUNTING_SLOT = 2048  # receive slot per datagram when only counting
_BATCH = 64  # datagrams per receive call (the default)
_COUNTING_BATCH = 256  # ... when only counting
# Longest a stopping engine spends reading what is already queued.
_DRAIN_LIMIT = 0.5
_new = tuple.__new__
_TIMEVAL = struct.Struct("@ll")  # struct timeval, for SO_RCVTIMEO


@dataclass
class EngineStats:
    """What an engine saw and did; every datagram is in exactly one bucket.

    ``rx_*`` count every datagram received, truncated or not, by its real length;
    ``truncated_bytes_lost`` is what truncation cut off.  ``kernel_drops`` is the
    kernel's cumulative drop count for the socket since it was created, or ``None``
    where the platform cannot tell.
    """

    rx_datagrams: int = 0
    rx_bytes: int = 0
    tx_datagrams: int = 0
    tx_bytes: int = 0
    truncated: int = 0
    truncated_bytes_lost: int = 0
    kernel_drops: int | None = None
    send_errors: dict[str, int] = field(default_factory=dict)
    handler_errors: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, object]:
        """Return the counters as a plain dict (ready for JSON)."""
        return counters_dict(self)

    def merge(self, other: EngineStats) -> None:
        """Add ``other``'s counters to these (summing workers).

        ``kernel_drops`` stays ``None`` only if both sides are ``None``.
        """
        add_counters(self, other)

    def count_error(self, code: int | None, n: int = 1) -> None:
        name = errno_name(code)
        self.send_errors[name] = self.send_errors.get(name, 0) + n


def _step_for(
    handler: Handler | ServeStep | None, on_batch: Callable[[Sequence[Datagram]], None] | None
) -> ServeStep:
    if not isinstance(handler, ServeStep):
        return ServeStep(handler, observer=on_batch)
    if on_batch is not None:
        raise UsageError(
            "on_batch goes with a plain handler: give the ServeStep an observer instead"
        )
    return handler


def _check_sizes(
    step: ServeStep, bufsize: int, batch: int | None, gro: bool | None, busy_poll_us: int
) -> int:
    """Check the engine's sizes; return the batch (its default for ``step``, if None)."""
    if not 1 <= bufsize <= 1 << 24:
        raise UsageError(f"invalid bufsize {bufsize!r}: must be 1-16777216 bytes")
    if batch is None:
        # Counting only, a batch costs the same Python work whatever its size:
        # larger batches spread it thinner. With a handler, replies go out per
        # batch, so smaller batches answer sooner.
        small_slots = gro is False or bufsize < _GRO_BUFSIZE  # GRO slots are 64 KiB each
        batch = _COUNTING_BATCH if step.counting_only and small_slots else _BATCH
    if not 1 <= batch <= 1024:
        raise UsageError(f"invalid batch {batch!r}: must be 1-1024 datagrams")
    if busy_poll_us < 0:
        raise UsageError(f"invalid busy_poll_us {busy_poll_us!r}: must be 0 or more")
    return batch


class Engine:
    """Serve one datagram socket: receive in batches, serve each batch, send the replies.

    Each received batch goes up once, to a :class:`~udpkit._core.serving.ServeStep`
    (admission, answer, reply budget, counters), and its replies go out with one
    ``sendmmsg``.  An echo or a fixed reply that the step clears for the whole
    batch is sent straight from the receive buffers, with no Python object per
    datagram.  On a blocking socket the loop sleeps in ``recvmmsg`` itself
    (``MSG_WAITFORONE``): one system call per wake-up.

    Args:
        sock: a bound (or connected) UDP socket; the caller keeps ownership.
        handler: a handler called once per datagram, whose reply (bytes or a
            sequence of bytes) goes to the datagram's peer; :data:`udpkit.ECHO` or
            a :class:`udpkit.Fixed` reply; or a whole
            :class:`~udpkit._core.serving.ServeStep`.  ``None`` receives and counts only.
        bufsize: bytes kept per datagram; longer ones are delivered truncated and counted.
        batch: datagrams per receive call (default 64; 256 when only counting).
        fast: ``None`` picks recvmmsg/sendmmsg where available, ``False`` forces the
            portable path, ``True`` insists on the fast one.
        gro: UDP GRO on receive; ``None`` enables it when the kernel accepts it and
            ``bufsize`` is at least 65535.
        gso: UDP GSO for runs of same-size replies to one peer; ``None`` tries it.
        on_batch: called with each received batch, before the handler runs (not with
            a ServeStep: give the step an observer).
        busy_poll_us: after each batch, spin on non-blocking receive this long before
            sleeping.

    Raises:
        UsageError: a bad ``bufsize``/``batch``/``busy_poll_us``, or GRO asked with a small buffer.
        Unsupported: ``fast=True`` or ``gro=True`` where the platform lacks them.
    """

    # Class attribute so the tests can exercise the SO_RXQ_OVFL path on Linux too.
    _proc_drops_first: bool = True
    # Class attribute so the tests can run the poll-then-receive loop on a blocking socket.
    _sleep_in_receive: bool = True

    def __init__(
        self,
        sock: socket.socket,
        handler: Handler | ServeStep | None,
        *,
        bufsize: int = 65535,
        batch: int | None = None,
        fast: bool | None = None,
        gro: bool | None = None,
        gso: bool | None = None,
        on_batch: Callable[[Sequence[Datagram]], None] | None = None,
        busy_poll_us: int = 0,
    ) -> None:
        step = _step_for(handler, on_batch)
        batch = _check_sizes(step, bufsize, batch, gro, busy_poll_us)
        inet = sock.family in (socket.AF_INET, socket.AF_INET6)
        can_fast = fast_path_available() and inet
        if fast and not can_fast:
            raise Unsupported(
                errno.EOPNOTSUPP,
                f"fast=True: recvmmsg/sendmmsg are not available for this {sock.family.name} "
                "socket here; pass fast=None or fast=False",
            )
        self._sock = sock
        self._fd = sock.fileno()
        self._step = step
        self._bufsize = bufsize
        self._batch = batch
        self._fast = can_fast if fast is None else bool(fast)
        self._v4 = sock.family == socket.AF_INET
        self._busy = busy_poll_us / 1e6
        self._st = EngineStats()
        self._stop = False
        self._cmsg_drops = 0
        self._peers = PeerCache(self._v4)
        self._whole = step.whole_reply
        self._blocking = False  # asleep in recvmmsg itself (decided per run)
        self._short = False  # the last receive took less than it asked: the socket is empty
        self._rx: MsgArray | None = None
        self._buf = bytearray(bufsize)
        # Kernel drops come from /proc/net/udp where the socket is listed there (the
        # same counter, read when asked: no cost per datagram); SO_RXQ_OVFL, a control
        # message on every datagram after the first drop, only where /proc cannot tell.
        self._ovfl = False
        if LINUX and (not self._proc_drops_first or proc_drops(self._fd) is None):
            self._ovfl = self._try_sockopt(socket.SOL_SOCKET, SO_RXQ_OVFL)
        if busy_poll_us and LINUX:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, busy_poll_us)
        self._gro = self._setup_gro(gro, inet)
        self._gso = gso is not False and self._fast and LINUX
        # Counting only (no handler, no observer): the payload is never read, so
        # each slot need not hold a whole datagram. MSG_TRUNC still reports every
        # real length, truncation is judged against ``bufsize`` arithmetically,
        # and small slots keep the kernel's copies in cache (as C sinks do).
        self._counting = step.counting_only
        # Nothing but datagrams in the buffers (no control messages to read), and
        # something to do with them: a batch of one can take the short way.
        self._plain = not self._counting and not self._ovfl and not self._gro
        if self._fast:
            small = self._counting and not self._gro
            self._setup_fast(min(bufsize, _COUNTING_SLOT) if small else bufsize)
        # Created last: nothing after this can raise and leak it.
        self._waker = Waker(self._fd)

    def _setup_gro(self, gro: bool | None, inet: bool) -> bool:
        """Turn UDP GRO on as ``gro`` asks (off, if an earlier engine left it on); is it on?"""
        bufsize = self._bufsize
        if gro and (not self._fast or bufsize < _GRO_BUFSIZE):
            raise UsageError(
                f"gro=True needs the fast path and bufsize >= {_GRO_BUFSIZE} "
                f"(got fast={self._fast}, bufsize={bufsize}): pass gro=None or gro=False"
            )
        if gro is not False and self._fast and bufsize >= _GRO_BUFSIZE:
            on = self._try_sockopt(SOL_UDP, UDP_GRO)
            if gro and not on:
                raise Unsupported(errno.ENOPROTOOPT, "gro=True: this kernel refuses UDP_GRO")
            return on
        if gro is False and LINUX and inet:
            # The socket may come with GRO on from an earlier engine: coalesced buffers
            # would be misread as one datagram by a path that does not split them.
            with contextlib.suppress(OSError):
                self._sock.setsockopt(SOL_UDP, UDP_GRO, 0)
        return False

    def _setup_fast(self, slot: int) -> None:
        """The receive array (``slot`` bytes per datagram) and the replies' send side."""
        batch = self._batch
        rx = self._rx = MsgArray(batch, slot)
        if self._counting:
            rx.strip(names=False, control=self._gro or self._ovfl)
        self._rx_template = memoryview(rx.template)
        self._replies = Replies(
            self._sock, rx, self._st, gso=self._gso, whole=self._whole, slot=slot
        )
        # Echoing with GRO: coalesced buffers are echoed whole, with GSO.
        self._echo_gro = self._gro and isinstance(self._whole, Echo) and self._replies.gso
        dv = rx.data_view
        self._slots = [dv[o : o + slot] for o in range(0, batch * slot, slot)]

    @property
    def stats(self) -> EngineStats:
        """The counters so far (final once :meth:`run` returned)."""
        st = self._st
        st.handler_errors = self._step.stats.handler_errors
        return st

    @property
    def step(self) -> ServeStep:
        """The serving step each batch goes to."""
        return self._step

    def _try_sockopt(self, level: int, opt: int) -> bool:
        try:
            self._sock.setsockopt(level, opt, 1)
        except OSError:
            return False
        return True

    @property
    def fast(self) -> bool:
        """True when recvmmsg/sendmmsg are in use, False on the portable path."""
        return self._fast

    @property
    def gro(self) -> bool:
        """Whether UDP GRO is on (it turns off for good if the kernel refuses it)."""
        return self._gro

    @property
    def gso(self) -> bool:
        """Whether replies may go out with UDP GSO."""
        return self._replies.gso if self._fast else False

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """End the current ``run()`` at once (or the next one, if none is running).

        Safe from another thread and from a signal handler.
        """
        self._stop = True
        self._waker.wake()

    def close(self) -> None:
        """Release the wake-up pair.  The served socket stays open: the caller owns it."""
        self._waker.close()

    def read_kernel_drops(self) -> int | None:
        """Refresh ``stats.kernel_drops`` from /proc/net/udp{,6} and the last SO_RXQ_OVFL seen.

        Returns:
            The kernel's cumulative drop count for the socket, or ``None`` where unknown.
        """
        proc = proc_drops(self._fd)
        if proc is not None:
            self._st.kernel_drops = max(proc, self._cmsg_drops, self._st.kernel_drops or 0)
        elif self._cmsg_drops:
            self._st.kernel_drops = max(self._cmsg_drops, self._st.kernel_drops or 0)
        return self._st.kernel_drops

    # -- the loop --------------------------------------------------------------

    def run(self, *, count: int | None = None, duration: float | None = None) -> EngineStats:
        """Receive and answer until ``count`` datagrams, ``duration`` seconds, or :meth:`stop`.

        Args:
            count: stop after this many datagrams (with GRO, the last buffer may hold more;
                all of them are delivered).
            duration: stop after this many seconds.

        Returns:
            ``self.stats``, final (kernel drops read) even if ``KeyboardInterrupt`` ends the run.

        Raises:
            UsageError: a negative ``count`` or ``duration``.
            NetworkError: the socket itself failed (closed, not a socket).
        """
        if count is not None and count < 0:
            raise UsageError(f"invalid count {count!r}: must be 0 or more datagrams")
        if duration is not None and duration < 0:
            raise UsageError(f"invalid duration {duration!r}: must be 0 or more seconds")
        deadline = None if duration is None else time.monotonic() + duration
        # Without MSG_DONTWAIT (Windows) the portable path needs a non-blocking socket.
        changed = not self._fast and not MSG_DONTWAIT
        restore = self._sock.gettimeout()
        if changed:
            self._sock.setblocking(False)
        self.read_kernel_drops()
        old_timeout = self._sleep_in_kernel(duration)
        try:
            if old_timeout is not None:
                # Signals interrupt the receive itself (EINTR), and stop() is seen
                # within a tick: the wake-up socket is not needed.
                self._loop(count, deadline)
            else:
                with signals_wake(self._waker.signal_fd):
                    self._loop(count, deadline)
        finally:
            self._stop = False
            if old_timeout is not None:
                self._blocking = False
                with contextlib.suppress(OSError):
                    self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, old_timeout)
            if changed:
                self._sock.settimeout(restore)
            self.read_kernel_drops()
        return self.stats

    def _sleep_in_kernel(self, duration: float | None) -> bytes | None:
        """Arrange for the loop to sleep in ``recvmmsg`` itself; return the old SO_RCVTIMEO.

        One system call per wake-up instead of a wait, a receive and a receive
        that says EAGAIN.  Only on a blocking socket (a caller's timeout makes
        it non-blocking) with the batched calls; the receive then times out
        every ``_TICK`` to look at stop() and the deadline.
        """
        if not (self._fast and self._sleep_in_receive):
            return None
        try:
            if not os.get_blocking(self._fd):
                return None
            old = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
            tick = _TICK if duration is None else max(min(_TICK, duration), 0.001)
            usec = int(tick * 1e6)
            self._sock.setsockopt(
                socket.SOL_SOCKET,
                socket.SO_RCVTIMEO,
                _TIMEVAL.pack(usec // 1_000_000, usec % 1_000_000),
            )
        except OSError:
            return None
        self._blocking = True
        return old

    def _loop(self, count: int | None, deadline: float | None) -> None:
        remaining = self._serve(count, deadline)
        if self._stop:
            self._drain(remaining)

    def _drain(self, remaining: int | None) -> None:
        """After stop(): take what is already queued, so no datagram is left uncounted.

        A datagram still in the socket's queue when the socket closes is lost
        without a trace (neither received nor a kernel drop).  Reading until the
        queue is empty keeps ``sent == received + kernel_drops`` exact; the time
        bound keeps a stop under flood prompt.
        """
        recv = self._recv_fast if self._fast else self._recv_portable
        end = time.monotonic() + _DRAIN_LIMIT
        while (remaining is None or remaining > 0) and time.monotonic() < end:
            n = recv(self._batch if remaining is None else min(self._batch, remaining))
            if n == 0:
                return
            if n > 0 and remaining is not None:
                remaining -= n

    def _serve(self, count: int | None, deadline: float | None) -> int | None:
        """The receive loop; returns how many datagrams ``count`` still allows.

        Asleep in ``recvmmsg`` (``MSG_WAITFORONE``: it returns as soon as one
        datagram is there, with whatever else is queued) where the socket allows
        it; else asleep in epoll, and never a receive that is known to find the
        socket empty.  With busy polling, each batch is followed by a spin on
        non-blocking receive for ``busy_poll_us``.
        """
        blocking = self._blocking
        remaining = count
        busy = self._busy
        batch = self._batch
        recv_wait = self._recv_fast
        recv = self._recv_fast if self._fast else self._recv_portable
        while not self._stop:
            if remaining is not None and remaining <= 0:
                return remaining
            vlen = batch if remaining is None else min(batch, remaining)
            n = recv_wait(vlen, _WAIT_FLAGS) if blocking else recv(vlen)
            if n > 0:
                if remaining is not None:
                    remaining -= n
                if deadline is not None and time.monotonic() >= deadline:
                    return remaining
                if busy:
                    remaining = self._spin_on(remaining, deadline)
                elif not blocking and self._short and not self._wait(deadline):
                    # The socket was empty: waited, instead of a receive that says so.
                    return remaining
                continue
            if n < 0:
                continue  # interrupted or an asynchronous error: try again at once
            if deadline is not None and time.monotonic() >= deadline:
                return remaining
            if not blocking and not self._wait(deadline):
                return remaining
        return remaining

    def _spin_on(self, remaining: int | None, deadline: float | None) -> int | None:
        """Busy polling: keep receiving without sleeping until ``busy_poll_us`` passes idle."""
        busy = self._busy
        clock = time.perf_counter
        spin = self._spin_fast if self._fast else self._spin_portable
        while not self._stop:
            if remaining is not None and remaining <= 0:
                break
            vlen = self._batch if remaining is None else min(self._batch, remaining)
            n = spin(vlen, clock() + busy)
            if n <= 0:
                break
            if remaining is not None:
                remaining -= n
            if deadline is not None and time.monotonic() >= deadline:
                break
        return remaining

    def _spin_fast(self, vlen: int, until: float) -> int:
        """Non-blocking recvmmsg in a tight loop until a batch arrives or ``until``."""
        rx = self._rx
        assert rx is not None
        call = libc_mmsg.recvmmsg_p
        fd, hdrs = self._fd, rx.hdrs_p
        clock = time.perf_counter
        get_errno = ctypes.get_errno
        while not self._stop:
            n: int = call(fd, hdrs, vlen, _RECV_FLAGS, None)
            if n > 0:
                return self._took(n, vlen)
            if n < 0:
                code = get_errno()
                if code not in AGAIN and self._recv_error(code) < 0:
                    continue
            if clock() >= until:
                break
        return 0

    def _spin_portable(self, vlen: int, until: float) -> int:
        clock = time.perf_counter
        while not self._stop:
            n = self._recv_portable(vlen)
            if n:
                return n
            if clock() >= until:
                break
        return 0

    def _wait(self, deadline: float | None) -> bool:
        """Sleep until the socket is readable or stop() is called; False at the deadline."""
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return False
            timeout = max(timeout, 0.001)
        ready = self._waker.wait(timeout)
        return bool(ready) or deadline is None or time.monotonic() < deadline

    def _recv_error(self, code: int) -> int:
        """Map a receive errno to the loop's next step: 0 wait, -1 retry; raise if fatal."""
        if code in AGAIN:
            return 0
        if code == errno.EINTR:
            return -1
        if code in ICMP_ERRORS:
            self._st.count_error(code)
            return -1
        raise map_oserror(OSError(code, os.strerror(code)), "receive")

    def _recv_fast(self, vlen: int, flags: int = _RECV_FLAGS) -> int:
        # The headers are as the template has them: _took restores what a call changed.
        rx = self._rx
        assert rx is not None
        n: int = libc_mmsg.recvmmsg_p(self._fd, rx.hdrs_p, vlen, flags, None)
        if n <= 0:
            if n == 0:
                return 0
            return self._recv_error(ctypes.get_errno())
        return self._took(n, vlen)

    def _took(self, n: int, vlen: int) -> int:
        """Serve the ``n`` messages a receive call filled; return how many datagrams they held."""
        rx = self._rx
        assert rx is not None
        st = self._st
        st.batches += 1
        self._short = n < vlen
        if n == 1 and self._plain:
            return self._took_one(rx, st)
        lens = rx.msg_lens(n)
        bufsize = self._bufsize
        segs: dict[int, int] | None = None
        if self._ovfl or self._gro:
            ctl = rx.controllens(n)
            if any(ctl):
                sizes = None if self._ovfl else rx.gro_sizes(n, ctl)
                if sizes is None:
                    segs = self._read_cmsgs(rx, ctl)
                elif self._counting:
                    # Coalesced buffers counted arithmetically: no Python per segment.
                    rx.hdr_view[: n * MM] = self._rx_template[: n * MM]
                    got = sum(
                        [
                            -(-ln // sz) if sz and ln else 1
                            for ln, sz in zip(lens, sizes, strict=False)
                        ]
                    )
                    st.rx_datagrams += got
                    st.rx_bytes += sum(lens)
                    return got
                else:
                    segs = {i: sz for i, sz in enumerate(sizes) if sz} or None
        if self._counting:
            rx.hdr_view[: n * MM] = self._rx_template[: n * MM]
            return self._count(lens, segs)
        keys, found = self._peers.batch(rx, n)
        # Everything is read from the headers: ready for the next call.
        rx.hdr_view[: n * MM] = self._rx_template[: n * MM]
        distinct = found.values()
        whole = segs is None and max(lens) <= bufsize
        if whole:
            total = sum(lens)
            st.rx_datagrams += n
            st.rx_bytes += total
            if self._whole is not None and self._step.serve_whole(distinct, lens):
                self._replies.send_whole(n, lens, len(found) == 1)
                return n
            datas = [m[:ln].tobytes() for m, ln in zip(self._slots, lens, strict=False)]
            dgrams = list(
                map(
                    _new,
                    repeat(Datagram),
                    zip(datas, map(found.__getitem__, keys), lens, strict=True),
                )
            )
            src: Sequence[int] = range(n)
        else:
            if segs is not None and self._echo_gro and max(lens) <= bufsize:
                # GRO-coalesced echoes go back as they came: each buffer one GSO send.
                sizes = [segs.get(i, 0) for i in range(n)]
                pairs = zip(lens, sizes, strict=True)
                counts = [-(-ln // sz) if sz and ln > sz else 1 for ln, sz in pairs]
                got = sum(counts)
                if self._step.serve_whole(distinct, lens, count=got):
                    st.rx_datagrams += got
                    st.rx_bytes += sum(lens)
                    self._replies.send_coalesced(n, lens, sizes, counts)
                    return got
            peers = list(map(found.__getitem__, keys))
            dgrams, src = self._split(rx, n, lens, peers, segs or {})
        sources, replies = self._step.serve(dgrams, time.monotonic(), distinct)
        if replies:
            self._replies.send(sources if whole else [src[i] for i in sources], replies, keys)
        return len(dgrams)

    def _took_one(self, rx: MsgArray, st: EngineStats) -> int:
        """A batch of one (light load): no lists, no more Python than the textbook pair needs."""
        ln = rx.first_len()
        peer = self._peers.first(rx)
        rx.hdr_view[:MM] = self._rx_template[:MM]
        st.rx_datagrams += 1
        st.rx_bytes += ln
        if ln > self._bufsize:
            st.truncated += 1
            st.truncated_bytes_lost += ln - self._bufsize
            dgram = _new(Datagram, (rx.data_view[: self._bufsize].tobytes(), peer, ln))
        elif self._whole is not None and self._step.serve_one(peer, ln):
            self._replies.send_one(ln)
            return 1
        else:
            dgram = _new(Datagram, (rx.data_view[:ln].tobytes(), peer, ln))
        sources, replies = self._step.serve((dgram,), time.monotonic(), (peer,))
        if replies:
            self._replies.send(sources, replies, (0,))
        return 1

    def _count(self, lens: list[int], segs: dict[int, int] | None) -> int:
        """Counting only: tally a batch arithmetically, with no datagram objects."""
        st = self._st
        bufsize = self._bufsize
        if segs:
            # A coalesced buffer of ``ln`` bytes holds ceil(ln / size) datagrams,
            # all of ``size`` bytes but the last.
            n = 0
            for i, ln in enumerate(lens):
                size = segs.get(i, 0)
                n += -(-ln // size) if size and ln else 1
        else:
            n = len(lens)
            if max(lens) > bufsize:
                over = [ln - bufsize for ln in lens if ln > bufsize]
                st.truncated += len(over)
                st.truncated_bytes_lost += sum(over)
        st.rx_datagrams += n
        st.rx_bytes += sum(lens)
        return n

    def _read_cmsgs(self, rx: MsgArray, ctl: list[int]) -> dict[int, int] | None:
        """Note SO_RXQ_OVFL counts; return {message index: GRO segment size} or None."""
        if not self._gro:
            # The drop count is cumulative: the last message that carries one says all.
            i = len(ctl) - 1
            while i > 0 and not ctl[i]:
                i -= 1
            self._note_cmsgs(rx, i, ctl[i])
            return None
        segs = {}
        for i, cl in enumerate(ctl):
            if cl:
                size = self._note_cmsgs(rx, i, cl)
                if size:
                    segs[i] = size
        return segs or None

    def _note_cmsgs(self, rx: MsgArray, i: int, controllen: int) -> int:
        """Record message ``i``'s drop count; return its GRO segment size (0 if none)."""
        size = 0
        for level, ctype, value in rx.cmsg_ints(i, controllen):
            if level == socket.SOL_SOCKET and ctype == SO_RXQ_OVFL:
                if value > self._cmsg_drops:
                    self._cmsg_drops = value
                    self._st.kernel_drops = max(value, self._st.kernel_drops or 0)
            elif level == SOL_UDP and ctype == UDP_GRO and 0 < value < 1 << 31:
                size = value
        return size

    def _split(
        self, rx: MsgArray, n: int, lens: list[int], peers: list[Peer], segs: dict[int, int]
    ) -> tuple[list[Datagram], list[int]]:
        """Build datagrams where some buffers are GRO-coalesced or truncated."""
        st = self.stats
        dv = rx.data_view
        bufsize = self._bufsize
        out: list[Datagram] = []
        src: list[int] = []
        for i in range(n):
            base = i * bufsize
            ln = lens[i]
            kept = min(ln, bufsize)
            size = segs.get(i, 0) or max(ln, 1)
            # A coalesced buffer holds datagrams of `size` bytes, the last one shorter.
            for s in range(0, max(ln, 1), size):
                e = min(s + size, ln)
                real = e - s
                data = dv[base + s : base + min(e, kept)].tobytes() if s < kept else b""
                if real > len(data):
                    st.truncated += 1
                    st.truncated_bytes_lost += real - len(data)
                out.append(_new(Datagram, (data, peers[i], real)))
                src.append(i)
                st.rx_bytes += real
        st.rx_datagrams += len(out)
        return out, src

    # -- the portable path --------------------------------------------------------

    def _recv_portable(self, vlen: int) -> int:
        sock = self._sock
        buf = self._buf
        bufsize = self._bufsize
        mv = memoryview(buf)
        flags = (MSG_TRUNC if LINUX else 0) | MSG_DONTWAIT
        st = self._st
        dgrams: list[Datagram] = []
        keep = not self._counting
        got = 0
        while got < vlen:
            try:
                ln, peer = sock.recvfrom_into(buf, bufsize, flags)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in ICMP_ERRORS:
                    st.count_error(exc.errno)
                    if got:
                        break
                    return -1
                raise map_oserror(exc, "receive") from exc
            got += 1
            st.rx_bytes += ln
            if ln > bufsize:
                st.truncated += 1
                st.truncated_bytes_lost += ln - bufsize
            if keep:
                dgrams.append(_new(Datagram, (mv[: min(ln, bufsize)].tobytes(), peer, ln)))
        self._short = got < vlen
        if not got:
            return 0
        st.rx_datagrams += got
        st.batches += 1
        if keep:
            sources, replies = self._step.serve(dgrams, time.monotonic())
            for i, r in zip(sources, replies, strict=True):
                self._sendto(r, dgrams[i].peer)
        return got

    def _sendto(self, data: Payload, peer: SockAddr) -> None:
        waited = 0.0
        while True:
            try:
                n = self._sock.sendto(data, MSG_DONTWAIT, peer)
            except (BlockingIOError, InterruptedError) as exc:
                if isinstance(exc, BlockingIOError) and waited >= SEND_WAIT:
                    self._st.count_error(errno.EAGAIN)
                    return
                waited += wait_writable(self._fd, SEND_WAIT - waited)
                continue
            except OSError as exc:
                self._st.count_error(exc.errno)
                return
            self._st.tx_datagrams += 1
            self._st.tx_bytes += n
            return
