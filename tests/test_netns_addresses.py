"""Addresses and interfaces, checked across real test hosts.

Link-scope IPv6 groups under bench, link-local unicast without a scope, and the
flow labels of a dual-stack relay.  Each test builds hosts in network namespaces
joined by a bridge (tests/_netns.py), runs udpkit inside them, ends what it
started by PID and tears the hosts down; skipped where namespaces cannot be made.
"""

from __future__ import annotations

import json
import re
import subprocess

from tests._netns import Host, hosts, needs_netns
from tests.test_netns_reach import UDPKIT, running
from tests.test_netns_scenarios import _stop


def _udpkit(host: Host, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return host.run(*UDPKIT, *args, timeout=timeout)


def _one_line_error(res: subprocess.CompletedProcess[bytes], code: int = 2) -> str:
    assert res.returncode == code, (res.returncode, res.stderr)
    text = res.stderr.decode()
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    return text.strip()


@needs_netns
def test_bench_to_a_link_scope_group_with_iface() -> None:
    """`bench ff12::6 5202 --one-way --iface eth0` failed "connect to [ff12::6]:5202:
    invalid argument" (also ff02::6): it connected before setting IPV6_MULTICAST_IF."""
    for group in ("ff12::6", "ff02::6"):
        with (
            hosts(3) as (a, b, c),
            running(b, "reflect", "--join", f"{group}@eth0"),
            running(c, "reflect", "--join", f"{group}@eth0"),
        ):
            for dest, extra in ((group, ["--iface", "eth0"]), (f"{group}%eth0", [])):
                res = _udpkit(
                    a, "bench", dest, "5202", "--one-way", *extra, "--count", "10", "--json"
                )
                assert res.returncode == 0, (dest, res.stderr)
                doc = json.loads(res.stdout)
                receivers = doc["flows"][0]["receivers"]
                peers = sorted(r["peer"] for r in receivers)
                want = sorted(f"[{h.link_local()}%eth0]:5202" for h in (b, c))
                assert peers == want, (dest, peers)
                for r in receivers:
                    assert r["unique_datagrams"] + r["lost_datagrams"] == 10
            line = _one_line_error(_udpkit(a, "bench", group, "5202", "--one-way", "-n", "5"))
            assert f"{group} is link-scope" in line and "--iface IFACE" in line, line


@needs_netns
def test_link_local_unicast_without_a_scope_is_a_usage_error() -> None:
    """`send fe80::... 5107 x` and `serve fe80::... 5107` failed with the kernel's
    "invalid argument", exit 1: the missing scope is now named, exit 2."""
    with hosts(2) as (a, b):
        b_ll = b.link_local()
        for argv in (
            ["send", b_ll, "5107", "x", "--timeout", "1"],
            ["serve", b_ll, "5107"],
            ["bench", b_ll, "5107", "-n", "5"],
            ["relay", f"[{b_ll}]:5300", "127.0.0.1:5301"],
        ):
            line = _one_line_error(_udpkit(b if argv[0] in ("serve", "relay") else a, *argv))
            assert f"link-local address '{b_ll}' needs a scope" in line, (argv, line)
            assert f"'{b_ll}%IFACE' (e.g. %eth0)" in line, (argv, line)
        line = _one_line_error(_udpkit(a, "send", f"[{b_ll}%eth0]:5107"))
        assert f"give the port separately, as an argument of its own: {b_ll}%eth0 5107" in line


@needs_netns
def test_dual_stack_relay_labels_ipv4_flows_as_bench_does() -> None:
    """A relay on '[::]' labelled a's flow `[::ffff:10.77.0.1]:P`, while bench calls it
    `10.77.0.1:P`: the relay's flow line now matches bench's `local`."""
    with (
        hosts(3) as (a, b, c),
        running(c, "reflect", c.v4, "5202"),
        running(b, "relay", "[::]:5303", f"{c.v4}:5202") as relay,
    ):
        res = _udpkit(a, "bench", b.v4, "5303", "--count", "200", "--rate", "2k", "--json")
        assert res.returncode == 0, res.stderr
        flow = json.loads(res.stdout)["flows"][0]
        assert re.fullmatch(rf"{re.escape(a.v4)}:\d+", flow["local"]), flow
        _, err = _stop(relay)
        text = err.decode()
        assert "::ffff:" not in text, text
        assert re.search(rf"flow {re.escape(flow['local'])} up in=200 ", text), text
        assert re.search(rf"flow {re.escape(flow['control_local'])} up in=", text), text
