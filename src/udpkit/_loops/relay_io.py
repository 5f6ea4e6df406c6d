"""The relay's datagram paths: batched (recvmmsg/sendmmsg) and portable, for every route.

The fast path (Linux, no fault in a direction) never copies a datagram into
Python: ``recvmmsg`` fills a receive array and ``sendmmsg`` sends from the very
same buffers, through send headers whose iovecs point into it.  A batch costs a
handful of Python operations whatever its size.  With faults on, datagrams
become ``bytes`` and go through :class:`udpkit._core.relay.Impairment`.  The
receive arrays are scratch space shared by every route (one loop, one batch at
a time).
"""

from __future__ import annotations

import array
import ctypes
import errno
import os
import socket
from collections.abc import Sequence

from udpkit._core.datagram import Peer, SockAddr
from udpkit._core.errors import map_oserror
from udpkit._core.relay import Flow, Impairment
from udpkit._loops.relay_routes import Route, Upstream
from udpkit._net.kernel import AGAIN, ICMP_ERRORS, MSG_DONTWAIT, MSG_TRUNC, Waker, errno_name
from udpkit._net.mmsg import (
    NAME_SPACE,
    InetAddr,
    MsgArray,
    PeerKey,
    decode_sockaddr,
    encode_sockaddr,
    libc_mmsg,
)
from udpkit._net.sendmmsg import RETRY, SKIP, Packer, push

__all__ = ["RelayIO"]

_ROUNDS = 8  # receive batches per readable socket before looking at the others
_SEND_WAIT = 0.05  # longest wait for a full send buffer before counting EAGAIN
_IOV = 16  # sizeof(struct iovec) on 64-bit Linux
_RECV_FLAGS = MSG_TRUNC | MSG_DONTWAIT


