"""Record received datagrams as JSON Lines or pcap, and read recordings back.

Writing never slows the server down: the server thread hands each batch to
:meth:`Recorder.record_batch`, which only appends it to a bounded queue (or
counts it as ``record_dropped`` when the queue is full); a writer thread
encodes and writes what has queued up with one ``os.write`` per chunk, so
each record reaches the kernel whole soon after it arrived.  At every moment
``offered == recorded + record_dropped + pending``; after :meth:`Recorder.close`
``pending`` is 0.  A write error (``ENOSPC``, ``EIO``) stops recording: the
file is cut back to its last whole record, everything not written is counted
as dropped, and the error is kept in :attr:`Recorder.failure`.

Formats:

``jsonl``
    One JSON object per line: ``time`` (epoch float), ``iso_time`` (UTC),
    ``peer``/``local`` (display text), ``peer_host``/``peer_port`` and
    ``local_host``/``local_port`` (``*_port`` null for unix addresses),
    ``length`` (on the wire), ``kept``, ``truncated``, ``payload_b64``, and
    ``text`` (the kept bytes as UTF-8, null when they are not valid UTF-8).
    ``udpkit serve --format json`` output reads back too.
``pcap``
    Classic pcap, microsecond timestamps, ``LINKTYPE_RAW`` (101): each
    datagram gets a synthesised IPv4 or IPv6 header (valid header checksum)
    and a UDP header with the real lengths and a valid checksum.  A truncated
    datagram keeps the bytes received with ``orig_len`` the real size (its UDP
    checksum is 0: it cannot be computed without the lost bytes).  Unix peers
    have no IP address: they are written as ``192.0.2.1`` port 0 to
    ``192.0.2.2`` port 0 (TEST-NET-1, RFC 5737, never routed).

Reading goes through :func:`read_records_untrusted` (a file, opened here) or
:func:`parse_records_untrusted` (bytes); the parsing itself is the I/O-free
codec in ``udpkit._core.records``.  Both raise only :class:`RecordError` and
recover every whole record before a torn tail (what ``kill -9`` in the middle
of a write leaves), reporting the tail instead of failing.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import errno
import math
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _jstr
from typing import TypeVar

from udpkit._core.datagram import Datagram, Peer, SockAddr
from udpkit._core.errors import UdpkitError, UsageError, map_oserror
from udpkit._core.records import (
    RECORD_FORMATS,
    Record,
    RecordError,
    RecordReader,
    format_from_name,
    parse_records_untrusted,
)
from udpkit._net.addr import format_sockaddr

__all__ = [
    "RECORD_FORMATS",
    "Record",
    "RecordError",
    "RecordReader",
    "RecordStats",
    "Recorder",
    "parse_records_untrusted",
    "read_records_untrusted",
]

DEFAULT_QUEUE_MAX = 65536  # datagrams waiting for the writer
_CHUNK = 1 << 20  # bytes encoded before one os.write: bounds the writer's memory
_CACHE_MAX = 4096  # peers whose encoded address is remembered
_V = TypeVar("_V")

_LINKTYPE_RAW = 101
WRITE_FORMATS = ("jsonl", "pcap")  # what a Recorder writes; the reader also reads pcapng
_SNAPLEN = 262144  # tcpdump's default; larger kept data is cut, orig_len stays real
_UDP = struct.Struct("!HHHH")
_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, _SNAPLEN, _LINKTYPE_RAW)
_REC = struct.Struct("<IIII")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_DUMMY_SRC = (socket.AF_INET, socket.inet_aton("192.0.2.1"), 0)
_DUMMY_DST = (socket.AF_INET, socket.inet_aton("192.0.2.2"), 0)
_ANY: dict[int, tuple[int, bytes, int]] = {
    socket.AF_INET: (socket.AF_INET, bytes(4), 0),
    socket.AF_INET6: (socket.AF_INET6, bytes(16), 0),
}


# --- encoding ---------------------------------------------------------------------------------


def _csum_sum(data: bytes) -> int:
    # The ones' complement sum of 16-bit words, modulo 0xFFFF: 2**16 == 1
    # (mod 0xFFFF), so a big-endian integer reduces to the sum of its words.
    # One C-level big-int operation instead of a Python loop per word.
    if len(data) & 1:
        data += b"\0"
    return int.from_bytes(data, "big") % 0xFFFF


_Ip = tuple[int, bytes, int]  # (family, packed address, port) as a pcap header wants it


def read_records_untrusted(path: str | os.PathLike[str], fmt: str | None = None) -> RecordReader:
    """Read a recording (JSONL or pcap) that may be torn or hostile.

    Args:
        path: the file; it is opened on the first ``next()``.
        fmt: ``"jsonl"`` or ``"pcap"``; None tells them apart by content.

    Returns:
        A :class:`RecordReader`: iterate it for the records.

    Raises:
        RecordError: (while iterating) the file cannot be read or is not a
            recording; never anything else.
    """
    p = os.fspath(path)
    return RecordReader(lambda: open(p, "rb"), p, fmt)  # closed by the reader


def _ip_of(addr: Peer) -> _Ip | None:
    if not (isinstance(addr, tuple) and len(addr) in (2, 4) and isinstance(addr[0], str)):
        return None
    host, port = addr[0].partition("%")[0], addr[1]
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        return None
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return fam, socket.inet_pton(fam, host), port
    except (OSError, ValueError):
        return None


def _pcap_packet(src: _Ip, dst: _Ip, data: bytes, length: int, now: float) -> bytes:
    if dst[0] != src[0]:
        dst = _ANY[src[0]]  # no local address of the peer's family: say "unspecified"
    ulen = 8 + length
    whole = length == len(data) and ulen <= 0xFFFF
    if src[0] == socket.AF_INET:
        total = 20 + ulen
        ip = _IP4.pack(0x45, 0, min(total, 0xFFFF), 0, 0x4000, 64, 17, 0, src[1], dst[1])
        s = _csum_sum(ip)
        ip = ip[:10] + (0xFFFF - s if s else 0).to_bytes(2, "big") + ip[12:]
        pseudo = src[1] + dst[1] + struct.pack("!BBH", 0, 17, min(ulen, 0xFFFF))
    else:
        total = 40 + ulen
        ip = _IP6.pack(0x60000000, min(ulen, 0xFFFF), 17, 64, src[1], dst[1])
        pseudo = src[1] + dst[1] + struct.pack("!IxxxB", ulen, 17)
    # A truncated datagram's checksum cannot be computed: IPv4 says so with 0;
    # IPv6 forbids 0, and Wireshark leaves a partial capture unverified anyway.
    csum = 0 if src[0] == socket.AF_INET else 0xFFFF
    if whole:  # the UDP checksum covers the payload: only a whole one can be summed
        s = (_csum_sum(pseudo) + _csum_sum(_UDP.pack(src[2], dst[2], ulen, 0))) % 0xFFFF
        s = (s + _csum_sum(data)) % 0xFFFF
        csum = 0xFFFF - s if s else 0xFFFF  # 0 would mean "no checksum"
    udp = _UDP.pack(src[2], dst[2], min(ulen, 0xFFFF), csum)
    head = ip + udp
    kept = data[: _SNAPLEN - len(head)]
    sec = max(0, int(now))
    usec = min(999_999, max(0, round((now - sec) * 1e6)))
    rec = _REC.pack(sec & 0xFFFFFFFF, usec, len(head) + len(kept), total)
    return rec + head + kept


def _json_addr(addr: Peer) -> tuple[str, str, int | None]:
    """(display, host, port) of a sockaddr, for the JSONL fields."""
    if isinstance(addr, tuple) and _ip_of(addr) is not None:
        host = addr[0]
        if len(addr) == 4 and addr[3] and "%" not in host:
            host = f"{host}%{addr[3]}"  # numeric scope: reads back as scope_id
        return format_sockaddr(addr), host, addr[1]
    if isinstance(addr, bytes):  # a Linux abstract name; JSON carries it as \u0000...
        return format_sockaddr(addr), addr.decode("utf-8", "surrogateescape"), None
    if isinstance(addr, str) and addr:
        return format_sockaddr(addr), addr, None
    return format_sockaddr(None), "", None


def _json_fields(name: str, addr: Peer) -> str:
    display, host, port = _json_addr(addr)
    jhost = _jstr(host) if host else "null"
    jport = "null" if port is None else str(port)
    return f'"{name}":{_jstr(display)},"{name}_host":{jhost},"{name}_port":{jport},'


def _json_record(prefix: str, peer: str, local: str, data: bytes, length: int) -> bytes:
    try:
        text = _jstr(data.decode("utf-8"))
    except UnicodeDecodeError:
        text = "null"
    b64 = base64.b64encode(data).decode("ascii")
    tail = (
        f'"length":{length},"kept":{len(data)},'
        f'"truncated":{"true" if length > len(data) else "false"},'
        f'"payload_b64":"{b64}","text":{text}}}\n'
    )
    return (prefix + peer + local + tail).encode("ascii")


def _create(path: str, force: bool) -> int:
    # O_EXCL also refuses a symlink planted at the path; 0600 because a
    # recording holds whatever strangers sent.
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if force else os.O_EXCL)
    try:
        return os.open(path, flags, 0o600)
    except FileExistsError:
        raise UsageError(f"refusing to overwrite {path!r}: use --force") from None
    except OSError as exc:
        raise map_oserror(exc, f"cannot create recording {path!r}") from exc


@dataclass(frozen=True, slots=True)
class RecordStats:
    """A recorder's counters.

    Attributes:
        offered: datagrams handed to :meth:`Recorder.record_batch`.
        recorded: datagrams written whole to the file.
        record_dropped: datagrams not written: queue full, recording failed,
            or offered after :meth:`Recorder.close`.
        record_errors: write errors (recording stops at the first).
        pending: datagrams still queued; ``offered == recorded +
            record_dropped + pending`` always, and ``pending`` is 0 after close.
    """

    offered: int
    recorded: int
    record_dropped: int
    record_errors: int
    pending: int


class Recorder:
    """Write received datagrams to a file through a bounded queue and a writer thread.

    Args:
        path: the file to create (mode 0600).
        fmt: ``"jsonl"`` or ``"pcap"``; ``None`` picks it from the suffix
            (``.jsonl``/``.ndjson`` or ``.pcap``).
        force: truncate an existing file instead of refusing it.
        queue_max: datagrams that may wait for the writer; more are dropped
            and counted.
        on_full: ``"stop"``: a write error (disk full) calls ``stop`` and makes
            :attr:`fatal` true, so the program ends non-zero; ``"continue"``:
            serving goes on unrecorded (still counted as ``record_dropped``).
        local: the local socket address the datagrams arrive on.
        stop_server: called once, from the writer thread, when recording fails and
            ``on_full`` is ``"stop"`` (e.g. ``server.stop``; must be thread-safe).
        write: replaces ``os.write`` (a fault-injection seam for tests).

    Raises:
        UsageError: bad ``fmt``/``on_full``/``queue_max``, or ``path`` exists
            and ``force`` is false.
        NetworkError: the file cannot be created or its header written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fmt: str | None = None,
        force: bool = False,
        queue_max: int = DEFAULT_QUEUE_MAX,
        on_full: str = "stop",
        local: SockAddr | None = None,
        stop_server: Callable[[], None] | None = None,
        write: Callable[[int, memoryview], int] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        if fmt is None:
            fmt = format_from_name(self.path)
            if fmt not in WRITE_FORMATS:
                raise UsageError(
                    f"cannot tell the recording format of {self.path!r}: "
                    "name it .jsonl or .pcap (or pass fmt='jsonl' or 'pcap')"
                )
        elif fmt not in WRITE_FORMATS:
            raise UsageError(f"unknown recording format {fmt!r}: must be 'jsonl' or 'pcap'")
        if on_full not in ("stop", "continue"):
            raise UsageError(f"invalid on_full {on_full!r}: must be 'stop' or 'continue'")
        if not (isinstance(queue_max, int) and queue_max >= 1):
            raise UsageError(f"invalid queue_max {queue_max!r}: must be a whole number >= 1")
        self.format = fmt
        self.on_full = on_full
        self.stop_server = stop_server
        self.failure: UdpkitError | None = None
        self._write = write if write is not None else os.write
        self._queue_max = queue_max
        self._local = local
        # Each peer's encoded address (only the cache of the file's format fills).
        self._json_cache: dict[Peer, str] = {}
        self._pcap_cache: dict[Peer, _Ip] = {}
        self._local_pcap = _ip_of(local) or (_DUMMY_DST if local is not None else None)
        self._local_json = _json_fields("local", local) if local is not None else ""
        self._fd = _create(self.path, force)
        self._size = 0  # bytes of whole records in the file
        if fmt == "pcap":
            try:
                self._size = os.write(self._fd, _PCAP_HEADER)
            except OSError as exc:
                os.close(self._fd)
                if not force:
                    os.unlink(self.path)
                raise map_oserror(exc, f"cannot write recording {self.path!r}") from exc
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[tuple[Sequence[Datagram], float]] = deque()
        self._pending = 0
        self._idle = False
        self._closing = False
        self._dead = False  # recording failed: everything offered is dropped
        self._closed = False
        self._offered = self._recorded = self._dropped = self._errors = 0
        self._thread = threading.Thread(target=self._run, name="udpkit-recorder", daemon=True)
        self._thread.start()

    # -- the server thread's side: cheap, never waits on the disk

    def record_batch(self, dgrams: Sequence[Datagram], now: float) -> None:
        """Queue a batch for writing, or count it dropped when the queue is full.

        Args:
            dgrams: the datagrams (their ``data`` must be ``bytes`` that nobody
                changes later; the engine's are).
            now: their wall-clock arrival time (``time.time()``).
        """
        n = len(dgrams)
        if not n:
            return
        with self._lock:
            self._offered += n
            room = self._queue_max - self._pending
            if self._closing or self._dead or room <= 0:
                self._dropped += n
                return
            if n > room:  # keep what fits, in order
                self._dropped += n - room
                dgrams, n = dgrams[:room], room
            self._queue.append((dgrams, now))
            self._pending += n
            if self._idle:
                self._wake.notify()

    @property
    def stats(self) -> RecordStats:
        """The counters now (final once :meth:`close` returned)."""
        with self._lock:
            return RecordStats(
                self._offered, self._recorded, self._dropped, self._errors, self._pending
            )

    @property
    def fatal(self) -> bool:
        """True when recording failed and ``on_full`` is ``"stop"``: exit non-zero."""
        return self.failure is not None and self.on_full == "stop"

    def close(self) -> RecordStats:
        """Write everything queued, then close the file (idempotent).

        Returns:
            The final counters: ``recorded == offered - record_dropped``.
        """
        with self._lock:
            if self._closed:
                return self._final()
            self._closing = True
            self._wake.notify()
        self._thread.join()
        try:
            os.fsync(self._fd)
        except OSError as exc:
            # /dev/null and pipes cannot be synced; a real I/O error must show.
            if exc.errno not in (errno.EINVAL, errno.EROFS, errno.ENOTSUP) and not self.failure:
                self.failure = map_oserror(exc, f"cannot write recording {self.path!r}")
                self._errors += 1
        os.close(self._fd)
        with self._lock:
            self._closed = True
            return self._final()

    def _final(self) -> RecordStats:
        # For close(), which holds the lock: nothing is pending any more.
        return RecordStats(self._offered, self._recorded, self._dropped, self._errors, 0)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the writer thread

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._idle = True
                    self._wake.wait()
                self._idle = False
                items, self._queue = self._queue, deque()
            if not items:
                return  # closing, and everything written
            taken = sum(len(b) for b, _ in items)
            written, error = self._write_items(items)
            with self._lock:
                self._pending -= taken
                self._recorded += written
                self._dropped += taken - written
                if error is None:
                    continue
                self._errors += 1
                self.failure = error
                self._dead = True
                self._dropped += self._pending
                self._pending = 0
                self._queue.clear()
            if self.on_full == "stop" and self.stop_server is not None:
                self.stop_server()
            return

    def _write_items(
        self, items: deque[tuple[Sequence[Datagram], float]]
    ) -> tuple[int, UdpkitError | None]:
        encode = self._pcap_encoder if self.format == "pcap" else self._jsonl_encoder
        written = 0
        pieces: list[bytes] = []
        size = 0
        for batch, now in items:
            enc = encode(now if math.isfinite(now) else 0.0)
            for d in batch:
                try:
                    piece = enc(d)
                except Exception as exc:  # a bug: stop recording cleanly, still counted
                    n, error = self._write_chunk(pieces) if pieces else (0, None)
                    return written + n, error or UdpkitError(
                        f"recording {self.path!r} failed on a datagram from {d.peer!r}: {exc!r}"
                    )
                pieces.append(piece)
                size += len(piece)
                if size >= _CHUNK:
                    n, error = self._write_chunk(pieces)
                    written += n
                    if error is not None:
                        return written, error
                    pieces, size = [], 0
        if pieces:
            n, error = self._write_chunk(pieces)
            written += n
            return written, error
        return written, None

    def _write_chunk(self, pieces: list[bytes]) -> tuple[int, UdpkitError | None]:
        chunk = b"".join(pieces)
        view = memoryview(chunk)
        done = 0
        try:
            while done < len(chunk):
                n = self._write(self._fd, view[done:])
                if n <= 0:
                    raise OSError(errno.EIO, "write wrote nothing")
                done += n
        except OSError as exc:
            ends = list(_accumulate(len(p) for p in pieces))
            whole = bisect.bisect_right(ends, done)
            self._size += ends[whole - 1] if whole else 0
            # Cut a half-written record off: the file then ends in whole records.
            try:
                os.ftruncate(self._fd, self._size)
                os.lseek(self._fd, self._size, os.SEEK_SET)
            except OSError:
                pass  # not a regular file: the reader reports the torn tail
            return whole, map_oserror(exc, f"cannot write recording {self.path!r}")
        self._size += done
        return len(pieces), None

    def _jsonl_encoder(self, now: float) -> Callable[[Datagram], bytes]:
        try:
            iso = datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds")
            iso_json = '"' + iso.replace("+00:00", "Z") + '"'
        except (OverflowError, ValueError, OSError):  # a clock outside datetime's years
            iso_json = "null"
        prefix = f'{{"time":{now!r},"iso_time":{iso_json},'
        local, cache = self._local_json, self._json_cache

        def enc(d: Datagram) -> bytes:
            try:
                peer = cache[d.peer]
            except (KeyError, TypeError):  # TypeError: an unhashable peer
                peer = _json_fields("peer", d.peer)
                _remember(cache, d.peer, peer)
            return _json_record(prefix, peer, local, d.data, d.length)

        return enc

    def _pcap_encoder(self, now: float) -> Callable[[Datagram], bytes]:
        cache = self._pcap_cache

        def enc(d: Datagram) -> bytes:
            try:
                src = cache[d.peer]
            except (KeyError, TypeError):
                src = _ip_of(d.peer) or _DUMMY_SRC
                _remember(cache, d.peer, src)
            dst = self._local_pcap or _ANY[src[0]]
            if src is _DUMMY_SRC:
                dst = _DUMMY_DST
            return _pcap_packet(src, dst, d.data, d.length, now)

        return enc


def _remember(cache: dict[Peer, _V], key: Peer, value: _V) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()  # spoofed floods would grow it without bound
    with contextlib.suppress(TypeError):  # an unhashable peer is just not cached
        cache[key] = value


def _accumulate(sizes: Iterator[int]) -> Iterator[int]:
    total = 0
    for s in sizes:
        total += s
        yield total
