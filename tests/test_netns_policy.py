"""The amplification budget seen from a real non-loopback source: a test host in a namespace."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from tests._netns import hosts, needs_netns

SEND = [sys.executable, "-m", "udpkit", "send"]


def _serve(host_cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        host_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _wait_listening(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if b"listening on" in line or not line:
            return
    raise AssertionError("server did not start")


def _end(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    proc.terminate()
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    return out, err


@needs_netns
def test_budget_holds_for_a_non_loopback_source() -> None:
    """13 bytes in may earn at most 13 bytes out: the 16-byte default reply is withheld."""
    with hosts(2) as (server, client):
        proc = _serve(server.cmd(sys.executable, "-m", "udpkit", "serve", server.v4, "5005"))
        try:
            _wait_listening(proc)
            small = client.run(*SEND, server.v4, "5005", "Hello, World!", "--timeout", "0.5")
            assert small.returncode == 3, small.stderr  # no reply: over budget
            big = client.run(*SEND, server.v4, "5005", "Hello, World! 1234", "--timeout", "2")
            assert big.returncode == 0, big.stderr
            assert b"Hello UDP Client" in big.stdout
        finally:
            _, err = _end(proc)
        m = re.search(rb"over_budget=(\d+)", err)
        assert m is not None and int(m.group(1)) == 1, err


@needs_netns
def test_trust_lifts_the_budget_and_echo_always_fits() -> None:
    with hosts(2) as (server, client):
        cmd = server.cmd(
            sys.executable, "-m", "udpkit", "serve", server.v4, "5005", "--trust", f"{client.v4}/32"
        )
        proc = _serve(cmd)
        try:
            _wait_listening(proc)
            res = client.run(*SEND, server.v4, "5005", "Hello, World!", "--timeout", "2")
            assert res.returncode == 0, res.stderr
        finally:
            _end(proc)
        proc = _serve(
            server.cmd(sys.executable, "-m", "udpkit", "serve", server.v6, "5005", "--echo")
        )
        try:
            _wait_listening(proc)
            res = client.run(*SEND, server.v6, "5005", "x", "--timeout", "2")
            assert res.returncode == 0, res.stderr
            assert b"b'x'" in res.stdout
        finally:
            _end(proc)
