"""The bench probe and the reflector's control exchange, on the wire.

Every datagram ``udpkit bench`` and ``udpkit reflect`` exchange starts with
one fixed 32-byte header, network byte order::

    offset size  field
         0    2  magic      b"uK"
         2    1  version    1
         3    1  kind       PROBE, PROBE_ONEWAY, REFLECTED, REPORT_REQUEST, REPORT
         4    4  run_id     random per flow, so concurrent runs never mix
         8    8  seq        probe number from 0 (a nonce in control messages)
        16    8  send_ns    sender's monotonic clock when the probe left, ns
        24    8  rseq       reflector's own number for its echo (0 otherwise)

and a probe is padded with zero bytes to the size asked (``--size``).

- ``PROBE``: echo me.  A reflector answers with the same bytes, the kind
  turned into ``REFLECTED`` and ``rseq`` set to its own per-run counter, so the
  return path is tracked on its own sequence: loss, duplicates and reordering
  are then known per direction.  A plain echo server (``udpkit serve --echo``)
  answers the bytes unchanged: only the round trip can be measured.
- ``PROBE_ONEWAY``: count me, do not answer (throughput of one direction).
- ``REPORT_REQUEST``: ask the reflector what it saw of ``run_id``.  The
  request is padded to :data:`REPORT_REQUEST_SIZE` and the reflector answers
  only if its report is no larger, so it can never be used as an amplifier.
  A plain echo server sends the request back unchanged, which tells bench the
  peer is not a reflector.
- ``REPORT``: the header (``seq`` = the request's nonce) then a JSON object
  of counters (:class:`Report`).

A reflector never answers ``REFLECTED`` or ``REPORT``: two reflectors pointed
at each other stay silent instead of ping-ponging for ever.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from udpkit._core.errors import UdpkitError

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_PROBE_SIZE",
    "REPORT_REQUEST_SIZE",
    "VERSION",
    "Kind",
    "Probe",
    "ProbeError",
    "Report",
    "build_probe",
    "build_report",
    "build_report_request",
    "parse_probe_untrusted",
    "parse_report_untrusted",
]

MAGIC = b"uK"
VERSION = 1
HEADER = struct.Struct("!2sBBIQQQ")
HEADER_SIZE = HEADER.size  # 32
# The largest UDP payload over IPv4 (65535 - 20 - 8); IPv6 allows 20 more, unused here.
MAX_PROBE_SIZE = 65507
# Big enough for any report, small enough for the IPv6 minimum MTU (1280).
REPORT_REQUEST_SIZE = 1024
_U64 = (1 << 64) - 1


class Kind:
    """The ``kind`` byte."""

    PROBE = 1
    PROBE_ONEWAY = 2
    REFLECTED = 3
    REPORT_REQUEST = 4
    REPORT = 5

    ALL = frozenset({1, 2, 3, 4, 5})


class ProbeError(UdpkitError, ValueError):
    """A datagram that is not a well-formed probe or control message."""


class Probe(NamedTuple):
    """A parsed header; ``length`` is the whole datagram's size."""

    kind: int
    run_id: int
    seq: int
    send_ns: int
    rseq: int
    length: int


def build_probe(  # noqa: PLR0917 - the header's fields, in wire order
    kind: int, run_id: int, seq: int, send_ns: int, size: int, rseq: int = 0
) -> bytes:
    """Return one probe of ``size`` bytes.

    Args:
        kind: a :class:`Kind` value.
        run_id: 0 to 2**32-1.
        seq: 0 to 2**64-1.
        send_ns: the sender's clock in ns (wraps modulo 2**64).
        size: total datagram size, HEADER_SIZE to MAX_PROBE_SIZE bytes.
        rseq: the reflector's sequence number (0 for a sender).

    Returns:
        The datagram's bytes.

    Raises:
        ProbeError: a size or field out of range.
    """
    if not HEADER_SIZE <= size <= MAX_PROBE_SIZE:
        raise ProbeError(
            f"invalid probe size {size!r}: must be {HEADER_SIZE}-{MAX_PROBE_SIZE} bytes"
        )
    if kind not in Kind.ALL or not 0 <= run_id < 1 << 32 or not 0 <= seq <= _U64:
        raise ProbeError(f"invalid probe fields kind={kind!r} run_id={run_id!r} seq={seq!r}")
    head = HEADER.pack(MAGIC, VERSION, kind, run_id, seq, send_ns & _U64, rseq & _U64)
    return head + bytes(size - HEADER_SIZE)


