"""The engine's send side: a batch's replies out with ``sendmmsg``, as GSO runs where it can.

Two ways out, both through the one sending loop (:func:`udpkit._net.sendmmsg.push`):

* **Whole batches** (:meth:`Replies.send_whole`): every received message gets
  the same kind of reply, an echo or a fixed payload, so the send headers are
  written once at start: header j points at receive slot j's address (as the
  kernel filled it) and at receive buffer j (echo) or the fixed reply.  Per batch
  only the echo lengths change.  One peer's same-size replies go out as GSO runs
  of those same buffers, cut into datagrams by the kernel.
* **Replies a handler returned** (:meth:`Replies.send`): packed into an arena by
  the one packer (:class:`udpkit._net.sendmmsg.Packer`), a header each, and
  consecutive same-size replies to one peer as one GSO message.

A full send buffer is waited for (at most ``SEND_WAIT`` per batch); a reply
the kernel refuses is counted by errno, never raised.  A kernel that refuses GSO
turns it off for good and the run goes again as single datagrams.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import socket
from array import array
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from udpkit._core.datagram import Payload
from udpkit._core.serving import Echo
from udpkit._net.kernel import GSO_MAX_BYTES, MSG_DONTWAIT, OFFLOAD_REFUSED, UDP_MAX_SEGMENTS
from udpkit._net.mmsg import CONTROL_SPACE, NAME_SPACE, MsgArray, libc_mmsg
from udpkit._net.sendmmsg import SKIP, STOP, Packer, push

if TYPE_CHECKING:
    from udpkit._loops.engine import EngineStats

__all__ = ["SEND_WAIT", "Replies"]

SEND_WAIT = 1.0  # longest wait for a full send buffer to drain before counting EAGAIN


class Replies:
    """Send what a serving step answered for a batch received into ``rx``.

    Args:
        sock: the served socket.
        rx: the receive headers and buffers (their addresses are the replies' destinations).
        stats: where sent datagrams and send errors are counted.
        gso: try UDP GSO for runs of same-size replies to one peer.
        whole: ECHO or a fixed reply to send for whole batches, or ``None``.
        slot: bytes per receive buffer.
    """

    def __init__(
        self,
        sock: socket.socket,
        rx: MsgArray,
        stats: EngineStats,
        *,
        gso: bool,
        whole: bytes | Echo | None,
        slot: int,
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._rx = rx
        self.stats = stats
        self.gso = gso
        self._namelen = 16 if sock.family == socket.AF_INET else 28  # sockaddr_in(6)
        # Replies a handler returned: headers, and an arena their bytes are packed into.
        self._packer = Packer(max(rx.n, 16), max(rx.n * 2048, 2 * 65536))
        self._whole_size = 0
        self._slot = slot
        if whole is not None:
            self._init_whole(whole, slot)

    # -- whole batches ------------------------------------------------------------

    def _init_whole(self, whole: bytes | Echo, slot: int) -> None:
        """Write the whole-batch headers: header j answers received message j.

        The second half of the headers sends GSO runs of the same iovecs; they
        are written when a run's segment size is first seen.
        """
        rx = self._rx
        n = rx.n
        wtx = self._wtx = MsgArray(2 * n, 0)
        if isinstance(whole, Echo):
            base, stride, length = rx.data_addr, slot, slot
            self._whole_size = -1  # echo: each reply as long as its request
        else:
            self._fixed_buf = bytearray(whole or b"\0")
            base = ctypes.addressof(ctypes.c_char.from_buffer(self._fixed_buf))
            stride, length = 0, len(whole)
            self._whole_size = length
        for j in range(n):
            wtx.set_iov(j, base + j * stride, length)
            wtx.set_send(
                j,
                rx.names_addr + j * NAME_SPACE,
                self._namelen,
                iov_index=j,
                control_off=0,
                controllen=0,
            )
        wide = ctypes.sizeof(ctypes.c_size_t) == 8
        self._wtx_lens = memoryview(wtx.iovs).cast("Q" if wide else "I")  # iov_len: size_t
        self._len_array = functools.partial(array, "Q" if wide else "I")
        self._gso_size = 0  # the segment size the GSO headers are written for

    def send_one(self, length: int) -> None:
        """Answer received message 0 with the whole-batch reply (a lone request)."""
        size = self._whole_size
        if size < 0:  # echo
            self._wtx_lens[1] = size = length
        if libc_mmsg.sendmmsg_p(self._fd, self._wtx.hdrs_p, 1, MSG_DONTWAIT) == 1:
            st = self.stats
            st.tx_datagrams += 1
            st.tx_bytes += size
        else:
            self.send_whole(1, [length], False)  # waits for room, or counts why

    def send_whole(self, n: int, lens: list[int], one_peer: bool) -> None:
        """Answer received messages 0..n-1 with the whole-batch reply, straight from the buffers.

        Same-size replies to one peer go out as GSO runs (one message per run,
        cut by the kernel), else one message each.
        """
        size = self._whole_size
        if size < 0:
            self._wtx_lens[1 : 2 * n : 2] = self._len_array(lens)
            size = lens[0]
            same = one_peer and size == max(lens) == min(lens)
            nbytes: Sequence[int] = lens
        else:
            same = one_peer
            nbytes = [size] * n
        start = 0
        if same and n > 1 and size and self.gso:
            start = self._send_runs(n, size)
            if start == n:
                return
            nbytes = nbytes[start:]
        self._push(self._wtx, start, n - start, None, nbytes)

    def _send_runs(self, n: int, size: int) -> int:
        """Send n same-size replies to one peer as GSO runs; return how many went (or failed).

        Less than ``n`` when the kernel refused GSO: the rest go one by one.
        """
        wtx = self._wtx
        per = min(UDP_MAX_SEGMENTS, GSO_MAX_BYTES // size)
        base = wtx.n // 2
        if size != self._gso_size:
            # Header base+r sends iovecs r*per.. from message 0's address, cut at `size`.
            space = CONTROL_SPACE
            for r in range(base):
                wtx.set_send(
                    base + r,
                    self._rx.names_addr,
                    self._namelen,
                    iov_index=r * per if r * per < base else 0,
                    control_off=r * space,
                    controllen=wtx.put_segment_cmsg(r * space, size),
                    iovlen=per,
                )
            self._gso_size = size
        runs = -(-n // per)
        last = n - (runs - 1) * per
        counts = [per] * (runs - 1) + [last]
        if last != per:
            wtx.set_iovlen(base + runs - 1, last)
        try:
            refused = self._push(wtx, base, runs, counts, [k * size for k in counts])
        finally:
            if last != per:
                wtx.set_iovlen(base + runs - 1, per)
        return n if refused < 0 else refused * per

    def send_coalesced(self, n: int, lens: list[int], sizes: list[int], counts: list[int]) -> None:
        """Echo GRO-coalesced buffers 0..n-1 as they came: each one GSO send cut at its size.

        ``sizes``: each buffer's segment size (0: one datagram); ``counts``: how
        many datagrams each holds.
        """
        rx, tx = self._rx, self._packer.tx
        space, ctl = NAME_SPACE, CONTROL_SPACE
        for i in range(n):
            tx.set_iov(i, rx.data_addr + i * self._slot, lens[i])
            tx.set_send(
                i,
                rx.names_addr + i * space,
                self._namelen,
                iov_index=i,
                control_off=i * ctl,
                controllen=tx.put_segment_cmsg(i * ctl, sizes[i]) if counts[i] > 1 else 0,
            )
        refused = self._push(tx, 0, n, counts, lens)
        if refused >= 0:  # GSO refused (now off): the rest one datagram at a time
            dv = rx.data_view
            sources: list[int] = []
            replies: list[Payload] = []
            for i in range(refused, n):
                base, size = i * self._slot, sizes[i] or max(lens[i], 1)
                for o in range(0, max(lens[i], 1), size):
                    sources.append(i)
                    replies.append(dv[base + o : base + min(o + size, lens[i])])
            self.send(sources, replies, range(n))

    # -- replies a handler returned ---------------------------------------------------

    def send(
        self, sources: Sequence[int], replies: Sequence[Payload], keys: Sequence[Hashable]
    ) -> None:
        """Send ``replies[k]`` to the source of received message ``sources[k]``.

        ``keys`` tell the messages' sources apart (equal keys, equal source), so
        consecutive same-size replies to one source can share a GSO message.
        """
        packer = self._packer
        names, namelen = self._rx.names_addr, self._namelen
        k = 0
        while k < len(replies):
            nxt = packer.pack(
                replies,
                k,
                gso=self.gso,
                name_addr=names,
                namelen=namelen,
                sources=sources,
                keys=keys,
            )
            if packer.j == 0:  # larger than the whole arena: it can never go
                self.stats.count_error(errno.EMSGSIZE)
                k += 1
                continue
            refused = self._push(packer.tx, 0, packer.j, packer.counts, packer.nbytes)
            k = nxt if refused < 0 else packer.firsts[refused]  # GSO now off: that run goes again

    # -- the one sending loop -----------------------------------------------------------

    def _push(
        self,
        tx: MsgArray,
        first: int,
        j: int,
        counts: Sequence[int] | None,
        nbytes: Sequence[int],
    ) -> int:
        """Send headers ``first .. first+j-1`` (see :func:`~udpkit._net.sendmmsg.push`) and count.

        Returns:
            -1; or the index of a GSO message the kernel refused (GSO is then
            off, and neither it nor the ones after it were sent or counted).
        """
        stopped, datagrams, sent_bytes = push(
            self._fd,
            tx,
            first,
            j,
            counts=counts,
            nbytes=nbytes,
            wait=SEND_WAIT,
            on_error=self._refused,
        )
        st = self.stats
        st.tx_datagrams += datagrams
        st.tx_bytes += sent_bytes
        return -1 if stopped == j else stopped

    def _refused(self, code: int, i: int, n: int) -> int:
        """A header the kernel refused: a GSO refusal turns GSO off; anything else is counted."""
        if n > 1 and code in OFFLOAD_REFUSED:
            self.gso = False  # off for good
            return STOP
        self.stats.count_error(code, n)
        return SKIP
