"""Reading what capture tools write: pcap and pcapng, every usual link type, untrusted.

Hand-built byte strings pin each container and link-layer rule; captures made by the real
tools (dumpcap, tshark, tcpdump) on loopback check that what was sent comes back exactly.
"""

from __future__ import annotations

import io
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from udpkit._core.capture import (
    LINK_TYPES,
    SKIP_REASONS,
    CapturedDatagram,
    CaptureError,
    CaptureReader,
    iter_capture_untrusted,
    sniff,
)

SRC4, DST4, SRC6, DST6 = "192.0.2.1", "198.51.100.7", "2001:db8::1", "2001:db8::2"
T = 1_795_000_000  # a capture's seconds


def needs_tool(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} is not installed")


# --- building packets and files by hand -----------------------------------------------------------


def udp(sport: int, dport: int, payload: bytes, ulen: int | None = None) -> bytes:
    return (
        struct.pack("!HHHH", sport, dport, 8 + len(payload) if ulen is None else ulen, 0) + payload
    )


def ipv4(l4: bytes, proto: int = 17, frag: int = 0, src: str = SRC4, dst: str = DST4) -> bytes:
    hdr = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0)
    return hdr + socket.inet_aton(src) + socket.inet_aton(dst) + l4


def ipv6(l4: bytes, proto: int = 17, ext: bytes = b"") -> bytes:
    """``ext`` is a chain of extension headers already linked; ``proto`` is the first header."""
    body = ext + l4
    hdr = struct.pack("!IHBB", 6 << 28, len(body), proto, 64)
    return (
        hdr
        + socket.inet_pton(socket.AF_INET6, SRC6)
        + socket.inet_pton(socket.AF_INET6, DST6)
        + body
    )


def eth(ip: bytes, etype: int | None = None, tags: tuple[int, ...] = ()) -> bytes:
    if etype is None:  # what the IP header's version says
        etype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    vlan = b"".join(struct.pack("!HH", tpid, 42) for tpid in tags)
    return bytes(6) + b"\x02" * 6 + vlan + struct.pack("!H", etype) + ip


def pcap(link: int, frames: list[bytes], order: str = "<", nano: bool = False) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, link)
    for i, frame in enumerate(frames):
        out += struct.pack(order + "IIII", T + i, 123 + i, len(frame), len(frame)) + frame
    return out


