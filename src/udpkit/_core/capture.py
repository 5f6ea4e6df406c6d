"""Read what capture tools write: classic pcap and pcapng, UDP datagrams out, no OS calls.

tcpdump, tshark, dumpcap and Wireshark write one of two containers:

* **classic pcap**: a 24-byte header (its magic gives the byte order and
  whether timestamps are micro- or nanoseconds, and it names one link type),
  then 16-byte record headers each followed by the captured bytes;
* **pcapng** (dumpcap's and tshark's default): typed blocks, each framed by its
  total length twice.  A Section Header Block starts a section and sets its
  byte order; Interface Description Blocks give each interface of that section
  its link type, snap length and timestamp resolution (``if_tsresol``); packets
  come in Enhanced Packet Blocks (interface, timestamp) or Simple Packet Blocks
  (interface 0, no timestamp).  Every other block type is skipped by its length.

Inside each packet the link layer (:data:`LINK_TYPES`) leads to IPv4 or IPv6,
and through IPv6 extension headers to UDP or UDP-Lite.  Every packet that is
not a whole datagram's first piece is skipped and counted by reason
(:data:`SKIP_REASONS`), never raised: a capture of a busy interface is mostly
other traffic.  What is raised is a broken container, and only as
:class:`CaptureError`; anything else escaping :func:`iter_capture_untrusted`
is a bug.  A file that ends inside a record or block (the capture was killed)
is not an error either: the torn tail is reported, as the recording reader does.

The reader only calls ``read`` on the stream it is given; it never opens a
file, and it tells formats apart by content (:func:`sniff`), never by name.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from udpkit._core.errors import UdpkitError

__all__ = [
    "CAPTURE_FORMATS",
    "LINK_TYPES",
    "SKIP_REASONS",
    "CaptureError",
    "CaptureReader",
    "CapturedDatagram",
    "iter_capture_untrusted",
    "sniff",
]

CAPTURE_FORMATS = ("pcap", "pcapng")
_MAX_BLOCK = 1 << 24  # a record or block over 16 MiB is corrupt, not a packet: bounds memory

# magic -> (byte order, nanoseconds per timestamp fraction unit)
_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"  # the Section Header Block type: a palindrome, any byte order
_BYTE_ORDER = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
_MAGICS = {**{m: "pcap" for m in _PCAP_MAGIC}, _PCAPNG_MAGIC: "pcapng"}

# pcapng block types and the least total length each can have (head, fixed fields, trailing length)
_SHB, _IDB, _PB, _SPB, _EPB = 0x0A0D0D0A, 1, 2, 3, 6
_MIN_BLOCK = {_SHB: 28, _IDB: 20, _PB: 32, _SPB: 16, _EPB: 32}
_OPT_TSRESOL, _OPT_TSOFFSET = 9, 14

SKIP_REASONS = {
    "unknown-link": "link type udpkit cannot read",
    "not-ip": "not IPv4 or IPv6",
    "not-udp": "not UDP or UDP-Lite",
    "fragment": "an IP fragment",
    "truncated": "cut by the snap length before the end of its UDP header",
    "malformed": "a malformed IP or UDP header",
}
"""Why a packet was skipped (the keys of :attr:`CaptureReader.skipped`) and how to say it."""


class CaptureError(UdpkitError, ValueError):
    """A capture that is neither pcap nor pcapng, or whose records or blocks are broken."""


@dataclass(frozen=True, slots=True)
class CapturedDatagram:
    """One UDP (or UDP-Lite) datagram found in a capture.

    Attributes:
        time_ns: when it was captured, in integer nanoseconds since the epoch
            (exact at every resolution); None in a Simple Packet Block, which
            has no timestamp.
        src: the sender, ``(ip, port)`` (IPv4 dotted, IPv6 compressed text).
        dst: the destination, ``(ip, port)``.
        length: the payload's length on the wire (from the UDP length field;
            for UDP-Lite and IPv6 jumbograms, from the IP payload length).
        data: the payload bytes captured: fewer than ``length`` when the
            capture's snap length cut the packet.
        offset: where its record or block starts in the file.
        proto: 17 (UDP) or 136 (UDP-Lite).
    """

    time_ns: int | None
    src: tuple[str, int]
    dst: tuple[str, int]
    length: int
    data: bytes
    offset: int
    proto: int = 17

    @property
    def truncated(self) -> bool:
        """Whether the capture kept fewer payload bytes than were sent."""
        return self.length > len(self.data)


def sniff(head: bytes) -> str | None:
    """``"pcap"``, ``"pcapng"`` or None: what a file's first 4 bytes (or more) say it is.

    A head of 1-3 bytes that begins a magic number names that format (a file
    torn inside its header).
    """
    head = bytes(head[:4])
    if 0 < len(head) < 4:
        return next((kind for magic, kind in _MAGICS.items() if magic.startswith(head)), None)
    return _MAGICS.get(head)


# --- link layers: (packet) -> (offset of the IP header, IP version expected) -------------------
# The version is 4 or 6, 0 for "read the IP header's version nibble", -1 for "not IP";
# None means the packet ends inside its link header.

_ETHERTYPE_IP = {0x0800: 4, 0x86DD: 6}
_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad (QinQ) and the older QinQ tag
# BSD loopback families: AF_INET is 2 everywhere, AF_INET6 differs by system.
_LOOP_FAMILY = {2: 4, 10: 6, 24: 6, 28: 6, 30: 6}  # Linux, NetBSD/OpenBSD, FreeBSD, macOS


def _ethertype(pkt: bytes, off: int, etype: int) -> tuple[int, int] | None:
    while etype in _VLAN_TAGS:
        if len(pkt) < off + 4:
            return None
        etype, off = int.from_bytes(pkt[off + 2 : off + 4], "big"), off + 4
    return off, _ETHERTYPE_IP.get(etype, -1)


def _cooked(head: int, proto_at: int) -> Callable[[bytes], tuple[int, int] | None]:
    def link(pkt: bytes) -> tuple[int, int] | None:
        if len(pkt) < head:
            return None
        return _ethertype(pkt, head, int.from_bytes(pkt[proto_at : proto_at + 2], "big"))

    return link


def _loopback(order: str) -> Callable[[bytes], tuple[int, int] | None]:
    def link(pkt: bytes) -> tuple[int, int] | None:
        if len(pkt) < 4:
            return None
        family = int.from_bytes(pkt[:4], "little" if order == "host" else "big")
        if order == "host" and family > 0xFFFF:  # written on a big-endian host
            family = int.from_bytes(pkt[:4], "big")
        return 4, _LOOP_FAMILY.get(family, -1)

    return link


def _raw(version: int) -> Callable[[bytes], tuple[int, int] | None]:
    return lambda pkt: (0, version)


LINK_TYPES: dict[int, Callable[[bytes], tuple[int, int] | None]] = {
    0: _loopback("host"),  # BSD loopback/null: the family in the capturing host's byte order
    1: _cooked(14, 12),  # Ethernet (tcpdump -i lo, dumpcap -i eth0), VLAN tags skipped
    12: _raw(0),  # DLT_RAW on most BSDs (OpenBSD's 12 is loop: its family fails the nibble)
    14: _raw(0),  # DLT_RAW on others
    101: _raw(0),  # LINKTYPE_RAW: what udpkit's recorder writes
    108: _loopback("network"),  # OpenBSD loop: the family in network byte order
    113: _cooked(16, 14),  # Linux cooked v1 (SLL: tshark -i any)
    228: _raw(4),  # LINKTYPE_IPV4
    229: _raw(6),  # LINKTYPE_IPV6
    276: _cooked(20, 0),  # Linux cooked v2 (SLL2: tcpdump -i any)
}
"""The link types read, each mapped to its dissector: packet -> (IP offset, IP version)."""

# --- IP and UDP ----------------------------------------------------------------------------------

_UDP_PROTOS = (17, 136)  # UDP, UDP-Lite
_IPV6_EXT = (0, 43, 44, 51, 60)  # hop-by-hop, routing, fragment, AH, destination options
_UDP = struct.Struct("!HHHH")
_IP = tuple[int, int, int, bytes]  # protocol, its header's offset, its length, source + destination


def _ipv4(pkt: bytes, off: int, frame_len: int) -> _IP | str:
    """The IPv4 header at ``off``: (protocol, L4 offset, L4 length, src + dst) or a skip reason."""
    if len(pkt) < off + 20:
        return "truncated"
    ihl = (pkt[off] & 15) * 4
    total = int.from_bytes(pkt[off + 2 : off + 4], "big")
    if ihl < 20 or (total and total < ihl):
        return "malformed"
    if int.from_bytes(pkt[off + 6 : off + 8], "big") & 0x3FFF:  # more fragments, or an offset
        return "fragment"
    # A total length of 0 is what segmentation offload leaves in a captured outgoing packet.
    l4_len = total - ihl if total else frame_len - off - ihl
    return pkt[off + 9], off + ihl, l4_len, pkt[off + 12 : off + 20]


def _ipv6(pkt: bytes, off: int, frame_len: int) -> _IP | str:
    """The IPv6 header at ``off`` and its extension headers: as :func:`_ipv4`."""
    if len(pkt) < off + 40:
        return "truncated"
    payload, proto, l4 = int.from_bytes(pkt[off + 4 : off + 6], "big"), pkt[off + 6], off + 40
    while proto in _IPV6_EXT:  # each header is at least 8 bytes, so this ends
        if len(pkt) < l4 + 8:
            return "truncated"
        if proto == 44 and int.from_bytes(pkt[l4 + 2 : l4 + 4], "big") & 0xFFF9:
            return "fragment"  # an offset or "more fragments": only an atomic fragment goes on
        size = 8 if proto == 44 else (pkt[l4 + 1] + 2) * 4 if proto == 51 else (pkt[l4 + 1] + 1) * 8
        proto, l4 = pkt[l4], l4 + size
    # A payload length of 0 is a jumbogram (or offload): the frame's own length tells.
    l4_len = payload - (l4 - off - 40) if payload else frame_len - l4
    return proto, l4, l4_len, pkt[off + 8 : off + 40]


def _datagram(
    link: int, pkt: bytes, frame_len: int, time_ns: int | None, offset: int
) -> CapturedDatagram | str:
    """The UDP datagram in one captured frame, or why not (a :data:`SKIP_REASONS` key)."""
    dissect = LINK_TYPES.get(link)
    if dissect is None:
        return "unknown-link"
    found = dissect(pkt)
    if found is None:
        return "truncated"
    off, version = found
    if len(pkt) <= off:
        return "truncated" if version >= 0 else "not-ip"
    nibble = pkt[off] >> 4
    if version < 0 or (version == 0 and nibble not in (4, 6)):
        return "not-ip"
    if version and nibble != version:
        return "malformed"
    ip = (_ipv4 if nibble == 4 else _ipv6)(pkt, off, frame_len)
    if isinstance(ip, str):
        return ip
    proto, l4, l4_len, addrs = ip
    if proto not in _UDP_PROTOS:
        return "not-udp"
    if len(pkt) < l4 + 8:
        return "truncated"
    sport, dport, ulen, _ = _UDP.unpack_from(pkt, l4)
    if proto == 17 and ulen:
        if ulen < 8 or ulen > l4_len:
            return "malformed"
        length = ulen - 8
    else:  # UDP-Lite's field is the checksum coverage; 0 in UDP is a jumbogram
        length = l4_len - 8
        if length < 0:
            return "malformed"
    half, family = len(addrs) // 2, socket.AF_INET if len(addrs) == 8 else socket.AF_INET6
    src_ip, dst_ip = socket.inet_ntop(family, addrs[:half]), socket.inet_ntop(family, addrs[half:])
    data = pkt[l4 + 8 : l4 + 8 + length]  # drops Ethernet padding and trailers
    return CapturedDatagram(time_ns, (src_ip, sport), (dst_ip, dport), length, data, offset, proto)


# --- the containers ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Interface:
    link: int
    snaplen: int
    per_second: int  # timestamp units per second: 10**n or 2**n
    offset_s: int  # if_tsoffset: seconds to add


class CaptureReader:
    """An iterator of :class:`CapturedDatagram` over one pcap or pcapng stream.

    Once exhausted, ``torn_tail_bytes`` says how many bytes at the end did not
    form a whole record or block (0: none), starting at ``torn_tail_offset``.

    Attributes:
        name: what messages call the capture (a file name, or ``"<capture>"``).
        format: ``"pcap"`` or ``"pcapng"`` (None until the first read, and
            for an empty stream).
        count: datagrams yielded so far.
        packets: packet records or blocks read so far, datagrams or not.
        skipped: packets that were no whole UDP datagram, by reason
            (:data:`SKIP_REASONS` keys).
        links: packets read by link type (those not in :data:`LINK_TYPES` are
            counted as skipped, ``"unknown-link"``).
        sections: pcapng Section Header Blocks read (1 for pcap).

    Args:
        stream: the bytes to parse; only ``read`` is called.
        name: what messages call it.
        fmt: ``"pcap"`` or ``"pcapng"``; None tells them apart by content.
    """

    def __init__(self, stream: IO[bytes], name: str = "<capture>", fmt: str | None = None) -> None:
        if fmt is not None and fmt not in CAPTURE_FORMATS:
            raise CaptureError(f"unknown capture format {fmt!r}: must be 'pcap' or 'pcapng'")
        self.name = name
        self.format = fmt
        self.count = self.packets = self.sections = 0
        self.skipped: Counter[str] = Counter()
        self.links: Counter[int] = Counter()
        self.torn_tail_bytes = 0
        self.torn_tail_offset: int | None = None
        self._stream = stream
        self._pos = 0
        self._gen = self._run()

    def __iter__(self) -> CaptureReader:
        return self

    def __next__(self) -> CapturedDatagram:
        return next(self._gen)

    def _read(self, n: int) -> bytes:
        chunks, want = [], n
        while want > 0:
            try:
                chunk = self._stream.read(want)
            except OSError as exc:
                raise CaptureError(
                    f"cannot read capture {self.name!r}: {exc.strerror or exc}"
                ) from exc
            if not chunk:
                break
            chunks.append(chunk)
            want -= len(chunk)
        data = b"".join(chunks)
        self._pos += len(data)
        return data

    def _torn(self, offset: int, size: int) -> None:
        if size:
            self.torn_tail_offset, self.torn_tail_bytes = offset, size

    def _fail(self, offset: int, what: str) -> CaptureError:
        return CaptureError(f"{self.name!r}: {what} (at offset {offset})")

    def _packet(
        self, link: int, pkt: bytes, frame_len: int, time_ns: int | None, offset: int
    ) -> CapturedDatagram | None:
        self.packets += 1
        self.links[link] += 1
        got = _datagram(link, pkt, frame_len, time_ns, offset)
        if isinstance(got, str):
            self.skipped[got] += 1
            return None
        self.count += 1
        return got

    def _run(self) -> Iterator[CapturedDatagram]:
        head = self._read(4)
        if len(head) < 4 and any(m.startswith(head) for m in _MAGICS):
            # Empty, or a header cut short: nothing to read, all of it torn.
            if head and self.format is None:
                self.format = next(f for m, f in _MAGICS.items() if m.startswith(head))
            self._torn(0, len(head))
            return
        found = sniff(head)
        if found is None or (self.format is not None and found != self.format):
            want = self.format or "pcap or pcapng"
            raise CaptureError(
                f"{self.name!r} is not a {want} capture: it starts with {head!r}, expected "
                + {
                    "pcap": "a pcap magic (a1b2c3d4 or a1b23c4d, either byte order)",
                    "pcapng": "a pcapng section header (0a0d0d0a)",
                }.get(
                    want,
                    "a pcap magic (a1b2c3d4 or a1b23c4d) or a pcapng section header (0a0d0d0a)",
                )
            )
        self.format = found
        yield from (self._pcap(head) if found == "pcap" else self._pcapng(head))

    def _pcap(self, magic: bytes) -> Iterator[CapturedDatagram]:
        rest = self._read(20)
        if len(rest) < 20:
            self._torn(0, 4 + len(rest))
            return
        order, ns_per_unit = _PCAP_MAGIC[magic]
        major, minor, _zone, _sigfigs, _snaplen, link = struct.unpack(order + "HHiIII", rest)
        if major != 2:
            raise CaptureError(
                f"{self.name!r}: unsupported pcap version {major}.{minor}: expected 2.4"
            )
        link &= 0xFFFF  # the upper bits may carry the FCS length
        self.sections = 1
        record = struct.Struct(order + "IIII")
        while True:
            offset = self._pos
            head = self._read(16)
            if len(head) < 16:
                self._torn(offset, len(head))
                return
            sec, frac, incl, orig = record.unpack(head)
            if incl > _MAX_BLOCK or orig < incl:
                raise self._fail(
                    offset,
                    f"record {self.packets + 1} has captured length {incl} (original {orig}): "
                    f"it is impossible: must be at most {_MAX_BLOCK} and the original length",
                )
            pkt = self._read(incl)
            if len(pkt) < incl:
                self._torn(offset, 16 + len(pkt))
                return
            got = self._packet(link, pkt, orig, sec * 1_000_000_000 + frac * ns_per_unit, offset)
            if got is not None:
                yield got

    def _pcapng(self, magic: bytes) -> Iterator[CapturedDatagram]:
        order = ""
        ifaces: list[_Interface] = []
        head = magic
        while True:
            offset = self._pos - len(head)
            head += self._read(8 - len(head))
            if len(head) < 8:
                self._torn(offset, len(head))
                return
            pre = b""
            if head[:4] == _PCAPNG_MAGIC:  # a new section: its byte-order magic says how to read on
                pre = self._read(4)
                if len(pre) < 4:
                    self._torn(offset, 8 + len(pre))
                    return
                if pre not in _BYTE_ORDER:
                    raise self._fail(
                        offset,
                        f"section header has byte-order magic {pre.hex()}, expected 1a2b3c4d"
                        " in either byte order",
                    )
                order = _BYTE_ORDER[pre]
            elif not order:
                raise self._fail(offset, "stream does not start with a section header block")
            btype, blen = struct.unpack(order + "II", head)
            least = _MIN_BLOCK.get(btype, 12)
            if blen % 4 or not least <= blen <= _MAX_BLOCK:
                raise self._fail(
                    offset,
                    f"block of type {btype:#x} has length {blen}: it must be a multiple of 4, "
                    f"at least {least} and at most {_MAX_BLOCK}",
                )
            body = pre + self._read(blen - 8 - len(pre))
            if len(body) < blen - 8:
                self._torn(offset, 8 + len(body))
                return
            if body[-4:] != head[4:]:
                trailing = struct.unpack(order + "I", body[-4:])[0]
                raise self._fail(
                    offset,
                    f"block of type {btype:#x} and length {blen} ends with length {trailing}",
                )
            body, head = body[:-4], b""
            if btype == _SHB:
                major = struct.unpack_from(order + "H", body, 4)[0]
                if major != 1:
                    raise self._fail(offset, f"section header has version {major}, expected 1")
                ifaces = []
                self.sections += 1
            elif btype == _IDB:
                ifaces.append(self._interface(body, order))
            elif btype in (_EPB, _PB, _SPB):
                got = self._packet_block(btype, body, order, ifaces, offset)
                if got is not None:
                    yield got

    def _interface(self, body: bytes, order: str) -> _Interface:
        link, _reserved, snaplen = struct.unpack_from(order + "HHI", body)
        iface = _Interface(link, snaplen or _MAX_BLOCK, 1_000_000, 0)
        pos = 8
        while pos + 4 <= len(body):
            code, size = struct.unpack_from(order + "HH", body, pos)
            value = body[pos + 4 : pos + 4 + size]
            if code == 0 or len(value) < size:  # end of options, or options cut short: stop there
                break
            if code == _OPT_TSRESOL and size == 1:
                exp = value[0] & 0x7F
                iface.per_second = 1 << exp if value[0] & 0x80 else 10**exp
            elif code == _OPT_TSOFFSET and size == 8:
                iface.offset_s = struct.unpack(order + "q", value)[0]
            pos += 4 + (size + 3) // 4 * 4
        return iface

    def _packet_block(
        self, btype: int, body: bytes, order: str, ifaces: list[_Interface], offset: int
    ) -> CapturedDatagram | None:
        time_ns: int | None = None
        if btype == _EPB:
            index, hi, lo, incl, orig = struct.unpack_from(order + "5I", body)
        elif btype == _PB:  # the obsolete Packet Block: a 2-byte interface id and a drop count
            index, _drops, hi, lo, incl, orig = struct.unpack_from(order + "HH4I", body)
        else:  # a Simple Packet Block: interface 0, no timestamp; the snap length says what is kept
            index, (orig,), incl = 0, struct.unpack_from(order + "I", body), -1
        if index >= len(ifaces):
            raise self._fail(
                offset,
                f"packet block names interface {index}, but its section describes {len(ifaces)}",
            )
        iface = ifaces[index]
        if incl < 0:
            data_at, incl = 4, min(orig, len(body) - 4, iface.snaplen)
        else:
            data_at = 20
            time_ns = ((hi << 32) | lo) * 1_000_000_000 // iface.per_second
            time_ns += iface.offset_s * 1_000_000_000
            if incl > len(body) - 20:
                raise self._fail(
                    offset,
                    f"packet block has captured length {incl}, more than its {len(body) - 20} "
                    "bytes of data",
                )
        pkt = body[data_at : data_at + incl]
        return self._packet(iface.link, pkt, max(orig, incl), time_ns, offset)


def iter_capture_untrusted(
    stream: IO[bytes], name: str = "<capture>", fmt: str | None = None
) -> CaptureReader:
    """Read the UDP datagrams of a pcap or pcapng capture that may be torn or hostile.

    Args:
        stream: the capture's bytes (a file opened ``"rb"``, ``io.BytesIO``);
            only ``read`` is called, and the caller closes it.
        name: what error messages call the capture (a file name).
        fmt: ``"pcap"`` or ``"pcapng"``; None tells them apart by content.

    Returns:
        A :class:`CaptureReader`: iterate it for :class:`CapturedDatagram`
        objects, then read its ``skipped`` counts and ``torn_tail_bytes``.

    Raises:
        CaptureError: (while iterating) the stream is not a capture, its
            structure is broken, or reading it failed; never anything else.
    """
    return CaptureReader(stream, name, fmt)
