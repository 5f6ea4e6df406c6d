"""Tests for udpkit._core.escape: nothing a peer sends reaches the terminal raw."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpkit._core import escape as _escape
from udpkit._core.escape import escape_bytes, escape_controls, escape_text, safe_repr


def _terminal_safe(text: str) -> bool:
    # The plain space is printable, so this is exactly "no char that isn't".
    return text.isprintable()


def _unescape(text: str) -> str:
    # Our escapes are Python's, so unicode_escape undoes them; printable
    # non-ASCII is first turned into \uXXXX, which it undoes too.
    return text.encode("ascii", "backslashreplace").decode("unicode_escape")


# Every code point the brief names, with the exact escape it must become.
_CONTROLS: list[tuple[int, str]] = (
    [(cp, f"\\x{cp:02x}") for cp in range(0x20)]  # C0, including \t \n \r ESC
    + [(0x7F, "\\x7f")]  # DEL
    + [(cp, f"\\x{cp:02x}") for cp in range(0x80, 0xA0)]  # C1, e.g. U+009B = CSI
    + [(cp, f"\\u{cp:04x}") for cp in range(0x202A, 0x202F)]  # bidi embeddings/overrides
    + [(cp, f"\\u{cp:04x}") for cp in range(0x2066, 0x206A)]  # bidi isolates
    + [
        (0x200E, "\\u200e"),  # LRM
        (0x200F, "\\u200f"),  # RLM
        (0x2028, "\\u2028"),  # line separator
        (0x2029, "\\u2029"),  # paragraph separator
        (0x00AD, "\\xad"),  # soft hyphen (Cf)
        (0x200D, "\\u200d"),  # zero-width joiner (Cf)
        (0xFEFF, "\\ufeff"),  # BOM / zero-width no-break space
        (0x00A0, "\\xa0"),  # no-break space: a space, but not *the* space
        (0x0378, "\\u0378"),  # unassigned
        (0xE000, "\\ue000"),  # private use
        (0xD800, "\\ud800"),  # lone surrogate
        (0xDCFF, "\\udcff"),  # lone surrogate, as os.fsdecode makes them
        (0xE0001, "\\U000e0001"),  # language tag
        (0x10FFFF, "\\U0010ffff"),  # last code point, a noncharacter
    ]
)


@pytest.mark.parametrize(("cp", "escaped"), _CONTROLS, ids=[f"U+{cp:04X}" for cp, _ in _CONTROLS])
def test_escape_text_escapes_each_control(cp: int, escaped: str) -> None:
    out = escape_text(f"a{chr(cp)}b")
    assert out == f"a{escaped}b"
    assert _terminal_safe(out)
    assert _unescape(out) == f"a{chr(cp)}b"


@pytest.mark.parametrize(("cp", "escaped"), _CONTROLS, ids=[f"U+{cp:04X}" for cp, _ in _CONTROLS])
def test_escape_controls_and_safe_repr_escape_each_control(cp: int, escaped: str) -> None:
    assert escape_controls(f"a{chr(cp)}\\b") == f"a{escaped}\\b"

    class Hostile:
        def __repr__(self) -> str:
            return f"<{chr(cp)}>"

    assert safe_repr(Hostile()) == f"<{escaped}>"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello UDP Server",
        " leading and trailing spaces ",
        "é à ü ß",
        "中文 日本語 한국어",
        "Ω≈ç√∫",
        "😀👍🏽🇫🇷",
        "עברית العربية",  # RTL letters are printable; only the override marks are not
        "~!@#$%^&*()_+{}|:\"<>?`-=[];',./",
    ],
)
def test_printable_text_survives_unchanged(text: str) -> None:
    assert escape_text(text) is text  # the fast path: no copy
    assert escape_bytes(text.encode()) == text
    assert escape_controls(text) is text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\", "\\\\"),
        ("a\\x1b", "a\\\\x1b"),  # the four characters, not an ESC
        ("a\x1bb\\", "a\\x1bb\\\\"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("é\té", "é\\x09é"),
    ],
)
def test_escape_text_table(text: str, expected: str) -> None:
    assert escape_text(text) == expected
    assert _unescape(escape_text(text)) == text


def test_escaped_backslash_cannot_be_confused_with_escape() -> None:
    """A literal backslash sequence must not look like an escaped control."""
    assert escape_text("\\x1b") != escape_text("\x1b")
    assert escape_bytes(b"\\xff") != escape_bytes(b"\xff")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", ""),
        (b"Hello UDP Server", "Hello UDP Server"),
        (b"\\", "\\\\"),
        (b"\xff", "\\xff"),
        (b"\xfe\xff", "\\xfe\\xff"),
        (b"\x80", "\\x80"),  # lone continuation byte
        (b"\xc3", "\\xc3"),  # truncated sequence
        (b"a\xc3", "a\\xc3"),
        (b"\xc0\xaf", "\\xc0\\xaf"),  # overlong "/"
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),  # encoded surrogate U+D800
        (b"\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80"),  # above U+10FFFF
        (b"\xf0\x9f\x98", "\\xf0\\x9f\\x98"),  # cut emoji
        (b"\xc3\xa9", "é"),
        (b"\xe4\xb8\xad", "中"),
        (b"\xf0\x9f\x98\x80", "😀"),
        (b"\xc2\x9b31m", "\\x9b31m"),  # C1 CSI, validly encoded
        (b"\xe2\x80\xae", "\\u202e"),
        (b"\x1b[31m\x00\x7f", "\\x1b[31m\\x00\\x7f"),
        (b"ok\r\n", "ok\\x0d\\x0a"),
        (b"\xff\xc3\xa9\\\x1b", "\\xffé\\\\\\x1b"),
    ],
)
def test_escape_bytes_table(data: bytes, expected: str) -> None:
    out = escape_bytes(data)
    assert out == expected
    assert _terminal_safe(out)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_escape_bytes_accepts_any_buffer(kind: type[bytes | bytearray | memoryview]) -> None:
    assert escape_bytes(kind(b"a\x1b\xff")) == "a\\x1b\\xff"


def test_every_byte_alone() -> None:
    for byte in range(256):
        out = escape_bytes(bytes([byte]))
        assert _terminal_safe(out), byte
        if 0x20 <= byte < 0x7F and byte != 0x5C:
            assert out == chr(byte)
        elif byte != 0x5C:
            assert out == f"\\x{byte:02x}"


def test_every_code_point() -> None:
    """All of Unicode in one string: the output is safe and undoes exactly."""
    text = "".join(map(chr, range(0x110000)))
    out = escape_text(text)
    assert _terminal_safe(out)
    assert _unescape(out) == text


def test_translate_tables_stay_bounded() -> None:
    """A peer spraying distinct code points must not grow the lazy caches forever."""
    escape_text("".join(map(chr, range(0xF0000, 0xF0000 + 3 * _escape._CACHE_MAX))))
    escape_bytes("".join(map(chr, range(0x100000, 0x100000 + 3 * _escape._CACHE_MAX))).encode())
    for table in (_escape._TEXT_TABLE, _escape._BYTES_TABLE):
        assert len(table) <= _escape._CACHE_MAX


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (b"Hello UDP Server", "b'Hello UDP Server'"),
        (b"\x1b[31m\xff\\", "b'\\x1b[31m\\xff\\\\'"),  # bytes repr kept as is
        (("127.0.0.1", 51696), "('127.0.0.1', 51696)"),
        (("::1", 5005, 0, 0), "('::1', 5005, 0, 0)"),
        ("/tmp/\x1b[31m\u202e\udcff", "'/tmp/\\x1b[31m\\u202e\\udcff'"),
        ("é中", "'é中'"),
        (None, "None"),
    ],
)
def test_safe_repr_keeps_repr_escapes(obj: object, expected: str) -> None:
    assert safe_repr(obj) == expected
    assert _terminal_safe(safe_repr(obj))


def test_safe_repr_of_container_with_hostile_repr() -> None:
    class Hostile:
        def __repr__(self) -> str:
            return "\x1b]0;pwned\x07\\"

    assert safe_repr([Hostile()]) == "[\\x1b]0;pwned\\x07\\]"


@given(st.binary(max_size=512))
def test_escape_bytes_output_is_always_printable(data: bytes) -> None:
    out = escape_bytes(data)
    assert all(c == " " or c.isprintable() for c in out)


@given(st.binary(max_size=256))
def test_escape_bytes_matches_escape_text_on_valid_utf8(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert escape_bytes(data) == escape_text(text)


@given(st.text(max_size=256))
def test_escape_text_is_safe_and_reversible(text: str) -> None:
    out = escape_text(text)
    assert out.isprintable()
    assert _unescape(out) == text


@given(st.text(max_size=256))
def test_escape_controls_is_idempotent(text: str) -> None:
    once = escape_controls(text)
    assert once.isprintable()
    assert escape_controls(once) == once
