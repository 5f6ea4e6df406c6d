"""What the command line does with what nc, iperf3 and git habits type (issue 12).

A lone number where a host goes is a port, said so, on every command; nothing is
ever sent to 0.0.0.0/8 or port 0; plain ``udpkit`` prints its help; an unknown
option points at the command's own help; ``--busy-poll`` needs no value; errors
speak the command line's words, not the library's.  All through the real CLI.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

try:
    from tests._netns import needs_netns
    from tests._proc import UDPKIT, Peer, one_line_error, run, serving
except ModuleNotFoundError:  # plain `pytest` puts tests/, not the repo, on sys.path
    from _netns import needs_netns  # type: ignore[import-not-found,no-redef]
    from _proc import (  # type: ignore[import-not-found,no-redef]
        UDPKIT,
        Peer,
        one_line_error,
        run,
        serving,
    )

# Words of the Python API that a command-line user cannot act on.
LIBRARY_WORDS = ("split_hostport", "broadcast=True", "family=", "AF_INET", "AF_UNSPEC", "['", "('")


def _error(argv: list[str], code: int = 2) -> str:
    res = run(*argv)
    assert res.returncode == code, (argv, res.returncode, res.stderr)
    line = one_line_error(res.stderr)
    assert line.startswith(f"udpkit {argv[0]}: error: "), line
    for word in LIBRARY_WORDS:
        assert word not in line, (word, line)
    return line


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "40050"],
        ["serve", "40050"],
        ["reflect", "40050"],
        ["bench", "40050"],
        ["ping", "40050"],
        ["connect", "40050"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_lone_number_where_the_host_goes_is_taken_for_a_port(argv: list[str]) -> None:
    """`udpkit send 40050` sent to 0.0.156.114:5005 (routed off a normal host) and
    `reflect 40043` failed with no hint: only serve said "did you mean port"."""
    line = _error(argv)
    assert line.endswith(
        f"did you mean port 40050? give the host first: udpkit {argv[0]} 127.0.0.1 40050"
    ), line


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "40050", "5005", "--no-wait"],
        ["ping", "40050", "5005", "-c", "1"],
        ["bench", "40050", "5005", "-t", "1"],
        ["connect", "40050", "5005"],
        ["relay", "127.0.0.1:0", "40050:5005"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_number_with_a_port_after_it_is_an_address_never_sent_to(argv: list[str]) -> None:
    """The textbook's integer form stays an address; one in 0.0.0.0/8 is refused, naming it."""
    line = _error(argv)
    assert "'40050' (the integer address 0.0.156.114): 0.0.0.0/8 is 'this network'" in line
    assert "did you mean port 40050?" in line, line


def test_listen_takes_a_lone_number_as_its_port() -> None:
    """`listen [HOST] PORT`, like `nc -ul PORT`: there a lone number is where the port goes."""
    with serving("127.0.0.1", "0", "--count", "1") as srv:  # only to find a free port
        port = srv.port
    proc = subprocess.Popen(
        [*UDPKIT, "listen", str(port), "--count", "1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        assert f"listening on 127.0.0.1:{port}".encode() in banner, banner
    finally:
        proc.kill()
        proc.communicate(timeout=5)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["send", "", "{port}"], "cannot send to '' (0.0.0.0): the empty host is the wildcard"),
        (["send", "0.0.0.0", "{port}"], "cannot send to '0.0.0.0': 0.0.0.0/8 is 'this network'"),
        (["send", "0.1.2.3", "{port}"], "0.0.0.0/8 is 'this network', never a destination"),
        (["send", "0", "{port}"], "cannot send to '0' (the integer address 0.0.0.0)"),
        (["send", "-6", "::", "{port}"], "'::' is the unspecified address, never a destination"),
        (["connect", "", "{port}"], "cannot send to '' (0.0.0.0)"),
        (["ping", "", "{port}", "-c", "1"], "cannot send to '' (0.0.0.0)"),
        (["bench", "0.0.0.0", "{port}", "-t", "1"], "cannot send to '0.0.0.0'"),
        (["relay", "127.0.0.1:0", ":{port}"], "cannot send to '' (0.0.0.0)"),
    ],
    ids=["send-empty", "send-0.0.0.0", "send-0/8", "send-int-0", "send-::", "connect", "ping",
         "bench", "relay"],
)  # fmt: skip
def test_nothing_is_sent_to_this_network(argv: list[str], needle: str) -> None:
    """`udpkit send '' 5005` sent to 0.0.0.0, which Linux delivers to this host and other
    systems route away: now refused (exit 2), and the listener here hears nothing."""
    family = socket.AF_INET6 if "-6" in argv else socket.AF_INET
    with Peer(family, "::1" if family == socket.AF_INET6 else "127.0.0.1") as peer:
        line = _error([a.replace("{port}", str(peer.port)) for a in argv])
        assert needle in line, line
        assert "use 127.0.0.1" in line or "use ::1" in line, line
        time.sleep(0.1)  # the command has ended: a datagram it sent would be here
        assert peer.received == []


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "127.0.0.1", "0"],
        ["connect", "127.0.0.1", "0"],
        ["ping", "127.0.0.1", "0", "-c", "1"],
        ["relay", "127.0.0.1:0", "127.0.0.1:0"],
    ],
    ids=lambda argv: argv[0],
)
def test_port_0_is_not_a_destination(argv: list[str]) -> None:
    """`send 127.0.0.1 0` was "connection refused" naming the socket's own port: the
    kernel connects to port 0, and getpeername() then fails, so the local one was shown."""
    line = _error(argv)
    assert "port 0 is not a destination" in line or "port 0 cannot receive" in line, line


