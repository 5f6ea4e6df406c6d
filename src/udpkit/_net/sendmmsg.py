"""The send side of the batched calls: the one packer and the one ``sendmmsg`` loop.

Sends share one packer (:class:`Packer`: payloads into an arena, same-size runs
to one destination as GSO messages) and one sending loop (:func:`push`): the
engine's replies, the relay and :func:`send_batch` all go through them.  The
buffers and bindings they fill are :mod:`udpkit._net.mmsg`'s; the constants and
errno classes the kernel answers with are :mod:`udpkit._net.kernel`'s.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable, Hashable, Sequence

from udpkit._core.datagram import Payload, SockAddr
from udpkit._core.errors import AddressError, Unsupported, UsageError, map_oserror
from udpkit._net.kernel import (
    AGAIN,
    GSO_MAX_BYTES,
    MSG_DONTWAIT,
    OFFLOAD_REFUSED,
    UDP_MAX_SEGMENTS,
    errno_name,
    wait_writable,
)
from udpkit._net.mmsg import (
    CONTROL_SPACE,
    NAME_SPACE,
    InetAddr,
    MsgArray,
    encode_sockaddr,
    fast_path_available,
    libc_mmsg,
)

__all__ = [
    "RETRY",
    "SKIP",
    "STOP",
    "OnError",
    "Packer",
    "push",
    "send_batch",
]

# What push() does with a header the kernel refused, as its caller decides:
RETRY = 0  # send it again (after waiting, or once more: an ICMP report about an earlier one)
SKIP = 1  # leave it unsent (the caller counted it) and go on with the next
STOP = 2  # stop here: neither it nor the headers after it were sent

OnError = Callable[[int, int, int], int]
"""``on_error(errno, header index, datagrams in that header)`` -> RETRY, SKIP or STOP."""


def push(
    fd: int,
    tx: MsgArray,
    first: int,
    j: int,
    *,
    counts: Sequence[int] | None,
    nbytes: Sequence[int],
    wait: float,
    on_error: OnError,
) -> tuple[int, int, int]:
    """``sendmmsg`` headers ``first .. first+j-1`` of ``tx`` until each is sent or given up.

    EINTR is retried; a full send buffer (EAGAIN) is waited for, ``wait``
    seconds at most in all; any other error, and EAGAIN after that, goes to
    ``on_error`` with the index (from ``first``) of the header the kernel refused.

    Args:
        counts: the datagrams each header carries (a GSO message carries several);
            ``None``: one each.
        nbytes: the bytes each header carries.

    Returns:
        ``(stopped, datagrams, bytes)``: the index it stopped at (``j`` unless
        ``on_error`` said STOP), and the datagrams and bytes the kernel accepted.
    """
    send = libc_mmsg.sendmmsg_p
    i = datagrams = sent_bytes = 0
    waited = 0.0
    while i < j:
        r = send(fd, tx.hdr_p(first + i), j - i, MSG_DONTWAIT)
        if r > 0:
            if r == j:  # all at once: the common case
                return j, j if counts is None else sum(counts), sum(nbytes)
            datagrams += r if counts is None else sum(counts[i : i + r])
            sent_bytes += sum(nbytes[i : i + r])
            i += r
            continue
        code = ctypes.get_errno()
        if code == errno.EINTR:
            continue
        if code in AGAIN and waited < wait:
            waited += wait_writable(fd, wait - waited)
            continue
        action = on_error(code, i, 1 if counts is None else counts[i])
        if action == STOP:
            break
        if action == SKIP:
            i += 1
    return i, datagrams, sent_bytes


class Packer:
    """Payloads copied into one arena behind send headers, ready for :func:`push`.

    Each header carries one payload or, with GSO, a run of consecutive
    same-size payloads to one destination (the last may be shorter), which the
    kernel cuts into datagrams.  After :meth:`pack`, ``j`` headers are written
    and ``firsts``/``counts``/``nbytes`` tell, for each, the payload it starts
    with, how many datagrams and how many bytes it carries.

    Args:
        headers: headers per :func:`push`.
        arena: bytes the payloads of one push may take.
    """

    def __init__(self, headers: int, arena: int) -> None:
        self.tx = MsgArray(headers, 0)
        self.j = 0
        self.firsts: list[int] = []
        self.counts: list[int] = []
        self.nbytes: list[int] = []
        self._arena(arena)

    def reserve(self, size: int) -> None:
        """Make the arena at least ``size`` bytes."""
        if size > len(self.arena):
            self._arena(size)

    def _arena(self, size: int) -> None:
        self.arena = bytearray(size)
        self._view = memoryview(self.arena)
        self._addr = ctypes.addressof(ctypes.c_char.from_buffer(self.arena))

    def pack(
        self,
        payloads: Sequence[Payload],
        k: int,
        *,
        gso: bool,
        name_addr: int,
        namelen: int,
        sources: Sequence[int] | None = None,
        keys: Sequence[Hashable] = (),
    ) -> int:
        """Write headers for ``payloads[k:]`` until the headers or the arena are full.

        Every payload goes to the sockaddr at ``name_addr`` (``0`` on a connected
        socket) or, with ``sources``, payload ``i`` to the one at ``name_addr +
        sources[i] * NAME_SPACE``; a GSO run then holds one source's payloads
        only (equal ``keys[sources[i]]``).

        Returns:
            The index of the first payload left out; ``j == 0`` when that one can
            never fit the arena.
        """
        tx = self.tx
        av, base, cap = self._view, self._addr, len(self.arena)
        firsts, counts, nbytes = self.firsts, self.counts, self.nbytes
        firsts.clear()
        counts.clear()
        nbytes.clear()
        total = len(payloads)
        off = j = slot = 0
        key: Hashable = None
        while k < total and j < tx.n:
            p = payloads[k]
            size = len(p)
            if off + size > cap:
                break
            first = k
            if sources is not None:
                slot = sources[k]
                key = keys[slot]
            av[off : off + size] = p
            run = 1
            k += 1
            if gso and size:
                limit = min(UDP_MAX_SEGMENTS, GSO_MAX_BYTES // size)
                while (
                    k < total
                    and run < limit
                    and 0 < len(payloads[k]) <= size
                    and (sources is None or keys[sources[k]] == key)
                    and off + (run + 1) * size <= cap
                ):
                    nxt = payloads[k]
                    av[off + run * size : off + run * size + len(nxt)] = nxt
                    run += 1
                    k += 1
                    if len(nxt) < size:
                        break  # a shorter datagram can only end a GSO run
            length = size * (run - 1) + len(payloads[k - 1])
            tx.set_iov(j, base + off, length)
            ctl = j * CONTROL_SPACE
            tx.set_send(
                j,
                name_addr + slot * NAME_SPACE,
                namelen,
                iov_index=j,
                control_off=ctl,
                controllen=tx.put_segment_cmsg(ctl, size) if run > 1 else 0,
            )
            firsts.append(first)
            counts.append(run)
            nbytes.append(length)
            off += length
            j += 1
        self.j = j
        return k


# -- load generation --------------------------------------------------------------


class _Sender(threading.local):
    """Per-thread send buffers for :func:`send_batch`, grown on demand."""

    def __init__(self) -> None:
        self.packer = Packer(UDP_MAX_SEGMENTS, 1 << 18)
        self.names: dict[tuple[int, InetAddr], bytes] = {}

    def name(self, family: int, to: SockAddr | None) -> tuple[int, int]:
        """Write ``to`` as a raw sockaddr into the send headers' name slot; (address, length)."""
        if to is None:
            return 0, 0
        if not isinstance(to, tuple):
            raise AddressError(f"invalid destination {to!r}: an IP socket sends to (host, port)")
        key = (family, to)
        raw = self.names.get(key)
        if raw is None:
            raw = encode_sockaddr(family, to)
            if len(self.names) > 256:
                self.names.clear()
            self.names[key] = raw
        tx = self.packer.tx
        tx.names_view[: len(raw)] = raw
        return tx.names_addr, len(raw)


