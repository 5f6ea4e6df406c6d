"""The batched system calls: ``recvmmsg``/``sendmmsg`` through ctypes, their buffers, and
packing sends into them.

One responsibility, hence one module past 600 lines: everything that touches an
``mmsghdr`` (the bindings, the buffers and their sockaddr slots, the one packer,
the one sending loop).  Python 3.11's ``socket`` module has neither call.
Nothing is compiled: the calls go through libc with ctypes, into buffers that
are allocated once (:class:`MsgArray`) and reused for every batch.  Sends share
one packer (:class:`Packer`: payloads into an arena, same-size runs to one
destination as GSO messages) and one sending loop (:func:`push`): the engine's
replies, the relay and :func:`send_batch` all go through them.  The constants
and errno classes these calls answer with are in :mod:`udpkit._net.kernel`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Hashable, Sequence

from udpkit._core.datagram import Payload, Peer, SockAddr
from udpkit._core.errors import AddressError, Unsupported, UsageError, map_oserror
from udpkit._net.kernel import (
    AGAIN,
    GSO_MAX_BYTES,
    ICMP_ERRORS,
    LINUX,
    MSG_DONTWAIT,
    MSG_TRUNC,
    OFFLOAD_REFUSED,
    SOL_UDP,
    UDP_GRO,
    UDP_MAX_SEGMENTS,
    UDP_SEGMENT,
    errno_name,
    proc_drops,
    wait_writable,
)

# AGAIN, ICMP_ERRORS, MSG_*, errno_name and proc_drops are defined in udpkit._net.kernel and
# still reachable here for callers that take them with the batched calls (_loops/bench.py).
__all__ = [
    "AGAIN",
    "CONTROL_SPACE",
    "ICMP_ERRORS",
    "MM",
    "MSG_DONTWAIT",
    "MSG_TRUNC",
    "NAME_SPACE",
    "PEER_CACHE_MAX",
    "RETRY",
    "SKIP",
    "STOP",
    "InetAddr",
    "MsgArray",
    "Packer",
    "PeerCache",
    "decode_sockaddr",
    "encode_sockaddr",
    "errno_name",
    "fast_path_available",
    "libc_mmsg",
    "proc_drops",
    "push",
    "send_batch",
]

InetAddr = tuple[str, int] | tuple[str, int, int, int]
"""An IPv4 ``(host, port)`` or IPv6 ``(host, port, flowinfo, scope_id)`` address."""


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


class CMsgHdr(ctypes.Structure):
    _fields_ = [
        ("cmsg_len", ctypes.c_size_t),
        ("cmsg_level", ctypes.c_int),
        ("cmsg_type", ctypes.c_int),
    ]


_SIZE_T = ctypes.sizeof(ctypes.c_size_t)
_SIZE_FMT = "Q" if _SIZE_T == 8 else "I"
_PTR_FMT = "Q" if ctypes.sizeof(ctypes.c_void_p) == 8 else "I"
_CMSG_HDR = ctypes.sizeof(CMsgHdr)
_CMSG_HDR_STRUCT = struct.Struct(f"={_SIZE_FMT}ii")
# A header and a 4-byte payload (SO_RXQ_OVFL uint32, UDP_GRO int): all we ever read.
_CMSG_INT = struct.Struct(f"={_SIZE_FMT}iiI")
_UINT = struct.Struct("=I")


def _cmsg_align(n: int) -> int:
    return (n + _SIZE_T - 1) & ~(_SIZE_T - 1)


def cmsg_space(n: int) -> int:
    """CMSG_SPACE(n): room one control message with an ``n``-byte payload takes."""
    return _cmsg_align(_CMSG_HDR) + _cmsg_align(n)


# Room for SO_RXQ_OVFL (uint32) and UDP_GRO (int), the two we ever receive, plus slack
# for anything else a caller enabled on the socket (the kernel sets MSG_CTRUNC if short).
CONTROL_SPACE = 2 * cmsg_space(4) + 32
# Where a lone int control message's level and payload sit, in 4-byte words.
_GRO_CMSG_SPACE = cmsg_space(4)
_CMSG_LEVEL_I = CMsgHdr.cmsg_level.offset // 4
_CMSG_DATA_I = _cmsg_align(_CMSG_HDR) // 4
assert CONTROL_SPACE % 4 == 0
# sockaddr_in6 is 28 bytes; a stride of 32 keeps each slot 8-byte aligned.
NAME_SPACE = 32

# The fields the hot loop reads are read for the whole batch at once through strided
# memoryviews, so their offsets must be multiples of the view's item size.
MM = ctypes.sizeof(MMsgHdr)
_OFF_NAMELEN = MsgHdr.msg_namelen.offset
_OFF_CONTROLLEN = MsgHdr.msg_controllen.offset
_OFF_FLAGS = MsgHdr.msg_flags.offset
_OFF_IOVLEN = MsgHdr.msg_iovlen.offset
_OFF_MSGLEN = MMsgHdr.msg_len.offset
assert MM % 8 == 0 and _OFF_CONTROLLEN % _SIZE_T == 0  # true on every Linux ABI

# One struct per header so a reply's msghdr is written with one pack_into.
_P = _PTR_FMT
_HDR_STRUCT = struct.Struct(f"={_P}I4x{_P}{_SIZE_FMT}{_P}{_SIZE_FMT}i4xI4x")
_IOV_STRUCT = struct.Struct(f"={_P}{_SIZE_FMT}")


MmsgCall = Callable[..., int]
"""``recvmmsg``/``sendmmsg`` as ctypes functions: a count of messages, or -1 (errno set)."""


def _missing(*args: object) -> int:
    raise Unsupported(errno.EOPNOTSUPP, "recvmmsg/sendmmsg are not available here")


class _Libc:
    """The two libc entry points; where they do not exist, calls that raise Unsupported."""

    def __init__(self) -> None:
        self.available = False
        self.recvmmsg: MmsgCall = _missing
        self.sendmmsg: MmsgCall = _missing
        # The same calls without argtypes, for the hot loops: converting each argument
        # through argtypes costs more than the system call on some machines.  They
        # take ints (fd, counts, flags) and ctypes pointers (MsgArray.hdr_p), never a
        # bare address: a Python int over 31 bits is refused (ArgumentError), not cut.
        self.recvmmsg_p: MmsgCall = _missing
        self.sendmmsg_p: MmsgCall = _missing
        if not LINUX or _HDR_STRUCT.size != MM:
            return
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            recv = libc.recvmmsg
            send = libc.sendmmsg
        except (OSError, AttributeError):
            return
        recv.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        recv.restype = ctypes.c_int
        send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        send.restype = ctypes.c_int
        self.recvmmsg = recv
        self.sendmmsg = send
        self.recvmmsg_p = libc["recvmmsg"]  # a fresh function object: no argtypes
        self.sendmmsg_p = libc["sendmmsg"]
        self.available = True


libc_mmsg = _Libc()


def fast_path_available() -> bool:
    """Whether recvmmsg/sendmmsg can be called here (Linux with a glibc/musl libc)."""
    return libc_mmsg.available


def _address(buf: bytearray) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


class MsgArray:
    """``n`` mmsghdrs, each with its own iovec, sockaddr slot and control buffer.

    Everything lives in bytearrays allocated once: ``data`` (``n * bufsize``),
    ``names`` (``n * NAME_SPACE``), ``control`` and the headers themselves.  The
    pristine receive headers are kept in ``template`` so one memmove resets
    ``msg_namelen``/``msg_controllen`` (which the kernel overwrites) before each call.

    For sending, the headers are rewritten per batch with :meth:`set_send`,
    pointing either into ``data`` (used as a packed arena) or into ``names``.
    """

    def __init__(self, n: int, bufsize: int, *, iovs: int | None = None) -> None:
        self.n = n
        self.bufsize = bufsize
        self.data = bytearray(max(1, n * bufsize))
        self.names = bytearray(n * NAME_SPACE)
        self.control = bytearray(n * CONTROL_SPACE)
        self.hdrs = bytearray(n * MM)
        self.iovs = bytearray((iovs or n) * ctypes.sizeof(IoVec))
        self.data_addr = _address(self.data)
        self.names_addr = _address(self.names)
        self.control_addr = _address(self.control)
        self.hdrs_addr = _address(self.hdrs)
        self.iovs_addr = _address(self.iovs)
        self.data_view = memoryview(self.data)
        self.names_view = memoryview(self.names)
        self.control_view = memoryview(self.control)
        hv = memoryview(self.hdrs)
        self.hdr_view = hv
        self.u32 = hv.cast("I")
        self.sz = hv.cast("Q") if _SIZE_T == 8 else hv.cast("I")
        self.i32 = hv.cast("i")
        iov_size = ctypes.sizeof(IoVec)
        for i in range(n):
            _IOV_STRUCT.pack_into(self.iovs, i * iov_size, self.data_addr + i * bufsize, bufsize)
            _HDR_STRUCT.pack_into(
                self.hdrs,
                i * MM,
                self.names_addr + i * NAME_SPACE,
                NAME_SPACE,
                self.iovs_addr + i * iov_size,
                1,
                self.control_addr + i * CONTROL_SPACE,
                CONTROL_SPACE,
                0,
                0,
            )
        self.template = bytes(self.hdrs)
        self.names_q = self.names_view.cast("Q") if len(self.names) else None
        self.hdrs_p = ctypes.c_void_p(self.hdrs_addr)
        self.control_i32 = self.control_view.cast("i") if len(self.control) else None
        self._stride32 = MM // 4
        self._stride_sz = MM // _SIZE_T

    def strip(self, *, names: bool, control: bool) -> None:
        """Receive without sockaddrs and/or control messages from now on.

        A receiver that only counts needs neither; without them the kernel copies
        less per datagram.
        """
        iov_size = ctypes.sizeof(IoVec)
        for i in range(self.n):
            _HDR_STRUCT.pack_into(
                self.hdrs,
                i * MM,
                self.names_addr + i * NAME_SPACE if names else 0,
                NAME_SPACE if names else 0,
                self.iovs_addr + i * iov_size,
                1,
                self.control_addr + i * CONTROL_SPACE if control else 0,
                CONTROL_SPACE if control else 0,
                0,
                0,
            )
        self.template = bytes(self.hdrs)

    def reset(self) -> None:
        """Restore the receive headers the kernel overwrote in the last call."""
        self.hdr_view[:] = self.template

    def hdr_p(self, j: int) -> ctypes.c_void_p:
        """A ctypes pointer to header ``j`` (for ``recvmmsg_p``/``sendmmsg_p``)."""
        return self.hdrs_p if j == 0 else ctypes.c_void_p(self.hdrs_addr + j * MM)

    def first_len(self) -> int:
        """``msg_len`` of the first message."""
        return int(self.u32[_OFF_MSGLEN // 4])

    def msg_lens(self, k: int) -> list[int]:
        """``msg_len`` of the first ``k`` messages (real lengths when MSG_TRUNC was asked)."""
        s = self._stride32
        o = _OFF_MSGLEN // 4
        return self.u32[o : o + k * s : s].tolist()

    def flags(self, k: int) -> list[int]:
        s = self._stride32
        o = _OFF_FLAGS // 4
        return self.i32[o : o + k * s : s].tolist()

    def controllens(self, k: int) -> list[int]:
        s = self._stride_sz
        o = _OFF_CONTROLLEN // _SIZE_T
        out: list[int] = self.sz[o : o + k * s : s].tolist()
        return out

    def name_keys_v4(self, k: int) -> list[int]:
        """First 8 bytes of each sockaddr (family, port, IPv4 address) as one int: a cheap key."""
        q = self.names_q
        assert q is not None
        s = NAME_SPACE // 8
        return q[0 : k * s : s].tolist()

    def gro_sizes(self, k: int, ctl: list[int]) -> list[int] | None:
        """Each message's UDP_GRO segment size (0: not coalesced), read for the batch at once.

        Only when every message carries nothing but that one control message
        (``ctl`` holds their ``msg_controllen``); ``None`` otherwise, and the
        caller reads the control messages one by one.
        """
        if not set(ctl) <= {0, _GRO_CMSG_SPACE} or self.control_i32 is None:
            return None
        v = self.control_i32
        s = CONTROL_SPACE // 4
        end = k * s
        levels = v[_CMSG_LEVEL_I:end:s].tolist()
        types = v[_CMSG_LEVEL_I + 1 : end : s].tolist()
        if any(
            c and (lv != SOL_UDP or ty != UDP_GRO)
            for c, lv, ty in zip(ctl, levels, types, strict=False)
        ):
            return None
        values = v[_CMSG_DATA_I:end:s].tolist()
        return [x if c else 0 for x, c in zip(values, ctl, strict=False)]

    def cmsg_ints(self, i: int, controllen: int) -> list[tuple[int, int, int]]:
        """Message ``i``'s control messages as (level, type, first 4 data bytes as int)."""
        out = []
        base = i * CONTROL_SPACE
        off = 0
        while off + _CMSG_INT.size <= controllen:
            length, level, ctype, value = _CMSG_INT.unpack_from(self.control, base + off)
            if length < _CMSG_HDR or off + length > controllen:
                break
            out.append((level, ctype, value))
            off += _cmsg_align(length)
        return out

    def set_send(
        self,
        j: int,
        name_addr: int,
        namelen: int,
        *,
        iov_index: int,
        control_off: int,
        controllen: int,
        iovlen: int = 1,
    ) -> None:
        """Point send header ``j`` at a peer, ``iovlen`` iovecs and (optionally) control bytes."""
        _HDR_STRUCT.pack_into(
            self.hdrs,
            j * MM,
            name_addr,
            namelen,
            self.iovs_addr + iov_index * ctypes.sizeof(IoVec),
            iovlen,
            self.control_addr + control_off if controllen else 0,
            controllen,
            0,
            0,
        )

    def set_iovlen(self, j: int, iovlen: int) -> None:
        """Change how many iovecs header ``j`` sends."""
        self.sz[(j * MM + _OFF_IOVLEN) // _SIZE_T] = iovlen

    def set_iov(self, index: int, addr: int, length: int) -> None:
        _IOV_STRUCT.pack_into(self.iovs, index * _IOV_STRUCT.size, addr, length)

    def put_segment_cmsg(self, control_off: int, segment: int) -> int:
        """Write a SOL_UDP/UDP_SEGMENT control message (uint16 payload); return its length."""
        space = cmsg_space(2)
        _CMSG_HDR_STRUCT.pack_into(
            self.control, control_off, _cmsg_align(_CMSG_HDR) + 2, SOL_UDP, UDP_SEGMENT
        )
        struct.pack_into("=H", self.control, control_off + _cmsg_align(_CMSG_HDR), segment)
        return space


# -- socket addresses ------------------------------------------------------------------


def decode_sockaddr(raw: bytes) -> Peer:
    """Decode a raw sockaddr_in/sockaddr_in6 into the tuple ``recvfrom`` returns.

    Returns ``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6,
    ``None`` for an empty address (a connected socket's peer), and the raw bytes
    for any other family.
    """
    if len(raw) < 2:
        return None
    (fam,) = struct.unpack_from("=H", raw)
    if fam == socket.AF_INET and len(raw) >= 8:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), (raw[2] << 8) | raw[3])
    if fam == socket.AF_INET6 and len(raw) >= 28:
        port = (raw[2] << 8) | raw[3]
        (flow,) = struct.unpack_from("!I", raw, 4)
        (scope,) = _UINT.unpack_from(raw, 24)
        # As recvfrom gives it since Python 3.7: the scope only as the index, never
        # as "%eth0" in the host, so every receive path reports a peer alike.
        return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flow, scope)
    return raw