def block(order: str, btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    size = struct.pack(order + "I", 12 + len(body))
    return struct.pack(order + "I", btype) + size + body + size


def shb(order: str) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(order: str, link: int, snaplen: int = 0, tsresol: int | None = None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts = struct.pack(order + "HHB3x", 9, 1, tsresol) + struct.pack(order + "HH", 0, 0)
    return block(order, 1, struct.pack(order + "HHI", link, 0, snaplen) + opts)


def epb(order: str, iface: int, ts: int, frame: bytes, orig: int | None = None) -> bytes:
    head = struct.pack(
        order + "5I", iface, ts >> 32, ts & 0xFFFFFFFF, len(frame), orig or len(frame)
    )
    return block(order, 6, head + frame)


def spb(order: str, frame: bytes, orig: int | None = None) -> bytes:
    return block(order, 3, struct.pack(order + "I", orig or len(frame)) + frame)


def read(data: bytes, fmt: str | None = None) -> tuple[list[CapturedDatagram], CaptureReader]:
    reader = iter_capture_untrusted(io.BytesIO(data), "t", fmt)
    return list(reader), reader


V4 = ipv4(udp(1111, 2222, b"four"))
V6 = ipv6(udp(3333, 4444, b"six"))


def summary(got: list[CapturedDatagram]) -> list[tuple[tuple[str, int], tuple[str, int], bytes]]:
    return [(d.src, d.dst, d.data) for d in got]


FOUR = ((SRC4, 1111), (DST4, 2222), b"four")
SIX = ((SRC6, 3333), (DST6, 4444), b"six")

# --- format detection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "want"),
    [
        (b"\xd4\xc3\xb2\xa1\x02\x00", "pcap"),
        (b"\xa1\xb2\xc3\xd4", "pcap"),
        (b"\x4d\x3c\xb2\xa1", "pcap"),
        (b"\xa1\xb2\x3c\x4d", "pcap"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00", "pcapng"),
        (b'{"time": 1}', None),
        (b"\xd4\xc3\xb2", "pcap"),  # a header torn inside the magic
        (b"\xd4\xc3\xb3", None),
        (b"", None),
    ],
)
def test_sniff_by_magic(head: bytes, want: str | None) -> None:
    assert sniff(head) == want


# --- classic pcap --------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_both_byte_orders_and_resolutions(order: str, nano: bool) -> None:
    got, reader = read(pcap(101, [V4, V6], order, nano))
    assert summary(got) == [FOUR, SIX]
    assert [d.time_ns for d in got] == [
        (T + i) * 10**9 + (123 + i) * (1 if nano else 1000) for i in range(2)
    ]
    assert (reader.format, reader.count, reader.packets, reader.torn_tail_bytes) == (
        "pcap",
        2,
        2,
        0,
    )
    assert [d.offset for d in got] == [24, 24 + 16 + len(V4)]


def test_pcap_snaplen_cut_payload_keeps_the_wire_length() -> None:
    frame = eth(ipv4(udp(1, 2, b"x" * 100)))
    data = pcap(1, [frame[:60]])
    data = data[:36] + struct.pack("<I", len(frame)) + data[40:]  # orig_len: the whole frame
    (d,), _ = read(data)
    assert (d.length, len(d.data), d.truncated) == (100, 60 - 14 - 28, True)


# --- pcapng --------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_both_byte_orders(order: str) -> None:
    data = (
        shb(order)
        + idb(order, 1)
        + epb(order, 0, T * 10**6 + 5, eth(V4))
        + epb(order, 0, 0, eth(V6))
    )
    got, reader = read(data)
    assert summary(got) == [FOUR, SIX]
    assert got[0].time_ns == T * 10**9 + 5000  # no if_tsresol: microseconds
    assert (reader.format, reader.sections, reader.torn_tail_bytes) == ("pcapng", 1, 0)


@pytest.mark.parametrize(
    ("tsresol", "ts", "want_ns"),
    [
        (9, T * 10**9 + 7, T * 10**9 + 7),  # 10^-9: nanoseconds
        (3, T * 1000 + 1, T * 10**9 + 10**6),  # 10^-3
        (0x80 | 10, T * 1024 + 512, T * 10**9 + 5 * 10**8),  # 2^-10: 512/1024 s
        (0x80 | 30, (T << 30) + 1, T * 10**9 + 0),  # 2^-30: under a nanosecond, floored
    ],
)
def test_pcapng_if_tsresol(tsresol: int, ts: int, want_ns: int) -> None:
    data = shb("<") + idb("<", 101, tsresol=tsresol) + epb("<", 0, ts, V4)
    (d,), _ = read(data)
    assert d.time_ns == want_ns


def test_pcapng_simple_packet_block_uses_interface_0_and_its_snaplen() -> None:
    frame = eth(ipv4(udp(5, 6, b"abcdefgh")))
    data = shb("<") + idb("<", 1, snaplen=len(frame) - 3) + spb("<", frame)
    (d,), _ = read(data)
    assert (d.time_ns, d.src, d.data, d.length, d.truncated) == (None, (SRC4, 5), b"abcde", 8, True)


def test_pcapng_sections_each_with_their_own_interfaces_and_byte_order() -> None:
    first = shb("<") + idb("<", 1) + idb("<", 229) + epb("<", 1, 1, V6) + epb("<", 0, 2, eth(V4))
    second = shb(">") + idb(">", 113) + epb(">", 0, 3, bytes(14) + b"\x08\x00" + V4)
    unknown = block("<", 0x0BAD, b"whatever block a newer tool writes")
    got, reader = read(first + unknown + second)
    assert summary(got) == [SIX, FOUR, FOUR]
    assert reader.sections == 2
    with pytest.raises(CaptureError, match=r"names interface 1, but its section describes 1"):
        read(second + epb(">", 1, 4, V4))


def test_pcapng_obsolete_packet_block() -> None:
    body = struct.pack("<HHIIII", 0, 0, 0, 1000, len(V4), len(V4)) + V4
    (d,), _ = read(shb("<") + idb("<", 101) + block("<", 2, body))
    assert (d.data, d.time_ns) == (b"four", 10**6)


# --- link types ----------------------------------------------------------------------------------

SLL2 = struct.pack("!HHiHBB8s", 0x0800, 0, 1, 772, 0, 0, b"")  # IPv4, interface 1, loopback
LINKS = [
    pytest.param(1, eth(V4), FOUR, id="ethernet"),
    pytest.param(1, eth(V6), SIX, id="ethernet-v6"),
    pytest.param(1, eth(V4, tags=(0x8100,)), FOUR, id="802.1Q"),
    pytest.param(1, eth(V6, 0x86DD, tags=(0x88A8, 0x8100)), SIX, id="QinQ"),
    pytest.param(101, V6, SIX, id="raw"),
    pytest.param(12, V4, FOUR, id="raw-12"),
    pytest.param(228, V4, FOUR, id="ipv4"),
    pytest.param(229, V6, SIX, id="ipv6"),
    pytest.param(113, struct.pack("!HHH8sH", 0, 772, 0, b"", 0x86DD) + V6, SIX, id="sll"),
    pytest.param(276, SLL2 + V4, FOUR, id="sll2"),
    pytest.param(0, struct.pack("<I", 2) + V4, FOUR, id="null-le"),
    pytest.param(0, struct.pack(">I", 30) + V6, SIX, id="null-be-darwin"),
    pytest.param(0, struct.pack("<I", 24) + V6, SIX, id="null-openbsd-v6"),
    pytest.param(108, struct.pack(">I", 2) + V4, FOUR, id="openbsd-loop"),
]


@pytest.mark.parametrize(("link", "frame", "want"), LINKS)
def test_link_types(link: int, frame: bytes, want: tuple[object, ...]) -> None:
    assert summary(read(pcap(link, [frame]))[0]) == [want]
    assert summary(read(shb(">") + idb(">", link) + epb(">", 0, 0, frame))[0]) == [want]


def test_every_link_type_is_tested() -> None:
    assert {p.values[0] for p in LINKS} | {14} == set(LINK_TYPES)


# --- skipped packets, counted by reason ----------------------------------------------------------

HOP_BY_HOP = bytes([60, 0]) + bytes(6)  # next: destination options
DEST_OPTS = bytes([17, 1]) + bytes(14)  # next: UDP, 16 bytes long
ROUTING = bytes([44, 0, 0, 0]) + bytes(4)  # next: fragment


def frag6(offset: int, more: bool, nxt: int = 17) -> bytes:
    return struct.pack("!BBHI", nxt, 0, offset << 3 | more, 7)


SKIPS = [
    pytest.param(1, eth(b"\x00" * 28, 0x0806), "not-ip", id="arp"),
    pytest.param(1, eth(V6, 0x0800), "malformed", id="ethertype-says-v4-header-says-v6"),
    pytest.param(101, b"\x50" + bytes(30), "not-ip", id="version-5"),
    pytest.param(101, ipv4(bytes(20), proto=6), "not-udp", id="tcp"),
    pytest.param(101, ipv6(bytes(8), proto=58), "not-udp", id="icmpv6"),
    pytest.param(101, ipv4(udp(1, 2, b"x"), frag=0x2000), "fragment", id="v4-more-fragments"),
    pytest.param(101, ipv4(b"rest of it", frag=185), "fragment", id="v4-later-fragment"),
    pytest.param(
        101, ipv6(udp(1, 2, b"x"), 44, frag6(0, True)), "fragment", id="v6-first-fragment"
    ),
    pytest.param(101, ipv6(b"tail....", 44, frag6(10, False)), "fragment", id="v6-last-fragment"),
    pytest.param(101, V4[:26], "truncated", id="udp-header-cut"),
    pytest.param(101, V6[:39], "truncated", id="ipv6-header-cut"),
    pytest.param(1, eth(V4)[:10], "truncated", id="ethernet-header-cut"),
    pytest.param(147, V4, "unknown-link", id="user-link-type"),
    pytest.param(101, ipv4(udp(1, 2, b"abc", ulen=5)), "malformed", id="udp-length-under-8"),
    pytest.param(101, ipv4(udp(1, 2, b"abc", ulen=99)), "malformed", id="udp-length-over-ip"),
    pytest.param(101, b"\x41" + V4[1:], "malformed", id="ihl-under-5"),
]


@pytest.mark.parametrize(("link", "frame", "reason"), SKIPS)
def test_skipped_packets_are_counted_by_reason(link: int, frame: bytes, reason: str) -> None:
    got, reader = read(pcap(link, [frame, V4 if link != 1 else eth(V4)]))
    assert reader.skipped == {reason: 2 if link == 147 else 1} and reason in SKIP_REASONS
    assert (reader.packets, reader.count) == (2, len(got))
    assert summary(got) == ([] if link == 147 else [FOUR])
    assert reader.links == {link: 2}


def test_ipv6_extension_headers_are_walked() -> None:
    ext = HOP_BY_HOP + DEST_OPTS
    (d,), _ = read(pcap(229, [ipv6(udp(3333, 4444, b"six"), 0, ext)]))
    assert (d.src, d.dst, d.data) == SIX
    atomic = ROUTING + frag6(0, False)  # routing, then an atomic fragment (offset 0, no more)
    (d,), _ = read(pcap(229, [ipv6(udp(3333, 4444, b"six"), 43, atomic)]))
    assert (d.src, d.dst, d.data) == SIX


def test_udp_lite_length_comes_from_ip() -> None:
    lite = ipv4(udp(7, 8, b"partial coverage", ulen=8), proto=136)
    (d,), _ = read(pcap(101, [lite + bytes(0)]))
    assert (d.proto, d.data, d.length) == (136, b"partial coverage", 16)


def test_ethernet_padding_is_not_payload() -> None:
    (d,), _ = read(pcap(1, [eth(ipv4(udp(1, 2, b""))) + bytes(18)]))
    assert (d.data, d.length) == (b"", 0)


# --- torn tails and garbage ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(pcap(1, [eth(V4), eth(V6)]), id="pcap"),
        pytest.param(
            shb(">") + idb(">", 1) + epb(">", 0, 1, eth(V4)) + epb(">", 0, 2, eth(V6)), id="pcapng"
        ),
    ],
)
def test_torn_tail_at_every_cut_of_the_last_packet(data: bytes) -> None:
    got, _ = read(data)
    last = got[-1].offset
    for cut in range(last, len(data)):
        got, reader = read(data[:cut])
        assert summary(got) == [FOUR]
        assert (reader.torn_tail_bytes, reader.torn_tail_offset) == (
            (cut - last, last) if cut > last else (0, None)
        )
    for cut in range(1, 24):  # a header cut short: nothing, all of it torn
        got, reader = read(data[:cut])
        assert got == [] and reader.torn_tail_bytes == cut and reader.format in ("pcap", "pcapng")


