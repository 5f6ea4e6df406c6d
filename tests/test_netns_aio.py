"""udpkit.aio and the multicast API across real test hosts (network namespaces).

Host b runs a small asyncio program that joins a group, hears one datagram,
leaves and then must hear nothing; host a sends with udpkit.aio too. Skipped
where namespaces cannot be made.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from tests._netns import SUBNET4, Host, hosts, needs_netns

STEP = 10.0

RECEIVER = textwrap.dedent(
    """
    import asyncio, socket, sys
    import udpkit, udpkit.aio

    async def main(group, port, family):
        async with udpkit.aio.bind_udp("", port, family=family) as ep:
            ep.join_group(group, iface="eth0")
            print("READY", flush=True)
            d = await ep.recv(timeout=5)
            print("GOT", d.data.decode(), d.peer[0], d.peer[-1] if ":" in group else "", flush=True)
            ep.leave_group(group, iface="eth0")
            try:
                ep.leave_group(group, iface="eth0")
            except udpkit.NetworkError as exc:
                print("LEAVE-AGAIN", type(exc).__name__, flush=True)
            print("LEFT", flush=True)
            try:
                d = await ep.recv(timeout=1.0)
                print("GOT-AFTER-LEAVE", d.data.decode(), flush=True)
            except udpkit.Timeout:
                print("NOTHING", flush=True)

    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), fam))
    """
)

SENDER = textwrap.dedent(
    """
    import asyncio, sys
    import udpkit.aio

    async def main(group, port, text):
        async with udpkit.aio.open_udp(group, port) as ep:
            ep.set_multicast(iface="eth0", ttl=1, loop=False)
            await ep.send(text.encode())
            print("SENT", ep.stats.sent, flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
    """
)


def _line(proc: subprocess.Popen[str], want: str) -> str:
    """The next stdout line of ``proc``, which must start with ``want``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + STEP
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(want):
            return line.strip()
    assert proc.stderr is not None
    raise AssertionError(f"no {want!r} line; stderr: {proc.stderr.read()[-800:]}")


@contextlib.contextmanager
def _program(host: Host, source: str, *argv: str) -> Iterator[subprocess.Popen[str]]:
    """Run a Python program on ``host``; kill it (by its PID) if it outlives the block."""
    proc = subprocess.Popen(
        host.cmd(sys.executable, "-c", source, *argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=STEP)


def _send(host: Host, group: str, port: int, text: str) -> None:
    res = host.run(sys.executable, "-c", SENDER, group, str(port), text, timeout=STEP)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().strip() == "SENT 1"


@needs_netns
@pytest.mark.parametrize("group", ["239.5.6.7", "ff12::5:6:7"])
def test_aio_endpoint_joins_hears_and_leaves(group: str) -> None:
    port = 5031
    with hosts(2) as (a, b), _program(b, RECEIVER, group, str(port)) as proc:
        _line(proc, "READY")
        _send(a, group, port, "to-the-group")
        got = _line(proc, "GOT").split()
        if ":" in group:
            # A link-scope group: the source is a's link-local address, and the
            # peer carries the scope as an index, as recvfrom gives it.
            scope = int(b.run("cat", "/sys/class/net/eth0/ifindex").stdout)
            assert got == ["GOT", "to-the-group", a.link_local(), str(scope)]
        else:
            assert got == ["GOT", "to-the-group", a.v4]
        assert _line(proc, "LEAVE-AGAIN") == "LEAVE-AGAIN NetworkError"
        _line(proc, "LEFT")
        _send(a, group, port, "after-leave")
        assert _line(proc, "NOTHING") == "NOTHING"
        assert proc.wait(timeout=STEP) == 0


@needs_netns
def test_send_all_prints_every_responder() -> None:
    """`send --all` to a broadcast or a group collects every responder's reply, each
    with its source; the default shows the first one only."""
    from tests.test_netns_reach import UDPKIT, serving

    with (
        hosts(3) as (a, b, c),
        serving(b, "", "5032", "--echo"),
        serving(c, "", "5032", "--echo"),
    ):
        res = a.run(
            *UDPKIT,
            "send",
            "10.77.0.255",
            "5032",
            "roll call",
            "--broadcast",
            "--all",
            "--timeout",
            "0.7",
            timeout=STEP,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout == b"Message from Server\nb'roll call'\n" * 2
        err = res.stderr.decode()
        assert sorted(line for line in err.splitlines() if "reply from" in line) == [
            f"udpkit: reply from {b.v4}:5032",
            f"udpkit: reply from {c.v4}:5032",
        ]
        assert err.splitlines()[-1] == "udpkit: 2 replies"
        # Nobody on that port: exit 3 (timeout), after the whole --timeout.
        none = a.run(
            *UDPKIT,
            "send",
            "10.77.0.255",
            "5033",
            "anyone",
            "--broadcast",
            "--all",
            "--timeout",
            "0.3",
            timeout=STEP,
        )
        assert none.returncode == 3
        assert none.stderr.decode().count("\n") == 1


NO_ROUTE = textwrap.dedent(
    """
    import asyncio, sys
    import udpkit, udpkit.aio

    async def main(dest):
        async with udpkit.aio.bind_udp("", 0, family=udpkit.aio.socket.AF_INET6 if ":" in dest
                                       else udpkit.aio.socket.AF_INET) as ep:
            for _ in range(2):
                try:
                    await ep.send(b"probe", (dest, 9))
                    print("SENT", flush=True)
                except udpkit.NetworkError as exc:
                    print("RAISED", type(exc).__name__, exc.errno, flush=True)
            try:
                got = await ep.request_all(b"who", (dest, 9), timeout=0.2)
                print("ALL", len(got), flush=True)
            except udpkit.NetworkError as exc:
                print("ALL-RAISED", exc.errno, flush=True)
            print("STATS", ep.stats.sent, sorted(ep.stats.icmp_errors), flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


@needs_netns
@pytest.mark.parametrize("dest", ["198.51.100.1", "2001:db8::1"], ids=["ipv4", "ipv6"])
def test_a_send_with_no_route_raises_and_is_not_called_icmp(dest: str) -> None:
    """A datagram the kernel refused at once (ENETUNREACH on an unconnected endpoint)
    was counted twice as an ICMP report and send() returned normally, so discovery
    read "nobody answered" when nothing had been sent."""
    import errno

    with hosts(1) as (a,):
        v6 = ["-6"] if ":" in dest else []
        subprocess.run(["ip", "-n", a.ns, *v6, "route", "del", "default"], check=True, timeout=STEP)
        res = a.run(sys.executable, "-c", NO_ROUTE, dest, timeout=STEP)
    out = res.stdout.decode()
    assert res.returncode == 0, res.stderr.decode()[-800:]
    assert out.splitlines() == [
        f"RAISED NetworkError {errno.ENETUNREACH}",
        f"RAISED NetworkError {errno.ENETUNREACH}",
        f"ALL-RAISED {errno.ENETUNREACH}",
        "STATS 0 []",
    ]


RESPONDERS = textwrap.dedent(
    """
    import asyncio, sys
    import udpkit, udpkit.aio

    ANSWER = b"I am host b, and this answer is longer than the probe"

    async def main(lan):
        strict = await udpkit.aio.serve("", 5040, lambda d: ANSWER)
        trusting = await udpkit.aio.serve(
            "", 5041, lambda d: ANSWER, policy=udpkit.Policy(trust=[lan])
        )
        print("READY", flush=True)
        loop = asyncio.get_running_loop()
        end = loop.time() + 8
        while (strict.stats.received, trusting.stats.received) < (1, 1) and loop.time() < end:
            await asyncio.sleep(0.02)
        for name, srv in (("STRICT", strict), ("TRUSTING", trusting)):
            st = srv.stats
            print(name, st.sent, sorted(st.policy.items()), flush=True)
            await srv.aclose()

    asyncio.run(main(sys.argv[1]))
    """
)

DISCOVER = textwrap.dedent(
    """
    import asyncio, sys
    import udpkit.aio

    async def main(host):
        async with udpkit.aio.bind_udp("", 0) as ep:
            for port in (5040, 5041):
                got = await ep.request_all(b"who?", (host, port), timeout=0.5)
                print("ANSWERS", port, len(got), flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


@needs_netns
def test_discovery_answers_over_the_budget_are_counted_in_server_stats() -> None:
    """On a LAN a responder whose answer outgrows the probe sends nothing by default
    (anti-amplification), and server.stats said nothing about it; trusting the LAN
    lets the answer go."""
    with hosts(2) as (a, b), _program(b, RESPONDERS, f"{SUBNET4}.0/24") as proc:
        _line(proc, "READY")
        res = a.run(sys.executable, "-c", DISCOVER, b.v4, timeout=STEP)
        assert res.returncode == 0, res.stderr.decode()[-800:]
        assert res.stdout.decode().splitlines() == ["ANSWERS 5040 0", "ANSWERS 5041 1"]
        assert _line(proc, "STRICT") == "STRICT 0 [('admitted', 1), ('over_budget', 1)]"
        assert _line(proc, "TRUSTING") == "TRUSTING 1 [('admitted', 1)]"
        assert proc.wait(timeout=STEP) == 0