def test_plain_udpkit_prints_the_help() -> None:
    """Plain `udpkit` said "the following arguments are required: COMMAND"."""
    res = run()
    assert res.returncode == 2
    assert res.stdout == b""
    text = res.stderr.decode()
    assert text.startswith("usage: udpkit"), text
    for command in ("serve", "send", "bench", "ping", "connect", "listen", "read"):
        assert f"\n    {command} " in text, text
    assert "exit codes:" in text


@pytest.mark.parametrize("command", ["send", "serve", "bench", "ping", "connect", "relay"])
def test_an_unknown_option_points_at_the_commands_help(command: str) -> None:
    """`udpkit send --frob` pointed at 'udpkit --help', which does not list send's options."""
    args = {"bench": ["127.0.0.1", "5202"], "relay": ["5300", "5202"], "ping": ["::1", "9"]}
    line = _error([command, *args.get(command, []), "--frob"])
    assert line == (
        f"udpkit {command}: error: unrecognized arguments: --frob (see 'udpkit {command} --help')"
    )


@pytest.mark.parametrize(
    "order",
    [("--busy-poll", "127.0.0.1", "0"), ("127.0.0.1", "0", "--busy-poll")],
    ids=["before", "after"],
)
def test_busy_poll_needs_no_value_before_or_after_the_positionals(order: tuple[str, ...]) -> None:
    """`serve --busy-poll` wanted a value, and `--busy-poll 127.0.0.1` would take the
    host for one: a word that is no duration is left to the positionals."""
    with serving(*order, "--echo", "--quiet", banner=False) as srv:
        assert srv.where.startswith("127.0.0.1:"), srv.where
        for ping in (
            ["ping", "--busy-poll", "127.0.0.1", str(srv.port), "-c", "1", "-q"],
            ["ping", "127.0.0.1", str(srv.port), "-c", "1", "-q", "--busy-poll"],
            ["ping", "127.0.0.1", str(srv.port), "-c", "1", "-q", "--busy-poll", "100"],
        ):
            res = run(*ping)
            assert res.returncode == 0, (ping, res.stderr)
            assert b"1 received" in res.stdout, res.stdout


def test_busy_poll_still_takes_a_value_and_refuses_a_bad_one() -> None:
    line = _error(["serve", "--busy-poll", "2s"])
    assert "--busy-poll" in line and "'2s'" in line, line
    res = run("reflect", "--busy-poll", "10", "--help")  # parses, then the help
    assert res.returncode == 0
    assert b"without US, 50" in res.stdout


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["send", "127.0.0.1:5005"], "give the host and the port separately: '127.0.0.1' and"),
        (["send", "-4", "::1", "5005"], "but only IPv4 was asked for: give an IPv4 address"),
        (["send", "-6", "127.0.0.1", "5005"], "but only IPv6 was asked for"),
        (["send", "a", "b", "c", "d"], "too many arguments: d: expected [HOST] [PORT] [MESSAGE]"),
        (["connect", "a", "b", "c"], "too many arguments: c: expected HOST PORT"),
        (["send", "127.0.0.1", "5005", "--ttl", "3"], "for multicast groups, not '127.0.0.1'"),
    ],
)
def test_errors_speak_the_command_lines_words(argv: list[str], needle: str) -> None:
    """Errors said `split_hostport`, `family=AF_INET` and Python list reprs."""
    assert needle in _error(argv)


def test_a_broadcast_without_the_flag_names_the_flag() -> None:
    """The refusal said "(broadcast=True, or --broadcast)": the library's word first."""
    line = _error(["send", "127.255.255.255", "5005", "--timeout", "200ms"], code=1)
    assert line.endswith("it is a broadcast address; add --broadcast to send to it"), line


@needs_netns
def test_the_link_local_hint_names_only_interfaces_that_are_up() -> None:
    """The hint for `send fe80::1 5005` named the first interface, which was down."""
    ns = f"ukt{os.getpid() % 100000}-ll"
    ip = ["ip", "-n", ns, "link"]
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        # Made first, so the down pair has the lowest indexes: the old hint's pick.
        for pair in (("down0", "down1"), ("up0", "up1")):
            subprocess.run([*ip, "add", pair[0], "type", "veth", "peer", "name", pair[1]],
                           check=True, timeout=10)  # fmt: skip
        for name in ("up0", "up1"):
            subprocess.run([*ip, "set", name, "up"], check=True, timeout=10)
        res = subprocess.run(
            ["ip", "netns", "exec", ns, *UDPKIT, "send", "fe80::1", "5005"],
            capture_output=True,
            timeout=20,
            check=False,
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10)
    assert res.returncode == 2, res.stderr
    line = one_line_error(res.stderr)
    assert "(e.g. %up" in line and "down" not in line, line
