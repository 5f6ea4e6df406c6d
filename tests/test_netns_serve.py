"""`udpkit serve` with --workers, --join, -6 and wildcard addresses.

The usage errors and start-up warnings are checked over loopback (nothing is
sent to a group); what the kernel delivers to several workers is checked on
test hosts in network namespaces (tests/_netns.py).  Every process started here
is ended by its PID, and every wait has a deadline.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from tests._netns import Host, hosts, needs_netns
from tests._proc import LISTENING, STEP, UDPKIT, LineReader, end_process, one_line_error, run
from tests.conftest import linux_only, needs_ipv6

SUMMARY = re.compile(rb"udpkit: (\d+) datagrams?, .*")


@dataclass
class Server:
    """A running `udpkit serve`: its process, where it listens, and its stderr."""

    proc: subprocess.Popen[bytes]
    err: LineReader
    where: str
    notes: list[bytes]  # the stderr lines right after "listening on" (warnings)

    def stop(self) -> bytes:
        """SIGTERM, wait, and return the rest of stderr (the summary)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=STEP)
        return self.err.read_rest(1.0)


@contextmanager
def _serve(argv: list[str], settle: float = 0.3) -> Iterator[Server]:
    """Start ``argv`` (a full `udpkit serve` command line); ended by PID on the way out."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        err = LineReader(proc.stderr.fileno())
        match = LISTENING.search(err.readline())
        assert match is not None, err.seen
        # The warnings follow at once; a quiet server prints nothing more.
        notes: list[bytes] = []
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            try:
                notes.append(err.readline(timeout=max(0.01, deadline - time.monotonic())))
            except AssertionError:
                break
        yield Server(proc, err, match.group(1).decode(), notes)
    finally:
        end_process(proc)


# ---------------------------------------------------------------- bug 2: the wildcard warning


@needs_ipv6
@pytest.mark.parametrize("args", [("", "0", "-6"), ("::", "0")], ids=["empty -6", "::"])
def test_wildcard_warning_names_the_ipv6_wildcard_bound(args: tuple[str, ...]) -> None:
    """`serve '' PORT -6 --echo` listened on [::] but warned about '0.0.0.0': the warning
    was given the host argument, not the address bound."""
    with _serve([*UDPKIT, "serve", *args, "--echo"]) as srv:
        assert srv.where.startswith("[::]:"), srv.where
        warnings = [n for n in srv.notes if b"wildcard address" in n]
        assert len(warnings) == 1, srv.notes
        assert b"'::'" in warnings[0]
        assert b"0.0.0.0" not in warnings[0]


def test_default_loopback_bind_gives_no_wildcard_warning() -> None:
    """`serve -p PORT` binds 127.0.0.1 but warned it replies on wildcard '0.0.0.0'
    (the missing HOST argument was taken for the wildcard)."""
    with _serve([*UDPKIT, "serve", "-p", "0"]) as srv:
        assert srv.where.startswith("127.0.0.1:"), srv.where
        assert not [n for n in srv.notes if b"warning" in n], srv.notes


# ---------------------------------------------------------------- bug 4: -6 and --join families


@needs_ipv6
@pytest.mark.parametrize(
    ("args", "group", "advice"),
    [
        (("-6", "--join", "239.1.2.3@lo", "-p", "0"), "239.1.2.3", "-4"),
        (("::", "0", "--join", "239.1.2.3@lo"), "239.1.2.3", "-4"),
        (("-4", "--join", "ff12::7@lo", "-p", "0"), "ff12::7", "-6"),
        (("0.0.0.0", "0", "--join", "ff12::7@lo"), "ff12::7", "-6"),
    ],
    ids=["-6 v4 group", ":: v4 group", "-4 v6 group", "0.0.0.0 v6 group"],
)
def test_join_of_the_other_family_is_one_clear_usage_error(
    args: tuple[str, ...], group: str, advice: str
) -> None:
    """`serve -6 --join 239.1.2.3@eth0` blamed host '0.0.0.0' (never typed), and
    `serve :: --join 239.1.2.3` advised '::ffff:239.1.2.3', which then fails."""
    result = run("serve", *args)
    line = one_line_error(result.stderr)
    assert result.returncode == 2, line
    assert group in line and advice in line, line
    assert "::ffff:" not in line and "'0.0.0.0' is an IPv4" not in line, line


@needs_ipv6
def test_dash_6_default_host_follows_the_family() -> None:
    """`serve -6` without HOST tried 127.0.0.1 as IPv6 and failed naming it: the default
    host now follows the family (::1, and :: with --join)."""
    with _serve([*UDPKIT, "serve", "-6", "-p", "0", "--no-reply"]) as srv:
        assert srv.where.startswith("[::1]:"), srv.where


# ---------------------------------------------------------------- bug 3: unicast bind + --join


@pytest.mark.parametrize(
    ("host", "group"),
    [
        ("127.0.0.1", "239.1.2.12@lo"),
        ("239.1.2.13", "239.1.2.12@lo"),
        pytest.param("::1", "ff12::12@lo", marks=needs_ipv6),
    ],
)
def test_join_on_a_unicast_bind_is_refused(host: str, group: str) -> None:
    """`serve 10.77.0.2 PORT --join 239.1.2.12@eth0` started fine and silently heard
    nothing: Linux gives group datagrams only to wildcard- or group-bound sockets."""
    result = run("serve", host, "0", "--join", group, "--no-reply")
    line = one_line_error(result.stderr)
    assert result.returncode == 2, line
    assert host in line and group.split("@", maxsplit=1)[0] in line, line
    assert "wildcard" in line, line


# ---------------------------------------------------------------- bug 1: broadcast warning


@linux_only
@pytest.mark.parametrize(
    ("args", "warns"),
    [
        (("", "0", "--workers", "2"), True),
        (("0.0.0.0", "0", "--workers", "3"), True),
        pytest.param(("::", "0", "--workers", "2"), True, marks=needs_ipv6),  # dual stack
        pytest.param(("::", "0", "-6", "--workers", "2"), False, marks=needs_ipv6),
        (("127.0.0.1", "0", "--workers", "2"), False),
        (("", "0"), False),
    ],
    ids=["'' x2", "0.0.0.0 x3", ":: x2", ":: -6 x2", "127.0.0.1 x2", "'' x1"],
)
def test_workers_on_a_wildcard_warn_about_broadcast_copies(
    args: tuple[str, ...], warns: bool
) -> None:
    """`serve '' PORT --workers N` answered every broadcast N times without a word: the
    kernel copies a broadcast to every wildcard socket.  Now one warning line says so."""
    with _serve([*UDPKIT, "serve", *args, "--no-reply"]) as srv:
        found = [n for n in srv.notes if b"broadcast" in n]
        if not warns:
            assert not found, srv.notes
            return
        assert len(found) == 1, srv.notes
        n = args[args.index("--workers") + 1]
        assert f"--workers {n}".encode() in found[0]
        assert found[0].startswith(b"udpkit: warning:"), found[0]
        assert b"--workers 1" in found[0]


# ---------------------------------------------------------------- bug 1: multicast once, in netns


def _send(host: Host, dest: str, port: int, message: str, *extra: str) -> None:
    res = host.run(*UDPKIT, "send", dest, str(port), message, *extra, "--no-wait", timeout=STEP)
    assert res.returncode == 0, res.stderr


def _received(summary: bytes) -> int:
    match = SUMMARY.search(summary)
    assert match is not None, summary
    return int(match.group(1))


@needs_netns
@pytest.mark.parametrize(
    ("group", "flags"),
    [("239.1.2.11", ()), ("ff12::11", ()), ("ff12::11", ("-6",))],
    ids=["ipv4", "ipv6 dual stack", "ipv6 -6"],
)
def test_workers_hear_each_group_datagram_once(group: str, flags: tuple[str, ...]) -> None:
    """`serve --join G@eth0 --echo --workers 2` printed, counted and answered every group
    datagram twice: every worker socket joined, and the kernel copies group traffic to each."""
    count, port = 5, 5114
    with hosts(2) as (a, b):
        argv = b.cmd(*UDPKIT, "serve", "--join", f"{group}@eth0", "-p", str(port), *flags)
        with _serve([*argv, "--echo", "--workers", "2"]) as srv:
            for i in range(count):
                _send(a, group, port, f"group {i}", "--iface", "eth0")
            time.sleep(0.5)
            summary = srv.stop()
        assert _received(summary) == count, summary
        assert f"replies={count} ".encode() in summary, summary


@needs_netns
def test_workers_still_share_unicast() -> None:
    """The one-worker-hears-the-group fix must not funnel unicast: SO_REUSEPORT still
    spreads datagrams from many source ports over every worker."""
    port, count = 5115, 40
    with hosts(2) as (a, b):
        argv = b.cmd(*UDPKIT, "serve", "--join", "239.1.2.14@eth0", "-p", str(port))
        with _serve([*argv, "--no-reply", "--workers", "2"]) as srv:
            # Many source ports: with two workers, all hashed to one is 2**-39 likely.
            script = (
                "import socket\n"
                f"for i in range({count}):\n"
                "    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:\n"
                f"        s.sendto(b'u', ('{b.v4}', {port}))\n"
            )
            res = a.run(sys.executable, "-c", script, timeout=STEP)
            assert res.returncode == 0, res.stderr
            time.sleep(0.5)
            srv.proc.send_signal(signal.SIGUSR1)
            lines = [srv.err.readline(), srv.err.readline()]
            per_worker = sorted(
                int(m.group(1))
                for line in lines
                if (m := re.search(rb"worker \d+ counters: (\d+) datagrams", line))
            )
            assert len(per_worker) == 2, lines
            assert sum(per_worker) == count and per_worker[0] > 0, per_worker
            assert _received(srv.stop()) == count


@needs_netns
def test_join_warning_names_the_ipv6_wildcard_in_a_namespace() -> None:
    """`serve --join ff12::7@eth0 -p 5120 --echo` listened on [::] and then warned about
    replying on wildcard '0.0.0.0'."""
    with hosts(1) as (a,):
        argv = a.cmd(*UDPKIT, "serve", "--join", "ff12::7@eth0", "-p", "5120", "--echo")
        with _serve(argv) as srv:
            assert srv.where == "[::]:5120", srv.where
            warnings = [n for n in srv.notes if b"wildcard address" in n]
            assert len(warnings) == 1 and b"'::'" in warnings[0], srv.notes
