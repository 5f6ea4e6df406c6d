"""Scenarios across several hosts and a router, on test hosts in network namespaces.

Host names with several addresses (a namespace's own /etc/hosts), groups that
share a port, a member that leaves during a multicast bench, IPv4 broadcast on
a dual-stack wildcard, link-local scopes in relay targets, ``send --all`` and
udpkit.aio, a relay joining two subnets, routes that end in ICMP errors, and a
path whose MTU is smaller than the sender's link (ICMP "fragmentation needed" /
IPv6 "packet too big").

The bridged hosts come from tests/_netns.py; the routed topology (a - router -
b, two subnets) is built here, named with a per-run prefix of its own.  Every
namespace, link, /etc/netns directory and process made here is removed or
ended (by PID) on the way out; skipped where namespaces cannot be made.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests._netns import Host, hosts, needs_netns
from tests.test_netns_reach import STEP, UDPKIT, running, serving
from tests.test_netns_scenarios import _stop

SETTLE = 0.3  # for datagrams sent with --no-wait to land before a server is stopped


def _udpkit(host: Host, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return host.run(*UDPKIT, *args, timeout=timeout)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def _sysctl(ns: str, *settings: str) -> None:
    for setting in settings:
        subprocess.run(
            ["ip", "netns", "exec", ns, "sysctl", "-qw", setting],
            capture_output=True,
            timeout=10,
            check=False,
        )


def _one_line_error(res: subprocess.CompletedProcess[bytes], code: int) -> str:
    assert res.returncode == code, (res.returncode, res.stderr)
    text = res.stderr.decode()
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    return text.strip()


@contextmanager
def hosts_file(host: Host, text: str) -> Iterator[None]:
    """``text`` as /etc/hosts inside ``host`` (``ip netns exec`` bind-mounts
    /etc/netns/NAME/hosts); the directory is removed on the way out, and
    /etc/netns too when it was made here and is left empty."""
    base = Path("/etc/netns")
    made_base = not base.exists()
    where = base / host.ns
    where.mkdir(parents=True, exist_ok=False)
    try:
        (where / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n" + text)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            (where / "hosts").unlink()
        with contextlib.suppress(OSError):
            where.rmdir()
        if made_base:
            with contextlib.suppress(OSError):
                base.rmdir()  # only if empty: another run may be using it


def _add6(host: Host, addr: str) -> None:
    _ip("-n", host.ns, "-6", "addr", "add", addr, "dev", host.ifname, "nodad")


@contextmanager
def routed(*, forward: bool = True, mtu_b: int | None = None) -> Iterator[Sequence[Host]]:
    """Hosts a (10.81.1.1, fd81:1::1) and b (10.81.2.1, fd81:2::1) on two subnets,
    joined by a router r (.254 / ::fe on each) with forwarding on or off;
    ``mtu_b`` on the r-b link.  Yields ``(a, r, b)``; r's Host is its a-side."""
    tag = f"ukn{os.getpid() % 100000}"
    a, r, b = f"{tag}-a", f"{tag}-r", f"{tag}-b"
    made: list[str] = []
    try:
        for ns in (a, r, b):
            _ip("netns", "add", ns)
            made.append(ns)
            _sysctl(ns, "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
            _ip("-n", ns, "link", "set", "lo", "up")
        fw = "1" if forward else "0"
        _sysctl(r, f"net.ipv4.ip_forward={fw}", f"net.ipv6.conf.all.forwarding={fw}")
        out: list[Host] = []
        for ns, rif, n in ((a, "ra", 1), (b, "rb", 2)):
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", rif, "netns", r)
            if ns == b and mtu_b is not None:
                _ip("-n", ns, "link", "set", "eth0", "mtu", str(mtu_b))
                _ip("-n", r, "link", "set", rif, "mtu", str(mtu_b))
            _ip("-n", ns, "addr", "add", f"10.81.{n}.1/24", "dev", "eth0")
            _ip("-n", ns, "-6", "addr", "add", f"fd81:{n}::1/64", "dev", "eth0", "nodad")
            _ip("-n", r, "addr", "add", f"10.81.{n}.254/24", "dev", rif)
            _ip("-n", r, "-6", "addr", "add", f"fd81:{n}::fe/64", "dev", rif, "nodad")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", r, "link", "set", rif, "up")
            _ip("-n", ns, "route", "add", "default", "via", f"10.81.{n}.254")
            _ip("-n", ns, "-6", "route", "add", "default", "via", f"fd81:{n}::fe")
            out.append(Host(ns, "eth0", f"10.81.{n}.1", f"fd81:{n}::1"))
        yield (out[0], Host(r, "ra", "10.81.1.254", "fd81:1::fe"), out[1])
    finally:
        for ns in reversed(made):
            _ip("netns", "del", ns, check=False)


def _send_stdin(
    host: Host, data: bytes, *args: str, timeout: float = 20
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        host.cmd(*UDPKIT, "send", *args),
        input=data,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


# ------------------------------------------------------------ names with several addresses


@needs_netns
def test_a_name_resolves_to_every_address_and_dash_4_picks_the_ipv4_one() -> None:
    """resolve() returns both addresses of a name in getaddrinfo's order; `send -4 NAME`
    takes the IPv4 one and gets b's answer."""
    with hosts(3) as (a, b, _c):
        _add6(a, "2001:db8::1/64")
        with (
            hosts_file(a, f"2001:db8::3 multi\n{b.v4} multi\n"),
            serving(b, b.v4, "5401", "--echo"),
        ):
            res = a.run(
                sys.executable,
                "-c",
                "import udpkit; print([a.host for a in udpkit.resolve('multi', 5401)])",
                timeout=STEP,
            )
            assert res.returncode == 0, res.stderr
            assert res.stdout.decode().strip() == str(["2001:db8::3", b.v4])
            ok = _udpkit(a, "send", "-4", "multi", "5401", "by name", "--timeout", "2")
            assert ok.returncode == 0, ok.stderr
            assert ok.stdout == b"Message from Server\nb'by name'\n"


@needs_netns
def test_serving_on_a_name_binds_the_first_address_that_works() -> None:
    """serve/reflect/relay bound only a name's first address and failed "cannot assign
    requested address". b's /etc/hosts gives `multi` a foreign address first
    (getaddrinfo sorts the global IPv6 2001:db8::9 before the IPv4 one) and b's own
    10.77.0.2 second."""
    with hosts(2) as (_a, b):
        _add6(b, "2001:db8::2/64")
        with hosts_file(b, f"2001:db8::9 multi\n{b.v4} multi\n"):
            for argv in (
                ["serve", "multi", "5402", "--no-reply"],
                ["reflect", "multi", "5403"],
                ["relay", "multi:5404", f"{b.v4}:5405"],
            ):
                proc = b.popen(*UDPKIT, *argv)
                try:
                    assert proc.stderr is not None
                    line = proc.stderr.readline()
                    assert f"listening on {b.v4}:".encode() in line, (argv, line)
                finally:
                    _stop(proc)


@needs_netns
def test_send_to_a_name_moves_on_when_the_first_address_refuses() -> None:
    """send exited 1 "connection refused" when a name's first address answered ICMP
    port unreachable, without trying the next one (nobody had received the datagram)."""
    with hosts(3) as (a, b, c):
        _add6(a, "2001:db8::1/64")
        _add6(c, "2001:db8::3/64")  # c listens on nothing: ICMP port unreachable
        with (
            hosts_file(a, f"2001:db8::3 multi\n{b.v4} multi\n"),
            serving(b, b.v4, "5406", "--echo"),
        ):
            res = _udpkit(a, "send", "multi", "5406", "anyone", "--timeout", "2")
            assert res.returncode == 0, res.stderr
            assert res.stdout == b"Message from Server\nb'anyone'\n"
            assert res.stderr.decode().splitlines() == [
                "udpkit: nothing listens at [2001:db8::3]:5406 (ICMP port unreachable); "
                f"trying {b.v4}:5406"
            ]


# ------------------------------------------------------------ groups and members


@needs_netns
def test_groups_sharing_a_port_keep_their_traffic_apart() -> None:
    """b is a member of 239.1.7.1 on port 5410 and of ff12::71 on 5411, and (through
    other sockets) of 239.1.7.2 and ff12::72 on other ports; c is a member of
    239.1.7.2 on 5410.  Each socket hears its own group on its own port only."""
    with (
        hosts(3) as (a, b, c),
        serving(b, "--join", "239.1.7.1@eth0", "-p", "5410", "--no-reply") as b4,
        serving(b, "--join", "ff12::71@eth0", "-p", "5411", "--no-reply") as b6,
        serving(b, "--join", "239.1.7.2@eth0", "-p", "5412", "--no-reply") as other4,
        serving(b, "--join", "ff12::72@eth0", "-p", "5413", "--no-reply") as other6,
        serving(c, "--join", "239.1.7.2@eth0", "-p", "5410", "--no-reply") as c4,
    ):
        for group, port in (
            ("239.1.7.1", "5410"),
            ("239.1.7.2", "5410"),
            ("239.1.7.1", "5411"),
            ("239.1.7.2", "5411"),
            ("ff12::72", "5411"),
            ("ff12::71", "5411"),
            ("ff12::71", "5410"),
        ):
            res = _udpkit(a, "send", group, port, f"{group}/{port}", "--iface", "eth0", "--no-wait")
            assert res.returncode == 0, res.stderr
        time.sleep(SETTLE)
        heard = {}
        for name, proc in (("b4", b4), ("b6", b6), ("o4", other4), ("o6", other6), ("c4", c4)):
            out, _ = _stop(proc)
            heard[name] = re.findall(rb"Message from Client:b'([^']*)'", out)
        assert heard == {
            "b4": [b"239.1.7.1/5410"],
            "b6": [b"ff12::71/5411"],
            "o4": [],
            "o6": [],
            "c4": [b"239.1.7.2/5410"],
        }


@needs_netns
def test_two_receivers_of_different_groups_share_a_port_on_one_host() -> None:
    """A second `serve --join` on the port of one host failed "address already in use":
    group receivers now set SO_REUSEADDR, and each still hears only its own group."""
    with (
        hosts(2) as (a, b),
        serving(b, "--join", "239.1.7.5@eth0", "-p", "5415", "--no-reply") as one,
        serving(b, "--join", "239.1.7.6@eth0", "-p", "5415", "--no-reply") as two,
    ):
        for group in ("239.1.7.5", "239.1.7.6"):
            res = _udpkit(a, "send", group, "5415", group, "--iface", "eth0", "--no-wait")
            assert res.returncode == 0, res.stderr
        time.sleep(SETTLE)
        assert re.findall(rb"b'([^']*)'", _stop(one)[0]) == [b"239.1.7.5"]
        assert re.findall(rb"b'([^']*)'", _stop(two)[0]) == [b"239.1.7.6"]


def _finish_after_stopping(
    bench: subprocess.Popen[bytes], victim: subprocess.Popen[bytes], *, after: float
) -> tuple[bytes, bytes]:
    """Stop ``victim`` ``after`` seconds into a bench run; return bench's output."""
    try:
        time.sleep(after)
        _stop(victim)
        return bench.communicate(timeout=30)
    finally:
        if bench.poll() is None:
            _stop(bench)


@needs_netns
def test_multicast_bench_when_one_receiver_leaves_mid_run() -> None:
    """Three members reflect; d stops half-way through a 3 s one-way run.  bench still
    finishes (exit 0), reports b and c whole, and does not report d as complete."""
    join = ("--join", "239.1.7.8@eth0")
    with (
        hosts(4) as (a, b, c, d),
        running(b, "reflect", *join),
        running(c, "reflect", *join),
        running(d, "reflect", *join) as leaver,
    ):
        bench = a.popen(
            *UDPKIT,
            "bench",
            "239.1.7.8",
            "5202",
            "--one-way",
            "--iface",
            "eth0",
            "--duration",
            "3",
            "--rate",
            "500",
            "--json",
        )
        out, err = _finish_after_stopping(bench, leaver, after=1.5)
        assert bench.returncode == 0, err
        doc = json.loads(out)
        sent = doc["total"]["sent_datagrams"]
        assert sent > 1000
        receivers = {r["peer"].split(":")[0]: r for r in doc["flows"][0]["receivers"]}
        for h in (b, c):
            r = receivers[h.v4]
            assert r["unique_datagrams"] + r["lost_datagrams"] == sent, r
            assert r["lost_datagrams"] == 0, r
        gone = receivers.get(d.v4)
        assert gone is None or gone["unique_datagrams"] < sent, gone


@needs_netns
def test_dual_stack_wildcard_hears_ipv4_broadcasts() -> None:
    """`serve '::'` gets limited and subnet broadcasts from another host, shown as IPv4."""
    with hosts(2) as (a, b), serving(b, "::", "5416", "--no-reply") as sb:
        for dest in ("<broadcast>", "10.77.0.255"):
            res = _udpkit(a, "send", dest, "5416", f"bc {dest}", "--broadcast", "--no-wait")
            assert res.returncode == 0, res.stderr
        time.sleep(SETTLE)
        out, _ = _stop(sb)
        assert re.findall(rb"b'bc ([^']*)'", out) == [b"<broadcast>", b"10.77.0.255"]
        assert out.count(b"Client IP Address:('10.77.0.1',") == 2, out


# ------------------------------------------------------------ link-local scopes

AIO_REQUEST = textwrap.dedent(
    """
    import asyncio, sys
    import udpkit.aio

    async def main(host, port):
        async with await udpkit.aio.open_udp(host, port) as ep:
            r = await ep.request(b"aio over link-local", timeout=2.0, retries=1)
            print(r.data.decode(), r.peer[0], r.peer[-1], ep.stats.icmp_errors, flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


@needs_netns
def test_link_local_scopes_in_relay_send_all_and_aio() -> None:
    """A relay listening and forwarding on fe80::...%eth0, `send --all` to a scoped
    unicast, and udpkit.aio open_udp/request to one."""
    with hosts(3) as (a, b, c):
        b_ll, c_ll = b.link_local(), c.link_local()
        with (
            serving(c, "::", "5420", "--echo") as sc,
            running(b, "relay", f"[{b_ll}%eth0]:5421", f"[{c_ll}%eth0]:5420") as relay,
        ):
            via = _udpkit(a, "send", f"{b_ll}%eth0", "5421", "via ll relay")
            assert via.returncode == 0, via.stderr
            assert via.stdout == b"Message from Server\nb'via ll relay'\n"
            every = _udpkit(
                a, "send", f"{c_ll}%eth0", "5420", "all ll", "--all", "--timeout", "0.5"
            )
            assert every.returncode == 0, every.stderr
            assert every.stdout == b"Message from Server\nb'all ll'\n"
            assert every.stderr.decode().splitlines()[-1] == "udpkit: 1 reply"
            res = a.run(sys.executable, "-c", AIO_REQUEST, f"{c_ll}%eth0", "5420", timeout=STEP)
            assert res.returncode == 0, res.stderr
            scope = int(a.run("cat", "/sys/class/net/eth0/ifindex").stdout)
            assert res.stdout.decode().split() == [
                "aio",
                "over",
                "link-local",
                c_ll,
                str(scope),
                "{}",
            ]
            out, _ = _stop(sc)
            assert f"Client IP Address:('{b_ll}',".encode() in out  # the relay's leg
            _, err = _stop(relay)
            assert re.search(rb"up in=1 out=1 ", err), err


# ------------------------------------------------------------ two subnets and a router


@needs_netns
def test_relay_joins_two_subnets_when_the_router_does_not_forward() -> None:
    """r does not forward: a cannot reach b, except through a relay on r, whose
    upstream leg leaves from r's address on b's subnet."""
    with routed(forward=False) as (a, r, b), serving(b, "::", "5430", "--echo") as sb:
        direct = _udpkit(a, "send", b.v4, "5430", "direct", "--timeout", "0.5")
        assert direct.returncode == 3, direct.stderr
        with (
            running(r, "relay", "10.81.1.254:5431", f"{b.v4}:5430") as r4,
            running(r, "relay", "[fd81:1::fe]:5432", f"[{b.v6}]:5430") as r6,
        ):
            for dest, port in (("10.81.1.254", "5431"), ("fd81:1::fe", "5432")):
                res = _udpkit(a, "send", dest, port, f"relayed {port}")
                assert res.returncode == 0, res.stderr
                assert res.stdout == f"Message from Server\nb'relayed {port}'\n".encode()
            for proc in (r4, r6):
                _, err = _stop(proc)
                assert re.search(rb"up in=1 out=1 .*\n.*down in=1 out=1 ", err), err
        out, _ = _stop(sb)
        assert b"Client IP Address:('10.81.2.254'," in out
        assert b"Client IP Address:('fd81:2::fe'," in out
        assert b"direct" not in out


@needs_netns
def test_routes_that_end_in_errors() -> None:
    """No route on the sender: exit 1 at once (send and bench).  A router that
    rejects with 'administratively prohibited': exit 1.  A router without a route
    (ICMP net unreachable, which Linux passes to a connected socket only with
    IP_RECVERR): a timeout, exit 3.  An ICMP port unreachable from a host beyond
    the router: exit 1 'connection refused'."""
    with routed() as (a, r, b):
        _ip("-n", a.ns, "route", "add", "unreachable", "10.202.0.0/16")
        _ip("-n", a.ns, "-6", "route", "add", "unreachable", "fd98::/16")
        _ip("-n", r.ns, "route", "add", "prohibit", "10.201.0.0/16")
        _ip("-n", r.ns, "route", "add", "unreachable", "10.200.0.0/16")
        for dest in ("10.202.0.1", "fd98::1"):
            for argv in (["send", dest, "5440", "x"], ["bench", dest, "5440", "-n", "5"]):
                line = _one_line_error(_udpkit(a, *argv, "--timeout", "1"), 1)
                assert "no route to host" in line, line
        line = _one_line_error(_udpkit(a, "send", "10.201.0.1", "5440", "x", "--timeout", "1"), 1)
        assert "no route to host" in line, line
        silent = _udpkit(a, "send", "10.200.0.1", "5440", "x", "--timeout", "0.5")
        assert silent.returncode == 3, silent.stderr
        for dest in (b.v4, b.v6):
            # A fresh topology sometimes loses the very first ICMP (neighbours still
            # resolving): a second attempt must then see the refusal.
            res = _udpkit(a, "send", dest, "5441", "x", "--timeout", "1", "--retries", "1")
            line = _one_line_error(res, 1)
            assert "connection refused" in line, line


@needs_netns
def test_directed_broadcast_to_a_subnet_beyond_the_router() -> None:
    """r forwards directed broadcasts (bc_forwarding): `send 10.81.2.255 --broadcast`
    from a reaches b's server, whose unicast answer is seen (--all too).  Without
    --broadcast a cannot know the address is a broadcast: its connected socket
    filters b's answer, a timeout (exit 3), while b still gets the datagram."""
    with routed() as (a, r, b):
        _sysctl(r.ns, *(f"net.ipv4.conf.{i}.bc_forwarding=1" for i in ("all", "ra", "rb")))
        with serving(b, "", "5487", "--echo") as sb:
            one = _udpkit(a, "send", "10.81.2.255", "5487", "directed", "--broadcast")
            assert one.returncode == 0, one.stderr
            assert one.stdout == b"Message from Server\nb'directed'\n"
            assert f"udpkit: reply from {b.v4}:5487".encode() in one.stderr
            every = _udpkit(
                a, "send", "10.81.2.255", "5487", "all", "--broadcast", "--all", "--timeout", "0.5"
            )
            assert every.returncode == 0, every.stderr
            assert every.stderr.decode().splitlines()[-1] == "udpkit: 1 reply"
            plain = _udpkit(a, "send", "10.81.2.255", "5487", "plain", "--timeout", "0.5")
            assert plain.returncode == 3, plain.stderr
            out, _ = _stop(sb)
            assert re.findall(rb"b'(\w+)'", out) == [b"directed", b"all", b"plain"]
            assert out.count(f"Client IP Address:('{a.v4}',".encode()) == 3


@needs_netns
def test_relay_counts_an_upstream_that_refuses_and_carries_on() -> None:
    """The relay's target beyond the router is closed at first: ICMP port unreachable
    is counted (upstream_refused), not fatal; once b serves, the same relay works."""
    with routed() as (a, r, b), running(r, "relay", "10.81.1.254:5450", f"{b.v4}:5451") as rl:
        for _ in range(2):
            res = _udpkit(a, "send", "10.81.1.254", "5450", "knock", "--timeout", "0.5")
            assert res.returncode == 3, res.stderr
        with serving(b, b.v4, "5451", "--echo", "--trust", "10.81.0.0/16"):
            ok = _udpkit(a, "send", "10.81.1.254", "5450", "open now")
            assert ok.returncode == 0, ok.stderr
            assert ok.stdout == b"Message from Server\nb'open now'\n"
        assert rl.poll() is None
        _, err = _stop(rl)
        m = re.search(rb"upstream_refused=(\d+)", err)
        assert m is not None and int(m.group(1)) >= 1, err


# ------------------------------------------------------------ a smaller MTU beyond the router

AIO_BIG = textwrap.dedent(
    """
    import asyncio, sys
    import udpkit.aio

    async def main(host, port, size):
        async with await udpkit.aio.open_udp(host, port) as ep:
            r = await ep.request(b"z" * size, timeout=1.0, retries=2)
            print(r.length, sorted(ep.stats.icmp_errors), flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)


@needs_netns
def test_aio_request_survives_packet_too_big() -> None:
    """b's link has MTU 1280.  The router answers a's first big datagram with ICMP
    "fragmentation needed" / "packet too big"; udpkit.aio counts that as a soft ICMP
    error and its retry (fragmented to the learned path MTU) gets the answer."""
    with (
        routed(mtu_b=1280) as (a, _r, b),
        serving(b, "::", "5460", "--echo", "--trust", "fd81::/16", "--trust", "10.81.0.0/16"),
    ):
        for dest, size in ((b.v6, "3000"), (b.v4, "1400")):
            res = a.run(sys.executable, "-c", AIO_BIG, dest, "5460", size, timeout=STEP)
            assert res.returncode == 0, res.stderr
            assert res.stdout.decode().strip() == f"{size} ['EMSGSIZE']", res.stdout


@needs_netns
def test_send_retries_after_packet_too_big() -> None:
    """`send --retries 1` gave up "message too long" when a router answered with ICMP
    packet too big / fragmentation needed; the kernel has learned the path MTU, and a
    resend goes through fragmented."""
    with (
        routed(mtu_b=1280) as (a, _r, b),
        serving(b, "::", "5461", "--echo", "--trust", "fd81::/16", "--trust", "10.81.0.0/16"),
    ):
        for dest, size in ((b.v6, 3000), (b.v4, 1400)):
            res = _send_stdin(a, b"m" * size, dest, "5461", "-", "--timeout", "1", "--retries", "1")
            assert res.returncode == 0, (dest, res.stderr)
            assert res.stdout.startswith(b"Message from Server\nb'mmm"), res.stdout


@needs_netns
def test_bench_counts_probes_lost_to_a_smaller_path_mtu() -> None:
    """bench died "bench receive: eMSGSIZE" on an ICMP packet too big; it now counts
    it by errno and carries on (and sends no GSO batch larger than the path MTU)."""
    with (
        routed(mtu_b=1280) as (a, _r, b),
        running(b, "reflect", "::", "5462"),
    ):
        for dest, size in ((b.v6, "3000"), (b.v4, "1400")):
            res = _udpkit(
                a, "bench", dest, "5462", "--count", "50", "--size", size, "--json", timeout=30
            )
            assert b"eMSGSIZE" not in res.stderr, res.stderr
            assert res.returncode == 0, (dest, res.stderr)
            fwd = json.loads(res.stdout)["total"]["forward"]
            assert fwd["received_datagrams"] + fwd["lost_datagrams"] == 50
            assert fwd["received_datagrams"] >= 45


@needs_netns
def test_relay_carries_on_after_packet_too_big_upstream() -> None:
    """A relay on a forwards 3000-byte datagrams to b beyond the 1280-byte link: the
    first is lost to the ICMP packet-too-big, which the relay counts (in
    upstream_refused, its one ICMP counter) without stopping; the next ones arrive."""
    with (
        routed(mtu_b=1280) as (a, _r, b),
        serving(b, "::", "5463", "--echo", "--trust", "fd81::/16"),
        running(a, "relay", "[::1]:5464", f"[{b.v6}]:5463") as relay,
    ):
        codes = []
        for _ in range(3):
            res = _send_stdin(a, b"r" * 3000, "::1", "5464", "-", "--timeout", "1")
            codes.append(res.returncode)
        assert codes == [3, 0, 0], codes
        assert relay.poll() is None
        _, err = _stop(relay)
        assert re.search(rb"upstream_refused=1 ", err), err
        assert re.search(rb"up in=3 out=3 .*\n.*down in=2 out=2 ", err), err


MROUTE = textwrap.dedent(
    """
    import socket, struct, sys, time
    MRT_INIT, MRT_ADD_VIF, MRT_ADD_MFC, VIFF_USE_IFINDEX = 200, 202, 204, 0x8
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    s.setsockopt(socket.IPPROTO_IP, MRT_INIT, struct.pack("i", 1))
    for vifi, name in enumerate(("ra", "rb")):
        index = socket.if_nametoindex(name)
        vif = struct.pack("=HBBIi4s", vifi, VIFF_USE_IFINDEX, 1, 0, index, bytes(4))
        s.setsockopt(socket.IPPROTO_IP, MRT_ADD_VIF, vif)
    ttls = bytearray(32)
    ttls[1] = 1  # forward out of rb what arrives on ra with a TTL above 1
    mfc = (
        socket.inet_aton(sys.argv[1]) + socket.inet_aton(sys.argv[2]) + struct.pack("=H", 0)
        + bytes(ttls) + bytes(2) + struct.pack("=IIIi", 0, 0, 0, 0)
    )
    s.setsockopt(socket.IPPROTO_IP, MRT_ADD_MFC, mfc)
    print("READY", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sys.stdin.read(1):
        pass
    """
)


@needs_netns
def test_multicast_ttl_decides_whether_a_group_crosses_a_router() -> None:
    """r routes (10.81.1.1, 239.3.3.3) from a's subnet to b's (a static multicast
    route).  TTL 1 stays on a's link, TTL 2 and 3 cross; bench with --ttl 2 hears b's
    reflector beyond the router, with --ttl 1 nobody answers (exit 3)."""
    with routed() as (a, r, b):
        mroute = subprocess.Popen(
            r.cmd(sys.executable, "-c", MROUTE, a.v4, "239.3.3.3"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert mroute.stdout is not None
            ready = mroute.stdout.readline()
            if ready != b"READY\n":
                assert mroute.stderr is not None
                pytest.skip(f"no multicast routing here: {mroute.stderr.read()[-300:]!r}")
            join = ("--join", "239.3.3.3@eth0")
            with serving(b, *join, "-p", "5470", "--no-reply") as sb:
                for ttl in ("1", "2", "3"):
                    res = _udpkit(
                        a,
                        "send",
                        "239.3.3.3",
                        "5470",
                        f"ttl{ttl}",
                        "--iface",
                        "eth0",
                        "--ttl",
                        ttl,
                        "--no-wait",
                    )
                    assert res.returncode == 0, res.stderr
                time.sleep(SETTLE)
                out, _ = _stop(sb)
                assert re.findall(rb"b'(ttl\d)'", out) == [b"ttl2", b"ttl3"]
            with running(b, "reflect", *join):
                base = ["bench", "239.3.3.3", "5202", "--one-way", "--iface", "eth0", "-n", "100"]
                far = _udpkit(a, *base, "--ttl", "2", "--json", timeout=30)
                assert far.returncode == 0, far.stderr
                receivers = json.loads(far.stdout)["flows"][0]["receivers"]
                assert [(r["peer"], r["unique_datagrams"]) for r in receivers] == [
                    (f"{b.v4}:5202", 100)
                ]
                near = _udpkit(a, *base, "--ttl", "1", timeout=30)
                assert near.returncode == 3, near.stderr
        finally:
            _stop(mroute)


AIO_DISCOVER = textwrap.dedent(
    """
    import asyncio, sys
    import udpkit, udpkit.aio

    async def main(port):
        for host in ("<broadcast>", "10.77.0.255"):
            async with await udpkit.aio.open_udp(host, port, broadcast=True) as ep:
                every = await ep.request_all(b"roll call", timeout=0.7)
                print(host, sorted(udpkit.format_sockaddr(d.peer) for d in every), flush=True)
                first = await ep.request(b"first", timeout=2)
                print(host, first.data.decode(), flush=True)

    asyncio.run(main(int(sys.argv[1])))
    """
)

AIO_ECHO = textwrap.dedent(
    """
    import asyncio, sys
    import udpkit.aio

    async def main(host, port):
        async with await udpkit.aio.serve(host, port, lambda d: d.data) as server:
            print("READY", flush=True)
            await asyncio.sleep(8)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


@needs_netns
def test_aio_discovery_over_broadcast_across_hosts() -> None:
    """udpkit.aio servers on b ('::') and c (''); a discovers both with request_all
    over the limited and the subnet broadcast, and request takes the first answer."""
    with hosts(3) as (a, b, c):
        procs = [
            subprocess.Popen(
                h.cmd(sys.executable, "-c", AIO_ECHO, host, "5485"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for h, host in ((b, "::"), (c, ""))
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                assert proc.stdout.readline() == b"READY\n"
            res = a.run(sys.executable, "-c", AIO_DISCOVER, "5485", timeout=STEP)
            assert res.returncode == 0, res.stderr
            both = str([f"{b.v4}:5485", f"{c.v4}:5485"])
            assert res.stdout.decode().splitlines() == [
                f"<broadcast> {both}",
                "<broadcast> first",
                f"10.77.0.255 {both}",
                "10.77.0.255 first",
            ]
        finally:
            for proc in procs:
                _stop(proc)


@needs_netns
def test_unicast_bench_when_the_reflector_stops_mid_run() -> None:
    """The reflector on b stops half-way through a 2 s run: bench keeps sending
    (ICMP port unreachable is counted, not fatal), exits 0 and reports the loss."""
    with hosts(2) as (a, b), running(b, "reflect", b.v4, "5486") as refl:
        bench = a.popen(
            *UDPKIT, "bench", b.v4, "5486", "--duration", "2", "--rate", "500", "--json"
        )
        out, err = _finish_after_stopping(bench, refl, after=1.0)
        assert bench.returncode == 0, err
        total = json.loads(out)["total"]
        assert total["sent_datagrams"] >= 900
        lost = total["round_trip"]["lost_datagrams"] if "round_trip" in total else None
        assert lost is not None and lost >= 300, total


@needs_netns
def test_join_without_a_multicast_route_names_the_interface() -> None:
    """r has two interfaces and no default route: `serve --join 239.4.4.4` says to
    name the interface (exit 1, one line)."""
    with routed() as (_a, r, _b):
        for argv in (
            ["serve", "--join", "239.4.4.4", "-p", "5495"],
            ["reflect", "--join", "239.4.4.4"],
        ):
            line = _one_line_error(_udpkit(r, *argv, timeout=STEP), 1)
            assert "GROUP@IFACE" in line, (argv, line)


@needs_netns
def test_sending_to_a_group_without_a_multicast_route_names_iface() -> None:
    """send and bench to a group with no route said only "network is unreachable";
    like serve --join, they now name the fix (--iface IFACE)."""
    with routed() as (_a, r, _b):
        for argv in (
            ["send", "239.4.4.4", "5496", "x", "--no-wait"],
            ["bench", "239.4.4.4", "5496", "--one-way", "-n", "3"],
        ):
            line = _one_line_error(_udpkit(r, *argv, timeout=STEP), 1)
            assert "--iface" in line, (argv, line)
