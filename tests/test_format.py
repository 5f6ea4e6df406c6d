"""Tests for udpkit._cli.format: golden output per format, all of it terminal-safe."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from udpkit._cli import format as _format
from udpkit._cli.format import FORMATS, banner, format_datagram, format_summary
from udpkit._core.errors import UsageError

WHEN = 1795564741.123456  # 2026-11-24T23:59:01.123456 UTC
ISO = "2026-11-24T23:59:01.123456+00:00"
V4 = ("127.0.0.1", 51696)
HOSTILE_PATH = "/tmp/s\x1b[31m\u202e"


@pytest.fixture
def utc() -> Iterator[None]:
    """Make local time UTC, so golden timestamps do not depend on the host."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is not available on this platform")
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def _assert_terminal_safe(out: str) -> None:
    assert out.endswith("\n")
    for line in out[:-1].split("\n"):
        assert line.isprintable(), line


# (case, fmt, data, peer, length, local, expected output)
_GOLDEN: list[tuple[str, str, bytes, object, int | None, object, str]] = [
    # The textbook's output, character for character (with repr's quotes).
    (
        "basic",
        "textbook",
        b"Hello UDP Server",
        V4,
        None,
        None,
        "Message from Client:b'Hello UDP Server'\nClient IP Address:('127.0.0.1', 51696)\n",
    ),
    (
        "basic",
        "line",
        b"Hello UDP Server",
        V4,
        None,
        None,
        f"{ISO} 127.0.0.1:51696 16 B Hello UDP Server\n",
    ),
    (
        "basic",
        "hex",
        b"Hello UDP Server",
        V4,
        None,
        None,
        f"{ISO} 127.0.0.1:51696 16 B\n"
        "00000000  48 65 6c 6c 6f 20 55 44  50 20 53 65 72 76 65 72  |Hello UDP Server|\n",
    ),
    (
        "basic",
        "json",
        b"Hello UDP Server",
        V4,
        None,
        None,
        '{"time":1795564741.123456,"iso_time":"2026-11-24T23:59:01.123456+00:00",'
        '"peer":"127.0.0.1:51696","peer_host":"127.0.0.1","peer_port":51696,"length":16,'
        '"kept":16,"truncated":false,"payload_b64":"SGVsbG8gVURQIFNlcnZlcg==",'
        '"text":"Hello UDP Server"}\n',
    ),
    (
        "truncated",
        "textbook",
        b"Hello",
        V4,
        2000,
        None,
        "Message from Client:b'Hello'\nClient IP Address:('127.0.0.1', 51696)\n"
        "(truncated: 2000 bytes, 5 kept)\n",
    ),
    (
        "truncated",
        "line",
        b"Hello",
        V4,
        2000,
        None,
        f"{ISO} 127.0.0.1:51696 2000 B (truncated: 2000 bytes, 5 kept) Hello\n",
    ),
    (
        "truncated",
        "hex",
        b"Hello",
        V4,
        2000,
        None,
        f"{ISO} 127.0.0.1:51696 2000 B (truncated: 2000 bytes, 5 kept)\n"
        "00000000  48 65 6c 6c 6f                                    |Hello|\n",
    ),
    (
        "truncated",
        "json",
        b"Hello",
        V4,
        2000,
        None,
        '{"time":1795564741.123456,"iso_time":"2026-11-24T23:59:01.123456+00:00",'
        '"peer":"127.0.0.1:51696","peer_host":"127.0.0.1","peer_port":51696,"length":2000,'
        '"kept":5,"truncated":true,"payload_b64":"SGVsbG8=","text":"Hello"}\n',
    ),
    (
        "empty",
        "textbook",
        b"",
        V4,
        None,
        None,
        "Message from Client:b''\nClient IP Address:('127.0.0.1', 51696)\n",
    ),
    ("empty", "line", b"", V4, None, None, f"{ISO} 127.0.0.1:51696 0 B\n"),
    ("empty", "hex", b"", V4, None, None, f"{ISO} 127.0.0.1:51696 0 B\n"),
    (
        "empty",
        "json",
        b"",
        V4,
        None,
        None,
        '{"time":1795564741.123456,"iso_time":"2026-11-24T23:59:01.123456+00:00",'
        '"peer":"127.0.0.1:51696","peer_host":"127.0.0.1","peer_port":51696,"length":0,'
        '"kept":0,"truncated":false,"payload_b64":"","text":""}\n',
    ),
    (
        "ipv6",
        "textbook",
        b"hi\n",
        ("::1", 5005, 0, 0),
        None,
        None,
        "Message from Client:b'hi\\n'\nClient IP Address:('::1', 5005, 0, 0)\n",
    ),
    ("ipv6", "line", b"hi\n", ("::1", 5005, 0, 0), None, None, f"{ISO} [::1]:5005 3 B hi\\x0a\n"),
    (
        "ipv6",
        "hex",
        b"hi\n",
        ("::1", 5005, 0, 0),
        None,
        None,
        f"{ISO} [::1]:5005 3 B\n"
        "00000000  68 69 0a                                          |hi.|\n",
    ),
    (
        "ipv6",
        "json",
        b"hi\n",
        ("::1", 5005, 0, 0),
        None,
        None,
        '{"time":1795564741.123456,"iso_time":"2026-11-24T23:59:01.123456+00:00",'
        '"peer":"[::1]:5005","peer_host":"::1","peer_port":5005,"length":3,"kept":3,'
        '"truncated":false,"payload_b64":"aGkK","text":"hi\\n"}\n',
    ),
    (
        "unix",
        "textbook",
        b"\x1b[2J\xff",
        HOSTILE_PATH,
        None,
        None,
        "Message from Client:b'\\x1b[2J\\xff'\nClient IP Address:'/tmp/s\\x1b[31m\\u202e'\n",
    ),
    (
        "unix",
        "line",
        b"\x1b[2J\xff",
        HOSTILE_PATH,
        None,
        None,
        f"{ISO} /tmp/s\\x1b[31m\\u202e 5 B \\x1b[2J\\xff\n",
    ),
    (
        "unix",
        "hex",
        b"\x1b[2J\xff",
        HOSTILE_PATH,
        None,
        None,
        f"{ISO} /tmp/s\\x1b[31m\\u202e 5 B\n"
        "00000000  1b 5b 32 4a ff                                    |.[2J.|\n",
    ),
    (
        "unix",
        "json",
        b"\x1b[2J\xff",
        HOSTILE_PATH,
        None,
        None,
        '{"time":1795564741.123456,"iso_time":"2026-11-24T23:59:01.123456+00:00",'
        '"peer":"/tmp/s\\\\x1b[31m\\\\u202e","peer_host":"/tmp/s\\u001b[31m\\u202e",'
        '"peer_port":null,"length":5,"kept":5,"truncated":false,"payload_b64":"G1sySv8=",'
        '"text":null}\n',
    ),
    (
        "local",
        "textbook",
        b"ping",
        ("127.0.0.1", 40000),
        None,
        ("127.0.0.1", 5005),
        "Message from Client:b'ping'\nClient IP Address:('127.0.0.1', 40000)\n",
    ),
    (
        "local",
        "line",
        b"ping",
        ("127.0.0.1", 40000),
        None,
        ("127.0.0.1", 5005),
        f"{ISO} 127.0.0.1:40000 -> 127.0.0.1:5005 4 B ping\n",
    ),
    (
        "local",
        "hex",
        b"ping",
        ("127.0.0.1", 40000),
        None,
        ("127.0.0.1", 5005),
        f"{ISO} 127.0.0.1:40000 -> 127.0.0.1:5005 4 B\n"
        "00000000  70 69 6e 67                                       |ping|\n",
    ),
    (
        "local",
        "json",
        b"ping",
        ("127.0.0.1", 40000),
        None,
        ("127.0.0.1", 5005),
        '{"time":1795564741.123456,"iso_time":"2026-11-24T23:59:01.123456+00:00",'
        '"peer":"127.0.0.1:40000","peer_host":"127.0.0.1","peer_port":40000,"length":4,'
        '"kept":4,"truncated":false,"payload_b64":"cGluZw==","text":"ping",'
        '"local":"127.0.0.1:5005"}\n',
    ),
]


