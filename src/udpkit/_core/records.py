"""The recording codec: parse recordings made by :class:`udpkit._loops.record.Recorder`
(and foreign pcap files) from bytes or a byte stream, without touching the OS.

Everything here parses untrusted bytes: :func:`parse_records_untrusted` (and
``udpkit.read_records_untrusted``, which opens a file and hands its stream to
:class:`RecordReader`) raise only :class:`RecordError`.  A file that
ends inside a record (``kill -9`` in the middle of a write) is not an error:
every whole record before it is returned, and the torn tail is reported in
:attr:`RecordReader.torn_tail_bytes`.  Formats are told apart by content.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from udpkit._core.datagram import AnySockAddr, SockAddr
from udpkit._core.errors import UdpkitError

__all__ = [
    "RECORD_FORMATS",
    "Record",
    "RecordError",
    "RecordReader",
    "format_from_name",
    "parse_records_untrusted",
]

RECORD_FORMATS = ("jsonl", "pcap")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".pcap": "pcap"}
_SNAPLEN = 262144  # tcpdump's default; larger kept data is cut, orig_len stays real
_UDP = struct.Struct("!HHHH")
_MAX_LINE = 64 << 20  # a JSONL line longer than this is corrupt, not a record
_MAX_INCL = 1 << 24  # the same for a pcap record's captured length


class RecordError(UdpkitError, ValueError):
    """A recording that cannot be read: missing, unreadable, or not a recording."""


@dataclass(frozen=True, slots=True)
class Record:
    """One datagram read back from a recording.

    Attributes:
        time: wall-clock arrival time (epoch seconds).
        peer: the sender: ``(host, port)`` for IPv4, ``(host, port, 0,
            scope_id)`` for IPv6, a path (``str``), abstract name (``bytes``)
            or ``None`` for a unix peer.
        local: the local address it arrived on, in the same form, or None.
        length: its length on the wire.
        data: the bytes kept (fewer than ``length`` when truncated).
        offset: where the record starts in the file.
    """

    time: float
    peer: AnySockAddr
    local: AnySockAddr
    length: int
    data: bytes
    offset: int

    @property
    def truncated(self) -> bool:
        """Whether bytes were cut off when it was received."""
        return self.length > len(self.data)


_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


class RecordReader:
    """An iterator of :class:`Record` over one recording.

    Once exhausted, ``torn_tail_bytes`` says how many bytes at the end did not
    form a whole record (0: none), starting at ``torn_tail_offset``.

    Attributes:
        name: the file name (or ``"<bytes>"``), for messages.
        format: ``"jsonl"`` or ``"pcap"`` (None until the first record is read).
        count: records yielded so far.

    Args:
        opener: called once, on the first ``next()``, for the stream to parse
            (closed by the reader); an ``OSError`` it or a read raises becomes
            :class:`RecordError`.
        name: what messages call the recording (a file name, or ``"<bytes>"``).
        fmt: ``"jsonl"`` or ``"pcap"``; None tells them apart by content.
    """

    def __init__(self, opener: Callable[[], io.BufferedReader], name: str, fmt: str | None) -> None:
        if fmt is not None and fmt not in RECORD_FORMATS:
            raise RecordError(f"unknown recording format {fmt!r}: must be 'jsonl' or 'pcap'")
        self.name = name
        self.format = fmt
        self.count = 0
        self.torn_tail_bytes = 0
        self.torn_tail_offset: int | None = None
        self._gen = self._run(opener)

    def __iter__(self) -> RecordReader:
        return self

    def __next__(self) -> Record:
        return next(self._gen)

    def _torn(self, offset: int, size: int) -> None:
        if size:
            self.torn_tail_offset, self.torn_tail_bytes = offset, size

    def _run(self, opener: Callable[[], io.BufferedReader]) -> Iterator[Record]:
        try:
            f = opener()
        except OSError as exc:
            raise RecordError(
                f"cannot read recording {self.name!r}: {exc.strerror or exc}"
            ) from exc
        with f:
            try:
                if self.format is None:
                    self.format = _sniff(f.peek(4)[:4], self.name)
                parse = _iter_pcap if self.format == "pcap" else _iter_jsonl
                for rec in parse(f, self):
                    self.count += 1
                    yield rec
            except OSError as exc:
                raise RecordError(
                    f"cannot read recording {self.name!r}: {exc.strerror or exc}"
                ) from exc


def parse_records_untrusted(data: bytes, fmt: str | None = None) -> RecordReader:
    """Parse a recording (JSONL or pcap) held in memory that may be torn or hostile.

    Args:
        data: the recording's bytes.
        fmt: ``"jsonl"`` or ``"pcap"``; None tells them apart by content.

    Returns:
        A :class:`RecordReader`: iterate it for the records.

    Raises:
        RecordError: (while iterating) the bytes are not a recording; never
            anything else.
    """
    return RecordReader(lambda: io.BufferedReader(io.BytesIO(data)), "<bytes>", fmt)


def format_from_name(name: str) -> str | None:
    """The recording format a file name's suffix names (``.jsonl``, ``.ndjson``, ``.pcap``)."""
    return _SUFFIXES.get(os.path.splitext(name)[1].lower())


