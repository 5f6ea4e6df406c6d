"""Multi-host scenarios beyond tests/test_netns_reach.py, across real test hosts.

Source-specific and link-scope multicast, hop limits and loopback, link-local
unicast and how a link-local peer is reported on every receive path, a relay in
a middle host, bench over IPv6, IPv6-only wildcards, broadcast requests, policy
on a dual-stack socket, the largest datagrams and unknown interfaces.  Each test
builds hosts in network namespaces joined by a bridge (tests/_netns.py), runs
udpkit inside them, ends what it started by PID and tears the hosts down;
skipped where namespaces cannot be made.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

from tests._netns import Host, hosts, needs_netns
from tests.test_netns_reach import STEP, UDPKIT, running, serving

SETTLE = 0.3  # for datagrams sent with --no-wait to land before a server is stopped


def _stop(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """End ``proc`` (ours, by PID) and return what it wrote: stdout, and stderr after
    the banner that ``running`` already read."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.communicate(timeout=STEP)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=STEP)


def _udpkit(host: Host, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return host.run(*UDPKIT, *args, timeout=timeout)


def _one_line_error(res: subprocess.CompletedProcess[bytes], code: int = 2) -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    assert b"Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith(b"udpkit "), res.stderr


@needs_netns
def test_source_specific_multicast_hears_only_its_source() -> None:
    """b joins (group, a) on IPv4 232/8 and IPv6 ff3e::/96; c sends to the same group."""
    with (
        hosts(3) as (a, b, c),
        serving(b, "--join", "232.1.1.1@eth0", "--source", a.v4, "-p", "5101", "--no-reply") as s4,
        serving(
            b, "--join", "ff3e::8000:1@eth0", "--source", a.v6, "-p", "5102", "--no-reply"
        ) as s6,
    ):
        for sender in (a, c):
            for group, port in (("232.1.1.1", "5101"), ("ff3e::8000:1", "5102")):
                msg = f"from {sender.v4} to {group}"
                res = _udpkit(sender, "send", group, port, msg, "--iface", "eth0", "--no-wait")
                assert res.returncode == 0, res.stderr
        time.sleep(SETTLE)
        out4, _ = _stop(s4)
        out6, _ = _stop(s6)
        assert b"from 10.77.0.1 to 232.1.1.1" in out4
        assert b"from 10.77.0.1 to ff3e::8000:1" in out6
        for out in (out4, out6):
            assert b"from 10.77.0.3" not in out
            assert out.count(b"Message from Client") == 1


@needs_netns
def test_link_scope_group_with_a_scope_id() -> None:
    """``ff02::1234%eth0`` (bare or bracketed) reaches members that joined ``@eth0`` or
    ``%eth0``, from the sender's link-local address."""
    with (
        hosts(3) as (a, b, c),
        serving(b, "--join", "ff02::1234@eth0", "-p", "5103", "--no-reply") as sb,
        serving(c, "--join", "ff02::1234%eth0", "-p", "5103", "--no-reply") as sc,
    ):
        for dest in ("ff02::1234%eth0", "[ff02::1234%eth0]"):
            res = _udpkit(a, "send", dest, "5103", f"to {dest}", "--no-wait")
            assert res.returncode == 0, res.stderr
        time.sleep(SETTLE)
        source = f"('{a.link_local()}".encode()
        for proc in (sb, sc):
            out, _ = _stop(proc)
            assert b"to ff02::1234%eth0" in out
            assert b"to [ff02::1234%eth0]" in out
            assert out.count(source) == 2, out


@needs_netns
def test_hop_limit_zero_stays_home_and_no_loop_skips_home() -> None:
    """a and b are members; a sends with hop limit 0, 1, and 1 without loopback."""
    for group, port in (("239.1.2.9", "5104"), ("ff12::99", "5105")):
        with (
            hosts(2) as (a, b),
            serving(a, "--join", f"{group}@eth0", "-p", port, "--no-reply") as sa,
            serving(b, "--join", f"{group}@eth0", "-p", port, "--no-reply") as sb,
        ):
            base = ["send", group, port]
            for text, extra in (
                ("ttl0", ["--ttl", "0"]),
                ("ttl1", ["--ttl", "1"]),
                ("noloop", ["--ttl", "1", "--no-loop"]),
                ("loop", ["--loop"]),
            ):
                res = _udpkit(a, *base, text, "--iface", "eth0", *extra, "--no-wait")
                assert res.returncode == 0, res.stderr
            time.sleep(SETTLE)
            home, _ = _stop(sa)
            away, _ = _stop(sb)
            heard_home = re.findall(rb"Message from Client:b'(\w+)'", home)
            heard_away = re.findall(rb"Message from Client:b'(\w+)'", away)
            assert heard_home == [b"ttl0", b"ttl1", b"loop"], (group, home)
            assert heard_away == [b"ttl1", b"noloop", b"loop"], (group, away)


@needs_netns
def test_iface_picks_the_interface_and_a_join_is_per_interface() -> None:
    """a joins the group on lo, b on eth0: a send out of lo stays on a, out of eth0 reaches b."""
    with (
        hosts(2) as (a, b),
        serving(a, "--join", "239.1.2.10@lo", "-p", "5106", "--no-reply") as sa,
        serving(b, "--join", "239.1.2.10@eth0", "-p", "5106", "--no-reply") as sb,
    ):
        for iface in ("lo", "eth0"):
            res = _udpkit(
                a, "send", "239.1.2.10", "5106", f"via-{iface}", "--iface", iface, "--no-wait"
            )
            assert res.returncode == 0, res.stderr
        time.sleep(SETTLE)
        out_a, _ = _stop(sa)
        out_b, _ = _stop(sb)
        assert re.findall(rb"b'(via-\w+)'", out_a) == [b"via-lo"]
        assert re.findall(rb"b'(via-\w+)'", out_b) == [b"via-eth0"]


@needs_netns
def test_link_local_unicast_and_all_nodes_request() -> None:
    """serve on b's fe80::...%eth0; a reaches it with the scope, and an all-nodes
    request (ff02::1%eth0) gets b's reply, shown with its scoped link-local address."""
    with hosts(2) as (a, b):
        b_ll = b.link_local()
        with serving(b, f"{b_ll}%eth0", "5107", "--echo") as sb:
            res = _udpkit(a, "send", f"{b_ll}%eth0", "5107", "hello link-local")
            assert res.returncode == 0, res.stderr
            assert res.stdout == b"Message from Server\nb'hello link-local'\n"
            out, _ = _stop(sb)
            assert f"Client IP Address:('{a.link_local()}".encode() in out
        with serving(b, "::", "5108", "--echo") as sb:
            res = _udpkit(a, "send", "ff02::1%eth0", "5108", "anyone there?")
            assert res.returncode == 0, res.stderr
            assert b"b'anyone there?'" in res.stdout
            assert f"udpkit: reply from [{b_ll}%eth0]:5108".encode() in res.stderr
            _stop(sb)


@needs_netns
def test_link_local_peer_is_reported_alike_on_every_receive_path() -> None:
    """Batched or not, answering or not: the seed line shows the peer as recvfrom gives
    it (scope as the index), JSON as text with the interface name."""
    with hosts(2) as (a, b):
        a_ll, b_ll = a.link_local(), b.link_local()
        seed_peer = re.compile(rf"Client IP Address:\('{re.escape(a_ll)}', \d+, 0, [1-9]\d*\)")
        for port, mode in enumerate(
            (["--no-reply"], ["--echo"], ["--no-reply", "--no-batch"], ["--echo", "--no-batch"]),
            start=5130,
        ):
            with (
                serving(b, "::", str(port), *mode) as seed,
                serving(b, "::", str(port + 10), *mode, "--format", "json") as js,
            ):
                for p in (port, port + 10):
                    res = _udpkit(a, "send", f"{b_ll}%eth0", str(p), "hi", "--no-wait")
                    assert res.returncode == 0, res.stderr
                time.sleep(SETTLE)
                out, _ = _stop(seed)
                assert seed_peer.search(out.decode()), (mode, out)
                out, _ = _stop(js)
                doc = json.loads(out.decode().strip().splitlines()[-1])
                assert doc["peer_host"] == f"{a_ll}%eth0", (mode, doc)
                assert doc["peer"] == f"[{a_ll}%eth0]:{doc['peer_port']}", (mode, doc)


@needs_netns
def test_relay_in_a_middle_host() -> None:
    """a -> relay on b -> c, over IPv4, IPv4 to IPv6, and a seeded lossy relay under
    bench: the relay's per-flow losses are bench's losses exactly."""
    with (
        hosts(3) as (a, b, c),
        serving(c, "::", "5300", "--echo") as server,
        running(c, "reflect", c.v4, "5202"),
        running(b, "relay", f"{b.v4}:5301", f"{c.v4}:5300") as plain,
        running(b, "relay", f"{b.v4}:5302", f"[{c.v6}]:5300") as to_v6,
        running(b, "relay", f"{b.v4}:5303", f"{c.v4}:5202", "--loss", "5%", "--seed", "7") as lossy,
    ):
        for port, text in (("5301", "via relay"), ("5302", "via relay to v6")):
            res = _udpkit(a, "send", b.v4, port, text)
            assert res.returncode == 0, res.stderr
            assert res.stdout == f"Message from Server\nb'{text}'\n".encode()
        out, _ = _stop(server)
        assert b"Client IP Address:('10.77.0.2'," in out  # the relay, not a
        assert b"Client IP Address:('fd77::2'," in out
        for proc in (plain, to_v6):
            _, err = _stop(proc)
            assert re.search(rb"up in=1 out=1 .*\n.*down in=1 out=1 ", err), err

        res = _udpkit(
            a, "bench", b.v4, "5303", "--count", "400", "--rate", "4k", "--json", timeout=60
        )
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        flow = doc["flows"][0]
        fwd, ret = doc["total"]["forward"], doc["total"]["return"]
        assert doc["total"]["sent_datagrams"] == 400
        assert fwd["received_datagrams"] + fwd["lost_datagrams"] == 400
        _, err = _stop(lossy)
        m = re.search(
            rf"flow {re.escape(flow['local'])} up in=(\d+) out=(\d+) lost=(\d+) .*; "
            r"down in=(\d+) out=(\d+) lost=(\d+) ",
            err.decode(),
        )
        assert m is not None, err
        up_in, up_out, up_lost, down_in, down_out, down_lost = map(int, m.groups())
        assert (up_in, up_out + up_lost) == (400, 400)
        assert up_lost > 0 and down_lost > 0  # 5% of 400 each way, seeded
        assert fwd["lost_datagrams"] == up_lost
        assert fwd["received_datagrams"] == up_out == down_in
        assert ret["lost_datagrams"] == down_lost
        assert ret["received_datagrams"] == down_out


@needs_netns
def test_bench_over_ipv6_global_and_link_local() -> None:
    with hosts(2) as (a, b):
        b_ll = b.link_local()
        with (
            running(b, "reflect", b.v6, "5202"),
            running(b, "reflect", f"{b_ll}%eth0", "5203"),
        ):
            res = _udpkit(
                a, "bench", b.v6, "5202", "--count", "1000", "--rate", "10k", "--json", timeout=60
            )
            assert res.returncode == 0, res.stderr
            doc = json.loads(res.stdout)
            assert doc["target"] == f"[{b.v6}]:5202"
            flow, total = doc["flows"][0], doc["total"]
            assert flow["local"].startswith(f"[{a.v6}]:")
            assert total["sent_datagrams"] == flow["sent_datagrams"] == 1000
            for d in (total["forward"], total["return"]):
                assert d["sent_datagrams"] == 1000
                assert d["received_datagrams"] + d["lost_datagrams"] == 1000
                assert d["lost_datagrams"] == (
                    d["lost_sender_datagrams"]
                    + d["lost_path_datagrams"]
                    + d["lost_receiver_kernel_datagrams"]
                )
            assert total["return"]["received_datagrams"] <= total["forward"]["received_datagrams"]
            assert total["rtt_samples_count"] == total["return"]["unique_datagrams"]
            assert 0 < total["rtt_min_ms"] <= total["rtt_p50_ms"] <= total["rtt_max_ms"]

            text = _udpkit(a, "bench", f"{b_ll}%eth0", "5203", "--count", "200", timeout=60)
            assert text.returncode == 0, text.stderr
            assert f"probes from [{a.link_local()}%eth0]:".encode() in text.stdout
            assert re.search(rb"^forward +\d+ ", text.stdout, re.M), text.stdout


@needs_netns
def test_ipv6_only_wildcard_leaves_ipv4_to_another_socket() -> None:
    """``serve -6 '::'`` hears IPv6 only; IPv4 to its port is refused until an IPv4
    server takes that same port."""
    with hosts(2) as (a, b), serving(b, "-6", "::", "5110", "--echo") as v6:
        refused = _udpkit(a, "send", b.v4, "5110", "over v4", "--timeout", "2")
        _one_line_error(refused, 1)
        assert b"connection refused" in refused.stderr
        mapped = _udpkit(a, "send", f"::ffff:{b.v4}", "5110", "mapped", "--timeout", "2")
        assert mapped.returncode == 1, mapped.stderr
        ok6 = _udpkit(a, "send", b.v6, "5110", "over v6")
        assert ok6.returncode == 0 and b"over v6" in ok6.stdout, ok6.stderr
        with serving(b, "0.0.0.0", "5110", "--echo") as v4:
            ok4 = _udpkit(a, "send", b.v4, "5110", "over v4 again")
            assert ok4.returncode == 0 and b"over v4 again" in ok4.stdout, ok4.stderr
            out4, _ = _stop(v4)
        out6, _ = _stop(v6)
        assert b"over v4" not in out6
        assert b"Client IP Address:('fd77::1'," in out6
        assert b"Client IP Address:('10.77.0.1'," in out4


@needs_netns
def test_broadcast_request_takes_a_reply_from_any_responder() -> None:
    """Two responders answer a broadcast request; send shows the first reply and its source."""
    with (
        hosts(3) as (a, b, c),
        serving(b, "", "5111", "--echo") as sb,
        serving(c, "", "5111", "--echo") as sc,
    ):
        for dest in ("<broadcast>", "10.77.0.255"):
            res = _udpkit(a, "send", dest, "5111", "who is there", "--broadcast")
            assert res.returncode == 0, res.stderr
            assert res.stdout == b"Message from Server\nb'who is there'\n"
            assert re.search(rb"^udpkit: reply from 10\.77\.0\.[23]:5111$", res.stderr, re.M)
        for proc in (sb, sc):
            _, err = _stop(proc)
            assert b"2 datagrams" in err and b"replies=2" in err, err


@needs_netns
def test_policy_sees_ipv4_sources_on_a_dual_stack_socket() -> None:
    """CIDRs of IPv4 hosts match their datagrams as they arrive on '::' (as ::ffff:a.b.c.d)."""
    with (
        hosts(3) as (a, b, c),
        serving(b, "::", "5117", "--echo", "--deny", f"{c.v4}/32", "--deny", f"{c.v6}/128") as d,
        serving(b, "::", "5118", "--echo", "--allow", f"{a.v4}/32") as al,
    ):
        for host, port, dest, code in (
            (a, "5117", b.v4, 0),
            (c, "5117", b.v4, 3),
            (c, "5117", b.v6, 3),
            (a, "5118", b.v4, 0),
            (a, "5118", b.v6, 3),
            (c, "5118", b.v4, 3),
        ):
            res = _udpkit(host, "send", dest, port, "knock", "--timeout", "0.5")
            assert res.returncode == code, (host.v4, port, dest, res.stderr)
        for proc in (d, al):
            out, err = _stop(proc)
            assert out.count(b"Message from Client") == 1
            assert b"Client IP Address:('10.77.0.1'," in out
            assert b"replies=1" in err and b"denied=2" in err, err


@needs_netns
def test_largest_datagrams_cross_hosts_whole_or_counted_truncated() -> None:
    """65,507 bytes over IPv4 and 65,527 over IPv6, fragmented on the wire, arrive
    whole; a small receive buffer counts them truncated; one more byte is refused."""
    with (
        hosts(2) as (a, b),
        serving(b, "::", "5116", "--no-reply", "--format", "line") as whole,
        serving(b, "::", "5119", "--no-reply", "--buffer-size", "1024") as small,
    ):
        for dest, size in ((b.v4, 65507), (b.v6, 65527)):
            for port in ("5116", "5119"):
                proc = subprocess.run(
                    a.cmd(*UDPKIT, "send", dest, port, "-", "--no-wait"),
                    input=b"x" * size,
                    capture_output=True,
                    timeout=20,
                    check=False,
                )
                assert proc.returncode == 0, proc.stderr
        too_big = subprocess.run(
            a.cmd(*UDPKIT, "send", b.v4, "5116", "-", "--no-wait"),
            input=b"x" * 65508,
            capture_output=True,
            timeout=20,
            check=False,
        )
        _one_line_error(too_big, 2)
        time.sleep(SETTLE)
        out, err = _stop(whole)
        assert b" 10.77.0.1:" in out and b" 65507 B " in out
        assert b" [fd77::1]:" in out and b" 65527 B " in out
        assert b"2 datagrams, 131034 bytes" in err and b" 0 truncated" in err, err
        out, err = _stop(small)
        assert b"(truncated: 65507 bytes, 1024 kept)" in out
        assert b"(truncated: 65527 bytes, 1024 kept)" in out
        assert b"2 truncated" in err, err


@needs_netns
def test_unknown_interfaces_are_one_line_usage_errors() -> None:
    with hosts(1) as (a,):
        for argv in (
            ["send", "239.1.2.3", "5005", "x", "--iface", "nosuch", "--no-wait"],
            ["send", "ff12::1", "5005", "x", "--iface", "nosuch", "--no-wait"],
            ["send", "ff02::1%nosuch", "5005", "x", "--no-wait"],
            ["send", "fe80::1%nosuch", "5005", "x", "--no-wait"],
            ["serve", "--join", "239.1.2.3@nosuch", "-p", "5005"],
            ["serve", "--join", "ff02::1234@nosuch", "-p", "5005"],
            ["serve", "fe80::1%nosuch", "5005"],
            ["reflect", "--join", "239.1.2.3@nosuch"],
            ["bench", "239.1.2.3", "5202", "--one-way", "--iface", "nosuch", "--count", "5"],
            ["relay", "[fe80::1%nosuch]:5300", "127.0.0.1:5301"],
            ["relay", "127.0.0.1:5300", "[fe80::1%nosuch]:5301"],
        ):
            res = _udpkit(a, *argv, timeout=STEP)
            _one_line_error(res, 2)
            assert b"nosuch" in res.stderr and b"interface" in res.stderr, (argv, res.stderr)
