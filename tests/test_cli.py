"""The ``udpkit`` command line, run for real as ``python -m udpkit`` over loopback.

Every process is ended by PID in a ``finally`` (see ``_proc``), every wait has a
deadline, and every port is ephemeral or probed free just before use.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from tests._proc import (
        STEP,
        UDPKIT,
        LineReader,
        Peer,
        datagram_client,
        end_process,
        free_port,
        one_line_error,
        port_is_free,
        run,
        run_piped_into_head,
        serving,
    )
except ModuleNotFoundError:  # plain `pytest` puts tests/, not the repo, on sys.path
    from _proc import (  # type: ignore[import-not-found,no-redef]
        STEP,
        UDPKIT,
        LineReader,
        Peer,
        datagram_client,
        end_process,
        free_port,
        one_line_error,
        port_is_free,
        run,
        run_piped_into_head,
        serving,
    )

Family = tuple[socket.AddressFamily, str]

SUMMARY = re.compile(
    r"^udpkit: \d+ datagrams?, \d+ bytes? from \d+ peers?, \d+ truncated", re.MULTILINE
)


def _client(family: socket.AddressFamily, host: str) -> socket.socket:
    """A UDP socket bound to loopback (so its name is what the server sees)."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(STEP)
    return s


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ---------------------------------------------------------------- serve


def test_serve_prints_the_seeds_lines_and_replies(family: Family) -> None:
    fam, host = family
    with serving(host, "0", "--count", "1") as srv, _client(fam, host) as c:
        assert srv.banner == b"UDP server up and listening\n"
        assert srv.transport == "UDP"
        assert srv.port is not None
        c.sendto(b"Hello UDP Server", (host, srv.port))
        reply, _ = c.recvfrom(65535)
        assert reply == b"Hello UDP Client"
        assert srv.out.readline() == b"Message from Client:b'Hello UDP Server'\n"
        assert srv.out.readline() == f"Client IP Address:{c.getsockname()!r}\n".encode()
        code, rest, err = srv.finish()
    assert code == 0
    assert rest == b""
    assert SUMMARY.search(err.decode()), err


@pytest.mark.parametrize(
    ("options", "sent", "expected"),
    [
        pytest.param(("--reply", "pong"), b"ping", b"pong", id="reply"),
        pytest.param(("--reply", ""), b"ping", b"", id="empty-reply"),
        pytest.param(("--echo",), b"echo \x00\xff me", b"echo \x00\xff me", id="echo"),
        pytest.param(("--no-reply",), b"ping", None, id="no-reply"),
    ],
)
def test_serve_reply_modes(
    family: Family, options: tuple[str, ...], sent: bytes, expected: bytes | None
) -> None:
    fam, host = family
    with serving(host, "0", "--count", "1", *options) as srv, _client(fam, host) as c:
        assert srv.port is not None
        c.sendto(sent, (host, srv.port))
        if expected is None:
            c.settimeout(0.3)
            with pytest.raises(TimeoutError):
                c.recvfrom(65535)
        else:
            assert c.recvfrom(65535)[0] == expected
        code, _, err = srv.finish()
    assert code == 0
    assert "replies=1" in err.decode() if expected is not None else "replies" not in err.decode()


def test_serve_count_exits_after_n_datagrams() -> None:
    with serving("127.0.0.1", "0", "--count", "3", "--no-reply") as srv:
        assert srv.port is not None
        datagram_client(socket.AF_INET, "127.0.0.1", srv.port, [b"a", b"bb", b"ccc"])
        code, out, err = srv.finish()
    assert code == 0
    assert out.count(b"Message from Client:") == 3
    assert "udpkit: 3 datagrams, 6 bytes from 1 peer, 0 truncated" in err.decode()


@pytest.mark.parametrize("fmt", ["seed", "line", "hex", "json"])
def test_serve_output_is_line_by_line_on_a_pipe(fmt: str) -> None:
    """Each datagram's output is read from the pipe before the next is sent."""
    with serving("127.0.0.1", "0", "--format", fmt, "--no-reply", banner=fmt != "json") as srv:
        assert srv.port is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            for word in (b"first", b"second"):
                c.sendto(word, ("127.0.0.1", srv.port))
                line = srv.out.readline(timeout=5)
                if fmt == "seed":
                    assert line == b"Message from Client:b'" + word + b"'\n"
                    assert srv.out.readline(timeout=5).startswith(b"Client IP Address:")
                elif fmt == "hex":
                    assert line.rstrip().endswith(f"{len(word)} B".encode())
                    assert word[:16] in srv.out.readline(timeout=5)
                elif fmt == "json":
                    assert json.loads(line)["text"] == word.decode()
                else:
                    assert line.rstrip().endswith(word)
        assert srv.stop()[0] == 0


@pytest.mark.parametrize(
    ("fmt", "note"),
    [
        ("seed", b"(truncated: 2000 bytes, 1024 kept)\n"),
        ("line", b"2000 B (truncated: 2000 bytes, 1024 kept)"),
        ("hex", b"2000 B (truncated: 2000 bytes, 1024 kept)"),
    ],
)
def test_serve_buffer_size_reports_truncation(fmt: str, note: bytes) -> None:
    with serving(
        "127.0.0.1", "0", "--buffer-size", "1024", "--format", fmt, "--count", "1", "--no-reply"
    ) as srv:
        assert srv.port is not None
        datagram_client(socket.AF_INET, "127.0.0.1", srv.port, [b"x" * 2000])
        code, out, err = srv.finish()
    assert code == 0
    assert note in out, out[:300]
    if fmt == "hex":
        assert out.count(b"\n") == 1 + 1024 // 16  # the header and 64 rows: 1024 bytes shown
    assert "1 truncated" in err.decode()