def parse_probe_untrusted(data: bytes | bytearray | memoryview) -> Probe:
    """Parse a datagram's header.

    Args:
        data: the datagram as received, from anyone.

    Returns:
        The header's fields.

    Raises:
        ProbeError: too short, wrong magic, version or kind (nothing else escapes).
    """
    if len(data) < HEADER_SIZE:
        raise ProbeError(
            f"datagram of {len(data)} bytes is not a probe: at least {HEADER_SIZE} needed"
        )
    magic, version, kind, run_id, seq, send_ns, rseq = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProbeError(f"datagram is not a probe: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ProbeError(f"probe version {version} is not supported: expected {VERSION}")
    if kind not in Kind.ALL:
        raise ProbeError(f"probe kind {kind} is unknown: expected 1-5")
    return Probe(kind, run_id, seq, send_ns, rseq, len(data))


@dataclass
class Report:
    """What a reflector saw of one run (the body of a ``REPORT``).

    Counts are datagrams.  ``kernel_drops`` is the reflector socket's cumulative
    kernel drop count now and ``kernel_drops_run`` its growth since the run's
    first datagram (``None`` where the platform cannot tell); both cover every
    run sharing the socket.  ``send_errors`` likewise counts failed echoes of
    the whole socket since the run began.  ``jitter_ns`` is the RFC 3550
    interarrival jitter of the forward path.
    """

    received: int = 0
    unique: int = 0
    duplicates: int = 0
    reordered: int = 0
    reorder_extent_max: int = 0
    out_of_window: int = 0
    highest_seq: int = -1
    bytes: int = 0
    echoed: int = 0
    jitter_ns: float = 0.0
    first_ns: int = 0
    last_ns: int = 0
    kernel_drops: int | None = None
    kernel_drops_run: int | None = None
    send_errors: int = 0


_REPORT_INTS = frozenset(
    {
        "received",
        "unique",
        "duplicates",
        "reordered",
        "reorder_extent_max",
        "out_of_window",
        "highest_seq",
        "bytes",
        "echoed",
        "first_ns",
        "last_ns",
        "send_errors",
    }
)
_REPORT_OPTIONAL = frozenset({"kernel_drops", "kernel_drops_run"})


def build_report_request(run_id: int, nonce: int, send_ns: int) -> bytes:
    """A ``REPORT_REQUEST`` for ``run_id``, padded to :data:`REPORT_REQUEST_SIZE`."""
    return build_probe(Kind.REPORT_REQUEST, run_id, nonce, send_ns, REPORT_REQUEST_SIZE)


def build_report(run_id: int, nonce: int, send_ns: int, report: Report) -> bytes:
    """A ``REPORT`` answering the request with ``nonce``."""
    body = json.dumps(asdict(report), separators=(",", ":")).encode("ascii")
    head = HEADER.pack(MAGIC, VERSION, Kind.REPORT, run_id, nonce, send_ns & _U64, 0)
    return head + body


def parse_report_untrusted(data: bytes | bytearray | memoryview) -> tuple[Probe, Report]:
    """Parse a ``REPORT`` datagram.

    Returns:
        The header and the report.

    Raises:
        ProbeError: not a report, or a body that is not the expected JSON object.
    """
    head = parse_probe_untrusted(data)
    if head.kind != Kind.REPORT:
        raise ProbeError(f"datagram of kind {head.kind} is not a report ({Kind.REPORT})")
    try:
        body: object = json.loads(bytes(data[HEADER_SIZE:]).decode("ascii"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProbeError(f"report body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProbeError(f"report body is a {type(body).__name__}, expected an object")
    fields: dict[str, Any] = {}
    for key, value in body.items():
        if key in _REPORT_INTS or (key in _REPORT_OPTIONAL and value is not None):
            if type(value) is not int:
                raise ProbeError(f"report field {key!r} is {value!r}: expected an integer")
        elif key == "jitter_ns":
            if type(value) not in (int, float):
                raise ProbeError(f"report field 'jitter_ns' is {value!r}: expected a number")
            fields[key] = float(value)
            continue
        elif key not in _REPORT_OPTIONAL:
            continue  # a newer reflector's extra field: ignore
        fields[key] = value
    return head, Report(**fields)