LYING_EPB = epb("<", 0, 0, V4)[:20] + struct.pack("<I", 99) + epb("<", 0, 0, V4)[24:]
GARBAGE = [
    (b"GET / HTTP/1.1\r\n", None, r"'t' is not a pcap or pcapng capture: it starts with b'GET "),
    (b'{"time": 1}\n', "pcap", "is not a pcap capture"),
    (pcap(1, []), "pcapng", "is not a pcapng capture"),
    (b"\xd4\xc3\xb2\xa1" + bytes(20), None, "unsupported pcap version 0.0: expected 2.4"),
    (
        pcap(1, [])[:24] + struct.pack("<IIII", 0, 0, 9, 5),
        None,
        r"captured length 9 \(original 5\)",
    ),
    (pcap(1, [])[:24] + struct.pack("<IIII", 0, 0, 1 << 25, 1 << 25), None, "is impossible"),
    (shb("<")[:8] + b"\x1a\x2b\x3c\x4e" + shb("<")[12:], None, "byte-order magic 1a2b3c4e"),
    (shb("<")[:-4] + b"\x20\0\0\0", None, "length 28 ends with length 32"),
    (shb("<") + struct.pack("<II", 6, 13), None, "length 13: it must be a multiple of 4"),
    (shb("<") + struct.pack("<II", 6, 24), None, "at least 32"),
    (shb(">")[:8] + struct.pack(">IHH", 0x1A2B3C4D, 2, 0) + shb(">")[16:], None, "version 2"),
    (shb("<") + idb("<", 1) + LYING_EPB, None, "captured length 99, more than"),
]


