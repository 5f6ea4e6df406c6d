"""The batched system calls: ``recvmmsg``/``sendmmsg`` through ctypes, their buffers and
the sockaddrs in them.

Python 3.11's ``socket`` module has neither call.  Nothing is compiled: the
calls go through libc with ctypes, into buffers that are allocated once
(:class:`MsgArray`) and reused for every batch; received source addresses are
decoded once per peer (:class:`PeerCache`).  The send side (the one packer and
the one sending loop) is :mod:`udpkit._net.sendmmsg`; the constants and errno
classes these calls answer with are :mod:`udpkit._net.kernel`'s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct
from collections.abc import Callable, Sequence

from udpkit._core.datagram import Peer
from udpkit._core.errors import Unsupported
from udpkit._net.kernel import (
    LINUX,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
)

__all__ = [
    "CONTROL_SPACE",
    "MM",
    "NAME_SPACE",
    "PEER_CACHE_MAX",
    "InetAddr",
    "MsgArray",
    "PeerCache",
    "decode_sockaddr",
    "encode_sockaddr",
    "fast_path_available",
    "libc_mmsg",
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
