"""udpkit against peers nobody on the team wrote: socat, OpenBSD nc, and the
seed's own server and client written the textbook way with plain ``socket`` calls.

socat and nc are installed by ``.ci/run``; elsewhere their tests skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

try:
    from tests._proc import STEP, Peer, end_process, free_port, run, serving
except ModuleNotFoundError:  # plain `pytest` puts tests/, not the repo, on sys.path
    from _proc import STEP, Peer, end_process, free_port, run, serving  # type: ignore[import-not-found,no-redef]

Family = tuple[socket.AddressFamily, str]


def needs_tool(name: str) -> pytest.MarkDecorator:
    # conftest's helper, repeated: mypy cannot import conftest as a module.
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} is not installed")


def _openbsd_nc() -> bool:
    if shutil.which("nc") is None:
        return False
    # nc -h exits non-zero on some variants; only its text matters.
    probe = subprocess.run(["nc", "-h"], capture_output=True, timeout=STEP, check=False)
    return b"OpenBSD" in probe.stdout + probe.stderr


needs_openbsd_nc = pytest.mark.skipif(
    not _openbsd_nc(), reason="OpenBSD nc (netcat-openbsd) is not installed"
)


def _socat_addr(kind: str, family: Family, port: int) -> str:
    fam, host = family
    if fam == socket.AF_INET6:
        return f"{kind}6:[{host}]:{port}"
    return f"{kind}4:{host}:{port}"


@pytest.fixture
def late_process() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; each is ended by PID afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            end_process(proc)


# ---------------------------------------------------------------- socat


@needs_tool("socat")
def test_socat_client_to_udpkit_serve(family: Family) -> None:
    _, host = family
    with serving(host, "0", "--count", "1") as srv:
        assert srv.port is not None
        client = subprocess.run(
            ["socat", "-T", "2", "-", _socat_addr("UDP", family, srv.port)],
            input=b"hello from socat\n",
            capture_output=True,
            timeout=STEP,
            check=False,
        )
        assert srv.out.readline() == b"Message from Client:b'hello from socat\\n'\n"
        assert srv.out.readline().startswith(f"Client IP Address:('{host}', ".encode())
        assert srv.finish()[0] == 0
    assert client.returncode == 0, client.stderr
    assert client.stdout == b"Hello UDP Client"


@needs_tool("socat")
def test_udpkit_send_to_socat_server(
    family: Family, late_process: list[subprocess.Popen[bytes]]
) -> None:
    fam, host = family
    port = free_port(fam, host)
    six = fam == socket.AF_INET6
    bind = f"[{host}]" if six else host
    listen = f"UDP{'6' if six else '4'}-RECVFROM:{port},bind={bind},fork"
    late_process.append(
        subprocess.Popen(
            ["socat", listen, "SYSTEM:echo socat reply"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    )
    # socat binds a moment after it starts: the retries cover that gap.
    result = run("send", "--timeout", "0.3", "--retries", "15", host, str(port), timeout=STEP)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Message from Server\nb'socat reply\\n'\n"


@needs_tool("socat")
def test_socat_tcp_client_to_udpkit_serve_tcp(family: Family) -> None:
    _, host = family
    with serving("--tcp", host, "0", "--count", "1") as srv:
        assert srv.port is not None
        assert srv.banner == b"TCP server up and listening\n"
        client = subprocess.run(
            ["socat", "-T", "2", "-", _socat_addr("TCP", family, srv.port)],
            input=b"over tcp",
            capture_output=True,
            timeout=STEP,
            check=False,
        )
        assert srv.out.readline() == b"Message from Client:b'over tcp'\n"
        assert srv.finish()[0] == 0
    assert client.returncode == 0, client.stderr
    assert client.stdout == b"Hello UDP Client"


# ---------------------------------------------------------------- OpenBSD nc


@needs_openbsd_nc
def test_nc_client_to_udpkit_serve(family: Family) -> None:
    fam, host = family
    with serving(host, "0", "--count", "1") as srv:
        assert srv.port is not None
        flag = "-6" if fam == socket.AF_INET6 else "-4"
        client = subprocess.run(
            ["nc", flag, "-u", "-w1", host, str(srv.port)],
            input=b"hi from nc\n",
            capture_output=True,
            timeout=STEP,
            check=False,
        )
        assert srv.out.readline() == b"Message from Client:b'hi from nc\\n'\n"
        assert srv.finish()[0] == 0
    assert client.stdout == b"Hello UDP Client"


@needs_openbsd_nc
def test_udpkit_send_to_nc_server(
    family: Family, late_process: list[subprocess.Popen[bytes]]
) -> None:
    fam, host = family
    port = free_port(fam, host)
    flag = "-6" if fam == socket.AF_INET6 else "-4"
    # `nc -u -l` answers the first sender with what it reads on stdin.
    nc = subprocess.Popen(
        ["nc", flag, "-u", "-l", host, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    late_process.append(nc)
    assert nc.stdin is not None
    nc.stdin.write(b"nc reply\n")
    nc.stdin.flush()
    result = run(
        "send", "--timeout", "0.3", "--retries", "15", host, str(port), "ping", timeout=STEP
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Message from Server\nb'nc reply\\n'\n"


# ---------------------------------------------------------------- the textbook's code


def test_textbook_server_answers_udpkit_send(family: Family) -> None:
    fam, host = family
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(STEP)
    seen: list[str] = []

    def textbook_server() -> None:
        # The seed's server: recvfrom, print, reply; once, with a timeout.
        try:
            data, addr = sock.recvfrom(1024)
        except OSError:
            return
        seen.append(f"Message from Client:{data!r}")
        seen.append(f"Client IP Address:{addr!r}")
        sock.sendto(str.encode("Hello UDP Client"), addr)

    thread = threading.Thread(target=textbook_server, daemon=True)
    thread.start()
    try:
        result = run("send", host, str(sock.getsockname()[1]))
        thread.join(timeout=STEP)
    finally:
        sock.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Message from Server\nb'Hello UDP Client'\n"
    assert seen[0] == "Message from Client:b'Hello UDP Server'"
    assert seen[1].startswith(f"Client IP Address:('{host}', ")


def test_textbook_client_to_udpkit_serve(family: Family) -> None:
    fam, host = family
    client_port = free_port(fam, "::" if fam == socket.AF_INET6 else "")
    with serving(host, "0", "--count", "1") as srv:
        assert srv.port is not None
        # The seed's client: bind ('', port), sendto, and (here) read the answer.
        sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            sock.bind(("", client_port))
            sock.settimeout(STEP)
            sock.sendto(b"Hello, World!", (host, srv.port))
            reply, _ = sock.recvfrom(1024)
        finally:
            sock.close()
        assert srv.out.readline() == b"Message from Client:b'Hello, World!'\n"
        line = srv.out.readline().decode()
        assert srv.finish()[0] == 0
    assert reply == b"Hello UDP Client"
    assert line.startswith(f"Client IP Address:('{host}', {client_port}")


def test_udpkit_send_bind_like_the_seeds_client() -> None:
    """The seed's client binds source port 54312; ``--bind`` does the same (free port here)."""
    with Peer(socket.AF_INET, "127.0.0.1") as peer:
        src = free_port(socket.AF_INET, "")
        result = run("send", "--bind", str(src), "127.0.0.1", str(peer.port), "Hello, World!")
        assert result.returncode == 0, result.stderr
        assert peer.wait_for(1)[0] == (b"Hello, World!", ("127.0.0.1", src))