def _sniff(head: bytes, name: str) -> str:
    if not head or any(m.startswith(head) for m in _PCAP_MAGIC):
        # Empty, or a pcap header cut short: only the name can tell.
        if not head:
            return format_from_name(name) or "jsonl"
        return "pcap"
    if head.lstrip()[:1] in (b"{", b""):
        return "jsonl"
    raise RecordError(
        f"{name!r} is not a recording: it starts with {head!r}, "
        "expected a pcap header or a JSON object"
    )


def _iter_pcap(f: IO[bytes], r: RecordReader) -> Iterator[Record]:
    hdr = f.read(24)
    if len(hdr) < 24:
        if any(m.startswith(hdr[:4]) for m in _PCAP_MAGIC):
            r._torn(0, len(hdr))
            return
        raise RecordError(f"{r.name!r} is not a pcap file: {len(hdr)} bytes, no pcap header")
    try:
        endian, unit = _PCAP_MAGIC[hdr[:4]]
    except KeyError:
        raise RecordError(f"{r.name!r} is not a pcap file: magic {hdr[:4].hex()}") from None
    major, _minor, _zone, _sigfigs, snaplen, link = struct.unpack(endian + "HHiIII", hdr[4:])
    if major != 2 or link not in _LINKS:
        raise RecordError(
            f"{r.name!r}: unsupported pcap version {major} or link type {link}: "
            f"expected version 2 and link type {'/'.join(map(str, _LINKS))}"
        )
    limit = min(max(snaplen, _SNAPLEN), _MAX_INCL)
    rec = struct.Struct(endian + "IIII")
    offset = 24
    while True:
        rh = f.read(16)
        if len(rh) < 16:
            r._torn(offset, len(rh))
            return
        sec, frac, incl, orig = rec.unpack(rh)
        where = f"{r.name!r}: record {r.count + 1} at offset {offset}"
        if incl > limit or orig < incl:
            raise RecordError(
                f"{where}: captured length {incl} (original {orig}) is impossible: "
                f"must be at most {limit} and the original length"
            )
        pkt = f.read(incl)
        if len(pkt) < incl:
            r._torn(offset, 16 + len(pkt))
            return
        peer, local, length, data = _parse_packet(link, pkt, orig, where)
        yield Record(sec + frac * unit, peer, local, length, data, offset)
        offset += 16 + incl


def _link_ethernet(pkt: bytes) -> tuple[int, int]:
    off, etype = 14, int.from_bytes(pkt[12:14], "big")
    while etype in (0x8100, 0x88A8) and len(pkt) >= off + 4:  # VLAN tags
        etype, off = int.from_bytes(pkt[off + 2 : off + 4], "big"), off + 4
    return off, etype


# link type -> (IP header offset, ethertype); ethertype 0 means "the IP version nibble".
_LINKS: dict[int, Callable[[bytes], tuple[int, int]]] = {
    101: lambda p: (0, 0),  # LINKTYPE_RAW: what we write
    228: lambda p: (0, 0x0800),  # LINKTYPE_IPV4
    229: lambda p: (0, 0x86DD),  # LINKTYPE_IPV6
    1: _link_ethernet,  # tcpdump on an Ethernet interface
    113: lambda p: (16, int.from_bytes(p[14:16], "big")),  # Linux cooked (tcpdump -i any)
}


