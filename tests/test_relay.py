"""The relay over real loopback sockets, library and command line."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from udpkit._core.datagram import SockAddr
from udpkit._core.relay import ImpairConfig
from udpkit._core.relaystats import format_stats
from udpkit._loops.relay import Relay, RelayStats, _show

try:
    from tests._proc import (
        STEP,
        UDPKIT,
        LineReader,
        _popen_sigint_default,
        end_process,
        one_line_error,
    )
    from tests._proc import run as run_udpkit
    from tests.conftest import HAVE_IPV6
except ModuleNotFoundError:  # plain `pytest` puts tests/, not the repo, on sys.path
    from _proc import (  # type: ignore[import-not-found,no-redef]
        STEP,
        UDPKIT,
        LineReader,
        _popen_sigint_default,
        end_process,
        one_line_error,
    )
    from _proc import run as run_udpkit  # type: ignore[no-redef]
    from conftest import HAVE_IPV6  # type: ignore[import-not-found,no-redef]

Fam = tuple[socket.AddressFamily, str]


class Upstream:
    """A target in a thread: echoes (or only records) what it gets; binds before starting."""

    def __init__(self, family: socket.AddressFamily, host: str, port: int = 0, echo: bool = True):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.settimeout(0.02)
        self.port: int = self.sock.getsockname()[1]
        self.echo = echo
        self.got: list[tuple[bytes, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            self.got.append((data, addr))
            if self.echo:
                with contextlib.suppress(OSError):
                    self.sock.sendto(data, addr)

    def quiet_for(self, quiet: float = 0.3, limit: float = STEP) -> list[bytes]:
        """Wait until nothing new arrived for ``quiet`` seconds; return the payloads."""
        end = time.monotonic() + limit
        seen, since = -1, time.monotonic()
        while time.monotonic() < end:
            if len(self.got) != seen:
                seen, since = len(self.got), time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
            time.sleep(0.02)
        return [d for d, _ in self.got]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(STEP)
        self.sock.close()


@contextlib.contextmanager
def upstream(fam: Fam, port: int = 0, echo: bool = True) -> Iterator[Upstream]:
    u = Upstream(fam[0], fam[1], port, echo)
    try:
        yield u
    finally:
        u.close()


@contextlib.contextmanager
def relaying(fam: Fam, target_port: int, **kw: object) -> Iterator[tuple[Relay, tuple[str, int]]]:
    """A Relay on ``fam``'s loopback, port 0, running in a thread."""
    ls = socket.socket(fam[0], socket.SOCK_DGRAM)
    ls.bind((fam[1], 0))
    target = (fam[1], target_port, 0, 0) if fam[0] == socket.AF_INET6 else (fam[1], target_port)
    relay = Relay(ls, target, **kw)  # type: ignore[arg-type]
    done: list[RelayStats] = []
    t = threading.Thread(target=lambda: done.append(relay.run()), daemon=True)
    t.start()
    try:
        yield relay, ls.getsockname()[:2]
    finally:
        relay.stop()
        t.join(STEP)
        assert not t.is_alive()
        relay.close()
        ls.close()


@contextlib.contextmanager
def client(fam: Fam) -> Iterator[socket.socket]:
    with socket.socket(fam[0], socket.SOCK_DGRAM) as c:
        c.settimeout(2.0)
        yield c


def wait_for(cond: object, limit: float = STEP) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("fast", [None, False], ids=["batched", "portable"])
def test_forwards_both_ways(family: Fam, fast: bool | None) -> None:
    with upstream(family) as up, relaying(family, up.port, fast=fast) as (relay, addr):
        with client(family) as c:
            msgs = [b"m%d" % i for i in range(20)]
            for m in msgs:
                c.sendto(m, addr)
            back = [c.recvfrom(100) for _ in msgs]
        assert [d for d, _ in back] == msgs
        assert all(a[:2] == addr for _, a in back)
        wait_for(lambda: relay.stats.counts["down_out"] == 20)
        st = relay.stats
        assert st.counts["up_in"] == st.counts["up_out"] == 20
        assert st.counts["down_in"] == st.counts["down_out"] == 20
        assert st.counts["up_in_bytes"] == sum(map(len, msgs))
        assert st.flows == 1 and st.refused == 0


