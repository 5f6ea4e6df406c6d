"""Recording: JSONL and pcap written through a bounded queue, read back untrusted."""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from udpkit._core.errors import NetworkError, UsageError
from udpkit._loops.record import (
    Record,
    Recorder,
    RecordError,
    RecordStats,
    parse_records_untrusted,
    read_records_untrusted,
)
from udpkit._loops.server import DatagramServer
from udpkit._net.sockets import Datagram, udp_bind, udp_connect

# The same probes as conftest.py (which mypy cannot import as a module).
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def needs_tool(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} is not installed")


FORMATS = ["jsonl", "pcap"]
NOW = 1_795_000_000.123456
HERE = Path(__file__).parent
CORPUS = HERE / "fuzz" / "corpus" / "record"
SRC = str(HERE.parent / "src")

HOSTILE = b'\x1b[2J\x1b]0;owned\x07\r\n\x00\xff\xfe"\\ \xc3\x28 \xe2\x80\xae'
DGRAMS = [
    Datagram(b"Hello, World!", ("127.0.0.1", 51696), 13),
    Datagram(b"", ("127.0.0.1", 1), 0),  # zero-length
    Datagram(b"x" * 1024, ("10.1.2.3", 65535), 2000),  # truncated: 2000 sent, 1024 kept
    Datagram(HOSTILE, ("::1", 5005, 0, 0), len(HOSTILE)),
    Datagram(b"\x00" * 3, ("fe80::1", 9, 0, 3), 3),  # link-local with a scope
    Datagram(b"\xff" * 7, ("::ffff:192.0.2.9", 4000, 0, 0), 9),  # v4-mapped, truncated
    Datagram(bytes(range(256)) * 6, ("2001:db8::42", 443, 0, 0), 1536),
]
LOCAL = ("127.0.0.1", 5005)


def record(path: Path, batches: list[list[Datagram]], **kw: Any) -> RecordStats:
    rec = Recorder(path, **kw)
    for i, batch in enumerate(batches):
        rec.record_batch(batch, NOW + i)
    return rec.close()


def ip_key(addr: Any) -> tuple[str, int]:
    return (addr[0].partition("%")[0], addr[1])


def check_same(got: list[Record], want: list[Datagram], fmt: str) -> None:
    assert len(got) == len(want)
    for r, d in zip(got, want, strict=True):
        assert (r.data, r.length, r.truncated) == (d.data, d.length, d.truncated)
        assert ip_key(r.peer) == ip_key(d.peer)
        if fmt == "jsonl" and len(d.peer) == 4:
            assert r.peer[3] == d.peer[3]  # the scope id survives JSONL
        assert ip_key(r.local) == LOCAL or fmt == "pcap"


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"rec.{fmt}"
    stats = record(path, [DGRAMS[:3], DGRAMS[3:]], local=LOCAL)
    assert stats == RecordStats(len(DGRAMS), len(DGRAMS), 0, 0, 0)
    reader = read_records_untrusted(path)
    got = list(reader)
    check_same(got, DGRAMS, fmt)
    assert reader.format == fmt and reader.torn_tail_bytes == 0
    assert [round(r.time - NOW, 5) for r in got] == [0.0] * 3 + [1.0] * 4
    if fmt == "pcap":  # IPv4 peers answered on the IPv4 local address; IPv6 get "::"
        assert [r.local for r in got[:3]] == [LOCAL] * 3
        assert got[3].local == ("::", 0, 0, 0)


def test_jsonl_keeps_unix_peers(tmp_path: Path) -> None:
    peers: list[Any] = ["/run/x.sock", b"\0abstract\xff", None, "/tmp/\udcff"]
    dgrams = [Datagram(b"u", p, 1) for p in peers]
    record(tmp_path / "u.jsonl", [dgrams], local="/run/server.sock")
    got = list(read_records_untrusted(tmp_path / "u.jsonl"))
    assert [r.peer for r in got] == peers
    assert {r.local for r in got} == {"/run/server.sock"}


def test_pcap_writes_unix_peers_as_test_net(tmp_path: Path) -> None:
    """Unix peers have no IP: they become 192.0.2.1:0 -> 192.0.2.2:0 (TEST-NET-1)."""
    stats = record(tmp_path / "u.pcap", [[Datagram(b"u", "/run/x.sock", 1)]], local="/run/s")
    assert stats.recorded == 1
    (r,) = read_records_untrusted(tmp_path / "u.pcap")
    assert (r.peer, r.local, r.data) == (("192.0.2.1", 0), ("192.0.2.2", 0), b"u")