def _parse_packet(
    link: int, pkt: bytes, orig: int, where: str
) -> tuple[SockAddr, SockAddr, int, bytes]:
    off, etype = _LINKS[link](pkt)
    ip = pkt[off:]
    version = ip[0] >> 4 if ip else 0
    if etype not in (0, 0x0800, 0x86DD) or (etype and version != (4 if etype == 0x800 else 6)):
        raise RecordError(f"{where}: not an IP packet (ethertype {etype:#06x})")
    if version == 4 and len(ip) >= 20:
        hl = (ip[0] & 15) * 4
        if hl < 20 or ip[9] != 17 or int.from_bytes(ip[6:8], "big") & 0x3FFF:
            raise RecordError(
                f"{where}: not a whole UDP datagram (protocol {ip[9]}, or a fragment)"
            )
        fam, src, dst = socket.AF_INET, ip[12:16], ip[16:20]
    elif version == 6 and len(ip) >= 40:
        hl = 40
        if ip[6] != 17:
            raise RecordError(f"{where}: not a UDP datagram (IPv6 next header {ip[6]})")
        fam, src, dst = socket.AF_INET6, ip[8:24], ip[24:40]
    else:
        raise RecordError(
            f"{where}: not an IPv4 or IPv6 packet ({len(ip)} bytes, version {version})"
        )
    if len(ip) < hl + 8:
        raise RecordError(f"{where}: the UDP header is missing ({len(ip)} bytes of IP packet)")
    sport, dport, ulen, _ = _UDP.unpack_from(ip, hl)
    length = ulen - 8 if ulen else orig - (off + hl + 8)  # 0: an IPv6 jumbogram
    if length < 0:
        raise RecordError(f"{where}: invalid UDP length {ulen}: must be 0 or at least 8")
    data = ip[hl + 8 : hl + 8 + length]  # drops Ethernet padding

    def addr(packed: bytes, port: int) -> SockAddr:
        host = socket.inet_ntop(fam, packed)
        return (host, port) if fam == socket.AF_INET else (host, port, 0, 0)

    return addr(src, sport), addr(dst, dport), length, data


def _iter_jsonl(f: IO[bytes], r: RecordReader) -> Iterator[Record]:
    offset = 0
    lineno = 0
    while True:
        line = f.readline(_MAX_LINE + 1)
        if not line:
            return
        lineno += 1
        if not line.endswith(b"\n"):
            if len(line) > _MAX_LINE:
                raise RecordError(
                    f"{r.name!r}: line {lineno} at offset {offset} is over {_MAX_LINE} bytes: "
                    "not a recording"
                )
            r._torn(offset, len(line))  # an interrupted write: no newline yet
            return
        if line.strip():
            yield _parse_json(line, offset, f"{r.name!r}: line {lineno} at offset {offset}")
        offset += len(line)


def _parse_json(line: bytes, offset: int, where: str) -> Record:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise RecordError(f"{where}: not a JSON record: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a record must be a JSON object, not {type(obj).__name__}")
    when, length, b64 = obj.get("time"), obj.get("length"), obj.get("payload_b64")
    if not (isinstance(when, (int, float)) and not isinstance(when, bool) and math.isfinite(when)):
        raise RecordError(f"{where}: invalid time {when!r}: must be a number of epoch seconds")
    if not (isinstance(length, int) and not isinstance(length, bool) and length >= 0):
        raise RecordError(f"{where}: invalid length {length!r}: must be a whole number >= 0")
    if not isinstance(b64, str):
        raise RecordError(f"{where}: invalid payload_b64 {b64!r}: must be a base64 string")
    try:
        data = base64.b64decode(b64, validate=True)
    except (ValueError, binascii.Error):
        raise RecordError(f"{where}: invalid payload_b64: not base64") from None
    kept = obj.get("kept", len(data))
    if len(data) > length or kept != len(data):
        raise RecordError(
            f"{where}: payload of {len(data)} bytes does not fit length {length!r} "
            f"and kept {kept!r}: must be at most length and equal to kept"
        )
    peer = _json_sockaddr(obj.get("peer_host"), obj.get("peer_port"), where, "peer")
    local = _json_sockaddr(obj.get("local_host"), obj.get("local_port"), where, "local")
    return Record(float(when), peer, local, length, data, offset)


def _json_sockaddr(host: object, port: object, where: str, name: str) -> SockAddr | None:
    if port is None:
        if host is None or (isinstance(host, str) and not host.startswith("\0")):
            return host or None
        if isinstance(host, str):  # an abstract unix name, written as text
            try:
                return host.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                pass
        raise RecordError(f"{where}: invalid {name}_host {host!r}: must be a string or null")
    if not (isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 0xFFFF):
        raise RecordError(f"{where}: invalid {name}_port {port!r}: must be 0-65535 or null")
    if not isinstance(host, str):
        raise RecordError(f"{where}: invalid {name}_host {host!r}: must be an IP address")
    addr, _, scope = host.partition("%")
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        socket.inet_pton(fam, addr)
    except (OSError, ValueError):
        raise RecordError(f"{where}: invalid {name}_host {host!r}: not an IP address") from None
    if fam == socket.AF_INET:
        if scope or "%" in host:
            raise RecordError(f"{where}: invalid {name}_host {host!r}: IPv4 has no scope")
        return (addr, port)
    if scope.isascii() and scope.isdigit() and int(scope) < 1 << 32:
        return (addr, port, 0, int(scope))
    if scope or "%" in host:
        raise RecordError(f"{where}: invalid {name}_host {host!r}: scope must be a number")
    return (addr, port, 0, 0)