@pytest.mark.usefixtures("utc")
@pytest.mark.parametrize("row", _GOLDEN, ids=[f"{row[0]}-{row[1]}" for row in _GOLDEN])
def test_golden(row: tuple[str, str, bytes, object, int | None, object, str]) -> None:
    _case, fmt, data, peer, length, local, expected = row
    out = format_datagram(fmt, data, peer, length=length, when=WHEN, local=local)
    assert out == expected
    _assert_terminal_safe(out)


def test_golden_covers_every_format() -> None:
    assert FORMATS == ("textbook", "line", "hex", "json")
    assert tuple(_format._FORMATTERS) == FORMATS
    for case in {row[0] for row in _GOLDEN}:
        assert sorted(row[1] for row in _GOLDEN if row[0] == case) == sorted(FORMATS), case


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_marker_in_every_format(fmt: str) -> None:
    out = format_datagram(fmt, b"x" * 1024, V4, length=2000, when=WHEN)
    _assert_terminal_safe(out)
    if fmt == "json":
        record = json.loads(out)
        assert (record["length"], record["kept"], record["truncated"]) == (2000, 1024, True)
    else:
        assert "(truncated: 2000 bytes, 1024 kept)" in out
    untruncated = format_datagram(fmt, b"x" * 1024, V4, length=1024, when=WHEN)
    assert "truncated: " not in untruncated