@pytest.mark.parametrize(("data", "fmt", "match"), GARBAGE)
def test_garbage_is_one_clean_capture_error(data: bytes, fmt: str | None, match: str) -> None:
    with pytest.raises(CaptureError, match=match) as info:
        read(data, fmt)
    assert "\n" not in str(info.value)


def test_unknown_format_name_and_an_empty_stream() -> None:
    with pytest.raises(CaptureError, match="unknown capture format 'csv'"):
        CaptureReader(io.BytesIO(b""), fmt="csv")
    got, reader = read(b"")
    assert (got, reader.format, reader.torn_tail_bytes) == ([], None, 0)


def test_an_unreadable_stream_is_a_capture_error(tmp_path: Path) -> None:
    with (
        (tmp_path / "w").open("wb") as w,
        open(w.fileno(), "rb", closefd=False) as f,
        pytest.raises(CaptureError, match="cannot read capture 'w'"),
    ):
        list(iter_capture_untrusted(f, "w"))


SEEDS = [
    pcap(1, [eth(V4), eth(V6)]),
    shb("<") + idb("<", 276, tsresol=9) + epb("<", 0, 5, SLL2 + V4),
    shb(">") + idb(">", 1, 40) + spb(">", eth(V6)) + block(">", 5, b"stats"),
]


