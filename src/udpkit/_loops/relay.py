"""The relay's I/O: one listening socket, one connected upstream socket per client.

One responsibility, hence one module past 600 lines: the relay's sockets and its
loop, on the batched path and on the portable one.

Policy (which flow, when it expires, what the impairments do) is in
:mod:`udpkit._core.relay`; this module owns the sockets, the clock and the loop.

The fast path (Linux, no impairment in a direction) never copies a datagram
into Python: ``recvmmsg`` fills a receive array and ``sendmmsg`` sends from the
very same buffers, through send headers whose iovecs point into it.  A batch
costs a handful of Python operations whatever its size.  With impairments on,
datagrams become ``bytes`` and go through :class:`udpkit._core.relay.Impairment`.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import os
import socket
import time
from collections.abc import Callable, Sequence

from udpkit._core.datagram import Peer, SockAddr
from udpkit._core.errors import NetworkError, UsageError, map_oserror
from udpkit._core.relay import Flow, FlowTable, ImpairConfig, Impairment, ImpairRng, ImpairStats
from udpkit._core.relaystats import FlowRow, RelayStats, format_stats
from udpkit._loops.sigwake import signals_wake
from udpkit._net.addr import Address, format_sockaddr
from udpkit._net.kernel import (
    AGAIN,
    DEFAULT_RCVBUF,
    ICMP_ERRORS,
    MSG_DONTWAIT,
    MSG_TRUNC,
    Waker,
    errno_name,
    inode,
    proc_drops_by_inode,
)
from udpkit._net.mmsg import (
    NAME_SPACE,
    InetAddr,
    MsgArray,
    PeerKey,
    decode_sockaddr,
    encode_sockaddr,
    fast_path_available,
    libc_mmsg,
)
from udpkit._net.sendmmsg import RETRY, SKIP, Packer, push
from udpkit._net.sockets import DatagramSocket, set_receive_buffer

__all__ = ["Relay", "RelayStats", "format_stats"]

_ROUNDS = 8  # receive batches per readable socket before looking at the others
_SEND_WAIT = 0.05  # longest wait for a full send buffer before counting EAGAIN
_IOV = 16  # sizeof(struct iovec) on 64-bit Linux (checked in __init__)
_RECV_FLAGS = MSG_TRUNC | MSG_DONTWAIT


class _Up:
    """A flow's I/O side: its connected upstream socket and the client's raw sockaddr."""

    __slots__ = ("fd", "ino", "name", "name_addr", "namelen", "sock")

    def __init__(self, sock: socket.socket, raw_name: bytes) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        # /proc/net/udp lists a socket by inode: its drops are read by this key.
        self.ino = inode(self.fd)
        self.name = ctypes.create_string_buffer(raw_name, NAME_SPACE)
        self.name_addr = ctypes.addressof(self.name)
        self.namelen = len(raw_name)


def _show(peer: Peer) -> str:
    """A flow's client as text, as bench and ``serve`` name that same peer (IPv4-mapped as IPv4)."""
    try:
        return format_sockaddr(peer)
    except Exception:  # an unusual address is still shown, not fatal
        return repr(peer)