def encode_sockaddr(family: int, addr: InetAddr) -> bytes:
    """Encode a ``(host, port[, flowinfo, scope_id])`` tuple as a raw sockaddr.

    Raises:
        OSError: the host is not numeric and cannot be resolved (``socket.gaierror``).
    """
    host, port = str(addr[0]), int(addr[1])
    if family == socket.AF_INET:
        try:
            packed = socket.inet_pton(socket.AF_INET, host)
        except OSError:
            host = str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0])
            packed = socket.inet_pton(socket.AF_INET, host)
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + packed + bytes(8)
    flow = int(addr[2]) if len(addr) > 2 else 0
    scope = int(addr[3]) if len(addr) > 3 else 0
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        info = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_DGRAM)[0][4]
        packed = socket.inet_pton(socket.AF_INET6, str(info[0]).split("%")[0])
        scope = scope or int(info[3])  # type: ignore[misc]  # an AF_INET6 answer has 4 fields
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", port, flow)
        + packed
        + _UINT.pack(scope)
    )


# Distinct peers remembered by a PeerCache before it starts over.
PEER_CACHE_MAX = 4096

PeerKey = int | bytes
"""A received sockaddr as a dict key: its first 8 bytes as an int (IPv4), else its 28 bytes."""


class PeerCache:
    """The peers of a received batch, decoded once per distinct source address.

    Decoding a sockaddr costs more than a dict lookup on its raw bytes, and most
    batches come from a few peers.  The cache is emptied when it reaches
    :data:`PEER_CACHE_MAX` entries, so spoofed sources cannot grow it.
    """

    __slots__ = ("cache", "v4")

    def __init__(self, v4: bool) -> None:
        self.cache: dict[PeerKey, Peer] = {}
        self.v4 = v4  # AF_INET: 8 bytes (family, port, address) are the whole key

    def peers(self, rx: MsgArray, n: int) -> tuple[Sequence[PeerKey], list[Peer]]:
        """``(keys, peers)`` of the first ``n`` messages in ``rx``; equal keys, equal peers."""
        keys, found = self.batch(rx, n)
        return keys, list(map(found.__getitem__, keys))

    def first(self, rx: MsgArray) -> Peer:
        """The peer of the first message in ``rx``."""
        if self.v4:
            assert rx.names_q is not None
            key: PeerKey = rx.names_q[0]
        else:
            key = rx.names_view[:28].tobytes()
        p = self.cache.get(key)
        return p if p is not None else self._decode(rx, 0, key)

    def batch(self, rx: MsgArray, n: int) -> tuple[Sequence[PeerKey], dict[PeerKey, Peer]]:
        """``(keys, {key: peer})`` for the first ``n`` messages in ``rx``.

        Only each distinct source is looked up (most batches have one or a few),
        so the cost per datagram is that of reading its key.
        """
        keys: Sequence[PeerKey]
        if self.v4:
            keys = rx.name_keys_v4(n)
        else:
            blob = rx.names_view[: n * NAME_SPACE].tobytes()
            keys = [blob[o : o + 28] for o in range(0, n * NAME_SPACE, NAME_SPACE)]
        cache = self.cache
        found = {}
        for k, i in dict(zip(keys, range(n), strict=True)).items():
            p = cache.get(k)
            found[k] = p if p is not None else self._decode(rx, i, k)
        return keys, found

    def _decode(self, rx: MsgArray, i: int, key: PeerKey) -> Peer:
        """Decode message ``i``'s sockaddr and remember it under ``key``."""
        if len(self.cache) >= PEER_CACHE_MAX:
            self.cache.clear()
        off = i * NAME_SPACE
        width = 16 if self.v4 else 28  # the whole key: family, port, address (and scope)
        p = self.cache[key] = decode_sockaddr(rx.names_view[off : off + width].tobytes())
        return p


# -- sending: one packer, one loop ---------------------------------------------------

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