def test_serve_json_is_pure_json_lines_with_banner_on_stderr() -> None:
    payloads = [b"Hello UDP Server", b"", b"\xff\xfe not utf-8", "caf\u00e9".encode(), b"y" * 2000]
    with serving(
        "127.0.0.1",
        "0",
        "--format",
        "json",
        "--buffer-size",
        "1024",
        "--count",
        str(len(payloads)),
        "--no-reply",
        banner=False,
    ) as srv:
        assert srv.port is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.bind(("127.0.0.1", 0))
            for p in payloads:
                c.sendto(p, ("127.0.0.1", srv.port))
            cport = c.getsockname()[1]
        code, out, err = srv.finish()
    assert code == 0
    assert b"UDP server up and listening\n" in srv.err.seen + err
    records = [json.loads(line) for line in out.splitlines()]  # every line is JSON
    assert len(records) == len(payloads)
    for rec, sent in zip(records, payloads, strict=True):
        assert rec["peer_host"] == "127.0.0.1"
        assert rec["peer_port"] == cport
        assert rec["length"] == len(sent)
        kept = base64.b64decode(rec["payload_b64"])
        assert kept == sent[:1024]
        assert rec["kept"] == len(kept)
        assert rec["truncated"] is (len(sent) > 1024)
        try:
            text: str | None = kept.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        assert rec["text"] == text
    assert records[2]["text"] is None  # text only when the payload is valid UTF-8


def test_serve_tcp_seed_exchange(family: Family) -> None:
    _, host = family
    with serving("--tcp", host, "0", "--count", "1") as srv:
        assert srv.banner == b"TCP server up and listening\n"
        assert srv.transport == "TCP"
        assert srv.port is not None
        with socket.create_connection((host, srv.port), timeout=STEP) as c:
            c.sendall(b"Hello TCP Server")
            assert c.recv(65535) == b"Hello UDP Client"
            name = c.getsockname()
        assert srv.out.readline() == b"Message from Client:b'Hello TCP Server'\n"
        assert srv.out.readline() == f"Client IP Address:{name!r}\n".encode()
        assert srv.finish()[0] == 0


def test_serve_unix_datagram(tmp_path: Path) -> None:
    path = str(tmp_path / "srv.sock")
    with serving("--unix", path, "--count", "1") as srv:
        assert srv.banner == b"Unix datagram server up and listening\n"
        assert srv.where == path
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
            c.bind(str(tmp_path / "cli.sock"))  # a named client, so it can be answered
            c.settimeout(STEP)
            c.sendto(b"over unix", path)
            assert c.recv(65535) == b"Hello UDP Client"
        assert srv.out.readline() == b"Message from Client:b'over unix'\n"
        assert srv.finish()[0] == 0


def test_serve_unix_stream(tmp_path: Path) -> None:
    path = str(tmp_path / "srv.sock")
    with serving("--unix", path, "--stream", "--count", "1") as srv:
        assert srv.banner == b"Unix stream server up and listening\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(STEP)
            c.connect(path)
            c.sendall(b"stream over unix")
            assert c.recv(65535) == b"Hello UDP Client"
        assert srv.out.readline() == b"Message from Client:b'stream over unix'\n"
        assert srv.finish()[0] == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_cleanly_on_signal(sig: signal.Signals) -> None:
    with serving("127.0.0.1", "0") as srv, _client(socket.AF_INET, "127.0.0.1") as c:
        assert srv.port is not None
        c.sendto(b"one", ("127.0.0.1", srv.port))
        c.recvfrom(65535)  # the server has handled it
        code, _, err = srv.stop(sig)
    text = err.decode()
    assert code == 0
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1, lines
    assert SUMMARY.match(lines[0]), lines
    assert "1 datagram, 3 bytes from 1 peer, 0 truncated" in lines[0]


def test_serve_ends_quietly_when_stdout_closes() -> None:
    """The reader goes away after one line (``| head -1``): no traceback, exit 0."""
    with serving("127.0.0.1", "0", "--no-reply", banner=False) as srv:
        assert srv.port is not None
        assert srv.out.readline() == b"UDP server up and listening\n"
        assert srv.proc.stdout is not None
        srv.proc.stdout.close()
        deadline = time.monotonic() + STEP
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            while srv.proc.poll() is None and time.monotonic() < deadline:
                c.sendto(b"anyone there?", ("127.0.0.1", srv.port))
                time.sleep(0.05)
        code = srv.proc.wait(timeout=STEP)
        err = srv.err.read_rest(2.0).decode()
    assert code == 0
    assert "Traceback" not in err
    assert "Exception ignored" not in err
    assert "Broken pipe" not in err


def test_serve_piped_into_head() -> None:
    """The literal ``udpkit serve | head -1`` through a shell."""
    port = free_port(socket.AF_INET, "127.0.0.1")
    code, out, err = run_piped_into_head([*UDPKIT, "serve", "127.0.0.1", str(port)], port, b"ping")
    assert code == 0
    assert out == b"UDP server up and listening\n"
    assert b"Traceback" not in err
    assert b"Exception ignored" not in err


HOSTILE = [
    b"\x1b[31mRED\x1b[0m\x1b]0;pwned\x07",  # SGR colour, OSC title, BEL
    "csi:\u009b31m c1:\u0085".encode(),  # C1 controls as UTF-8
    b"raw C1 byte:\x9b",  # invalid UTF-8 that some terminals read as CSI
    "bidi:\u202eevil\u202c".encode(),
    b"del:\x7f nul:\x00 bs:\x08 cr:\r lf:\n",
    b"bad utf-8:\xff\xfe\xc3",
]