def test_jsonl_text_field_only_for_utf8(tmp_path: Path) -> None:
    import json

    record(tmp_path / "t.jsonl", [[DGRAMS[0], DGRAMS[3]]])
    objs = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [o["text"] for o in objs] == ["Hello, World!", None]
    assert all(line.isascii() for line in (tmp_path / "t.jsonl").read_text().splitlines())


@needs_tool("tshark")
def test_tshark_reads_every_pcap_record(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    record(path, [DGRAMS], local=LOCAL)
    fields = ["udp.srcport", "udp.length", "udp.checksum.status", "ip.checksum.status"]
    out = subprocess.run(
        ["tshark", "-r", str(path), "-o", "udp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
         "-T", "fields", *[a for f in fields for a in ("-e", f)]],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()  # fmt: skip
    rows = [line.split("\t") for line in out]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(d.peer[1], 8 + d.length) for d in DGRAMS]
    for row, d in zip(rows, DGRAMS, strict=True):
        # 1 = good; a truncated datagram cannot be checked: 2 unverified / 3 not present.
        assert row[2] == ("1" if not d.truncated else "2" if ":" in d.peer[0] else "3")
        assert row[3] in ("1", "")  # IPv4 header checksum good (IPv6 has none)


# --- torn tails and kill -9 ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_torn_tail_at_every_offset_of_the_last_record(tmp_path: Path, fmt: str) -> None:
    small = [d for d in DGRAMS if len(d.data) < 100]
    path = tmp_path / f"t.{fmt}"
    record(path, [small], local=LOCAL)
    data = path.read_bytes()
    last = list(parse_records_untrusted(data))[-1].offset
    for cut in range(last, len(data)):
        reader = parse_records_untrusted(data[:cut])
        got = list(reader)
        check_same(got, small[:-1], fmt)
        assert (reader.torn_tail_bytes, reader.torn_tail_offset) == (
            (cut - last, last) if cut > last else (0, None)
        )
    if fmt == "pcap":  # a pcap header cut short: no records, all of it torn
        for cut in range(1, 24):
            reader = parse_records_untrusted(data[:cut])
            assert list(reader) == [] and reader.torn_tail_bytes == cut


_CHILD = """
import sys, time
from udpkit._loops.record import Recorder
from udpkit._net.sockets import Datagram
rec = Recorder(sys.argv[1])
i = 0
while True:
    batch = [Datagram(b"%08d" % (i + k) * 20, ("127.0.0.1", 1 + (i + k) % 60000), 160)
             for k in range(8)]
    rec.record_batch(batch, time.time())
    i += 8
    if i % 400 == 0:
        st = rec.stats
        print(st.recorded, st.record_dropped, flush=True)
    time.sleep(0.0005)
"""


@linux_only
@pytest.mark.parametrize("fmt", FORMATS)
def test_kill_9_leaves_a_readable_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"k.{fmt}"
    env = {**os.environ, "PYTHONPATH": SRC}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 20
        flushed = 0
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "the recording child died"
            flushed = int(line.split()[0])
            if flushed >= 2000:
                break
        assert flushed >= 2000
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    reader = read_records_untrusted(path)
    seqs = []
    for r in reader:
        seq = r.data[:8]
        assert r.data == seq * 20 and r.length == 160
        seqs.append(int(seq))
    assert len(seqs) >= flushed  # every record written before the last report is there
    assert seqs == sorted(set(seqs))
    assert reader.torn_tail_bytes < 16 + 28 + 160 + 400  # at most one record's worth


# --- the queue, the file, disk full ---------------------------------------------------------


class Gate:
    """A write seam that holds the writer inside its first write until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, fd: int, data: memoryview) -> int:
        self.entered.set()
        assert self.release.wait(10)
        return os.write(fd, data)


@pytest.mark.parametrize(
    ("sizes", "queue_max", "dropped"),
    [
        ([1, 1, 1, 1, 1, 1], 4, 2),  # 1 held by the writer, 3 more fit
        ([1, 5], 4, 2),  # a batch is cut to what fits, in order
        ([2, 2, 1, 3], 3, 5),
        ([1, 0, 1], 1, 1),
        ([3, 1, 1], 10, 0),
    ],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_queue_full_drops_are_counted_exactly(
    tmp_path: Path, fmt: str, sizes: list[int], queue_max: int, dropped: int
) -> None:
    gate = Gate()
    rec = Recorder(tmp_path / f"q.{fmt}", queue_max=queue_max, write=gate.write)
    try:
        n = 0
        for i, size in enumerate(sizes):
            batch = [Datagram(b"%d" % (n + k), ("127.0.0.1", 1000 + n + k), 1) for k in range(size)]
            n += size
            rec.record_batch(batch, NOW)
            if i == 0:  # the writer has taken the first batch and is stuck writing it
                assert gate.entered.wait(10)
        mid = rec.stats
        assert (mid.offered, mid.record_dropped) == (n, dropped)
        assert mid.offered == mid.recorded + mid.record_dropped + mid.pending
    finally:
        gate.release.set()
        stats = rec.close()
    assert stats == RecordStats(n, n - dropped, dropped, 0, 0)
    got = list(read_records_untrusted(tmp_path / f"q.{fmt}"))
    assert len(got) == stats.recorded


@pytest.mark.parametrize("fmt", FORMATS)
def test_new_file_is_0600_and_existing_refused(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"r.{fmt}"
    old = os.umask(0)
    try:
        record(path, [DGRAMS[:1]])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_bytes()
    with pytest.raises(UsageError, match=rf"^refusing to overwrite '.*r\.{fmt}': use --force$"):
        Recorder(path)
    assert path.read_bytes() == before
    link = tmp_path / f"link.{fmt}"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="refusing to overwrite"):
        Recorder(link)  # a planted symlink, even a dangling one, is not followed
    assert record(path, [DGRAMS[1:3]], force=True).recorded == 2
    assert len(list(read_records_untrusted(path))) == 2


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"path": "x.txt"}, r"cannot tell the recording format of '.*x\.txt': name it .jsonl"),
        ({"path": "x.pcap", "fmt": "csv"}, "unknown recording format 'csv'"),
        ({"path": "x.pcap", "on_full": "panic"}, "invalid on_full 'panic'"),
        ({"path": "x.pcap", "queue_max": 0}, "invalid queue_max 0"),
    ],
)
def test_bad_arguments(tmp_path: Path, kw: dict[str, Any], match: str) -> None:
    kw["path"] = tmp_path / kw["path"]
    with pytest.raises(UsageError, match=match):
        Recorder(**kw)
    assert not list(tmp_path.iterdir())


def test_cannot_create_is_a_network_error(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match=r"cannot create recording '.*no/such\.pcap': no such"):
        Recorder(tmp_path / "no" / "such.pcap")


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_error_mid_record_cuts_back_to_whole_records(tmp_path: Path, fmt: str) -> None:
    calls: list[int] = []

    def failing(fd: int, data: memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:  # half the first record reaches the file
            return os.write(fd, data[:10])
        raise OSError(errno.EIO, "Input/output error")

    stopped = threading.Event()
    rec = Recorder(tmp_path / f"e.{fmt}", write=failing, stop_server=stopped.set)
    rec.record_batch(DGRAMS[:3], NOW)
    assert stopped.wait(10)
    rec.record_batch(DGRAMS[3:], NOW)  # after the failure: dropped, counted
    stats = rec.close()
    assert stats == RecordStats(len(DGRAMS), 0, len(DGRAMS), 1, 0)
    assert rec.fatal and rec.failure is not None
    assert str(rec.failure).endswith("input/output error")
    reader = read_records_untrusted(tmp_path / f"e.{fmt}")
    assert list(reader) == [] and reader.torn_tail_bytes == 0


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, for a real ENOSPC; always unmounted."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], timeout=10, check=True)


@pytest.mark.parametrize("on_full", ["stop", "continue"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_disk_full_stops_recording_cleanly(tiny_fs: Path, fmt: str, on_full: str) -> None:
    stopped = threading.Event()
    rec = Recorder(tiny_fs / f"full.{fmt}", on_full=on_full, stop_server=stopped.set)
    try:
        deadline = time.monotonic() + 10
        i = 0
        while rec.failure is None and time.monotonic() < deadline:
            rec.record_batch([Datagram(b"%06d" % i * 100, ("127.0.0.1", 9), 600)], NOW)
            i += 1
            time.sleep(0.001)
    finally:
        stats = rec.close()
    assert isinstance(rec.failure, NetworkError) and rec.failure.errno == errno.ENOSPC
    assert "no space left on device" in str(rec.failure)
    assert stats.record_errors == 1 and stats.offered == i
    assert stats.recorded == stats.offered - stats.record_dropped
    assert stopped.is_set() == (on_full == "stop") == rec.fatal
    reader = read_records_untrusted(tiny_fs / f"full.{fmt}")
    got = list(reader)
    assert len(got) == stats.recorded > 20  # tens of KiB fitted before the disk filled
    assert reader.torn_tail_bytes == 0  # the half-written record was cut off
    assert [r.data for r in got] == [b"%06d" % k * 100 for k in range(len(got))]


def test_close_is_idempotent_and_late_batches_are_counted(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "c.jsonl")
    rec.record_batch(DGRAMS[:2], NOW)
    first = rec.close()
    rec.record_batch(DGRAMS[:3], NOW)
    assert rec.stats == RecordStats(5, 2, 3, 0, 0)
    assert rec.close() == RecordStats(5, 2, 3, 0, 0) != first


def test_records_what_a_real_server_receives(
    tmp_path: Path, family: tuple[socket.AddressFamily, str]
) -> None:
    """The integration the CLI does: the server's observer feeds record_batch."""
    fam, host = family
    payloads = [b"", b"Hello, World!", HOSTILE, b"z" * 300]
    with udp_bind(host, 0, family=fam) as ssock:
        local = ssock.sock.getsockname()
        rec = Recorder(tmp_path / "s.pcap", local=local)
        server = DatagramServer(
            ssock, None, bufsize=200, count=len(payloads),
            observer=lambda batch: rec.record_batch(batch, time.time()),
        )  # fmt: skip
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        with udp_connect(host, local[1], family=fam) as client:
            for p in payloads:
                client.send(p)
            cport = client.sock.getsockname()[1]
        thread.join(10)
        assert not thread.is_alive()
        server.close()
        stats = rec.close()
    got = list(read_records_untrusted(tmp_path / "s.pcap"))
    assert stats.recorded == len(payloads) == len(got)
    assert [r.data for r in got] == [p[:200] for p in payloads]
    assert [r.length for r in got] == [len(p) for p in payloads]
    assert {ip_key(r.peer) for r in got} == {(host, cport)}
    assert {ip_key(r.local) for r in got} == {(host, local[1])}


# --- the untrusted reader -------------------------------------------------------------------


PCAP_HDR = bytes.fromhex("d4c3b2a1020004000000000000000000ffff000065000000")


def _le(n: int) -> bytes:
    return n.to_bytes(4, "little")


@pytest.mark.parametrize(
    ("data", "fmt", "match"),
    [
        (b"hello world\n", None, "is not a recording: it starts with b'hell'"),
        (b"[1, 2]\n", "jsonl", "a record must be a JSON object, not list"),
        (b"{bad json\n", None, "line 1 at offset 0: not a JSON record"),
        (b'{"time": 1}\n', None, "invalid length None: must be a whole number >= 0"),
        (b'{"time": "x", "length": 0, "payload_b64": ""}\n', None, "invalid time 'x'"),
        (b'{"time": 1e999, "length": 0, "payload_b64": ""}\n', None, "invalid time inf"),
        (b'{"time": 1, "length": 0, "payload_b64": "!!"}\n', None, "not base64"),
        (b'{"time": 1, "length": 1, "payload_b64": "QUJD"}\n', None, "does not fit length 1"),
        (
            b'{"time":1,"length":0,"payload_b64":"","peer_host":"::1","peer_port":70000}\n',
            None,
            "invalid peer_port 70000: must be 0-65535 or null",
        ),
        (
            b'{"time":1,"length":0,"payload_b64":"","peer_host":"\\u001b[2J","peer_port":1}\n',
            None,
            "not an IP address",
        ),
        (b"[" * 100_000 + b"\n", "jsonl", "not a JSON record"),
        (b"\xff\xfe{}\n", "jsonl", "not a JSON record"),
        (b"\xd4\xc3\xb2\xa1" + b"\0" * 20, None, "unsupported pcap version 0"),
        (b"\xa1\xb2\xc3\xd5" + b"\0" * 20, "pcap", "is not a pcap capture"),
        (PCAP_HDR + bytes(8) + _le(9) + _le(5), None, r"captured length 9 \(original 5\)"),
        (PCAP_HDR + bytes(8) + _le(1 << 25) * 2, None, "is impossible"),
    ],
)
def test_garbage_raises_record_error(data: bytes, fmt: str | None, match: str) -> None:
    with pytest.raises(RecordError, match=match):
        list(parse_records_untrusted(data, fmt))


def test_garbage_after_good_records_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    record(path, [DGRAMS[:2]])
    with path.open("ab") as f:
        f.write(b"not json\n")
    reader = read_records_untrusted(path)
    assert next(reader).data == DGRAMS[0].data
    assert next(reader).data == DGRAMS[1].data
    with pytest.raises(RecordError, match="line 3"):
        next(reader)
    assert reader.count == 2


def test_missing_file_is_a_record_error(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"cannot read recording '.*nope\.pcap': No such file"):
        list(read_records_untrusted(tmp_path / "nope.pcap"))


def test_reads_serve_format_json_and_foreign_pcap() -> None:
    from udpkit._cli.format import format_datagram

    line = format_datagram("json", HOSTILE, ("::1", 7, 0, 0), length=99, when=NOW)
    (r,) = parse_records_untrusted(line.encode())
    assert (r.data, r.length, r.peer, r.local) == (HOSTILE, 99, ("::1", 7, 0, 0), None)
    # An Ethernet frame as tcpdump writes it (LINKTYPE_ETHERNET), with padding.
    frame = bytes(12) + b"\x08\x00" + bytes.fromhex(
        "45000020000040004011" "0000" "7f000001" "7f000002" "0035" "1389" "000c" "0000"
    ) + b"abcd" + bytes(10)  # fmt: skip
    hdr = PCAP_HDR[:20] + _le(1)
    rh = _le(5) + bytes(4) + _le(len(frame)) * 2
    (r,) = parse_records_untrusted(hdr + rh + frame)
    assert (r.data, r.length, r.peer, r.local) == (
        b"abcd",
        4,
        ("127.0.0.1", 53),
        ("127.0.0.2", 5001),
    )


def test_empty_file_has_no_records(tmp_path: Path) -> None:
    (tmp_path / "e.pcap").write_bytes(b"")
    reader = read_records_untrusted(tmp_path / "e.pcap")
    # By content, never by name: an empty file is no format at all.
    assert list(reader) == [] and reader.torn_tail_bytes == 0 and reader.format is None


def _mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    def mutate(pos: int, junk: bytes, cut: int) -> bytes:
        pos %= len(seed) + 1
        return (seed[:pos] + junk + seed[pos + len(junk) :])[: max(cut, 1)]

    return st.builds(mutate, st.integers(0, 10**6), st.binary(max_size=16), st.integers(0, 4000))


def _corpus_seed(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=600),
        _mutated(_corpus_seed("valid.pcap")),
        _mutated(_corpus_seed("valid.jsonl")),
    ),
    fmt=st.sampled_from([None, "jsonl", "pcap"]),
)
def test_reader_raises_only_record_error(data: bytes, fmt: str | None) -> None:
    reader = parse_records_untrusted(data, fmt)
    try:
        for r in reader:
            assert 0 <= len(r.data) <= r.length
            assert 0 <= r.offset < len(data)
    except RecordError:
        return
    assert 0 <= reader.torn_tail_bytes <= len(data)