_sender: _Sender | None = None
_gso_ok = True


def _stop(code: int, i: int, n: int) -> int:
    return STOP


def _use_gso(payloads: Sequence[Payload], gso: bool | None) -> bool:
    """Whether :func:`send_batch` sends ``payloads`` as GSO runs (``gso`` as it was given)."""
    size = len(payloads[0])
    use = bool(
        gso is not False
        and (_gso_ok or gso)
        and len(payloads) > 1
        and size > 0
        and all(len(p) == size for p in payloads[:-1])
        and 0 < len(payloads[-1]) <= size
    )
    if gso and not use and len(payloads) > 1:
        raise UsageError("gso=True needs payloads of one size (the last may be shorter)")
    return use


def send_batch(
    sock: socket.socket,
    payloads: Sequence[Payload],
    to: SockAddr | None = None,
    *,
    gso: bool | None = None,
) -> int:
    """Send ``payloads`` as datagrams with as few system calls as the platform allows.

    Uses sendmmsg on Linux, and UDP GSO (one call per up to 64 datagrams) when all
    payloads have one size (the last may be shorter) and ``gso`` is not False.

    Args:
        sock: a UDP socket; blocking or not (a non-blocking one may send fewer).
        payloads: the datagrams' bytes.
        to: destination address tuple; ``None`` on a connected socket.
        gso: ``True`` to insist on GSO, ``False`` to avoid it, ``None`` to use it when it works.

    Returns:
        How many datagrams the kernel accepted (fewer than asked only on EAGAIN or an
        error after some were sent).

    Raises:
        Unsupported: ``gso=True`` and the kernel refuses UDP GSO.
        NetworkError: the first send failed (e.g. refused, unreachable).
    """
    global _sender, _gso_ok
    if not payloads:
        return 0
    if not fast_path_available() or sock.family not in (socket.AF_INET, socket.AF_INET6):
        if gso:
            raise Unsupported(errno.EOPNOTSUPP, "gso=True: UDP GSO needs Linux; pass gso=None")
        return _send_portable(sock, payloads, to)
    if _sender is None:
        _sender = _Sender()
    name_addr, namelen = _sender.name(sock.family, to)
    size = len(payloads[0])
    use_gso = _use_gso(payloads, gso)
    packer = _sender.packer
    need = size * len(payloads) if use_gso else sum(map(len, payloads))
    if need <= 1 << 26:
        packer.reserve(need)
    fd = sock.fileno()
    sent = k = 0
    while k < len(payloads):
        nxt = packer.pack(payloads, k, gso=use_gso, name_addr=name_addr, namelen=namelen)
        if packer.j == 0:
            raise UsageError(f"payload of {len(payloads[k])} bytes is too large to send")
        stopped, datagrams, _ = push(
            fd,
            packer.tx,
            0,
            packer.j,
            counts=packer.counts,
            nbytes=packer.nbytes,
            wait=0.0,
            on_error=_stop,
        )
        sent += datagrams
        if stopped < packer.j:
            code = ctypes.get_errno()  # push made no call after the one that failed
            if packer.counts[stopped] > 1 and code in OFFLOAD_REFUSED:
                if gso:
                    raise Unsupported(
                        code, f"gso=True: the kernel refused UDP GSO ({errno_name(code)})"
                    )
                _gso_ok = False
                return sent + send_batch(sock, payloads[sent:], to, gso=False)
            if sent or code in AGAIN:
                return sent
            raise map_oserror(OSError(code, os.strerror(code)), f"send to {to!r}")
        k = nxt
    return sent


def _send_portable(sock: socket.socket, payloads: Sequence[Payload], to: SockAddr | None) -> int:
    sent = 0
    for p in payloads:
        try:
            if to is None:
                sock.send(p)
            else:
                sock.sendto(p, to)
        except BlockingIOError:
            return sent
        except OSError as exc:
            if sent:
                return sent
            raise map_oserror(exc, f"send to {to!r}") from exc
        sent += 1
    return sent