FORBIDDEN_BYTES = [b"\x1b", b"\x07", b"\x7f", b"\x00", b"\x08", b"\r", b"\x9b", b"\xff"]
FORBIDDEN_CHARS = [chr(c) for c in range(0x80, 0xA0)] + ["\u202e", "\u202c"]


@pytest.mark.parametrize("fmt", ["seed", "line", "hex", "json"])
def test_serve_never_prints_hostile_payloads_raw(fmt: str) -> None:
    with serving(
        "127.0.0.1", "0", "--format", fmt, "--count", str(len(HOSTILE)), "--echo", banner=False
    ) as srv:
        assert srv.port is not None
        datagram_client(socket.AF_INET, "127.0.0.1", srv.port, HOSTILE)
        code, out, err = srv.finish()
    assert code == 0
    for stream in (out, srv.err.seen + err):
        for bad in FORBIDDEN_BYTES:
            assert bad not in stream, (fmt, bad, stream[:500])
        text = stream.decode("utf-8")  # strict: nothing invalid reaches the terminal
        for ch in FORBIDDEN_CHARS:
            assert ch not in text, (fmt, hex(ord(ch)))
        # Only the newline that ends each line: no LF from a payload.
    if fmt == "json":
        lines = out.splitlines()
        assert len(lines) == len(HOSTILE)
        kept = [base64.b64decode(json.loads(line)["payload_b64"]) for line in lines]
        assert kept == HOSTILE
    if fmt == "line":
        assert out.count(b"\n") == 1 + len(HOSTILE)  # the banner, then one line each


def test_serve_defaults_to_the_seeds_address() -> None:
    if not port_is_free(socket.AF_INET, "127.0.0.1", 5005):
        pytest.skip("127.0.0.1:5005 is busy here; the other tests use explicit ports")
    with serving("--count", "1", busy_skips=True) as srv:
        assert srv.where == "127.0.0.1:5005"
        assert srv.banner == b"UDP server up and listening\n"
        result = run("send")  # the client's defaults too: 127.0.0.1 5005 'Hello UDP Server'
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"Message from Server\nb'Hello UDP Client'\n"
        assert srv.out.readline() == b"Message from Client:b'Hello UDP Server'\n"
        assert srv.finish()[0] == 0


# ---------------------------------------------------------------- send


@pytest.fixture
def peer(family: Family) -> Iterator[Peer]:
    """A textbook server on the family's loopback that answers 'Hello UDP Client'."""
    with Peer(*family) as p:
        yield p


def test_send_default_message_and_output(family: Family, peer: Peer) -> None:
    _, host = family
    result = run("send", host, str(peer.port))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Message from Server\nb'Hello UDP Client'\n"
    assert result.stderr == b""
    assert peer.wait_for(1)[0][0] == b"Hello UDP Server"


@pytest.mark.parametrize("with_host", [False, True], ids=["PORT", "HOST:PORT"])
def test_send_bind_sets_the_source_port(family: Family, peer: Peer, with_host: bool) -> None:
    fam, host = family
    src = free_port(fam, host)
    bind = f"{_bracket(host)}:{src}" if with_host else str(src)
    if not with_host and fam == socket.AF_INET6:
        bind = f"[::1]:{src}"  # a bare port binds the wildcard of the destination's family
    result = run("send", "--bind", bind, host, str(peer.port), "from a fixed port")
    assert result.returncode == 0, result.stderr
    data, addr = peer.wait_for(1)[0]
    assert data == b"from a fixed port"
    assert addr[:2] == (host, src)


def test_send_bare_bind_port_ipv4() -> None:
    with Peer(socket.AF_INET, "127.0.0.1") as p:
        src = free_port(socket.AF_INET, "0.0.0.0")
        result = run("send", "--bind", str(src), "127.0.0.1", str(p.port))
        assert result.returncode == 0, result.stderr
        assert p.wait_for(1)[0][1] == ("127.0.0.1", src)


def test_send_times_out_with_exit_3(family: Family) -> None:
    fam, host = family
    with Peer(fam, host, reply=None) as silent:
        start = time.monotonic()
        result = run("send", "--timeout", "0.5", host, str(silent.port))
        elapsed = time.monotonic() - start
        assert len(silent.wait_for(1)) == 1
    assert result.returncode == 3
    assert "no reply" in one_line_error(result.stderr)
    assert 0.45 <= elapsed < 5