# Peers of every kind the OS hands back, and some it should not.
_PEERS: list[object] = [
    V4,
    ("::1", 5005, 0, 0),
    ("fe80::1", 5005, 0, 1),
    ("::ffff:127.0.0.1", 5005, 0, 0),
    HOSTILE_PATH,
    "/tmp/bad\udcff\\name",
    b"\0abstract\x1b[31m\xe2\x80\xae",
    b"/tmp/bytes\xff",
    "",
    b"",
    None,
    ["not", "\x1b", "an address"],
]

# Payloads meant to hurt a terminal or a parser.
_PAYLOADS: list[bytes] = [
    b"",
    b"\x1b[31mred\x1b[0m",
    b"\x1b]0;title\x07",
    "\u202etxt.exe \u2066\u2069\u200e\u200f\u2028\u2029".encode(),
    b"\xc2\x9b31m",
    bytes(range(256)),
    b"\xff\xfe\xed\xa0\x80",
    b"\\x1b",
    "é中😀".encode(),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("peer", _PEERS, ids=repr)
def test_every_output_is_terminal_safe(fmt: str, peer: object) -> None:
    for data in _PAYLOADS:
        out = format_datagram(fmt, data, peer, length=len(data) + 7, when=WHEN, local=peer)
        _assert_terminal_safe(out)
        assert "\x1b" not in out
        assert "\u202e" not in out


@pytest.mark.parametrize("peer", _PEERS, ids=repr)
def test_json_lines_parse_and_round_trip(peer: object) -> None:
    for data in [*_PAYLOADS, os.urandom(1500)]:
        out = format_datagram("json", data, peer, length=len(data) + 1, when=WHEN)
        assert out.isascii()
        assert out.count("\n") == 1
        record = json.loads(out)
        assert set(record) == {
            "time",
            "iso_time",
            "peer",
            "peer_host",
            "peer_port",
            "length",
            "kept",
            "truncated",
            "payload_b64",
            "text",
        }
        assert base64.b64decode(record["payload_b64"], validate=True) == data
        assert record["time"] == WHEN
        assert (record["length"], record["kept"], record["truncated"]) == (
            len(data) + 1,
            len(data),
            True,
        )
        try:
            expected_text: str | None = data.decode("utf-8")
        except UnicodeDecodeError:
            expected_text = None
        assert record["text"] == expected_text
        # A dual-stack socket's IPv4 peer (::ffff:a.b.c.d) is shown as plain IPv4.
        shown = peer
        if isinstance(peer, tuple) and str(peer[0]).startswith("::ffff:"):
            shown = (peer[0][7:], peer[1])
        assert record["peer"] == _format._peer_text(shown)


@pytest.mark.parametrize(
    ("peer", "host", "port"),
    [
        (V4, "127.0.0.1", 51696),
        (("::1", 5005, 0, 0), "::1", 5005),
        (("fe80::1", 5005, 0, 99999), "fe80::1%99999", 5005),  # no such interface
        (("fe80::1", 5005, 0, socket.if_nametoindex("lo")), "fe80::1%lo", 5005),
        (("fe80::1%eth0", 5005, 0, 3), "fe80::1%eth0", 5005),
        (HOSTILE_PATH, HOSTILE_PATH, None),
        ("", None, None),
        (None, None, None),
        (b"\0name\x1b", "@name\\x1b", None),
    ],
)
def test_json_peer_host_and_port(peer: object, host: str | None, port: int | None) -> None:
    record = json.loads(format_datagram("json", b"x", peer, when=WHEN))
    assert (record["peer_host"], record["peer_port"]) == (host, port)


def test_json_local_only_when_given() -> None:
    assert "local" not in json.loads(format_datagram("json", b"", V4, when=WHEN))
    record = json.loads(format_datagram("json", b"", V4, when=WHEN, local=("::1", 9, 0, 0)))
    assert record["local"] == "[::1]:9"


def test_when_defaults_to_now() -> None:
    before = time.time()
    record = json.loads(format_datagram("json", b"x", V4))
    after = time.time()
    assert before <= record["time"] <= after


def test_iso_time_is_local_time(utc: None) -> None:
    line = format_datagram("line", b"x", V4, when=0.5)
    assert line.startswith("1970-01-01T00:00:00.500000+00:00 ")
    assert json.loads(format_datagram("json", b"x", V4, when=0.5))["iso_time"] == (
        "1970-01-01T00:00:00.500000+00:00"
    )


def test_timestamps_are_one_text_in_every_format() -> None:
    """line and hex showed local time without its offset, json with it (issue 12):
    one arrival now reads the same in all three, to the microsecond, offset said."""
    when = 1795564741.1234567
    line = format_datagram("line", b"x", V4, when=when).split(" ", 1)[0]
    hexed = format_datagram("hex", b"x", V4, when=when).split(" ", 1)[0]
    record = json.loads(format_datagram("json", b"x", V4, when=when))
    assert line == hexed == record["iso_time"] == _format.iso_time(when)
    assert line[-6] in "+-" and line[-3] == ":"  # the UTC offset, always
    assert record["time"] == round(when, 6)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
@pytest.mark.parametrize("fmt", FORMATS)
def test_any_buffer_formats_like_bytes(
    fmt: str, kind: Callable[[bytes], bytearray | memoryview]
) -> None:
    data = b"Hello\x1b\xff"
    assert format_datagram(fmt, kind(data), V4, when=WHEN) == format_datagram(
        fmt, data, V4, when=WHEN
    )


@pytest.mark.skipif(shutil.which("hexdump") is None, reason="hexdump is not installed")
@pytest.mark.parametrize("size", [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 255, 1500])
def test_hex_rows_match_hexdump(size: int) -> None:
    data = random.Random(size).randbytes(size)
    # -v: hexdump would otherwise squeeze repeated rows into "*".
    hexdump = shutil.which("hexdump")
    assert hexdump is not None
    result = subprocess.run(
        [hexdump, "-C", "-v"], input=data, capture_output=True, check=True, timeout=10
    )
    expected_rows = result.stdout.decode("ascii").splitlines()[:-1]  # drop final offset
    out = format_datagram("hex", data, V4, when=WHEN)
    assert out.splitlines()[1:] == expected_rows


@pytest.mark.parametrize(
    ("sockaddr", "expected"),
    [
        (("127.0.0.1", 5005), "127.0.0.1:5005"),
        (("0.0.0.0", 0), "0.0.0.0:0"),
        (("::1", 5005), "[::1]:5005"),
        (("::1", 5005, 0, 0), "[::1]:5005"),
        (("fe80::1", 5005, 0, 99999), "[fe80::1%99999]:5005"),
        (("\x1b[31m", 1), "\\x1b[31m:1"),
        (("fe80::1%eth0", 5005, 0, 3), "[fe80::1%eth0]:5005"),
        ("/tmp/sock", "/tmp/sock"),
        ("/tmp/a b", "/tmp/a b"),
        (HOSTILE_PATH, "/tmp/s\\x1b[31m\\u202e"),
        ("/tmp/bad\udcff", "/tmp/bad\\xff"),  # os.fsdecode's stand-in shown as the byte
        ("/tmp/back\\slash", "/tmp/back\\\\slash"),
        (b"\0abstract", "@abstract"),
        (b"\0\x1b", "@\\x1b"),
        (b"/tmp/raw\xff", "/tmp/raw\\xff"),
        ("", "(unnamed)"),
        (b"", "(unnamed)"),
        (None, "(unnamed)"),
        (["\x1b"], "['\\x1b']"),
    ],
)
def test_peer_text(sockaddr: object, expected: str) -> None:
    assert _format._peer_text(sockaddr) == expected


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("transport", ["UDP", "TCP", "Unix datagram", "Unix stream"])
def test_banner(fmt: str, transport: str) -> None:
    text, to_stderr = banner(fmt, transport)
    assert text == f"{transport} server up and listening\n"
    assert to_stderr is (fmt == "json")


def test_banner_default_is_the_textbook_line() -> None:
    assert banner("seed") == ("UDP server up and listening\n", False)  # the old name of "textbook"


@pytest.mark.parametrize("fmt", ["xml", "", "JSON", "seed "])
def test_unknown_format(fmt: str) -> None:
    with pytest.raises(UsageError, match=r"must be one of textbook, line, hex, json") as info:
        format_datagram(fmt, b"x", V4)
    assert repr(fmt) in str(info.value)
    with pytest.raises(UsageError, match=r"unknown output format"):
        banner(fmt)


def test_length_below_kept_is_an_error() -> None:
    with pytest.raises(UsageError, match=r"invalid length 3: must be at least the 5 bytes kept"):
        format_datagram("line", b"Hello", V4, length=3)


@pytest.mark.parametrize(
    ("args", "extra", "expected"),
    [
        ((3, 48, 1, 0), {}, "udpkit: 3 datagrams, 48 bytes from 1 peer, 0 truncated"),
        ((0, 0, 0, 0), {}, "udpkit: 0 datagrams, 0 bytes from 0 peers, 0 truncated"),
        ((1, 1, 1, 1), {}, "udpkit: 1 datagram, 1 byte from 1 peer, 1 truncated"),
        ((2, 2, 2, 2), {}, "udpkit: 2 datagrams, 2 bytes from 2 peers, 2 truncated"),
        (
            (5, 100, 2, 1),
            {"dropped": 2, "errors": 0},
            "udpkit: 5 datagrams, 100 bytes from 2 peers, 1 truncated; dropped=2 errors=0",
        ),
    ],
)
def test_format_summary(
    args: tuple[int, int, int, int], extra: dict[str, int], expected: str
) -> None:
    assert format_summary(*args, **extra) == expected


# -- through real sockets ------------------------------------------------------


def test_real_datagram(family: tuple[socket.AddressFamily, str]) -> None:
    fam, host = family
    with (
        socket.socket(fam, socket.SOCK_DGRAM) as server,
        socket.socket(fam, socket.SOCK_DGRAM) as client,
    ):
        server.bind((host, 0))
        server.settimeout(5)
        client.bind((host, 0))
        client.sendto(b"Hello UDP Server", server.getsockname())
        data, peer = server.recvfrom(2048)
        port = client.getsockname()[1]
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    line = format_datagram("line", data, peer, when=WHEN)
    assert f" {shown} 16 B Hello UDP Server\n" in line
    record = json.loads(format_datagram("json", data, peer, when=WHEN))
    assert (record["peer"], record["peer_host"], record["peer_port"]) == (shown, host, port)
    seed = format_datagram("seed", data, peer)
    assert seed == f"Message from Client:b'Hello UDP Server'\nClient IP Address:{peer!r}\n"


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX")
def test_real_unix_peer_with_hostile_path(tmp_path: Path) -> None:
    """A peer can name its socket file with escape sequences; they must not get through."""
    client_path = str(tmp_path / "c\x1b[31m\u202e")
    server_path = str(tmp_path / "s")
    if len(os.fsencode(client_path)) > 100:
        pytest.skip("temporary directory path too long for AF_UNIX")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client,
    ):
        server.bind(server_path)
        server.settimeout(5)
        client.bind(client_path)
        client.sendto(b"\x1b[2Jhi", server_path)
        data, peer = server.recvfrom(2048)
    assert peer == client_path
    for fmt in FORMATS:
        out = format_datagram(fmt, data, peer, when=WHEN)
        _assert_terminal_safe(out)
        assert "\x1b" not in out
        assert "\u202e" not in out
    assert json.loads(format_datagram("json", data, peer))["peer_host"] == client_path