def test_ipv4_clients_to_ipv6_target() -> None:
    if not HAVE_IPV6:
        pytest.skip("::1 cannot be bound here")
    v4: Fam = (socket.AF_INET, "127.0.0.1")
    with upstream((socket.AF_INET6, "::1")) as up:
        ls = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ls.bind(("127.0.0.1", 0))
        with Relay(ls, ("::1", up.port, 0, 0)) as relay:
            t = threading.Thread(target=relay.run, daemon=True)
            t.start()
            with client(v4) as c:
                c.sendto(b"hi", ls.getsockname())
                assert c.recv(10) == b"hi"
            relay.stop()
            t.join(STEP)
        ls.close()


def test_ipv4_clients_of_a_dual_stack_relay_are_shown_as_ipv4() -> None:
    """A relay on '::' labelled an IPv4 client `flow [::ffff:10.77.0.1]:P` while bench
    calls the same flow `10.77.0.1:P`: show v4-mapped clients as IPv4, as serve does."""
    if not HAVE_IPV6:
        pytest.skip("::1 cannot be bound here")
    with upstream((socket.AF_INET6, "::1")) as up:
        ls = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        ls.bind(("::", 0))
        port = ls.getsockname()[1]
        with Relay(ls, ("::1", up.port, 0, 0)) as relay:
            t = threading.Thread(target=relay.run, daemon=True)
            t.start()
            try:
                with client((socket.AF_INET, "127.0.0.1")) as c:
                    c.sendto(b"hi", ("127.0.0.1", port))
                    assert c.recv(10) == b"hi"
                    mine = f"127.0.0.1:{c.getsockname()[1]}"
                wait_for(lambda: relay.stats.counts["down_out"] == 1)
                st = relay.stats
            finally:
                relay.stop()
                t.join(STEP)
        ls.close()
    assert [r["peer"] for r in st.per_flow] == [mine]
    assert f"udpkit relay:   flow {mine} up in=1 out=1 " in format_stats(st)
    assert "::ffff:" not in format_stats(st)


@pytest.mark.parametrize(
    ("peer", "shown"),
    [
        (("::ffff:10.77.0.1", 40000, 0, 0), "10.77.0.1:40000"),
        (("::ffff:a4d:1", 40000, 0, 0), "10.77.0.1:40000"),
        (("10.77.0.1", 40000), "10.77.0.1:40000"),
        (("fd77::1", 40000, 0, 0), "[fd77::1]:40000"),
        (("::1", 9, 0, 0), "[::1]:9"),
        (("not an address", 9, 0, 0), "not an address:9"),  # left to format_sockaddr
    ],
)
def test_flow_labels(peer: SockAddr, shown: str) -> None:
    assert _show(peer) == shown


@pytest.mark.parametrize("fast", [None, False], ids=["batched", "portable"])
def test_many_clients_many_flows(family: Fam, fast: bool | None) -> None:
    with upstream(family) as up, relaying(family, up.port, fast=fast) as (relay, addr):
        with contextlib.ExitStack() as stack:
            cs = [stack.enter_context(client(family)) for _ in range(20)]
            # Round by round, so a loaded machine's socket buffers never overflow.
            for round_ in range(5):
                for i, c in enumerate(cs):
                    c.sendto(b"%d:%d" % (i, round_), addr)
                for i, c in enumerate(cs):
                    assert c.recv(100) == b"%d:%d" % (i, round_)
        assert len({a for _, a in up.got}) == 20  # one upstream socket per client
        # The relay counts a send after the kernel took it: the reply may be here first.
        wait_for(lambda: relay.stats.counts["down_out"] == 100)
        st = relay.stats
        assert st.flows == 20 and st.flows_created == 20 and len(st.per_flow) == 20
        assert all(r["up_in"] == 5 and r["down_out"] == 5 for r in st.per_flow)


def test_flow_cap_refuses_and_counts(family: Fam) -> None:
    with upstream(family) as up, relaying(family, up.port, max_flows=2) as (relay, addr):
        with client(family) as a, client(family) as b, client(family) as c:
            for s in (a, b):
                s.sendto(b"in", addr)
                assert s.recv(10) == b"in"
            for _ in range(3):
                c.sendto(b"over", addr)
            c.settimeout(0.3)
            with pytest.raises(TimeoutError):
                c.recv(10)
            a.sendto(b"still", addr)
            assert a.recv(10) == b"still"
        st = relay.stats
        assert st.refused == 3 and st.flows == 2 and st.peak_flows == 2


