"""Make untrusted text safe to print on a terminal.

Anything a peer sends (payloads, unix socket paths) may carry terminal
control sequences (``ESC [ 31 m``), C1 controls that some terminals obey
(U+009B is a one-byte CSI), or bidi overrides (U+202E) that reorder what a
reader sees. Every function here escapes each character for which
:meth:`str.isprintable` is False (the plain space is printable and stays),
so the result can go to a terminal as is. Printable non-ASCII (é, 中, emoji)
is kept: escaping it would only make honest text unreadable.

Escapes follow Python's spelling, lowercase hex: ``\\xNN`` up to U+00FF,
``\\uNNNN`` up to U+FFFF, ``\\UNNNNNNNN`` above. Note that ``\\x80`` is both
the escape of the code point U+0080 and, in :func:`escape_bytes`, of the
invalid UTF-8 byte 0x80; use the raw bytes (or base64) when that matters.

No function here touches a socket or raises on any input.
"""

from __future__ import annotations

__all__ = ["escape_bytes", "escape_controls", "escape_text", "safe_repr"]

# Lazily filled translate tables stop caching past this many entries, so a
# peer spraying distinct code points cannot grow them without bound.
_CACHE_MAX = 8192


def _escape_code(cp: int) -> str:
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


class _EscapeTable(dict[int, "str | int"]):
    """A :meth:`str.translate` table computed on first use of each code point.

    A table over all of Unicode would hold ~1.1M entries (unassigned code
    points are not printable either); filling it lazily keeps import cheap
    while repeated characters cost one C-level dict lookup.
    """

    __slots__ = ()

    def __missing__(self, cp: int) -> str | int:
        # Mapping a code point to itself (an int) leaves it unchanged.
        value: str | int = cp if chr(cp).isprintable() else _escape_code(cp)
        if len(self) < _CACHE_MAX:
            self[cp] = value
        return value


def _make_table(*, backslash: bool, surrogate_bytes: bool) -> _EscapeTable:
    table = _EscapeTable()
    for cp in range(0x100):  # Latin-1 is by far the most common: fill it now.
        table[cp] = cp if chr(cp).isprintable() else _escape_code(cp)
    if backslash:
        # Doubling the backslash keeps the output unambiguous: "\\x1b" in the
        # output can only come from a real ESC, never from the four characters.
        table[0x5C] = "\\\\"
    if surrogate_bytes:
        # escape_bytes decodes with "surrogateescape": invalid byte 0xNN turns
        # into U+DCNN. Valid UTF-8 never decodes to a surrogate, so these can
        # only stand for invalid bytes, and are shown as the byte itself.
        for byte in range(0x80, 0x100):
            table[0xDC00 + byte] = f"\\x{byte:02x}"
    return table


_TEXT_TABLE = _make_table(backslash=True, surrogate_bytes=False)
_BYTES_TABLE = _make_table(backslash=True, surrogate_bytes=True)
_CONTROLS_TABLE = _make_table(backslash=False, surrogate_bytes=False)


def escape_text(text: str) -> str:
    """Escape ``text`` so that it can be printed on a terminal.

    Args:
        text: Any string, e.g. a decoded payload or a socket path.

    Returns:
        ``text`` with each backslash doubled and each non-printable
        character (controls, bidi marks, lone surrogates, unassigned code
        points; the plain space excepted) replaced by ``\\xNN``, ``\\uNNNN``
        or ``\\UNNNNNNNN``. The result decodes back to ``text`` with the
        ``unicode_escape`` codec.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return text.translate(_TEXT_TABLE)


def escape_bytes(data: bytes | bytearray | memoryview) -> str:
    """Escape raw bytes (a payload) for a terminal; never raises.

    Args:
        data: Any bytes. They are decoded as UTF-8.

    Returns:
        The text, escaped as by :func:`escape_text`; each byte that is not
        part of valid UTF-8 becomes ``\\xNN``.
    """
    # "surrogateescape" cannot fail: each bad byte becomes U+DC80-U+DCFF.
    text = str(data, "utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text
    return text.translate(_BYTES_TABLE)


def escape_controls(text: str) -> str:
    """Escape only the non-printable characters of ``text``.

    Unlike :func:`escape_text`, backslashes are left alone, so text that is
    already escaped (a ``repr``) is not escaped twice.

    Args:
        text: Any string.

    Returns:
        ``text`` with each non-printable character (the plain space
        excepted) replaced by ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``.
    """
    if text.isprintable():
        return text
    return text.translate(_CONTROLS_TABLE)


def safe_repr(obj: object) -> str:
    """Return ``repr(obj)`` with any non-printable character left escaped.

    ``repr`` of bytes is ASCII and ``repr`` of a str already escapes what is
    not printable, but a ``repr`` of a container of custom objects may not;
    this is the safety net. ``repr``'s own escapes are kept untouched.

    Args:
        obj: Any object, e.g. a payload or a peer address.

    Returns:
        The cleaned ``repr``, e.g. ``b'Hello UDP Server'`` or
        ``('127.0.0.1', 51696)``.
    """
    return escape_controls(repr(obj))