def _fuzz_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("record_fuzz", HERE / "fuzz" / "record_fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuzz_corpus_replays() -> None:
    one_input: Callable[[bytes], None] = _fuzz_module().one_input
    seeds = sorted(CORPUS.iterdir())
    assert {p.name for p in seeds} >= {"valid.pcap", "valid.jsonl", "torn.pcap", "garbage.bin"}
    for path in seeds:
        one_input(path.read_bytes())
    for name in ("valid.pcap", "valid.jsonl"):
        reader = read_records_untrusted(CORPUS / name)
        assert len(list(reader)) >= 3 and reader.torn_tail_bytes == 0
    for name in ("torn.pcap", "torn.jsonl"):
        reader = read_records_untrusted(CORPUS / name)
        assert len(list(reader)) >= 1 and reader.torn_tail_bytes > 0


# --- udpkit read ----------------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    from udpkit._cli import read as _cmd_record
    from udpkit._cli.common import Parser

    parser = Parser(prog="udpkit")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    _cmd_record.add_parser(sub)
    args = parser.parse_args(["read", *argv])
    out, err = Sink(), Sink()
    return _cmd_record.run_read(args, out, err), out.text, err.text


@pytest.mark.parametrize("out_fmt", ["line", "json", "hex", "seed"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_read_command_prints_escaped_records(tmp_path: Path, fmt: str, out_fmt: str) -> None:
    path = tmp_path / f"r.{fmt}"
    record(path, [DGRAMS], local=LOCAL)
    code, out, err = run_cli([str(path), "--format", out_fmt])
    assert code == 0
    assert err == f"udpkit: {len(DGRAMS)} records ({fmt}), no torn tail\n"
    assert "\x1b" not in out and "\x00" not in out and "\r" not in out
    assert out.count("\n") >= len(DGRAMS)
    if out_fmt == "line":
        assert "127.0.0.1:51696 -> 127.0.0.1:5005 13 B Hello, World!" in out
        assert "(truncated: 2000 bytes, 1024 kept)" in out


def test_read_command_reports_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    record(path, [DGRAMS[:2]])
    with path.open("ab") as f:
        f.write(b'{"time": 1, "len')
    size = path.stat().st_size
    code, out, err = run_cli([str(path)])
    assert code == 0 and out.count("\n") == 2
    assert err == f"udpkit: 2 records (jsonl), torn tail: 16 bytes at offset {size - 16} " + (
        "ignored (an interrupted write)\n"
    )


@pytest.mark.parametrize(
    ("content", "extra", "match"),
    [
        (None, [], "cannot read recording"),
        (b"\x1b[31mnot a recording\n", [], r"starts with b'\\x1b\[31'"),
        (b"{}\n", ["--input-format", "pcap"], "is not a pcap capture"),
    ],
)
def test_read_command_refuses_what_is_no_recording_with_exit_2(
    tmp_path: Path, content: bytes | None, extra: list[str], match: str
) -> None:
    """A missing file or one that is no recording: one line naming it, exit 2 (bad input)."""
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run_cli([str(path), *extra])
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("udpkit read: error: ") and "\x1b" not in err
    assert re.search(match, line) and "bad.jsonl" in line


def test_read_command_exits_1_when_a_file_breaks_after_records(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    record(path, [DGRAMS[:2]])
    with path.open("ab") as f:
        f.write(b"[not a record]\n")
    code, out, err = run_cli([str(path)])
    assert code == 1 and out.count("\n") == 2
    assert err.splitlines()[1] == "udpkit: 2 records read before the error"


def test_read_command_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli(["x.pcap", "--format", "yaml"])
    assert exc.value.code == 2
    assert "invalid choice: 'yaml'" in capsys.readouterr().err


def test_a_packet_that_is_no_udp_datagram_is_skipped_and_counted() -> None:
    """A capture holds more than UDP: such packets are counted by reason, not fatal."""
    reader = parse_records_untrusted(PCAP_HDR + bytes(8) + _le(5) * 2 + b"E" * 5)
    assert list(reader) == []
    assert reader.format == "pcap"
    assert dict(reader.skipped) == {"truncated": 1}


@pytest.mark.parametrize(
    ("name", "kind"),
    [("dumpcap.pcapng", "pcapng"), ("tcpdump-any.pcap", "pcap"), ("two-sections.pcapng", "pcapng")],
)
def test_read_command_reads_what_capture_tools_write(name: str, kind: str) -> None:
    """pcapng (dumpcap's default) and Linux cooked v2 (tcpdump -i any) used to read as 0 records."""
    path = HERE / "fuzz" / "corpus" / "capture" / name
    code, out, err = run_cli([str(path)])
    assert code == 0 and out.count("\n") >= 1
    assert re.fullmatch(rf"udpkit: \d+ records? \({kind}[^)]*\), no torn tail\n", err)
    assert "\x1b" not in out  # payloads escaped like serve's output