def _mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    def mutate(pos: int, junk: bytes, cut: int) -> bytes:
        pos %= len(seed) + 1
        return (seed[:pos] + junk + seed[pos + len(junk) :])[: max(cut, 1)]

    return st.builds(mutate, st.integers(0, 10**6), st.binary(max_size=16), st.integers(0, 4000))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(*[_mutated(s) for s in SEEDS], st.binary(max_size=200)))
def test_hostile_bytes_raise_only_capture_error(data: bytes) -> None:
    reader = iter_capture_untrusted(io.BytesIO(data))
    try:
        for d in reader:
            assert len(d.data) <= d.length and d.proto in (17, 136)
    except CaptureError:
        return
    assert reader.torn_tail_bytes <= len(data)


# --- captures written by the real tools on loopback ---------------------------------------------

# tool -> its command line for a file and a capture filter; WRITES: the container and link type
NANO = ["--time-stamp-precision=nano"]
TOOLS: dict[str, Callable[[Path, str], list[str]]] = {
    "dumpcap-pcapng": lambda p, f: ["dumpcap", "-q", "-i", "lo", "-f", f, "-w", str(p)],
    "tshark-pcap": lambda p, f: ["tshark", "-q", "-i", "lo", "-F", "pcap", "-f", f, "-w", str(p)],
    "tshark-any": lambda p, f: ["tshark", "-q", "-i", "any", "-f", f, "-w", str(p)],
    "tcpdump-any": lambda p, f: ["tcpdump", "-U", "--immediate-mode", "-i", "any", "-w", str(p), f],
    "tcpdump-lo-nano": lambda p, f: [
        "tcpdump",
        "-U",
        "--immediate-mode",
        "-i",
        "lo",
        *NANO,
        "-w",
        str(p),
        f,
    ],
}
WRITES = {
    "dumpcap-pcapng": ("pcapng", 1),
    "tshark-pcap": ("pcap", 1),
    "tshark-any": ("pcapng", 113),
    "tcpdump-any": ("pcap", 276),
    "tcpdump-lo-nano": ("pcap", 1),
}
SENT4 = [b"alpha", b"", b"\x00\xff\x1b[2J" * 100]
SENT6 = [b"six over ::1", b"x" * 1400]


@contextmanager
def receivers() -> Iterator[tuple[socket.socket, socket.socket | None]]:
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s6: socket.socket | None = None
    try:
        s4.bind(("127.0.0.1", 0))
        try:
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s6.bind(("::1", 0))
        except OSError:
            if s6 is not None:
                s6.close()
            s6 = None
        yield s4, s6
    finally:
        s4.close()
        if s6 is not None:
            s6.close()


def _seen(path: Path, payloads: set[bytes]) -> bool:
    """Whether every one of ``payloads`` is in the capture file yet (a torn tail is fine)."""
    try:
        with path.open("rb") as f:
            return payloads <= {d.data for d in iter_capture_untrusted(f)}
    except (OSError, CaptureError):
        return False