def test_idle_flows_expire_and_come_back(family: Fam) -> None:
    with upstream(family) as up, relaying(family, up.port, idle_timeout=0.2) as (relay, addr):
        with client(family) as c:
            c.sendto(b"1", addr)
            assert c.recv(10) == b"1"
            wait_for(lambda: relay.table.expired == 1)
            assert len(relay.table) == 0
            c.sendto(b"2", addr)
            assert c.recv(10) == b"2"
        st = relay.stats
        assert st.flows_created == 2 and st.flows_expired == 1
        assert st.counts["up_in"] == 2  # counters of the ended flow are kept


@pytest.mark.parametrize("fast", [None, False], ids=["batched", "portable"])
def test_upstream_restart_resumes_and_icmp_is_not_fatal(family: Fam, fast: bool | None) -> None:
    with upstream(family) as gone:
        port = gone.port
    with relaying(family, port, fast=fast) as (relay, addr), client(family) as c:
        c.settimeout(0.2)
        for _ in range(4):  # each send to a closed port brings back an ICMP error
            c.sendto(b"void", addr)
            with pytest.raises(TimeoutError):
                c.recv(10)
        assert relay.stats.counts["upstream_refused"] >= 1
        with upstream(family, port) as up:
            c.settimeout(2.0)
            c.sendto(b"back", addr)  # the first datagram after the restart gets through
            assert c.recv(10) == b"back"
            assert [d for d, _ in up.got] == [b"back"]
        assert relay.stats.flows == 1


def _first_seen(received: list[bytes]) -> list[int]:
    seen: set[int] = set()
    out = []
    for p in received:
        n = int(p)
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def _reordered(order: list[int]) -> int:
    top, n = -1, 0
    for x in order:
        if x < top:
            n += 1
        top = max(top, x)
    return n


@pytest.mark.parametrize("seed", [1, 42])
def test_seeded_impairments_match_what_the_receiver_sees(family: Fam, seed: int) -> None:
    cfg = ImpairConfig(loss=0.1, duplicate=0.1, reorder=0.1, reorder_gap=2, reorder_max=0.05)
    runs = []
    for _ in range(2):
        with upstream(family, echo=False) as up:
            with relaying(family, up.port, impair_up=cfg, seed=seed) as (relay, addr):
                with client(family) as c:
                    for i in range(400):
                        c.sendto(b"%d" % i, addr)
                        if i % 50 == 49:
                            time.sleep(0.005)  # stay well inside the socket buffers
                up.quiet_for()
            # Read what arrived after the relay stopped: a datagram it still held back
            # (reordering) when the quiet spell ended on a loaded machine is either
            # delivered by now or counted as abandoned.
            got = up.quiet_for()
            st = relay.stats
        u = st.up
        assert st.kernel_drops in (0, None)
        assert u.fed == st.counts["up_in"] == 400
        assert len(got) == 400 - u.lost + u.duplicated - u.abandoned == st.counts["up_out"]
        assert len(got) - len(set(got)) == u.duplicated
        order = _first_seen(got)
        assert len(order) == 400 - u.lost
        # Every delivery that came after a higher-numbered one counts (a late
        # duplicate's copy too), as the core counts its releases.
        assert u.reordered in (_reordered(order), _reordered([int(g) for g in got]))
        assert u.lost and u.duplicated and u.reordered
        runs.append(got)
    assert runs[0] == runs[1]  # the same seed, the same run


def test_delay_shifts_the_round_trip(family: Fam) -> None:
    cfg = ImpairConfig(delay=0.05)
    with upstream(family) as up, relaying(family, up.port, impair_down=cfg) as (relay, addr):
        with client(family) as c:
            rtts = []
            for i in range(5):
                t0 = time.monotonic()
                c.sendto(b"%d" % i, addr)
                assert c.recv(10) == b"%d" % i
                rtts.append(time.monotonic() - t0)
        assert min(rtts) >= 0.05
        assert sorted(rtts)[2] < 0.05 + 0.1
        assert relay.stats.down.delayed == 5


def test_rate_limit_holds_bytes_per_second(family: Fam) -> None:
    cfg = ImpairConfig(rate=20_000.0, burst=2_000.0)
    with upstream(family, echo=False) as up:
        with relaying(family, up.port, impair_up=cfg) as (relay, addr), client(family) as c:
            start = time.monotonic()
            for _ in range(60):
                c.sendto(b"r" * 100, addr)
            wait_for(lambda: len(up.got) == 60)
            took = time.monotonic() - start
        # 6000 bytes, 2000 in the burst: the other 4000 take 0.2 s at 20 kB/s.
        assert took >= 0.18
        assert relay.stats.up.rate_limited > 0