class RelayIO:
    """Moves datagrams for :class:`udpkit._loops.relay.Relay`; owns no policy."""

    _batch: int
    _bufsize: int
    _fast: bool
    _waker: Waker
    _by_fd: dict[int, Upstream | Route]
    _pending: dict[int, tuple[Flow, Impairment, bool]]

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

    # -- flows (the loop's side, in relay.py) ---------------------------------------

    def _admit(
        self,
        route: Route,
        key: PeerKey | Peer,
        raw: bytes,
        peer: SockAddr,
        now: float,
        *,
        count: int,
    ) -> Flow | None:
        raise NotImplementedError

    # -- fast path: client -> target -------------------------------------------------

    def _from_clients_fast(self, route: Route, now: float) -> bool:
        rx = self._rx
        vlen = self._batch
        lfd = route.lfd
        for _ in range(_ROUNDS):
            rx.reset()
            n: int = libc_mmsg.recvmmsg(lfd, rx.hdrs_addr, vlen, _RECV_FLAGS, None)
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
            if route.family == socket.AF_INET:
                keys = rx.name_keys_v4(n)
            else:
                blob = rx.names_view[: n * NAME_SPACE].tobytes()
                keys = [blob[o : o + 28] for o in range(0, n * NAME_SPACE, NAME_SPACE)]
            if route.impaired or max(lens) > self._bufsize:
                self._clients_generic(route, now, n, lens, keys)
            else:
                self._forward_up(route, now, n, lens, keys)
            if n < vlen:
                return False
        return True

    def _raw_name(self, route: Route, i: int) -> bytes:
        ln = 16 if route.family == socket.AF_INET else 28
        return self._rx.names_view[i * NAME_SPACE : i * NAME_SPACE + ln].tobytes()

    def _flow_at(self, route: Route, now: float, key: PeerKey, i: int, count: int) -> Flow | None:
        flow = route.table.get(key)
        if flow is not None and flow.handle is not None:
            route.table.touch(flow, now)
            flow.handle.last_up = now
            return flow
        raw = self._raw_name(route, i)
        peer = decode_sockaddr(raw)
        assert isinstance(peer, tuple)  # an IP socket's sender: (host, port[, flow, scope])
        return self._admit(route, key, raw, peer, now, count=count)

    def _forward_up(
        self, route: Route, now: float, n: int, lens: list[int], keys: Sequence[PeerKey]
    ) -> None:
        self._fwd_iovq[1 : 2 * n : 2] = array.array("Q", lens)
        k0 = keys[0]
        if keys.count(k0) == n:
            if self._permuted:
                self._fwd_q[2 : 8 * n : 8] = self._identity[:n]
                self._permuted = False
            flow = self._flow_at(route, now, k0, 0, n)
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
            flow = self._flow_at(route, now, key, first, e - j)
            if flow is not None:
                sizes = [lens[i] for i in order[j:e]]
                flow.up_in += e - j
                flow.up_in_bytes += sum(sizes)
                self._send_up(flow, j, sizes)
            j = e

    def _send_up(self, flow: Flow, start: int, sizes: list[int]) -> None:
        sent, nbytes = self._send(flow, flow.handle.fd, self._fwd, start, sizes, up=True)
        flow.up_out += sent
        flow.up_out_bytes += nbytes

    def _send(
        self, flow: Flow, fd: int, tx: MsgArray, first: int, sizes: Sequence[int], *, up: bool
    ) -> tuple[int, int]:
        """Send headers ``first..`` of ``tx``, a datagram each; count errors; (datagrams, bytes)."""
        retried = -1
        route: Route = flow.handle.route

        def refused(code: int, i: int, n: int) -> int:
            nonlocal retried
            if code in ICMP_ERRORS and up:
                # An ICMP error from an earlier send, reported now: this datagram was
                # not sent.  Count it and send it again once, so traffic resumes on
                # the first datagram after the target comes back.
                flow.upstream_refused += 1
                if retried != i:
                    retried = i
                    return RETRY
            route.count_error(errno_name(code))
            flow.send_errors += 1
            return SKIP  # the rest still go

        _, sent, nbytes = push(
            fd, tx, first, len(sizes), counts=None, nbytes=sizes, wait=_SEND_WAIT, on_error=refused
        )
        return sent, nbytes

    # -- fast path: target -> client -------------------------------------------------

    def _from_upstream_fast(self, up: Upstream, now: float) -> bool:
        drx = self._drx
        vlen = self._batch
        flow = up.flow
        route = up.route
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
            route.table.touch(flow, now)
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
                sent, nbytes = self._send(flow, route.lfd, self._dfwd, 0, lens, up=False)
                flow.down_out += sent
                flow.down_out_bytes += nbytes
            if n < vlen:
                return False
        return True

    # -- generic path (impairments, truncation, portable) ------------------------------

    def _clients_generic(
        self, route: Route, now: float, n: int, lens: list[int], keys: Sequence[PeerKey]
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
            flow = self._flow_at(route, now, key, first, len(data))
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
        h: Upstream = flow.handle
        if self._fast:
            packer = self._packer
            name_addr, namelen = (0, 0) if up else (h.name_addr, h.namelen)
            fd = h.fd if up else h.route.lfd
            sent = nbytes = k = 0
            while k < len(data):
                k = packer.pack(data, k, gso=False, name_addr=name_addr, namelen=namelen)
                s, b = self._send(flow, fd, packer.tx, 0, packer.nbytes, up=up)
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

    def _from_clients_portable(self, route: Route, now: float) -> bool:
        groups: dict[InetAddr, list[bytes]] = {}
        got = 0
        while got < self._batch:
            try:
                payload, peer = route.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in ICMP_ERRORS:
                    continue
                raise map_oserror(exc, "relay receive") from exc
            got += 1
            groups.setdefault(peer, []).append(payload)
        for peer, data in groups.items():
            flow = route.table.get(peer)
            if flow is None or flow.handle is None:
                raw = encode_sockaddr(route.family, peer)
                flow = self._admit(route, peer, raw, peer, now, count=len(data))
            else:
                route.table.touch(flow, now)
                flow.handle.last_up = now
            if flow is not None:
                self._up_payloads(flow, now, data)
        return got == self._batch

    def _from_upstream_portable(self, h: Upstream, now: float) -> bool:
        flow = h.flow
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
            h.route.table.touch(flow, now)
            self._down_payloads(flow, now, data)
        return len(data) == self._batch

    def _send_portable(self, flow: Flow, data: Sequence[bytes], up: bool) -> tuple[int, int]:
        h: Upstream = flow.handle
        sent = nbytes = 0
        for p in data:
            for attempt in (0, 1):
                try:
                    if up:
                        h.sock.send(p)
                    else:
                        h.route.sock.sendto(p, flow.peer)
                except OSError as exc:
                    if up and exc.errno in ICMP_ERRORS:
                        flow.upstream_refused += 1
                        if attempt == 0:
                            continue
                    h.route.count_error(errno_name(exc.errno))
                    flow.send_errors += 1
                    break
                sent += 1
                nbytes += len(p)
                break
        return sent, nbytes
