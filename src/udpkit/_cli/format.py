"""Render received datagrams as text: the ``udpkit serve --format`` choices.

Four formats, all terminal-safe (nothing a peer controls reaches the
terminal unescaped, see :mod:`udpkit._core.escape`):

``textbook`` (also accepted under its old name, ``seed``)
    The textbook's two lines, ``Message from Client:b'...'`` and
    ``Client IP Address:('127.0.0.1', 51696)``, plus a third line
    ``(truncated: 2000 bytes, 1024 kept)`` when the datagram was cut.
``line``
    One line per datagram: the arrival time, the peer, the size on the wire,
    the truncation note if any, the escaped text::

        2026-11-24T23:59:01.123456+00:00 127.0.0.1:51696 16 B Hello UDP Server

    The time is the same text in ``line``, ``hex`` and ``json``
    (:func:`iso_time`: local time, microseconds, and its UTC offset).

``hex``
    The ``line`` header without the text, then ``hexdump -C`` rows (without
    hexdump's ``*`` squeezing of repeated rows and its final offset row).
``json``
    One JSON object per line (JSON Lines), ASCII only. Every object has the
    same keys: ``time`` (float epoch, microseconds), ``iso_time`` (the
    ``line`` format's timestamp), ``peer`` (display text), ``peer_host``
    and ``peer_port`` (``peer_port`` is null for unix peers, ``peer_host``
    null for an unnamed one), ``length``, ``kept``, ``truncated``,
    ``payload_b64``, and ``text``: the kept bytes decoded as UTF-8, or null
    when they are not valid UTF-8 (the bytes are always in ``payload_b64``).
    ``local`` is added only when the caller passes the local address.

Nothing here touches a socket; the caller passes the wall-clock time.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

from udpkit._cli.common import FORMAT_ALIASES, FORMATS
from udpkit._core.datagram import unmap_v4
from udpkit._core.errors import UsageError
from udpkit._core.escape import escape_bytes, escape_controls, escape_text, safe_repr
from udpkit._net.addr import format_sockaddr, scope_text

__all__ = ["FORMATS", "banner", "format_datagram", "format_refusal", "format_summary", "iso_time"]


_UNNAMED = "(unnamed)"  # a unix peer with no address; as udpkit._net.addr spells it

# hexdump -C's ASCII column: printable ASCII as is, everything else ".".
_HEX_ASCII = bytes(b if 0x20 <= b < 0x7F else 0x2E for b in range(256))

_json_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def _unix_display(addr: object) -> str:
    # Linux gives a pathname as str (os.fsdecode'd), an abstract name as
    # bytes starting with NUL, and "" or None for an unbound peer.
    if addr is None or addr in ("", b""):  # a tuple: addr may be unhashable
        return _UNNAMED
    if isinstance(addr, str):
        try:
            # Show undecodable path bytes as \xNN, not as their U+DCxx stand-in.
            return escape_bytes(addr.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            return escape_text(addr)
    if isinstance(addr, bytes):
        if addr[:1] == b"\0":
            return "@" + escape_bytes(addr[1:])  # the usual spelling (ss, lsof)
        return escape_bytes(addr)
    return safe_repr(addr)


def _ip_host_port(addr: object) -> tuple[str, int] | None:
    # (host, port) or (host, port, flowinfo, scope_id); None for anything else.
    if (
        isinstance(addr, tuple)
        and len(addr) in (2, 4)
        and isinstance(addr[0], str)
        and isinstance(addr[1], int)
    ):
        host: str = addr[0]
        # Since Python 3.7 the host omits "%scope"; put it back (by interface name
        # where the index names one), or a link-local peer would be unreachable
        # from what we print.
        if len(addr) == 4 and addr[3] and "%" not in host and isinstance(addr[3], int):
            host = f"{host}%{escape_text(scope_text(addr[3]))}"
        return host, addr[1]
    return None


def _peer_text(addr: object) -> str:
    """Display text for a sockaddr: ``127.0.0.1:5005``, ``[::1]:5005``, a path."""
    # Unix addresses are escaped here: _addr's text for them is not meant for a
    # terminal (it keeps backslashes and surrogates). IP text is cleaned again
    # too: nothing from the network reaches a terminal raw.
    if addr is None or isinstance(addr, (str, bytes)):
        return _unix_display(addr)
    try:
        return escape_controls(format_sockaddr(addr))
    except (ValueError, TypeError, OverflowError):
        return safe_repr(addr)


def iso_time(when: float) -> str:
    """The one timestamp of every format: local time, microseconds, its UTC offset.

    ``2026-11-24T23:59:01.123456+00:00``: the same text in ``line``, ``hex`` and
    ``json`` for one arrival, and never ambiguous (converting from UTC, so a
    DST fold cannot pick the wrong offset).
    """
    return datetime.fromtimestamp(when, UTC).astimezone().isoformat(timespec="microseconds")


def _truncated_note(length: int, kept: int) -> str:
    return f"truncated: {length} bytes, {kept} kept"


def _header(data: bytes, peer: object, length: int, when: float, local: object) -> str:
    parts = [iso_time(when), _peer_text(peer)]
    if local is not None:
        parts += ["->", _peer_text(local)]
    parts.append(f"{length} B")
    if length > len(data):
        parts.append(f"({_truncated_note(length, len(data))})")
    return " ".join(parts)


def _format_textbook(data: bytes, peer: object, length: int, when: float, local: object) -> str:
    text = f"Message from Client:{safe_repr(data)}\nClient IP Address:{safe_repr(peer)}\n"
    if length > len(data):
        text += f"({_truncated_note(length, len(data))})\n"
    return text


def _format_line(data: bytes, peer: object, length: int, when: float, local: object) -> str:
    header = _header(data, peer, length, when, local)
    if not data:
        return header + "\n"
    return f"{header} {escape_bytes(data)}\n"


def _hex_rows(data: bytes) -> list[str]:
    rows = []
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        left = chunk[:8].hex(" ")
        right = chunk[8:].hex(" ")
        ascii_ = chunk.translate(_HEX_ASCII).decode("ascii")
        # Same columns as hexdump -C, short last row padded to line up.
        rows.append(f"{offset:08x}  {left:<23}  {right:<23}  |{ascii_}|")
    return rows


def _format_hex(data: bytes, peer: object, length: int, when: float, local: object) -> str:
    lines = [_header(data, peer, length, when, local), *_hex_rows(data)]
    lines.append("")  # the final newline
    return "\n".join(lines)


def _format_json(data: bytes, peer: object, length: int, when: float, local: object) -> str:
    host_port = _ip_host_port(peer)
    peer_host: str | None
    peer_port: int | None
    if host_port is not None:
        peer_host, peer_port = host_port
    elif isinstance(peer, str):
        peer_host, peer_port = (peer or None), None  # the raw path; JSON escapes it
    elif peer is None or peer == b"":
        peer_host, peer_port = None, None
    else:
        peer_host, peer_port = _unix_display(peer), None
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    record: dict[str, object] = {
        "time": round(when, 6),  # the precision iso_time shows
        "iso_time": iso_time(when),
        "peer": _peer_text(peer),
        "peer_host": peer_host,
        "peer_port": peer_port,
        "length": length,
        "kept": len(data),
        "truncated": length > len(data),
        "payload_b64": base64.b64encode(data).decode("ascii"),
        "text": text,
    }
    if local is not None:
        record["local"] = _peer_text(local)
    return _json_dumps(record) + "\n"


_FORMATTERS: dict[str, Callable[[bytes, object, int, float, object], str]] = {
    "textbook": _format_textbook,
    "line": _format_line,
    "hex": _format_hex,
    "json": _format_json,
}


def _unknown_format(fmt: str) -> UsageError:
    return UsageError(f"unknown output format {fmt!r}: must be one of {', '.join(FORMATS)}")


def banner(fmt: str, transport: str = "UDP") -> tuple[str, bool]:
    """Return the start-up banner for output format ``fmt``.

    Args:
        fmt: One of :data:`FORMATS` (or ``"seed"``, the old name of ``"textbook"``).
        transport: ``"UDP"``, ``"TCP"``, ``"Unix datagram"`` or ``"Unix stream"``.

    Returns:
        ``(text, to_stderr)``: the text ends in a newline, e.g. ``"UDP server up
        and listening\\n"``; ``to_stderr`` is True only for ``"json"``, so that
        stdout stays pure JSON Lines.

    Raises:
        UsageError: ``fmt`` is not one of :data:`FORMATS`.
    """
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in _FORMATTERS:
        raise _unknown_format(fmt)
    return f"{escape_text(transport)} server up and listening\n", fmt == "json"


def format_datagram(
    fmt: str,
    data: bytes | bytearray | memoryview,
    peer: object,
    *,
    length: int | None = None,
    when: float | None = None,
    local: object = None,
) -> str:
    """Render one received datagram in output format ``fmt``.

    Args:
        fmt: One of :data:`FORMATS` (or ``"seed"``, the old name of ``"textbook"``).
        data: The bytes kept (at most the receive buffer's size).
        peer: The sender's address as the OS gave it: a tuple for IP, a str,
            bytes or None for a unix peer.
        length: The datagram's real length on the wire; None means
            ``len(data)``. Larger than ``len(data)`` marks it truncated.
        when: Wall-clock arrival time (``time.time()``); None means now.
        local: The local address it arrived on; shown by ``line``, ``hex``
            and ``json`` when not None (``textbook`` keeps the textbook's lines).

    Returns:
        The text for this datagram, ending in ``"\\n"`` (several lines for
        ``textbook`` and ``hex``). Every character from the peer is escaped.

    Raises:
        UsageError: ``fmt`` is not one of :data:`FORMATS`, or ``length`` is
            less than ``len(data)``.
    """
    try:
        formatter = _FORMATTERS[FORMAT_ALIASES.get(fmt, fmt)]
    except KeyError:
        raise _unknown_format(fmt) from None
    if type(data) is not bytes:
        data = bytes(data)  # repr, translate and slicing below want real bytes
    if length is None:
        length = len(data)
    elif length < len(data):
        raise UsageError(f"invalid length {length}: must be at least the {len(data)} bytes kept")
    if when is None:
        when = time.time()
    return formatter(data, unmap_v4(peer), length, when, local)


# Why a refusal happened, and what would allow it ("" where no option does).
_DENIED = ("denied by --allow/--deny", "--allow {cidr} (and no --deny covering it)")
_REFUSED = {
    "denied": _DENIED,
    "unreplyable_denied": _DENIED,
    "rate_limited": ("over the rate limit{limit}", "a higher --rate-limit, --rate-limit-log-only"),
    "unreplyable_port0": ("no reply to source port 0 (it cannot be answered)", ""),
    "unreplyable_broadcast": ("no reply to a broadcast source", ""),
    "unreplyable_multicast": ("no reply to a multicast source", ""),
    "unreplyable_unspecified": ("no reply to an unspecified source address", ""),
    "unreplyable_self": ("no reply to this server's own address and port (it would loop)", ""),
    "unreplyable_invalid": ("no reply to an address that cannot be answered", ""),
}


def _host_cidr(peer: object) -> str:
    """``192.0.2.7/32`` or ``2001:db8::7/128`` for an IP peer; ``CIDR`` for anything else."""
    host_port = _ip_host_port(unmap_v4(peer))
    if host_port is None:
        return "CIDR"
    host = host_port[0].split("%", 1)[0]
    return escape_controls(f"{host}/{128 if ':' in host else 32}")


def format_refusal(
    reason: str,
    peer: object,
    *,
    suppressed: int = 0,
    amplification: float = 1.0,
    rate_limit: str | None = None,
    fixed_reply: bool = False,
    interval: float = 5.0,
) -> str:
    """The stderr line telling that ``peer`` was refused for ``reason``, and what allows it.

    Args:
        reason: the policy counter (``"denied"``, ``"rate_limited"``, ``"over_budget"``,
            ``"unreplyable_<why>"``).
        peer: the source as ``recvfrom`` gave it (escaped here).
        suppressed: refusals of this reason since the last line, counted, not told.
        amplification: the budget's factor (``--amplification``).
        rate_limit: the ``--rate-limit`` text in force.
        fixed_reply: the server answers a fixed text (``--reply``), so ``--echo``
            (a reply never longer than the request) would fit the budget.
        interval: the seconds between two lines of one reason, said in the text.

    Returns:
        One terminal-safe line ending in a newline, e.g. ``udpkit: no reply to
        192.0.2.7:40000: ...; allowed by --trust 192.0.2.7/32 ...``.
    """
    who = _peer_text(unmap_v4(peer))
    cidr = _host_cidr(peer)
    if reason == "over_budget":
        why = (
            f"no reply to {who}: it would exceed the anti-amplification budget "
            f"({amplification:g}x the bytes it sent, for sources outside --trust)"
        )
        ways = [f"--trust {cidr}"]
        if amplification < 3:
            ways.append("--amplification N (at most 3)")
        if fixed_reply:
            ways.append("--echo")
        allow = ", ".join(ways[:-1]) + " or " + ways[-1] if len(ways) > 1 else ways[0]
    else:
        what, allow = _REFUSED.get(reason, (f"refused ({escape_text(reason)})", ""))
        limit = f" (--rate-limit {escape_text(rate_limit)})" if rate_limit else ""
        what = what.format(limit=limit)
        allow = allow.format(cidr=cidr)
        why = f"{what}: {who}" if what.startswith("no reply") else f"refused {who}: {what}"
    text = f"udpkit: {why}"
    if allow:
        text += f"; allowed by {allow}"
    if suppressed:
        text += f" ({suppressed} more like it since the last note)"
    else:
        text += f" (this note at most every {interval:g} s; all counted in the summary)"
    return text + "\n"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_summary(
    received: int, bytes_: int, peers: int | None, truncated: int, **extra: int | str
) -> str:
    """Return the one-line shutdown summary (for stderr), without a newline.

    Args:
        received: Datagrams received.
        bytes_: Bytes received (on the wire).
        peers: Distinct peers seen, or ``None`` when they were not counted.
        truncated: Datagrams that were truncated.
        **extra: More counters, appended as ``name=value`` in the given order.

    Returns:
        E.g. ``"udpkit: 3 datagrams, 48 bytes from 1 peer, 0 truncated"``, or
        ``"udpkit: 1 datagram, 5 bytes from 1 peer, 0 truncated; dropped=2"``.
    """
    source = "" if peers is None else f" from {_plural(peers, 'peer')}"
    text = (
        f"udpkit: {_plural(received, 'datagram')}, {_plural(bytes_, 'byte')}{source}, "
        f"{truncated} truncated"
    )
    if extra:
        text += "; " + " ".join(f"{name}={value}" for name, value in extra.items())
    return text