# ---------------------------------------------------------------- command line


@contextlib.contextmanager
def cli_relay(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], LineReader, int]]:
    proc = _popen_sigint_default(
        [*UDPKIT, "relay", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        err = LineReader(proc.stderr.fileno())
        line = err.readline().decode()
        assert "udpkit: listening on 127.0.0.1:" in line and "(UDP, relay to" in line, line
        port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        yield proc, err, port
    finally:
        end_process(proc)


def test_cli_sigusr1_prints_counters_and_sigterm_stops() -> None:
    v4: Fam = (socket.AF_INET, "127.0.0.1")
    with (
        upstream(v4) as up,
        cli_relay("127.0.0.1:0", f"127.0.0.1:{up.port}", "--loss", "0") as (
            proc,
            err,
            port,
        ),
    ):
        with client(v4) as c:
            for i in range(3):
                c.sendto(b"%d" % i, ("127.0.0.1", port))
                assert c.recv(10) == b"%d" % i
        proc.send_signal(signal.SIGUSR1)
        first = err.readline().decode()
        assert first.startswith("udpkit relay: flows=1 ")
        assert err.readline().decode().startswith("udpkit relay: up in=3 out=3 ")
        assert err.readline().decode().startswith("udpkit relay: down in=3 out=3 ")
        assert "flow 127.0.0.1:" in err.readline().decode()
        assert proc.poll() is None  # SIGUSR1 does not stop it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STEP) == 0
        rest = err.read_rest().decode()
        assert "(stopped by SIGTERM)" in rest.splitlines()[0]
        assert "Traceback" not in rest


def test_cli_impairment_options_and_seed() -> None:
    v4: Fam = (socket.AF_INET, "127.0.0.1")
    with upstream(v4, echo=False) as up:
        args = ("0", str(up.port), "--loss", "50%", "--seed", "3", "--direction", "up")
        with cli_relay(*args) as (proc, err, port):
            with client(v4) as c:
                for i in range(100):
                    c.sendto(b"%d" % i, ("127.0.0.1", port))
            got = up.quiet_for()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(STEP) == 0
            text = err.read_rest().decode()
    assert "seed=3" in text and "(stopped by SIGINT)" in text
    lost = int(text.split("lost=")[1].split()[0])
    assert len(got) == 100 - lost and 20 < lost < 80


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["0", "70000"], "70000"),
        (["0", "[::1"], "[::1"),
        (["0", "5005", "--loss", "x"], "--loss 'x'"),
        (["0", "5005", "--duplicate", "2"], "--duplicate '2'"),
        (["0", "5005", "--delay", "20x"], "--delay '20x'"),
        (["0", "5005", "--rate", "0"], "--rate '0'"),
        (["0", "5005", "--max-flows", "0"], "--max-flows '0'"),
        (["0", "5005", "--idle-timeout", "-1"], "--idle-timeout '-1'"),
        (["0", "5005", "--seed", "x"], "--seed 'x'"),
        (["0", "0"], "port 0"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    res = run_udpkit("relay", *args)
    assert res.returncode == 2, res.stderr
    line = one_line_error(res.stderr)
    assert line.startswith("udpkit relay: error: ") and needle in line, line


@pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="drops come from /proc/net/udp")
def test_drops_on_a_flow_socket_are_kernel_drops() -> None:
    """The target's replies overflow a flow's upstream socket while the relay is not
    reading: the kernel's drops there are the relay's too (they were left out, so
    ``kernel_drops=0`` while replies went missing)."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listen,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c,
    ):
        listen.bind(("127.0.0.1", 0))
        target.bind(("127.0.0.1", 0))
        target.settimeout(STEP)
        relay = Relay(listen, target.getsockname())
        try:
            c.sendto(b"open", listen.getsockname())
            relay.run(duration=0.3)  # the flow opens and "open" goes up
            data, flow_addr = target.recvfrom(100)
            assert data == b"open"
            target.setblocking(False)
            # More than any receive buffer the relay asks for: the rest is dropped.
            for _ in range(8000):
                with contextlib.suppress(BlockingIOError):
                    target.sendto(b"x" * 1200, flow_addr)
            assert (relay.stats.kernel_drops or 0) > 0
        finally:
            relay.close()
