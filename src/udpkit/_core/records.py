"""The recording codec: parse recordings made by :class:`udpkit._loops.record.Recorder`
(and the pcap and pcapng files capture tools write) from bytes or a byte stream,
without touching the OS.

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
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from udpkit._core.capture import CaptureError, CaptureReader, sniff
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

RECORD_FORMATS = ("jsonl", "pcap", "pcapng")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".pcap": "pcap", ".pcapng": "pcapng"}
_MAX_LINE = 64 << 20  # a JSONL line longer than this is corrupt, not a record


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


class RecordReader:
    """An iterator of :class:`Record` over one recording.

    Once exhausted, ``torn_tail_bytes`` says how many bytes at the end did not
    form a whole record (0: none), starting at ``torn_tail_offset``.

    Attributes:
        name: the file name (or ``"<bytes>"``), for messages.
        format: ``"jsonl"``, ``"pcap"`` or ``"pcapng"`` (None until the first
            record is read, and for an empty file).
        skipped: packets of a capture that were no whole UDP datagram, by reason.
        count: records yielded so far.

    Args:
        opener: called once, on the first ``next()``, for the stream to parse
            (closed by the reader); an ``OSError`` it or a read raises becomes
            :class:`RecordError`.
        name: what messages call the recording (a file name, or ``"<bytes>"``).
        fmt: ``"jsonl"``, ``"pcap"`` or ``"pcapng"``; None tells them apart by content.
    """

    def __init__(self, opener: Callable[[], io.BufferedReader], name: str, fmt: str | None) -> None:
        if fmt is not None and fmt not in RECORD_FORMATS:
            raise RecordError(
                f"unknown recording format {fmt!r}: must be 'jsonl', 'pcap' or 'pcapng'"
            )
        self.name = name
        self.format = fmt
        self.count = 0
        self.torn_tail_bytes = 0
        self.torn_tail_offset: int | None = None
        self.skipped: Counter[str] = Counter()
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
                    if self.format is None:
                        return  # an empty file: no records, nothing torn
                parse = _iter_jsonl if self.format == "jsonl" else _iter_capture
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
        fmt: ``"jsonl"``, ``"pcap"`` or ``"pcapng"``; None tells them apart by content.

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


def _sniff(head: bytes, name: str) -> str | None:
    """The format the first bytes say, by content only; None for an empty file."""
    if not head:
        return None
    kind = sniff(head)
    if kind is not None:
        return kind
    if head.lstrip()[:1] in (b"{", b""):
        return "jsonl"
    raise RecordError(
        f"{name!r} is not a recording: it starts with {head!r}; udpkit reads JSON Lines "
        "(udpkit serve --record), pcap and pcapng (tcpdump, tshark, dumpcap)"
    )


def _iter_capture(f: IO[bytes], r: RecordReader) -> Iterator[Record]:
    """The UDP datagrams of a pcap or pcapng capture (what tcpdump, tshark and dumpcap write)."""
    reader = CaptureReader(f, r.name, r.format)
    r.skipped = reader.skipped  # live: what was no whole UDP datagram, by reason
    try:
        for d in reader:
            r.format = reader.format
            peer: SockAddr = d.src if ":" not in d.src[0] else (*d.src, 0, 0)
            local: SockAddr = d.dst if ":" not in d.dst[0] else (*d.dst, 0, 0)
            when = d.time_ns / 1e9 if d.time_ns is not None else 0.0  # a Simple Packet Block
            yield Record(when, peer, local, d.length, d.data, d.offset)
    except CaptureError as exc:
        raise RecordError(str(exc)) from None  # the message names the file and offset
    r.format = reader.format or r.format
    if reader.torn_tail_offset is not None:
        r._torn(reader.torn_tail_offset, reader.torn_tail_bytes)


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