class Relay:
    """Forward datagrams between clients of ``listen_sock`` and ``target_addr``.

    Each client address gets its own upstream socket connected to the target, so
    the target sees one source port per client and its replies go back to the
    right client.  ICMP errors from the target (it is down) are counted and the
    flow stays: the first datagram after the target is back goes through.

    Args:
        listen_sock: a bound UDP socket (``socket.socket`` or ``DatagramSocket``);
            the caller keeps ownership.
        target_addr: an :class:`~udpkit.Address` or a sockaddr tuple.
        idle_timeout: seconds without traffic either way after which a flow ends.
        max_flows: flows at once; datagrams from further clients are refused and counted.
        impair_up: impairments client -> target (``None``: none).
        impair_down: impairments target -> client.
        seed: seeds the impairments' random streams (``None``: a random seed,
            reported in ``stats.seed`` so the run can be repeated).
        batch: datagrams per receive call.
        fast: ``None`` uses recvmmsg/sendmmsg where available, ``False`` the portable path.
        clock: the monotonic clock (seconds).
        on_report: called with ``stats`` when :meth:`request_report` was called.
        spin_us: after traffic, poll without sleeping for this many microseconds
            (adaptive busy polling: a datagram that follows soon does not pay for
            waking the process, ~25 µs of round trip here); 0 always sleeps.

    Raises:
        UsageError: a bad ``batch``, or ``fast=True`` where the fast path is missing.
    """

    def __init__(
        self,
        listen_sock: DatagramSocket | socket.socket,
        target_addr: Address | InetAddr,
        *,
        idle_timeout: float = 60.0,
        max_flows: int = 1024,
        impair_up: ImpairConfig | None = None,
        impair_down: ImpairConfig | None = None,
        seed: int | None = None,
        batch: int = 64,
        bufsize: int = 65535,
        fast: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_report: Callable[[RelayStats], None] | None = None,
        spin_us: int = 50,
    ) -> None:
        if not 1 <= batch <= 1024:
            raise UsageError(f"invalid batch {batch!r}: must be 1-1024 datagrams")
        if not 0 <= spin_us <= 1_000_000:
            raise UsageError(f"invalid spin_us {spin_us!r}: must be 0-1000000 microseconds")
        if not 1 <= bufsize <= 65535:
            raise UsageError(f"invalid bufsize {bufsize!r}: must be 1-65535 bytes")
        sock = listen_sock.sock if isinstance(listen_sock, DatagramSocket) else listen_sock
        self._lsock = sock
        self._lfd = sock.fileno()
        self._family = sock.family
        self._target: SockAddr | tuple[object, ...]
        if isinstance(target_addr, Address):
            self._tfamily, self._target = int(target_addr.family), target_addr.sockaddr
        else:
            self._target = tuple(target_addr)
            self._tfamily = socket.AF_INET6 if len(self._target) == 4 else socket.AF_INET
        can_fast = fast_path_available() and ctypes.sizeof(ctypes.c_void_p) == 8
        if fast and not can_fast:
            raise UsageError("fast=True: recvmmsg/sendmmsg are not available here; pass None")
        self._fast = can_fast if fast is None else bool(fast)
        self._clock = clock
        self._spin = spin_us / 1e6
        self._on_report = on_report
        self._batch = batch
        self._bufsize = bufsize
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
        up_on = impair_up is not None and impair_up.active
        down_on = impair_down is not None and impair_down.active
        rng_up, rng_down = ImpairRng(self.seed, "up"), ImpairRng(self.seed, "down")

        def make() -> tuple[Impairment | None, Impairment | None]:
            return (
                Impairment(impair_up, rng_up) if up_on and impair_up else None,
                Impairment(impair_down, rng_down) if down_on and impair_down else None,
            )

        self.table = FlowTable(
            max_flows=max_flows, idle_timeout=idle_timeout, make_impairments=make
        )
        self._impaired = up_on or down_on
        self._send_errors: dict[str, int] = {}
        # Kernel drops on upstream sockets already closed (a flow's socket takes the
        # target's replies: its receive queue overflows like the listening socket's).
        self._ended_drops = 0
        self._by_fd: dict[int, Flow] = {}
        self._pending: dict[int, tuple[Flow, Impairment, bool]] = {}
        self._stop = False
        self._report = False
        if self._fast:
            self._setup_fast()
        sock.setblocking(False)
        self._waker = Waker(self._lfd)

    def _setup_fast(self) -> None:
        n, size = self._batch, self._bufsize
        # Client -> target: receive array, and send headers whose iovecs point into it.
        self._rx = MsgArray(n, size)
        self._fwd = MsgArray(n, 0)
        # Target -> client: the same pair again.
        self._drx = MsgArray(n, size)
        self._dfwd = MsgArray(n, 0)
        for rx, tx in ((self._rx, self._fwd), (self._drx, self._dfwd)):
            for i in range(n):
                tx.set_iov(i, rx.data_addr + i * size, 0)
                tx.set_send(i, 0, 0, iov_index=i, control_off=0, controllen=0)
        # Impaired sends: the one packer (no GSO: impairments reshape the runs).
        self._packer = Packer(n, n * 65536)
        self._fwd_q = self._fwd.hdr_view.cast("Q")
        self._fwd_iovq = memoryview(self._fwd.iovs).cast("Q")
        self._dfwd_q = self._dfwd.hdr_view.cast("Q")
        self._dfwd_u = self._dfwd.hdr_view.cast("I")
        self._dfwd_iovq = memoryview(self._dfwd.iovs).cast("Q")
        self._identity = array.array("Q", [self._fwd.iovs_addr + i * _IOV for i in range(n)])
        self._permuted = False

    # -- control -----------------------------------------------------------------

    def stop(self) -> None:
        """End :meth:`run` soon.  Safe from another thread and from a signal handler."""
        self._stop = True
        self._waker.wake()

    def request_report(self) -> None:
        """Have the loop call ``on_report(stats)`` soon (what SIGUSR1 does)."""
        self._report = True
        self._waker.wake()

    def close(self) -> None:
        """Close every upstream socket and the wake-up pair (not the listening socket)."""
        drops = proc_drops_by_inode() if len(self.table) else {}
        for flow in list(self.table):
            self._end_flow(flow, drops)
            self.table.remove(flow)
        self._waker.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def fast(self) -> bool:
        """True when recvmmsg/sendmmsg are in use."""
        return self._fast

    @property
    def stats(self) -> RelayStats:
        """A snapshot of every counter, totals and per live flow."""
        t = self.table
        tot = t.totals()
        drops = proc_drops_by_inode()
        kd: int | None = None
        if drops:
            ino = inode(self._lfd)
            if ino is not None:
                kd = drops.get(ino, 0)
                # Every socket the relay reads: the listening one and each flow's upstream.
                kd += self._ended_drops
                for flow in t:
                    up = flow.handle
                    if up is not None:
                        kd += drops.get(up.ino, 0)
        rows: list[FlowRow] = []
        for flow in t:
            rows.append(
                {
                    "peer": _show(flow.peer),
                    "up_in": flow.up_in,
                    "up_out": flow.up_out,
                    "down_in": flow.down_in,
                    "down_out": flow.down_out,
                    "upstream_refused": flow.upstream_refused,
                    "up": (flow.up.stats if flow.up else ImpairStats()).as_dict(),
                    "down": (flow.down.stats if flow.down else ImpairStats()).as_dict(),
                }
            )
        return RelayStats(
            flows=len(t),
            peak_flows=t.peak,
            flows_created=t.created,
            flows_expired=t.expired,
            refused=t.refused,
            counts=tot.counts,
            up=tot.up,
            down=tot.down,
            send_errors=dict(self._send_errors),
            kernel_drops=kd,
            seed=self.seed if self._impaired else None,
            per_flow=rows,
        )

    # -- the loop ------------------------------------------------------------------

    def run(self, *, duration: float | None = None) -> RelayStats:
        """Relay until :meth:`stop` (or ``duration`` seconds); return the final stats.

        Raises:
            NetworkError: the listening socket itself failed.
        """
        clock = self._clock
        end = None if duration is None else clock() + duration
        lfd, waker = self._lfd, self._waker
        by_fd = self._by_fd
        from_clients = self._from_clients_fast if self._fast else self._from_clients_portable
        from_up = self._from_upstream_fast if self._fast else self._from_upstream_portable
        busy = False
        spin = self._spin
        spin_until = 0.0
        try:
            with signals_wake(waker.signal_fd):
                while not self._stop:
                    now = clock()
                    if end is not None and now >= end:
                        break
                    timeout = 0.0 if busy or now < spin_until else self._timeout(now, end)
                    ready = waker.wait(timeout)
                    now = clock()
                    busy = False
                    if spin and ready:
                        # Traffic: keep polling without sleeping for a while, so the next
                        # datagram does not pay for waking this process up.
                        spin_until = now + spin
                    for fd in ready:
                        if fd == lfd:
                            busy |= from_clients(now)
                        else:
                            flow = by_fd.get(fd)
                            if flow is not None:
                                busy |= from_up(flow, now)
                    if self._pending:
                        self._run_timers(now)
                    nxt = self.table.next_expiry()
                    if nxt is not None and nxt <= now:
                        ended = self.table.expire(now)
                        drops = proc_drops_by_inode() if ended else {}
                        for flow in ended:
                            self._end_flow(flow, drops)
                    if self._report:
                        self._report = False
                        if self._on_report is not None:
                            self._on_report(self.stats)
        finally:
            self._stop = False
        return self.stats

    def _timeout(self, now: float, end: float | None) -> float | None:
        """Seconds until the next timer, or ``None`` when there is none."""
        best = end
        nxt = self.table.next_expiry()
        if nxt is not None and (best is None or nxt < best):
            best = nxt
        for _, imp, _ in self._pending.values():
            d = imp.deadline
            if d is not None and (best is None or d < best):
                best = d
        return None if best is None else max(best - now, 0.0)

    # -- flows ---------------------------------------------------------------------

    def _admit(
        self, key: PeerKey | Peer, raw: bytes, peer: SockAddr, now: float, count: int
    ) -> Flow | None:
        t = self.table
        flow = t.admit(key, peer, now, 0)
        if flow is None:
            ended = t.expire(now)
            drops = proc_drops_by_inode() if ended else {}
            for old in ended:
                self._end_flow(old, drops)
            flow = t.admit(key, peer, now, count)
            if flow is None:
                return None
        if flow.handle is None:
            try:
                s = socket.socket(self._tfamily, socket.SOCK_DGRAM)
            except OSError as exc:
                t.remove(flow)
                t.refused += count
                self._count_error(exc.errno, count)
                return None
            try:
                s.setblocking(False)
                # The target's replies queue here while the relay is not scheduled:
                # as big a buffer as bench and reflect use, so a busy box does not drop.
                with contextlib.suppress(NetworkError, UsageError):
                    set_receive_buffer(s, DEFAULT_RCVBUF)
                s.connect(self._target)
            except OSError as exc:
                s.close()
                t.remove(flow)
                t.refused += count
                self._count_error(exc.errno, count)
                return None
            flow.handle = _Up(s, raw)
            self._by_fd[flow.handle.fd] = flow
            self._waker.register(flow.handle.fd)
        return flow

    def _end_flow(self, flow: Flow, drops: dict[int, int] | None = None) -> None:
        for imp in (flow.up, flow.down):
            if imp is not None:
                imp.abandon()
                self._pending.pop(id(imp), None)
        up: _Up | None = flow.handle
        if up is not None:
            # Keep what the kernel dropped on this socket: /proc forgets it at close.
            if drops is None:
                drops = proc_drops_by_inode()
            if up.ino is not None:
                self._ended_drops += drops.get(up.ino, 0)
            self._by_fd.pop(up.fd, None)
            self._waker.unregister(up.fd)
            up.sock.close()
            flow.handle = None

    def _count_error(self, code: int | None, n: int = 1) -> None:
        name = errno_name(code)
        self._send_errors[name] = self._send_errors.get(name, 0) + n

    # -- fast path: client -> target -------------------------------------------------

    def _from_clients_fast(self, now: float) -> bool:
        rx = self._rx
        vlen = self._batch
        for _ in range(_ROUNDS):
            rx.reset()
            n: int = libc_mmsg.recvmmsg(self._lfd, rx.hdrs_addr, vlen, _RECV_FLAGS, None)
            if n <= 0:
                if n < 0:
                    code = ctypes.get_errno()
                    if code in AGAIN:
                        return False
                    if code == errno.EINTR or code in ICMP_ERRORS:
                        continue
                    raise map_oserror(OSError(code, os.strerror(code)), "relay receive")
                return False
            lens = rx.msg_lens(n)
            keys: Sequence[PeerKey]
            if self._family == socket.AF_INET:
                keys = rx.name_keys_v4(n)
            else:
                blob = rx.names_view[: n * NAME_SPACE].tobytes()
                keys = [blob[o : o + 28] for o in range(0, n * NAME_SPACE, NAME_SPACE)]
            if self._impaired or max(lens) > self._bufsize:
                self._clients_generic(now, n, lens, keys)
            else:
                self._forward_up(now, n, lens, keys)
            if n < vlen:
                return False
        return True

    def _raw_name(self, i: int) -> bytes:
        ln = 16 if self._family == socket.AF_INET else 28
        return self._rx.names_view[i * NAME_SPACE : i * NAME_SPACE + ln].tobytes()

    def _flow_at(self, now: float, key: PeerKey, i: int, count: int) -> Flow | None:
        flow = self.table.get(key)
        if flow is not None and flow.handle is not None:
            self.table.touch(flow, now)
            return flow
        raw = self._raw_name(i)
        peer = decode_sockaddr(raw)
        assert isinstance(peer, tuple)  # an IP socket's sender: (host, port[, flow, scope])
        return self._admit(key, raw, peer, now, count)

    def _forward_up(self, now: float, n: int, lens: list[int], keys: Sequence[PeerKey]) -> None:
        self._fwd_iovq[1 : 2 * n : 2] = array.array("Q", lens)
        k0 = keys[0]
        if keys.count(k0) == n:
            if self._permuted:
                self._fwd_q[2 : 8 * n : 8] = self._identity[:n]
                self._permuted = False
            flow = self._flow_at(now, k0, 0, n)
            if flow is not None:
                flow.up_in += n
                flow.up_in_bytes += sum(lens)
                self._send_up(flow, 0, lens)
            return
        # Several clients in one batch: order the headers by client (stable, so each
        # client's datagrams keep their order) and send one run per client.
        order = sorted(range(n), key=keys.__getitem__)
        base = self._fwd.iovs_addr
        self._fwd_q[2 : 8 * n : 8] = array.array("Q", [base + i * _IOV for i in order])
        self._permuted = True
        j = 0
        while j < n:
            first = order[j]
            key = keys[first]
            e = j + 1
            while e < n and keys[order[e]] == key:
                e += 1
            flow = self._flow_at(now, key, first, e - j)
            if flow is not None:
                sizes = [lens[i] for i in order[j:e]]
                flow.up_in += e - j
                flow.up_in_bytes += sum(sizes)
                self._send_up(flow, j, sizes)
            j = e

    def _send_up(self, flow: Flow, start: int, sizes: list[int]) -> None:
        sent, nbytes = self._send(flow, flow.handle.fd, self._fwd, start, sizes)
        flow.up_out += sent
        flow.up_out_bytes += nbytes

    def _send(
        self, flow: Flow, fd: int, tx: MsgArray, first: int, sizes: Sequence[int]
    ) -> tuple[int, int]:
        """Send headers ``first..`` of ``tx``, a datagram each; count errors; (datagrams, bytes)."""
        retried = -1

        def refused(code: int, i: int, n: int) -> int:
            nonlocal retried
            if code in ICMP_ERRORS and fd != self._lfd:
                # An ICMP error from an earlier send, reported now: this datagram was
                # not sent.  Count it and send it again once, so traffic resumes on
                # the first datagram after the target comes back.
                flow.upstream_refused += 1
                if retried != i:
                    retried = i
                    return RETRY
            self._count_error(code)
            flow.send_errors += 1
            return SKIP  # the rest still go

        _, sent, nbytes = push(
            fd, tx, first, len(sizes), counts=None, nbytes=sizes, wait=_SEND_WAIT, on_error=refused
        )
        return sent, nbytes

    # -- fast path: target -> client -------------------------------------------------

    def _from_upstream_fast(self, flow: Flow, now: float) -> bool:
        drx = self._drx
        vlen = self._batch
        up: _Up = flow.handle
        for _ in range(_ROUNDS):
            drx.reset()
            n: int = libc_mmsg.recvmmsg(up.fd, drx.hdrs_addr, vlen, _RECV_FLAGS, None)
            if n <= 0:
                if n < 0:
                    code = ctypes.get_errno()
                    if code in ICMP_ERRORS:
                        flow.upstream_refused += 1
                        continue
                    if code == errno.EINTR:
                        continue
                return False
            lens = drx.msg_lens(n)
            flow.down_in += n
            flow.down_in_bytes += sum(lens)
            self.table.touch(flow, now)
            if flow.down is not None or max(lens) > self._bufsize:
                mv = drx.data_view
                size = self._bufsize
                data = [
                    mv[i * size : i * size + min(ln, size)].tobytes() for i, ln in enumerate(lens)
                ]
                self._down_payloads(flow, now, data)
            else:
                self._dfwd_iovq[1 : 2 * n : 2] = array.array("Q", lens)
                self._dfwd_q[0 : 8 * n : 8] = array.array("Q", [up.name_addr]) * n
                self._dfwd_u[2 : 16 * n : 16] = array.array("I", [up.namelen]) * n
                sent, nbytes = self._send(flow, self._lfd, self._dfwd, 0, lens)
                flow.down_out += sent
                flow.down_out_bytes += nbytes
            if n < vlen:
                return False
        return True

    # -- generic path (impairments, truncation, portable) ------------------------------

    def _clients_generic(
        self, now: float, n: int, lens: list[int], keys: Sequence[PeerKey]
    ) -> None:
        mv = self._rx.data_view
        size = self._bufsize
        groups: dict[PeerKey, tuple[int, list[bytes]]] = {}
        for i in range(n):
            ln = min(lens[i], size)
            g = groups.get(keys[i])
            if g is None:
                g = groups[keys[i]] = (i, [])
            g[1].append(mv[i * size : i * size + ln].tobytes())
        for key, (first, data) in groups.items():
            flow = self._flow_at(now, key, first, len(data))
            if flow is not None:
                self._up_payloads(flow, now, data)

    def _up_payloads(self, flow: Flow, now: float, data: list[bytes]) -> None:
        flow.up_in += len(data)
        flow.up_in_bytes += sum(map(len, data))
        imp = flow.up
        if imp is not None:
            data, _ = imp.feed(now, data)
            self._note_pending(flow, imp, True)
        self._send_payloads(flow, data, True)

    def _down_payloads(self, flow: Flow, now: float, data: list[bytes]) -> None:
        imp = flow.down
        if imp is not None:
            data, _ = imp.feed(now, data)
            self._note_pending(flow, imp, False)
        self._send_payloads(flow, data, False)

    def _note_pending(self, flow: Flow, imp: Impairment, up: bool) -> None:
        if imp.deadline is None:
            self._pending.pop(id(imp), None)
        else:
            self._pending[id(imp)] = (flow, imp, up)

    def _run_timers(self, now: float) -> None:
        for key, (flow, imp, up) in list(self._pending.items()):
            if imp.deadline is not None and imp.deadline <= now:
                data, dl = imp.poll(now)
                if dl is None:
                    del self._pending[key]
                if data:
                    self._send_payloads(flow, data, up)

    def _send_payloads(self, flow: Flow, data: Sequence[bytes], up: bool) -> None:
        if not data:
            return
        h: _Up = flow.handle
        if self._fast:
            packer = self._packer
            name_addr, namelen = (0, 0) if up else (h.name_addr, h.namelen)
            fd = h.fd if up else self._lfd
            sent = nbytes = k = 0
            while k < len(data):
                k = packer.pack(data, k, gso=False, name_addr=name_addr, namelen=namelen)
                s, b = self._send(flow, fd, packer.tx, 0, packer.nbytes)
                sent += s
                nbytes += b
        else:
            sent, nbytes = self._send_portable(flow, data, up)
        if up:
            flow.up_out += sent
            flow.up_out_bytes += nbytes
        else:
            flow.down_out += sent
            flow.down_out_bytes += nbytes

    # -- portable path -----------------------------------------------------------------

    def _from_clients_portable(self, now: float) -> bool:
        groups: dict[InetAddr, list[bytes]] = {}
        got = 0
        while got < self._batch:
            try:
                payload, peer = self._lsock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in ICMP_ERRORS:
                    continue
                raise map_oserror(exc, "relay receive") from exc
            got += 1
            groups.setdefault(peer, []).append(payload)
        for peer, data in groups.items():
            flow = self.table.get(peer)
            if flow is None or flow.handle is None:
                flow = self._admit(peer, encode_sockaddr(self._family, peer), peer, now, len(data))
            else:
                self.table.touch(flow, now)
            if flow is not None:
                self._up_payloads(flow, now, data)
        return got == self._batch

    def _from_upstream_portable(self, flow: Flow, now: float) -> bool:
        h: _Up = flow.handle
        data: list[bytes] = []
        while len(data) < self._batch:
            try:
                data.append(h.sock.recv(65535))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in ICMP_ERRORS:
                    flow.upstream_refused += 1
                    continue
                break
        if data:
            flow.down_in += len(data)
            flow.down_in_bytes += sum(map(len, data))
            self.table.touch(flow, now)
            self._down_payloads(flow, now, data)
        return len(data) == self._batch

    def _send_portable(self, flow: Flow, data: Sequence[bytes], up: bool) -> tuple[int, int]:
        h: _Up = flow.handle
        sent = nbytes = 0
        for p in data:
            for attempt in (0, 1):
                try:
                    if up:
                        h.sock.send(p)
                    else:
                        self._lsock.sendto(p, flow.peer)
                except OSError as exc:
                    if up and exc.errno in ICMP_ERRORS:
                        flow.upstream_refused += 1
                        if attempt == 0:
                            continue
                    self._count_error(exc.errno)
                    flow.send_errors += 1
                    break
                sent += 1
                nbytes += len(p)
                break
        return sent, nbytes