def test_send_retries_reach_a_server_that_starts_late() -> None:
    port = free_port(socket.AF_INET, "127.0.0.1")
    proc = subprocess.Popen(
        [*UDPKIT, "send", "--timeout", "0.4", "--retries", "10", "127.0.0.1", str(port), "late"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(0.8)  # python start-up plus the first attempt, answered by nobody
        assert proc.poll() is None, proc.communicate()
        with Peer(socket.AF_INET, "127.0.0.1", port) as late:
            out, err = proc.communicate(timeout=STEP)
            assert late.wait_for(1)[0][0] == b"late"
    finally:
        end_process(proc)
    assert proc.returncode == 0, err
    assert out == b"Message from Server\nb'Hello UDP Client'\n"


def test_send_retries_to_a_late_silent_server_time_out() -> None:
    """An early refused attempt was reported (exit 1) though the last attempt timed out."""
    port = free_port(socket.AF_INET, "127.0.0.1")
    proc = subprocess.Popen(
        [*UDPKIT, "send", "--timeout", "0.4", "--retries", "3", "127.0.0.1", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(0.6)  # the first attempt is refused: nothing listens yet
        with Peer(socket.AF_INET, "127.0.0.1", port, reply=None) as silent:
            _, err = proc.communicate(timeout=STEP)
            assert len(silent.wait_for(1)) == 1
    finally:
        end_process(proc)
    assert proc.returncode == 3, err
    assert "no reply" in one_line_error(err)


def test_send_no_wait_exits_at_once(family: Family) -> None:
    fam, host = family
    with Peer(fam, host, reply=None) as silent:
        start = time.monotonic()
        result = run("send", "--no-wait", "--timeout", "5", host, str(silent.port), "fire")
        assert time.monotonic() - start < 4
        assert silent.wait_for(1)[0][0] == b"fire"
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""


def test_send_broadcast_flag_is_harmless_to_unicast(peer: Peer, family: Family) -> None:
    result = run("send", "--broadcast", family[1], str(peer.port))
    assert result.returncode == 0, result.stderr


def test_send_to_broadcast_without_flag_is_a_clear_error() -> None:
    # The kernel refuses the send without SO_BROADCAST: nothing leaves the host.
    result = run("send", "<broadcast>", "9")
    assert result.returncode == 1  # documented: permission denied is a network error
    assert "--broadcast" in one_line_error(result.stderr)


def test_send_tcp_to_a_textbook_tcp_server(family: Family) -> None:
    fam, host = family
    with socket.socket(fam, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        listener.settimeout(STEP)
        proc = subprocess.Popen(
            [*UDPKIT, "send", "--tcp", host, str(listener.getsockname()[1]), "tcp hello"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(STEP)
                assert conn.recv(65535) == b"tcp hello"
                conn.sendall(b"Thank you for connecting")
            out, err = proc.communicate(timeout=STEP)
        finally:
            end_process(proc)
    assert proc.returncode == 0, err
    assert out == b"Message from Server\nb'Thank you for connecting'\n"


def test_send_tcp_to_udpkit_serve_tcp() -> None:
    with serving("--tcp", "127.0.0.1", "0", "--count", "1", "--echo") as srv:
        assert srv.port is not None
        result = run("send", "--tcp", "127.0.0.1", str(srv.port), "round trip")
        assert srv.finish()[0] == 0
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Message from Server\nb'round trip'\n"


@pytest.mark.parametrize("stream", [False, True], ids=["datagram", "stream"])
def test_send_unix_to_udpkit_serve_unix(tmp_path: Path, stream: bool) -> None:
    path = str(tmp_path / "s.sock")
    extra = ("--stream",) if stream else ()
    with serving("--unix", path, *extra, "--count", "1") as srv:
        result = run("send", "--unix", path, *extra, "local")
        assert srv.out.readline() == b"Message from Client:b'local'\n"
        assert srv.finish()[0] == 0
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Message from Server\nb'Hello UDP Client'\n"


@pytest.mark.parametrize(
    ("args", "stdin", "sent"),
    [
        pytest.param(("-",), b"from stdin \x00\xff\n", b"from stdin \x00\xff\n", id="stdin"),
        pytest.param(("--hex", "48 65:6c6c 6F"), b"", b"Hello", id="hex"),
        pytest.param(("--hex", "-"), b"de ad\nbe:ef\n", b"\xde\xad\xbe\xef", id="hex-stdin"),
        pytest.param(("",), b"", b"", id="zero-length"),
        pytest.param(("-", "--hex"), b"", b"", id="empty-hex-stdin"),
    ],
)
def test_send_message_forms(args: tuple[str, ...], stdin: bytes, sent: bytes) -> None:
    with Peer(socket.AF_INET, "127.0.0.1") as p:
        msg = [a for a in args if a != "--hex"]
        opts = [a for a in args if a == "--hex"]
        result = run("send", *opts, "127.0.0.1", str(p.port), *msg, input=stdin)
        assert result.returncode == 0, result.stderr
        assert p.wait_for(1)[0][0] == sent


def test_send_zero_length_is_printed_by_serve() -> None:
    with serving("127.0.0.1", "0", "--count", "1") as srv:
        assert srv.port is not None
        result = run("send", "127.0.0.1", str(srv.port), "")
        assert srv.out.readline() == b"Message from Client:b''\n"
        assert srv.finish()[0] == 0
    assert result.returncode == 0, result.stderr


def test_send_integer_host_reaches_loopback() -> None:
    """An integer with a port after it is an address in host order: 2130706433 is 127.0.0.1."""
    with Peer(socket.AF_INET, "127.0.0.1") as p:
        result = run("send", "2130706433", str(p.port), "by form")
        assert result.returncode == 0, result.stderr
        assert p.wait_for(1)[0][0] == b"by form"


def test_service_name_port_is_looked_up() -> None:
    """'syslog' is 514/udp: serve either binds 514 or fails to (in use, not root), never
    with a parse error; with 514 held here first, the failure is the usual outcome."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    proc: subprocess.Popen[bytes] | None = None
    try:
        # Not root, or someone else holds it: the binds below fail all the same.
        with contextlib.suppress(OSError):
            holder.bind(("127.0.0.1", 514))
        proc = subprocess.Popen(
            [*UDPKIT, "serve", "127.0.0.1", "syslog"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert proc.stderr is not None
        line = LineReader(proc.stderr.fileno()).readline().decode()
        send = run("send", "--bind", "127.0.0.1:syslog", "--no-wait", "127.0.0.1", "9")
    finally:
        holder.close()
        if proc is not None:
            end_process(proc)
    assert "service" not in line, line
    if "listening on" in line:  # 514 was free after all (and we may bind it)
        assert "127.0.0.1:514 " in line, line
    else:
        assert proc.returncode == 1, line
        assert "514" in line or "in use" in line or "permission" in line.lower(), line
    send_err = send.stderr.decode()
    assert "service" not in send_err, send_err
    assert send.returncode in (0, 1), send_err  # bound 514, or refused the bind


# ---------------------------------------------------------------- demo


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_demo(tcp: bool) -> None:
    result = run("demo", *(["--tcp"] if tcp else []))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert ("TCP" if tcp else "UDP") + " server up and listening" in out
    assert "[server] Message from Client:b'Hello UDP Server'" in out
    assert re.search(r"\[server\] Client IP Address:\('127\.0\.0\.1', \d+\)", out), out
    assert "[client] Message from Server\n[client] b'Hello UDP Client'\n" in out
    assert "Traceback" not in result.stderr.decode()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (("send", "127.0.0.1", "70000"), "70000"),
        (("send", "127.0.0.1", "-1"), "-1"),
        (("send", "127.0.0.1", "abc"), "abc"),
        (("send", "256.1.1.1", "5005"), "256.1.1.1"),
        (("send", "[::1", "5005"), "[::1"),
        (("send", "--timeout", "-1"), "-1"),
        (("send", "--timeout=-0.5"), "-0.5"),
        (("send", "--timeout", "soon"), "soon"),
        (("send", "--retries", "-1"), "-1"),
        (("serve", "--count", "x"), "'x'"),
        (("serve", "--count", "0"), "'0'"),
        (("serve", "--buffer-size", "0"), "'0'"),
        (("serve", "127.0.0.1", "70000"), "70000"),
        (("serve", "256.1.1.1", "0"), "256.1.1.1"),
        (("serve", "--format", "xml"), "xml"),
        (("send", "--hex", "127.0.0.1", "9", "zz"), "zz"),
        (("send", "--hex", "127.0.0.1", "9", "abc"), "abc"),
        (("send", "127.0.0.1", "9", "msg", "extra"), "extra"),
        (("send", "--unix", "/nonexistent/x.sock", "127.0.0.1", "5005", "m"), "MESSAGE"),
        (("serve", "--unix", "/nonexistent/x.sock", "127.0.0.1"), "HOST"),
        (("send", "--stream", "127.0.0.1", "9"), "--unix"),
        (("frobnicate",), "frobnicate"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_bad_arguments_exit_2_with_one_line(args: tuple[str, ...], mentions: str) -> None:
    result = run(*args)
    line = one_line_error(result.stderr)
    assert result.returncode == 2, line
    assert mentions in line, line
    assert result.stdout == b""


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_port_in_use_exits_1(family: Family, tcp: bool) -> None:
    fam, host = family
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with socket.socket(fam, kind) as holder:
        holder.bind((host, 0))
        if tcp:
            holder.listen(1)
        port = holder.getsockname()[1]
        result = run("serve", *(["--tcp"] if tcp else []), host, str(port))
    line = one_line_error(result.stderr)
    assert result.returncode == 1, line
    assert "in use" in line, line
    assert str(port) in line, line


def test_nothing_listening_is_exit_1_quickly(family: Family) -> None:
    fam, host = family
    port = free_port(fam, host)
    start = time.monotonic()
    result = run("send", "--timeout", "5", host, str(port))
    elapsed = time.monotonic() - start
    line = one_line_error(result.stderr)
    assert result.returncode == 1, line
    assert "refused" in line or "nothing is listening" in line, line
    assert elapsed < 3, f"took {elapsed:.1f} s: the ICMP error was not seen"


def test_nothing_listening_tcp_is_exit_1(family: Family) -> None:
    fam, host = family
    port = free_port(fam, host, socket.SOCK_STREAM)
    result = run("send", "--tcp", host, str(port))
    assert result.returncode == 1
    assert "refused" in one_line_error(result.stderr)


@pytest.mark.parametrize(
    ("fam_host", "limit"),
    [
        pytest.param((socket.AF_INET, "127.0.0.1"), 65507, id="ipv4"),
        pytest.param((socket.AF_INET6, "::1"), 65527, id="ipv6"),
    ],
)
def test_oversize_message_is_refused_before_sending(fam_host: Family, limit: int) -> None:
    fam, host = fam_host
    if fam == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        p = Peer(fam, host)
    except OSError:
        pytest.skip(f"{host} cannot be bound here")
    with p:
        result = run("send", host, str(p.port), "-", input=b"z" * (limit + 1))
        line = one_line_error(result.stderr)
        assert result.returncode == 2, line
        assert str(limit + 1) in line or str(limit) in line, line
        time.sleep(0.2)
        assert p.received == [], "an oversize message was sent"
        # The largest legal datagram goes through whole.
        ok = run("send", "--no-wait", host, str(p.port), "-", input=b"z" * limit)
        assert ok.returncode == 0, ok.stderr
        assert len(p.wait_for(1)[0][0]) == limit


@pytest.mark.parametrize("args", [("--help",), ("serve", "--help"), ("send", "--help")])
def test_help_mentions_exit_codes(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.returncode == 0
    text = result.stdout.decode()
    assert "exit codes" in text
    for code in ("0", "1", "2", "3"):
        assert re.search(rf"^\s*{code}\s+\S", text, re.MULTILINE), (code, text)
    assert "no reply" in text


def test_line_reader_gives_up_at_its_deadline() -> None:
    r, w = os.pipe()
    try:
        reader = LineReader(r)
        os.write(w, b"partial")
        start = time.monotonic()
        with pytest.raises(AssertionError):
            reader.readline(timeout=0.1)
        assert time.monotonic() - start < 2
    finally:
        os.close(r)
        os.close(w)


HOSTILE_ARG = "\x1b[31m\u202e"


@pytest.mark.parametrize(
    "args",
    [
        ("send", "127.0.0.1", HOSTILE_ARG),
        ("send", HOSTILE_ARG, "9"),
        ("send", "--unix", "/nonexistent/" + HOSTILE_ARG),
        ("serve", "127.0.0.1", "9", HOSTILE_ARG),
        ("send", "--timeout", HOSTILE_ARG),
        ("send", "127.0.0.1", "9", "--bind", HOSTILE_ARG + ":1"),
    ],
    ids=["port", "host", "unix-path", "extra-arg", "timeout", "bind"],
)
def test_errors_escape_what_the_user_typed(args: tuple[str, ...]) -> None:
    """An invalid port was echoed raw, so a crafted argument could drive the terminal."""
    result = run(*args)
    line = one_line_error(result.stderr)
    assert result.returncode in (1, 2), line
    assert "\x1b" not in line
    assert "\u202e" not in line
    assert "\\x1b[31m" in line, line


def test_send_non_utf8_argv_is_sent_as_typed() -> None:
    """A message argument that is not UTF-8 crashed with UnicodeEncodeError."""
    with Peer(socket.AF_INET, "127.0.0.1") as p:
        result = subprocess.run(
            [*(os.fsencode(a) for a in UDPKIT), b"send", b"127.0.0.1", b"%d" % p.port, b"\xff\xfe"],
            capture_output=True,
            timeout=STEP,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert p.wait_for(1)[0][0] == b"\xff\xfe"


def test_serve_non_utf8_reply_is_sent_as_typed() -> None:
    """``--reply`` that is not UTF-8 crashed with UnicodeEncodeError at start-up."""
    args = [*(os.fsencode(a) for a in UDPKIT), b"serve", b"127.0.0.1", b"0", b"--count", b"1"]
    proc = subprocess.Popen(
        [*args, b"--reply", b"\xfe\xff"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        line = LineReader(proc.stderr.fileno()).readline()
        port = int(line.rsplit(b":", 1)[1].split()[0])
        with _client(socket.AF_INET, "127.0.0.1") as c:
            c.sendto(b"?", ("127.0.0.1", port))
            assert c.recvfrom(65535)[0] == b"\xfe\xff"
        assert proc.wait(timeout=STEP) == 0
    finally:
        end_process(proc)


def test_tcp_defaults_to_port_12345() -> None:
    if not _tcp_free(12345):
        pytest.skip("127.0.0.1:12345 is busy here")
    with serving("--tcp", "--count", "1", busy_skips=True) as srv:
        assert srv.where == "127.0.0.1:12345"
        result = run("send", "--tcp")
        assert srv.finish()[0] == 0
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Message from Server\nb'Hello UDP Client'\n"


def _tcp_free(port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As `serve --tcp` does: TIME_WAIT left by earlier tests is no obstacle.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def test_send_prints_hostile_and_truncated_replies_safely() -> None:
    hostile = b"\x1b[2J\x9b\xe2\x80\xae\x7f" + b"!" * 100
    with Peer(socket.AF_INET, "127.0.0.1", reply=hostile) as p:
        result = run("send", "--buffer-size", "8", "127.0.0.1", str(p.port))
    assert result.returncode == 0, result.stderr
    for bad in [*FORBIDDEN_BYTES, b"\xe2\x80\xae"]:
        assert bad not in result.stdout
    assert result.stdout.startswith(b"Message from Server\nb'\\x1b[2J\\x9b")
    assert f"truncated: {len(hostile)} bytes, 8 kept".encode() in result.stdout


@pytest.mark.parametrize(
    ("extra", "clash"),
    [(("--tcp",), "--tcp"), (("--no-wait",), "--no-wait"), (("--retries", "2"), "--retries")],
)
def test_send_all_refuses_what_it_cannot_honour(extra: tuple[str, ...], clash: str) -> None:
    """`send --all` silently ignored --tcp, --no-wait and --retries."""
    res = run("send", "127.0.0.1", "9", "x", "--all", *extra)
    assert res.returncode == 2
    assert one_line_error(res.stderr) == (
        f"udpkit send: error: --all cannot be combined with {clash}: it sends one datagram "
        "and collects every reply within --timeout"
    )


def test_send_all_to_a_closed_port_says_refused() -> None:
    """A refusal on a connected socket is final: `send --all` reported a timeout (exit 3)."""
    port = free_port(socket.AF_INET, "127.0.0.1")
    res = run("send", "127.0.0.1", str(port), "x", "--all", "--timeout", "2")
    assert res.returncode == 1
    assert b"connection refused" in res.stderr


# ---------------------------------------------------------------- one option convention

# The positionals each command needs before its options can be parsed.
_POSITIONALS = {
    "serve": [],
    "send": [],
    "bench": ["127.0.0.1", "5202"],
    "reflect": [],
    "relay": ["5000", "5001"],
    "read": ["rec.jsonl"],
    "ping": ["127.0.0.1", "5005"],
    "connect": ["127.0.0.1", "5005"],
    "listen": ["5005"],
}
# Every option more than one command has, with the commands that have it.
_SHARED = {
    "--rcvbuf": ("serve", "reflect", "connect", "listen"),
    "--busy-poll": ("serve", "reflect", "ping"),
    "--timeout": ("send", "bench", "ping"),
    "--count": ("serve", "bench", "ping", "connect", "listen"),
    "--buffer-size": ("serve", "send"),
    "--ttl": ("send", "bench"),
    "--format": ("serve", "read"),
    "--size": ("bench", "ping"),
    "--bind": ("send", "connect"),
    "--chunk": ("connect", "listen"),
    "-J": ("bench", "ping"),  # iperf3's and sockperf's words in bench: -J is --json
    "-p": ("serve", "bench"),  # the port as an option (iperf3's -p)
    "--port": ("serve", "bench"),
}
# Spelled alike in other commands, but another option there (tested on its own below).
_OWN_MEANING = {
    "-c": ("bench", "ping"),  # bench: iperf3's -c HOST; ping: ping's -c COUNT
    "--interval": ("bench", "ping"),  # bench: per live row, ping: between probes (0 ok)
    "-i": ("bench", "ping"),
    "--rate": ("bench", "relay"),  # probes per second vs a token bucket in bytes/s
    "--format": ("connect", "listen"),  # serve's formats and raw
    "-w": ("connect", "listen"),  # nc's -w: --wait after stdin ends, --idle
}


def _parse(command: str, *options: str) -> dict[str, object]:
    from udpkit._cli.main import build_parser

    args = build_parser().parse_args([command, *_POSITIONALS[command], *options])
    return vars(args)


def _refusal(command: str, *options: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        _parse(command, *options)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.replace(f"udpkit {command}", "udpkit COMMAND")


def test_shared_options_are_listed_completely() -> None:
    """Every option two commands share is in _SHARED, so the tests below cover it."""
    from udpkit._cli.main import build_parser

    seen: dict[str, set[str]] = {}
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert isinstance(sub.choices, dict)
    for command, parser in sub.choices.items():
        for action in parser._actions:
            for flag in action.option_strings:
                seen.setdefault(flag, set()).add(command)
    flags_only = {"-h", "--help", "-4", "-6", "--ipv4", "--ipv6", "-q", "--quiet", "--tcp",
                  "--no-batch", "--join", "--source", "--iface", "--unix", "--stream",
                  "--one-way", "--json", "--echo", "-u", "--udp"}  # fmt: skip
    shared = {f for f, cmds in seen.items() if len(cmds) > 1 and f not in flags_only}
    assert shared == set(_SHARED) | set(_OWN_MEANING)
    for flag in shared:
        commands = {*_SHARED.get(flag, ()), *_OWN_MEANING.get(flag, ())}
        assert seen[flag] == commands, flag


@pytest.mark.parametrize(
    ("option", "text", "dest", "value"),
    [
        ("--rcvbuf", "8M", "rcvbuf", 8 << 20),
        ("--rcvbuf", "65536", "rcvbuf", 65536),
        ("--busy-poll", "50", "busy_poll", 50),
        ("--busy-poll", "1ms", "busy_poll", 1000),
        ("--timeout", "500ms", "timeout", 0.5),
        ("--timeout", "2", "timeout", 2.0),
        ("--count", "10k", "count", 10_000),
        ("--buffer-size", "64K", "buffer_size", 65536),
        ("--ttl", "3", "ttl", 3),
        ("--format", "seed", "format", "textbook"),
        ("--format", "textbook", "format", "textbook"),
        ("--size", "1K", "size", 1024),
        ("--bind", "54312", "bind", ("", "54312")),
        ("--bind", "127.0.0.1:54312", "bind", ("127.0.0.1", "54312")),
        ("--chunk", "1400", "chunk", 1400),
        ("--chunk", "8K", "chunk", 8192),
    ],
)
def test_shared_option_parses_the_same_in_every_command(
    option: str, text: str, dest: str, value: object
) -> None:
    for command in _SHARED[option]:
        assert _parse(command, option, text)[dest] == value, command


@pytest.mark.parametrize(
    ("option", "text"),
    [
        ("--rcvbuf", "0"),
        ("--rcvbuf", "2G"),
        ("--rcvbuf", "8X"),
        ("--rcvbuf", "8m"),
        ("--busy-poll", "-1"),
        ("--busy-poll", "2s"),
        ("--timeout", "-1"),
        ("--timeout", "2m"),
        ("--timeout", "2days"),
        ("--count", "0"),
        ("--count", "1.5"),
        ("--buffer-size", "0"),
        ("--buffer-size", "32M"),
        ("--ttl", "256"),
        ("--ttl", "-1"),
        ("--format", "xml"),
        ("--timeout", "0"),
        ("--size", "16"),
        ("--size", "64K"),
        ("--bind", "[::1"),
        ("--chunk", "0"),
        ("--chunk", "65528"),
    ],
)
def test_shared_option_has_the_same_limits_in_every_command(
    option: str, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Identical options refuse identical values with identical words (they once had
    different limits: --ttl 256 passed send, --busy-poll had no cap in serve, --timeout 0
    passed send and bench but not ping)."""
    errors = {c: _refusal(c, option, text, capsys=capsys) for c in _SHARED[option]}
    assert len(set(errors.values())) == 1, errors
    line = next(iter(errors.values()))
    assert repr(text) in line and option in line, line


@pytest.mark.parametrize(
    ("command", "options", "values"),
    [
        ("relay", ("--delay", "10ms"), {"delay": (0.01, 0.0)}),
        ("relay", ("--delay", "20±5"), {"delay": (0.02, 0.005)}),  # bare numbers stay ms
        ("relay", ("--delay", "20ms+-5ms"), {"delay": (0.02, 0.005)}),
        ("relay", ("--rate", "10k", "--burst", "64K"), {"rate": 10_000.0, "burst": 65536}),
        ("relay", ("--loss", "5%", "--reorder", "0.1"), {"loss": 0.05, "reorder": 0.1}),
        ("relay", ("--reorder-max", "2s", "--idle-timeout", "5min"),
         {"reorder_max": 2.0, "idle_timeout": 300.0}),
        ("relay", ("--reorder-max", "100"), {"reorder_max": 0.1}),  # bare: ms, as before
        ("relay", ("--spin-us", "1ms", "--max-flows", "2k"), {"spin_us": 1000, "max_flows": 2000}),
        ("bench", ("--size", "1K", "-t", "2min", "-i", "500ms"),
         {"size": 1024, "duration": 120.0, "interval": 0.5}),
        ("bench", ("--window", "1k", "--parallel", "4"), {"window": 1000, "parallel": 4}),
        ("serve", ("--rate-limit", "10k/s:2k"), {"rate_limit": (10_000.0, 2000)}),
        ("send", ("--retries", "3"), {"retries": 3}),
        ("ping", ("-i", "0", "-W", "200ms", "-c", "1k"),
         {"interval": 0.0, "timeout": 0.2, "count": 1000}),
        ("ping", ("-i", "500ms"), {"interval": 0.5}),
        ("ping", ("--busy-poll",), {"busy_poll": -1}),  # bare: the whole wait for a reply
        ("ping", ("--busy-poll=50us",), {"busy_poll": 50}),
        ("connect", ("-w", "500ms"), {"wait": 0.5}),
        ("connect", ("-w", "0"), {"wait": 0.0}),  # end as soon as stdin does
        ("listen", ("-w", "2min"), {"idle": 120.0}),
        ("listen", ("--idle", "1.5"), {"idle": 1.5}),
        ("connect", ("--format", "raw"), {"format": "raw"}),
        ("listen", ("--format", "seed"), {"format": "textbook"}),
    ],
)  # fmt: skip
def test_command_options_read_units(
    command: str, options: tuple[str, ...], values: dict[str, object]
) -> None:
    args = _parse(command, *options)
    for dest, value in values.items():
        assert args[dest] == pytest.approx(value), dest


def test_bench_rate_reads_datagrams_bits_and_bytes() -> None:
    from udpkit._cli.bench import config_from_args
    from udpkit._cli.main import build_parser

    def rate(*options: str) -> float | None:
        args = build_parser().parse_args(["bench", "127.0.0.1", "5202", *options])
        return config_from_args(args).rate

    assert rate("--rate", "10k") == 10_000.0
    assert rate("--rate", "512kbps", "--size", "64") == 1000.0
    assert rate("--rate", "640kB/s", "--size", "64") == 10_000.0
    assert rate("--rate", "max") is None
    assert rate() == 1000.0
    assert rate("--window", "8") is None


@pytest.mark.parametrize(
    ("command", "options", "says"),
    [
        ("relay", ("--delay", "5m"), "invalid --delay '5m': a delay like 20, 20ms or 20ms±5ms"),
        ("relay", ("--rate", "10m"), "write M for mega"),
        ("relay", ("--loss", "1.5"), "invalid --loss '1.5': must be a probability"),
        ("bench", ("--rate", "10mbps"), "write M for mega"),
        ("bench", ("-t", "2m"), "invalid --duration '2m'"),
        ("bench", ("--size", "16"), "invalid --size '16': must be 32-65507 bytes"),
        ("serve", ("--rate-limit", "0/s"), "invalid rate limit '0/s'"),
        # bench's rows are reports (at least 10 ms); ping's 0 is flat-out ping-pong.
        ("bench", ("-i", "0"), "invalid --interval '0': must be 0.01-3600 seconds"),
        ("ping", ("-i", "3601"), "invalid --interval '3601': must be 0-3600 seconds"),
        ("ping", ("-W", "0"), "invalid --timeout '0': must be more than 0 and at most 86400"),
        ("listen", ("-w", "0"), "invalid --idle '0': must be more than 0"),
        ("connect", ("-w", "2days"), "invalid --wait '2days'"),
        ("connect", ("--format", "xml"), "invalid choice: 'xml'"),
        ("serve", ("--format", "raw"), "invalid choice: 'raw'"),
    ],
)
def test_command_option_refusals_are_one_line_naming_the_input(
    command: str, options: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refusal(command, *options, capsys=capsys)
    assert says in line, line
    assert line.endswith("(see 'udpkit COMMAND --help')\n"), line


def test_session_formats_are_serves_and_raw() -> None:
    """connect and listen read every --format word serve and read do, with the same
    meaning, and raw besides (once they had only line, raw, hex and json)."""
    from udpkit._cli.common import FORMATS

    for command in ("connect", "listen"):
        for fmt in (*FORMATS, "seed", "raw"):
            expected = "textbook" if fmt == "seed" else fmt
            assert _parse(command, "--format", fmt)["format"] == expected, (command, fmt)


def test_every_command_maps_errors_in_the_dispatcher_only() -> None:
    """ping and the session once had a main() of their own, a second copy of the
    error-to-exit-code mapping."""
    import udpkit._cli

    root = Path(udpkit._cli.__file__).parent
    for path in root.glob("*.py"):
        if path.name != "main.py":
            assert "def main(" not in path.read_text(), path.name


def test_command_modules_do_not_import_the_dispatcher() -> None:
    import ast

    import udpkit._cli

    root = Path(udpkit._cli.__file__).parent
    for path in root.glob("*.py"):
        if path.name == "main.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
                assert "udpkit._cli.main" not in names, path.name


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["bench", "127.0.0.1", "-t", "1", "5300"], {"host": "127.0.0.1", "port": "5300"}),
        (["bench", "-t", "1", "127.0.0.1", "5300"], {"host": "127.0.0.1", "port": "5300"}),
        (
            ["send", "127.0.0.1", "--timeout", "1", "5005", "hi"],
            {"args": ["127.0.0.1", "5005", "hi"]},
        ),
        (["ping", "127.0.0.1", "-c", "2", "5005"], {"host": "127.0.0.1", "port": "5005"}),
    ],
)
def test_options_may_stand_between_positionals(argv: list[str], want: dict[str, object]) -> None:
    """`bench HOST -t 1 PORT` broke once PORT became optional (argparse filled PORT
    with nothing before the option); nc and iperf3 take options anywhere."""
    from udpkit._cli.main import build_parser

    args = build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in want} == want