def _until(check: Callable[[], bool], timeout: float, poke: Callable[[], object]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        poke()
        if check():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("tool", list(TOOLS))
def test_real_tool_capture_reads_back_exactly(tmp_path: Path, tool: str) -> None:
    exe = TOOLS[tool](tmp_path, "")[0]
    if shutil.which(exe) is None:
        pytest.skip(f"{exe} is not installed")
    path = tmp_path / f"{tool}.cap"
    with receivers() as (r4, r6):
        p4 = r4.getsockname()[1]
        p6 = r6.getsockname()[1] if r6 is not None else p4
        # Only what we send: other tests on this host use the same port numbers on 127.x.y.z.
        flt = (
            f"(src host 127.0.0.1 and dst host 127.0.0.1 and udp dst port {p4})"
            f" or (src host ::1 and dst host ::1 and udp dst port {p6})"
        )
        out = tmp_path / "tool.err"
        with out.open("wb") as err:
            proc = subprocess.Popen(TOOLS[tool](path, flt), stdout=subprocess.DEVNULL, stderr=err)
        try:
            s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) if r6 is not None else None
            try:
                # Ready when a warm-up datagram shows in the file (the tool flushes each packet).
                warm = lambda: s4.sendto(b"warm", ("127.0.0.1", p4))  # noqa: E731
                if not _until(lambda: _seen(path, {b"warm"}), 20, warm):
                    pytest.fail(f"{tool} never wrote a packet: {out.read_text()[-500:]}")
                for payload in SENT4:
                    s4.sendto(payload, ("127.0.0.1", p4))
                for payload in SENT6 if s6 is not None else []:
                    assert s6 is not None
                    s6.sendto(payload, ("::1", p6))
                # Loopback packets are captured as the receiving CPU's backlog is run, so two
                # sockets' datagrams may land out of order: wait for every one, not a last marker.
                sent = {*SENT4, *(SENT6 if s6 is not None else [])}
                if not _until(lambda: _seen(path, sent), 10, lambda: None):
                    pytest.fail(f"{tool} did not write all we sent: {out.read_text()[-500:]}")
                local4 = s4.getsockname()
                local6 = s6.getsockname() if s6 is not None else None
            finally:
                s4.close()
                if s6 is not None:
                    s6.close()
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    with path.open("rb") as f:
        reader = iter_capture_untrusted(f, path.name)
        got = [d for d in reader if d.data != b"warm"]
    want = [(("127.0.0.1", local4[1]), ("127.0.0.1", p4), p) for p in SENT4]
    if local6 is not None:
        want += [(("::1", local6[1]), ("::1", p6), p) for p in SENT6]
    assert sorted(summary(got)) == sorted(want)
    now = time.time_ns()
    assert all(d.length == len(d.data) and abs((d.time_ns or 0) - now) < 600 * 10**9 for d in got)
    assert reader.skipped == {} and reader.torn_tail_bytes == 0
    assert (reader.format, *reader.links) == WRITES[tool]
    if tool.endswith("nano"):  # the nanosecond magic, and nanoseconds kept
        assert path.read_bytes()[:4] == b"\x4d\x3c\xb2\xa1"
        assert any((d.time_ns or 0) % 1000 for d in got)
    if shutil.which("tshark"):  # tshark itself agrees on the count of UDP datagrams
        ports = subprocess.run(
            ["tshark", "-r", str(path), "-Y", "udp", "-T", "fields", "-e", "udp.dstport"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.split()  # fmt: skip
        assert len(ports) == reader.count


CORPUS = Path(__file__).parent / "fuzz" / "corpus" / "capture"


@needs_tool("tshark")
@pytest.mark.parametrize("seed", sorted(CORPUS.iterdir()), ids=lambda p: p.name)
def test_tshark_counts_the_same_udp_datagrams_in_every_seed(seed: Path) -> None:
    """Hand-built and tool-written seeds alike: tshark's ``udp`` filter finds what we find."""
    res = subprocess.run(
        ["tshark", "-r", str(seed), "-Y", "udp", "-T", "fields", "-e", "udp.dstport"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    try:
        with seed.open("rb") as f:
            got = [d for d in iter_capture_untrusted(f, seed.name) if d.proto == 17]
    except CaptureError:
        assert res.returncode != 0  # tshark refuses it too
        return
    assert [str(d.dst[1]) for d in got] == res.stdout.split()
