"""Broadcast, multicast, dual stack and link-local scopes across real test hosts.

Each test builds hosts in network namespaces joined by a bridge (tests/_netns.py),
runs udpkit inside them and tears everything down; skipped where namespaces
cannot be made.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests._netns import Host, hosts, needs_netns

UDPKIT = [sys.executable, "-m", "udpkit"]
STEP = 10.0


def serving(host: Host, *args: str) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``udpkit serve ARGS`` inside ``host``, ready once it says it is listening."""
    return running(host, "serve", *args)


@contextmanager
def running(host: Host, command: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``udpkit COMMAND ARGS`` inside ``host``, ready once it says it is listening;
    ended by PID on the way out."""
    proc = host.popen(*UDPKIT, command, *args)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + STEP
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if b"listening on" in line:
                break
            if not line:
                raise AssertionError(f"{command} {args} did not start")
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.communicate(timeout=STEP)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=STEP)


def _output(proc: subprocess.Popen[bytes]) -> bytes:
    proc.terminate()
    out, _ = proc.communicate(timeout=STEP)
    return out


@needs_netns
def test_subnet_and_limited_broadcast_reach_every_host() -> None:
    with (
        hosts(3) as (a, b, c),
        serving(b, "", "5005", "--no-reply") as sb,
        serving(c, "", "5005", "--no-reply") as sc,
    ):
        for dest in ("10.77.0.255", "<broadcast>"):
            res = a.run(*UDPKIT, "send", dest, "5005", f"to {dest}", "--broadcast", "--no-wait")
            assert res.returncode == 0, res.stderr
        time.sleep(0.3)
        out_b, out_c = _output(sb), _output(sc)
        for out in (out_b, out_c):
            assert b"to 10.77.0.255" in out
            assert b"to <broadcast>" in out
            assert b"('10.77.0.1'," in out


@needs_netns
def test_broadcast_without_the_flag_is_explained() -> None:
    with hosts(2) as (a, _b):
        res = a.run(*UDPKIT, "send", "10.77.0.255", "5005", "x", "--no-wait")
        assert res.returncode == 1
        assert b"--broadcast" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


@needs_netns
def test_multicast_reaches_members_only() -> None:
    """Host b joins the group, host c listens on the port without joining."""
    for group, family_flag in (("239.1.2.3", "-4"), ("ff12::1234", "-6")):
        with (
            hosts(3) as (a, b, c),
            serving(
                b, "--join", f"{group}@eth0", family_flag, "--no-reply", "--port", "5007"
            ) as sb,
        ):
            wildcard = "::" if ":" in group else ""
            with serving(c, wildcard, "5007", "--no-reply") as sc:
                res = a.run(
                    *UDPKIT,
                    "send",
                    group,
                    "5007",
                    "hello group",
                    "--iface",
                    "eth0",
                    "--ttl",
                    "1",
                    "--no-wait",
                )
                assert res.returncode == 0, res.stderr
                time.sleep(0.3)
                assert b"hello group" in _output(sb)
                assert b"hello group" not in _output(sc)


@needs_netns
def test_member_that_left_receives_nothing() -> None:
    """Membership ends with the server: a later listener that did not join hears nothing."""
    with hosts(2) as (a, b):
        send = [*UDPKIT, "send", "239.1.2.4", "5008", "m", "--iface", "eth0", "--no-wait"]
        with serving(b, "--join", "239.1.2.4@eth0", "--port", "5008", "--no-reply") as sb:
            assert a.run(*send).returncode == 0
            time.sleep(0.3)
            assert b"Message from Client:b'm'" in _output(sb)
        with serving(b, "", "5008", "--no-reply") as sb2:
            assert a.run(*send).returncode == 0
            time.sleep(0.3)
            assert b"Message from Client" not in _output(sb2)


@needs_netns
def test_dual_stack_wildcard_serves_ipv4_and_ipv6() -> None:
    # --echo: a reply no larger than the request fits the amplification budget.
    with hosts(2) as (a, b), serving(b, "::", "5009", "--echo") as sb:
        v4 = a.run(*UDPKIT, "send", b.v4, "5009", "over v4")
        v6 = a.run(*UDPKIT, "send", b.v6, "5009", "over v6")
        assert v4.returncode == 0, v4.stderr
        assert v6.returncode == 0, v6.stderr
        out = _output(sb)
        assert b"Client IP Address:('10.77.0.1'," in out  # shown as IPv4, not ::ffff:
        assert b"Client IP Address:('fd77::1'," in out


@needs_netns
def test_ipv6_link_local_with_scope_id() -> None:
    with hosts(2) as (a, b), serving(b, "::", "5010", "--echo") as sb:
        target = f"{b.link_local()}%eth0"
        res = a.run(*UDPKIT, "send", target, "5010", "via link-local")
        assert res.returncode == 0, res.stderr
        assert b"via link-local" in res.stdout
        bracketed = a.run(*UDPKIT, "send", f"[{target}]", "5010", "again")
        assert bracketed.returncode == 0, bracketed.stderr
        assert b"via link-local" in _output(sb)


@needs_netns
def test_bench_between_two_hosts() -> None:
    """bench on one test host against reflect on another: every probe accounted for."""
    import json

    with hosts(2) as (a, b), running(b, "reflect", b.v4, "5202"):
        res = a.run(
            *UDPKIT,
            "bench",
            b.v4,
            "5202",
            "--count",
            "2000",
            "--rate",
            "20k",
            "--json",
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        fwd, ret = doc["total"]["forward"], doc["total"]["return"]
        assert doc["total"]["sent_datagrams"] == 2000
        # A clean bridge: what was sent arrived, or its loss is attributed.
        for d in (fwd, ret):
            assert d["lost_datagrams"] == (
                d["lost_sender_datagrams"]
                + d["lost_path_datagrams"]
                + d["lost_receiver_kernel_datagrams"]
            )
        assert fwd["received_datagrams"] + fwd["lost_datagrams"] == 2000
        assert doc["total"]["rtt_p50_ms"] > 0


@needs_netns
def test_multicast_bench_reports_each_receiver() -> None:
    """One sender, two group members: loss is reported per receiver."""
    import json

    join = ("--join", "239.1.2.6@eth0")
    with hosts(3) as (a, b, c), running(b, "reflect", *join), running(c, "reflect", *join):
        res = a.run(
            *UDPKIT,
            "bench",
            "239.1.2.6",
            "5202",
            "--one-way",
            "--iface",
            "eth0",
            "--count",
            "1000",
            "--rate",
            "10k",
            "--json",
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        receivers = doc["flows"][0]["receivers"]
        assert sorted(r["peer"].split(":")[0] for r in receivers) == [b.v4, c.v4]
        for r in receivers:
            assert r["unique_datagrams"] + r["lost_datagrams"] == 1000
        without = a.run(*UDPKIT, "bench", "239.1.2.6", "5202", "--count", "10")
        assert without.returncode == 2 and b"--one-way" in without.stderr
