"""udpkit.aio over real loopback sockets (IPv4 and IPv6), each test driven by asyncio.run."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import udpkit
import udpkit.aio
from udpkit import Datagram
from udpkit.aio import Endpoint

Family = tuple[socket.AddressFamily, str]
LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="Linux-only socket feature")
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 5.0  # every await in these tests is bounded by this


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    """Run one test coroutine with a hard bound on its duration."""

    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), 20)

    asyncio.run(bounded())


def plain(host: str, family: socket.AddressFamily) -> socket.socket:
    """A plain blocking socket bound to loopback, with a receive timeout."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(TIMEOUT)
    return s


def closed_port(host: str, family: socket.AddressFamily) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(params=[None, False], ids=["fast", "portable"])
def fast(request: pytest.FixtureRequest) -> bool | None:
    """The recvmmsg path and the portable path run the same tests."""
    value: bool | None = request.param
    return value


def test_round_trip(family: Family, fast: bool | None) -> None:
    _fam, host = family

    async def main() -> None:
        sock = udpkit.udp_bind(host, 0)
        async with Endpoint(sock, fast=fast) as server:
            assert server.fast is (fast is None and LINUX)
            async with await udpkit.aio.open_udp(*server.local_address[:2]) as client:
                assert client.peer is not None
                await client.send(b"Hello UDP Server")
                d = await server.recv(timeout=TIMEOUT)
                assert (d.data, d.length) == (b"Hello UDP Server", 16)
                assert d.peer[:2] == client.local_address[:2]
                await server.send(bytearray(b"Hello UDP Client"), d.peer)
                back = await client.recv(timeout=TIMEOUT)
                assert back.data == b"Hello UDP Client"
                assert client.stats.sent == 1 and client.stats.received == 1
                assert server.stats.received == 1 and server.stats.sent == 1

    run(main)


def test_async_for_and_context_without_await(family: Family) -> None:
    fam, host = family

    async def main() -> None:
        async with udpkit.aio.bind_udp(host, 0) as ep:
            with plain(host, fam) as s:
                for i in range(5):
                    s.sendto(b"%d" % i, ep.local_address)
                got: list[bytes] = []
                async for d in ep:
                    got.append(d.data)
                    if len(got) == 5:
                        break
                assert got == [b"0", b"1", b"2", b"3", b"4"]

    run(main)


def test_async_for_ends_when_closed() -> None:
    async def main() -> None:
        ep = await udpkit.aio.bind_udp("127.0.0.1", 0)
        asyncio.get_running_loop().call_later(0.05, ep.close)
        seen = [d async for d in ep]
        assert seen == []
        with pytest.raises(udpkit.UsageError, match="closed"):
            await ep.recv()
        with pytest.raises(udpkit.UsageError, match="closed"):
            await ep.send(b"x", ("127.0.0.1", 9))

    run(main)


def test_zero_length_datagrams(family: Family, fast: bool | None) -> None:
    """asyncio's transport.sendto(b"") sends nothing; udpkit sends an empty datagram."""
    _fam, host = family

    async def main() -> None:
        async with (
            Endpoint(udpkit.udp_bind(host, 0), fast=fast) as a,
            Endpoint(udpkit.udp_bind(host, 0), fast=fast) as b,
        ):
            await a.send(b"", b.local_address)
            d = await b.recv(timeout=TIMEOUT)
            assert (d.data, d.length, d.truncated) == (b"", 0, False)
            await b.send(b"", d.peer)
            assert (await a.recv(timeout=TIMEOUT)).length == 0

    run(main)


def test_recv_timeout(family: Family) -> None:
    _fam, host = family

    async def main() -> None:
        async with await udpkit.aio.bind_udp(host, 0) as ep:
            start = time.monotonic()
            with pytest.raises(udpkit.Timeout, match=r"within 0\.05 s"):
                await ep.recv(timeout=0.05)
            assert 0.04 <= time.monotonic() - start < 2

    run(main)


# -- host forms, broadcast, multicast --------------------------------------------------


def test_broadcast_needs_broadcast_true() -> None:
    async def main() -> None:
        with pytest.raises(udpkit.PermissionDenied, match=r"'<broadcast>'.*broadcast=True"):
            await udpkit.aio.open_udp("<broadcast>", 9999, bind=("127.0.0.1", 0))
        async with await udpkit.aio.open_udp(
            "<broadcast>", 9999, bind=("127.0.0.1", 0), broadcast=True
        ) as ep:
            # Never connected: replies from every host must reach it.
            assert ep.peer is None
            assert ep.sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        async with await udpkit.aio.bind_udp("127.0.0.1", 0) as ep:
            with pytest.raises(udpkit.PermissionDenied, match="broadcast=True"):
                await ep.send(b"x", ("<broadcast>", 9999))
            assert ep.stats.sent == 0

    run(main)


def test_subnet_broadcast_with_broadcast_true_hears_every_responder() -> None:
    """open_udp("127.255.255.255", broadcast=True) connected its socket, so the answers,
    which come from each responder's own address, were filtered out by the kernel."""

    async def main() -> None:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listen,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as answer,
        ):
            listen.bind(("127.255.255.255", 0))  # hears the subnet broadcast
            answer.bind(("127.0.0.2", 0))  # answers from an address of its own
            listen.setblocking(False)
            loop = asyncio.get_running_loop()
            port = listen.getsockname()[1]
            async with udpkit.aio.open_udp(
                "127.255.255.255", port, broadcast=True, bind=("127.0.0.1", 0)
            ) as ep:
                assert ep.peer is None
                await ep.send(b"who")
                data, peer = await asyncio.wait_for(loop.sock_recvfrom(listen, 100), 2)
                assert data == b"who"
                answer.sendto(b"me", peer)
                got = await ep.recv(timeout=2)
            assert (got.data, got.peer) == (b"me", answer.getsockname())

    run(main)


@pytest.mark.parametrize(
    ("group", "fam"),
    [("239.255.10.1", socket.AF_INET), ("ff02::1", socket.AF_INET6)],
    ids=["ipv4", "ipv6"],
)
def test_multicast_destination_is_not_connected(group: str, fam: socket.AddressFamily) -> None:
    if fam == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    bind = ("127.0.0.1", 0) if fam == socket.AF_INET else ("::1", 0)

    async def main() -> None:
        try:
            ep = await udpkit.aio.open_udp(group, 9999, bind=bind)
        except udpkit.NetworkError as exc:
            pytest.skip(f"cannot bind {bind}: {exc}")
        async with ep:
            assert ep.peer is None
            assert ep.sock.family == fam

    run(main)


@pytest.mark.parametrize(
    ("host", "fam"),
    [
        ("127.0.0.1", socket.AF_INET),
        (2130706433, socket.AF_INET),  # the textbook's integer form: 127.0.0.1
        ("2130706433", socket.AF_INET),
        ("::1", socket.AF_INET6),
        ("[::1]", socket.AF_INET6),
        ("::ffff:127.0.0.1", socket.AF_INET6),
    ],
)
def test_host_forms_reach_the_server(host: str | int, fam: socket.AddressFamily) -> None:
    server_host = "127.0.0.1" if fam == socket.AF_INET or "ffff" in str(host) else "::1"
    server_fam = socket.AF_INET if server_host == "127.0.0.1" else socket.AF_INET6

    async def main() -> None:
        try:
            srv = plain(server_host, server_fam)
        except OSError:
            pytest.skip("::1 cannot be bound")
        with srv:
            port = srv.getsockname()[1]
            if "ffff" in str(host):
                # An IPv4-mapped destination from an IPv6 socket.
                async with await udpkit.aio.bind_udp("::", 0, family=socket.AF_INET6) as ep:
                    await ep.send(b"mapped", (host, port))
                    await asyncio.sleep(0)
            else:
                async with await udpkit.aio.open_udp(host, port) as ep:
                    await ep.send(b"mapped")
            assert srv.recvfrom(100)[0] == b"mapped"

    run(main)


def test_bad_arguments_name_the_input() -> None:
    async def main() -> None:
        with pytest.raises(udpkit.UsageError, match=r"invalid queue_size 0"):
            Endpoint(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), queue_size=0)
        with pytest.raises(udpkit.AddressError, match="70000"):
            await udpkit.aio.open_udp("127.0.0.1", 70000)
        async with await udpkit.aio.bind_udp() as ep:
            with pytest.raises(udpkit.UsageError, match="pass to="):
                await ep.send(b"x")
            with pytest.raises(udpkit.MessageTooLarge, match="70000 bytes"):
                await ep.send(bytes(70000), ep.local_address)
            with pytest.raises(udpkit.UsageError, match=r"invalid retries -1"):
                await ep.request(b"x", ep.local_address, retries=-1)

    run(main)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
        pytest.raises(udpkit.UsageError, match="running event loop"),
    ):
        Endpoint(s)


# -- request, ICMP ---------------------------------------------------------------------


def test_request_times_out_after_retries(family: Family) -> None:
    fam, host = family

    async def main() -> None:
        with plain(host, fam) as silent:
            async with await udpkit.aio.open_udp(*silent.getsockname()[:2]) as ep:
                start = time.monotonic()
                with pytest.raises(udpkit.Timeout, match=r"0\.1 s \(3 attempts\)"):
                    await ep.request(b"ping", timeout=0.1, retries=2)
                assert 0.3 <= time.monotonic() - start < 3
            assert [silent.recvfrom(10)[0] for _ in range(3)] == [b"ping"] * 3

    run(main)


def test_request_retry_gets_the_answer(family: Family) -> None:
    _fam, host = family
    seen: list[bytes] = []

    def second_only(d: Datagram) -> bytes | None:
        seen.append(d.data)
        return None if len(seen) == 1 else b"pong"

    async def main() -> None:
        async with (
            await udpkit.aio.serve(host, 0, second_only) as server,
            await udpkit.aio.bind_udp(host, 0) as ep,
        ):
            reply = await ep.request(b"ping", server.local_address, timeout=0.2, retries=3)
            assert reply.data == b"pong"
        assert seen == [b"ping", b"ping"]

    run(main)


def test_request_connection_refused(family: Family) -> None:
    fam, host = family

    async def main() -> None:
        async with await udpkit.aio.open_udp(host, closed_port(host, fam)) as ep:
            start = time.monotonic()
            with pytest.raises(udpkit.ConnectionRefused, match="nothing is listening"):
                await ep.request(b"ping", timeout=3.0)
            assert time.monotonic() - start < 2.5  # refused at once, not timed out
            with pytest.raises(ConnectionRefusedError):
                await ep.request(b"ping", timeout=0.1, retries=1)

    run(main)


def test_icmp_errors_are_soft_and_counted(family: Family) -> None:
    """A refused datagram must not break the endpoint: recv() keeps working afterwards."""
    fam, host = family

    async def main() -> None:
        port = closed_port(host, fam)
        async with await udpkit.aio.open_udp(host, port) as ep:
            await ep.send(b"nobody home")
            deadline = time.monotonic() + TIMEOUT
            while not ep.stats.icmp_errors and time.monotonic() < deadline:
                with pytest.raises(udpkit.Timeout):
                    await ep.recv(timeout=0.02)
            assert ep.stats.icmp_errors == {"ECONNREFUSED": 1}
            assert isinstance(ep.last_error, udpkit.ConnectionRefused)
            with socket.socket(fam, socket.SOCK_DGRAM) as srv:
                srv.bind((host, port))  # someone listens now
                srv.settimeout(TIMEOUT)
                await ep.send(b"hello again")
                await asyncio.sleep(0)
                data, peer = srv.recvfrom(100)
                assert data == b"hello again"
                srv.sendto(b"answer", peer)
                assert (await ep.recv(timeout=TIMEOUT)).data == b"answer"

    run(main)


# -- backpressure ------------------------------------------------------------------------


@linux_only
def test_slow_consumer_backpressure_counts_everything(fast: bool | None) -> None:
    """Queue full: reading stops, the kernel drops and counts; sent == received + drops."""
    sent = 400
    bound = 16

    async def main() -> None:
        ep = Endpoint(udpkit.udp_bind("127.0.0.1", 0), queue_size=bound, batch=8, fast=fast)
        async with ep:
            ep.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel minimum
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for i in range(sent):
                    tx.sendto(i.to_bytes(4, "big"), ep.local_address)
                    if i % 50 == 0:
                        await asyncio.sleep(0.001)  # let the reader run now and then
            await asyncio.sleep(0.05)
            assert ep.queued == bound
            assert ep.stats.pauses >= 1
            got: list[int] = []
            while True:
                assert ep.queued <= bound
                try:
                    d = await ep.recv(timeout=0.2)
                except udpkit.Timeout:
                    break
                got.append(int.from_bytes(d.data, "big"))
            st = ep.stats
            if st.kernel_drops is None:
                pytest.skip("/proc/net/udp shows no drop count here")
            assert st.received == len(got)
            assert st.kernel_drops > 0
            assert sent == st.received + st.kernel_drops
            assert got == sorted(got)  # what was kept arrived in order

    run(main)


def test_send_waits_for_room_instead_of_raising() -> None:
    """A full unix datagram queue makes sendto raise EAGAIN; send() must wait instead."""
    n = 300

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        b.setblocking(False)
        with b:
            ep = Endpoint(a, send_queue=8)
            started: list[float] = []

            async def reader() -> list[bytes]:
                await asyncio.sleep(0.1)
                started.append(time.monotonic())
                return [await loop.sock_recv(b, 100) for _ in range(n)]

            task = asyncio.create_task(reader())
            async with ep:
                for i in range(n):
                    await ep.send(b"%d" % i)
                done = time.monotonic()
                got = await asyncio.wait_for(task, TIMEOUT)
            assert got == [b"%d" % i for i in range(n)]
            assert started and done >= started[0]  # the sender had to wait for the reader
            assert ep.stats.sent == n and ep.stats.send_errors == {}

    run(main)


# -- server ------------------------------------------------------------------------------


def test_server_runs_engine_handlers(family: Family) -> None:
    _fam, host = family

    def handler(d: Datagram) -> bytes | Sequence[bytes] | None:
        if d.data == b"boom":
            raise RuntimeError("handler bug")
        if d.data == b"two":
            return [b"one", b"two"]
        if d.data == b"quiet":
            return None
        return d.data

    async def main() -> None:
        async with await udpkit.aio.serve(host, 0, handler) as server:
            task = asyncio.create_task(server.serve_forever())
            async with await udpkit.aio.open_udp(*server.local_address[:2]) as c:
                for msg in (b"boom", b"quiet", b"", b"echo", b"two"):
                    await c.send(msg)
                replies = [(await c.recv(timeout=TIMEOUT)).data for _ in range(4)]
                assert replies == [b"", b"echo", b"one", b"two"]
            st = server.stats
            assert (st.received, st.sent, st.handler_errors) == (5, 4, 1)
        await asyncio.wait_for(task, TIMEOUT)  # serve_forever ends when the server closes

    run(main)


def test_server_takes_a_socket() -> None:
    async def main() -> None:
        sock = udpkit.udp_bind("127.0.0.1", 0)
        async with (
            await udpkit.aio.serve(sock, handler=lambda d: d.data.upper()) as server,
            await udpkit.aio.open_udp(*server.local_address) as c,
        ):
            assert (await c.request(b"abc", timeout=TIMEOUT)).data == b"ABC"
        assert sock.closed

    run(main)


# -- the documentation's example ----------------------------------------------------------


def _doc_example() -> str:
    doc = udpkit.aio.__doc__ or ""
    block = doc.split("::\n", 1)[1].split("\nIt prints", 1)[0]
    return textwrap.dedent(block)


def test_docstring_example_runs_as_written() -> None:
    """An asyncio program written from the docs alone: the module's example, run as-is."""
    code = _doc_example()
    assert "asyncio.run(main())" in code
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n") == ["b'HELLO'", "b'AGAIN'", "0 True", "3", ""]


def test_public_names() -> None:
    for name in udpkit.aio.__all__:
        obj: Any = getattr(udpkit.aio, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, name


def test_server_applies_the_policy() -> None:
    """Refused sources get no answer and are counted, as with DatagramServer."""

    async def main() -> None:
        sock = udpkit.udp_bind("127.0.0.1", 0)
        policy = udpkit.Policy(deny=["127.0.0.0/8"])
        server = udpkit.aio.Server(sock, lambda d: d.data, policy=policy)
        try:
            async with udpkit.aio.open_udp(*sock.local_address) as ep:
                await ep.send(b"anyone there?")
                with pytest.raises(udpkit.Timeout):
                    await ep.recv(timeout=0.3)
            assert policy.counters["denied"] == 1
            # The verdicts show in the server's own stats, which an aio user reads.
            assert server.stats.policy == {"denied": 1}
            assert server.stats.as_dict()["policy"] == {"denied": 1}
            assert (server.stats.received, server.stats.sent) == (1, 0)
        finally:
            server.close()

    run(main)


# -- light load and busy polling -------------------------------------------------------------


def _mixed_burst(n: int) -> list[bytes]:
    """Numbered payloads with a zero-length one and an oversized one among them."""
    out = [b"%05d" % i + b"." * (i % 7) for i in range(n)]
    out[3] = b""
    out[5] = b"L" * 3000
    return out


@pytest.mark.parametrize("busy", [0, 500], ids=["sleeping", "busy"])
def test_endpoint_ping_pong_then_burst_keeps_order(fast: bool | None, busy: int) -> None:
    """One-at-a-time reads (light load, busy polling) and batches give the same stream."""
    burst = _mixed_burst(150)

    async def main() -> None:
        sock = udpkit.udp_bind("127.0.0.1", 0)
        async with Endpoint(sock, bufsize=2048, fast=fast, busy_poll_us=busy) as ep:
            ep.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # hold the burst
            with plain("127.0.0.1", socket.AF_INET) as tx:
                for i in range(30):  # ping-pong: the light path
                    tx.sendto(b"ping%d" % i, ep.local_address)
                    d = await ep.recv(timeout=TIMEOUT)
                    assert d.data == b"ping%d" % i and d.peer == tx.getsockname()
                    await ep.send(d.data.upper(), d.peer)
                    assert tx.recv(100) == b"PING%d" % i
                for m in burst:  # queued before the endpoint reads: batches
                    tx.sendto(m, ep.local_address)
                got = [await ep.recv(timeout=TIMEOUT) for _ in burst]
            assert [d.length for d in got] == [len(m) for m in burst]
            assert [d.data for d in got] == [m[:2048] for m in burst]
            assert got[5].truncated and not got[3].truncated
            st = ep.stats
            assert st.kernel_drops in (0, None)
            assert (st.received, st.truncated, st.sent) == (30 + len(burst), 1, 30)
            assert st.received_bytes == sum(len(b"ping%d" % i) for i in range(30)) + sum(
                map(len, burst)
            )

    run(main)


_FLOOD = """
import socket, sys, time
addr = (sys.argv[1], int(sys.argv[2]))
end = time.monotonic() + float(sys.argv[3])
n = 0
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
    while time.monotonic() < end:
        tx.sendto(b"f", addr)
        n += 1
        if n % 32 == 0:
            time.sleep(0.0002)
print(n)
"""


async def _flood(addr: Any, seconds: float) -> int:
    """Send small datagrams to ``addr`` from another process for ``seconds``; the count."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FLOOD,
        addr[0],
        str(addr[1]),
        str(seconds),
        stdout=subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return int(out)


async def _longest_stall(work: Awaitable[Any], seconds: float) -> float:
    """The longest time another task waited for the loop while ``work`` ran (s)."""
    longest = 0.0

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    t = asyncio.create_task(ticker())
    try:
        await asyncio.wait_for(work, seconds + TIMEOUT)
    finally:
        t.cancel()
    return longest


@linux_only
def test_busy_endpoint_lets_other_tasks_run() -> None:
    """A busy-polling recv loop under a steady stream still yields to the loop."""

    async def main() -> None:
        sock = udpkit.udp_bind("127.0.0.1", 0)
        async with Endpoint(sock, busy_poll_us=200_000) as ep:
            sender = asyncio.create_task(_flood(ep.local_address, 0.4))

            async def consume() -> int:
                n = 0
                end = time.monotonic() + 0.4
                while time.monotonic() < end:
                    with contextlib.suppress(udpkit.Timeout):
                        await ep.recv(timeout=0.05)
                        n += 1
                return n

            stall = await _longest_stall(consume(), 0.4)
            await sender
        assert ep.stats.received > 100
        # A turn every millisecond by design; 0.1 s leaves room for a slow machine, and
        # a loop held for the whole stream would stall 0.4 s.
        assert stall < 0.1

    run(main)


@linux_only
def test_busy_server_answers_and_lets_other_tasks_run() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with await udpkit.aio.serve(
            "127.0.0.1", 0, lambda d: d.data + b"!", busy_poll_us=100_000
        ) as server:
            # Ping-pong first: every reply arrives while the server spins.
            with plain("127.0.0.1", socket.AF_INET) as c:

                def ping_pong() -> list[bytes]:
                    out = []
                    for i in range(50):
                        c.sendto(b"%d" % i, server.local_address)
                        out.append(c.recv(100))
                    return out

                replies = await loop.run_in_executor(None, ping_pong)
            assert replies == [b"%d!" % i for i in range(50)]
            sender = asyncio.create_task(_flood(server.local_address, 0.4))
            stall = await _longest_stall(sender, 0.4)
            sent = sender.result()
            await asyncio.sleep(0.2)  # the server takes the rest (sent == received + drops)
            st = server.stats
        assert st.handler_errors == 0 and st.received >= 50
        assert st.received + (st.kernel_drops or 0) == sent + 50
        assert stall < 0.1

    run(main)


def test_busy_poll_us_checked() -> None:
    async def main() -> None:
        for bad in (-1, 2_000_000):
            with pytest.raises(udpkit.UsageError, match=f"invalid busy_poll_us {bad}"):
                await udpkit.aio.bind_udp("127.0.0.1", 0, busy_poll_us=bad)

    run(main)


def test_request_all_collects_every_answer(family: Family) -> None:
    _fam, host = family

    async def main() -> None:
        async with (
            await udpkit.aio.serve(host, 0, lambda d: [d.data + b"1", d.data + b"2"]) as srv,
            await udpkit.aio.open_udp(*srv.local_address[:2]) as ep,
        ):
            t0 = time.monotonic()
            got = await ep.request_all(b"q", timeout=0.3)
            assert 0.25 <= time.monotonic() - t0 < 3
            assert [d.data for d in got] == [b"q1", b"q2"]
            assert [d.data for d in await ep.request_all(b"r", timeout=2, limit=1)] == [b"r1"]
            with pytest.raises(udpkit.UsageError, match="invalid limit 0"):
                await ep.request_all(b"s", limit=0)

    run(main)


# -- requests: turns, stale answers, match ---------------------------------------------------


def _delayed_echo(delay: float) -> Callable[[], Awaitable[tuple[Any, asyncio.Task[None]]]]:
    """A server (an Endpoint) that answers each request ``delay`` seconds later."""

    async def start() -> tuple[Any, asyncio.Task[None]]:
        srv = await udpkit.aio.bind_udp("127.0.0.1", 0)

        async def answer(d: Datagram) -> None:
            await asyncio.sleep(delay)
            if not srv.closed:
                await srv.send(b"re:" + d.data, d.peer)

        async def loop() -> None:
            async with asyncio.TaskGroup() as tg:
                async for d in srv:
                    tg.create_task(answer(d))

        return srv, asyncio.create_task(loop())

    return start


def test_request_never_returns_an_earlier_requests_answer() -> None:
    """A reply that came after its request timed out was handed to the next request,
    and every later request stayed one answer behind."""

    async def main() -> None:
        srv, task = await _delayed_echo(0.15)()
        try:
            async with udpkit.aio.open_udp(*srv.local_address) as ep:
                with pytest.raises(udpkit.Timeout):
                    await ep.request(b"A", timeout=0.05)
                await asyncio.sleep(0.2)  # A's late answer is now waiting
                assert (await ep.request(b"B", timeout=1)).data == b"re:B"
                assert ep.stats.stale == 1
                # With match, an answer that crosses the send is skipped too.
                with pytest.raises(udpkit.Timeout):
                    await ep.request(b"C", timeout=0.05)
                got = await ep.request(b"D", timeout=1, match=lambda d: d.data == b"re:D")
                assert got.data == b"re:D"
                assert ep.stats.stale == 2
        finally:
            srv.close()
            await asyncio.wait_for(task, TIMEOUT)

    run(main)


def test_concurrent_requests_take_turns() -> None:
    """50 requests gathered on one endpoint got each other's answers (1 in 50 right)."""

    async def main() -> None:
        srv, task = await _delayed_echo(0.002)()
        try:
            async with udpkit.aio.open_udp(*srv.local_address) as ep:
                asks = [b"q%d" % i for i in range(50)]
                answers = await asyncio.gather(*(ep.request(q, timeout=2) for q in asks))
                assert [a.data for a in answers] == [b"re:" + q for q in asks]
                found = await ep.request_all(b"all", timeout=0.1)
                assert [d.data for d in found] == [b"re:all"]
        finally:
            srv.close()
            await asyncio.wait_for(task, TIMEOUT)

    run(main)


def test_bad_timeouts_are_usage_errors() -> None:
    async def main() -> None:
        async with udpkit.aio.bind_udp("127.0.0.1", 0) as ep:
            for bad in (-1, None, "1"):
                with pytest.raises(udpkit.UsageError, match="invalid timeout"):
                    await ep.request(b"x", ("127.0.0.1", 9), timeout=bad)  # type: ignore[arg-type]
            with pytest.raises(udpkit.UsageError, match="invalid timeout -1"):
                await ep.recv(timeout=-1)

    run(main)


def test_connected_endpoint_refuses_another_destination() -> None:
    """send(to=other) on a connected endpoint went out, but every answer was filtered."""

    async def main() -> None:
        async with (
            udpkit.aio.bind_udp("127.0.0.1", 0) as a,
            udpkit.aio.bind_udp("127.0.0.1", 0) as b,
            udpkit.aio.open_udp(*a.local_address) as ep,
        ):
            await ep.send(b"ok", a.local_address)  # its own peer, named: fine
            with pytest.raises(udpkit.UsageError, match="connected to"):
                await ep.send(b"x", b.local_address)

    run(main)


# -- closing accounts for everything ---------------------------------------------------------


@linux_only
def test_close_counts_what_was_never_taken() -> None:
    """aclose() with datagrams queued and more in the kernel lost both uncounted:
    sent != received + kernel_drops."""
    sent = 3000

    async def main() -> None:
        ep = await udpkit.aio.bind_udp("127.0.0.1", 0, queue_size=16)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(sent):
                tx.sendto(b"%d" % i, ep.local_address)
        await asyncio.sleep(0.05)  # the reader fills its queue, then stops
        assert (await ep.recv()).data == b"0"
        await ep.aclose()
        st = ep.stats
        if st.kernel_drops is None:
            pytest.skip("/proc/net/udp shows no drop count here")
        assert sent == st.received + st.kernel_drops
        assert st.discarded == st.received - 1  # all but the one taken
        with pytest.raises(udpkit.UsageError, match="closed"):
            await ep.recv()

    run(main)


# -- server handlers ---------------------------------------------------------------------------


def test_coroutine_handler_is_refused() -> None:
    async def handler(d: Datagram) -> bytes:
        return d.data

    async def main() -> None:
        sock = udpkit.udp_bind("127.0.0.1", 0)
        with pytest.raises(udpkit.UsageError, match="coroutine function"):
            udpkit.aio.Server(sock, handler)  # type: ignore[arg-type]
        assert sock.closed

    run(main)


def test_handler_failure_is_counted_kept_and_reported_once() -> None:
    async def main() -> None:
        reported: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))

        def handler(d: Datagram) -> bytes:
            raise ValueError(f"bad {d.data!r}")

        async with (
            await udpkit.aio.serve("127.0.0.1", 0, handler) as srv,
            await udpkit.aio.open_udp(*srv.local_address) as ep,
        ):
            for i in range(3):
                await ep.send(b"%d" % i)
            deadline = time.monotonic() + TIMEOUT
            while srv.stats.handler_errors < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert srv.stats.handler_errors == 3
            assert repr(srv.handler_error) == "ValueError(\"bad b'2'\")"
        assert len(reported) == 1 and isinstance(reported[0]["exception"], ValueError)

    run(main)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("not bytes", "handler returned str 'not bytes': return bytes, a list of bytes or None"),
        (5, "handler returned int 5: return bytes"),
        ([b"ok", "two"], "handler's reply list holds str 'two': every reply must be bytes"),
    ],
    ids=["str", "int", "list-with-str"],
)
def test_a_bad_handler_reply_is_named_whole(reply: object, message: str) -> None:
    """A handler returning "text" was reported as TypeError("reply 'n': must be bytes"):
    the str was taken for a list of replies and blamed on its first character."""

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, _ctx: None)
        async with (
            await udpkit.aio.serve("127.0.0.1", 0, lambda d: reply) as srv,  # type: ignore[arg-type,return-value]
            await udpkit.aio.open_udp(*srv.local_address) as ep,
        ):
            await ep.send(b"q")
            deadline = time.monotonic() + TIMEOUT
            while srv.stats.handler_errors < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert isinstance(srv.handler_error, TypeError)
            assert str(srv.handler_error).startswith(message)
            if isinstance(reply, list):  # the replies before the bad one still go
                assert (await ep.recv(timeout=TIMEOUT)).data == b"ok"

    run(main)


def test_handler_that_closes_the_server_ends_it_cleanly(fast: bool | None) -> None:
    """A handler calling close() made serve_forever() raise EBADF: the server read on
    from its closed descriptor (and could read another socket's datagrams)."""

    async def main() -> None:
        seen: list[bytes] = []
        srv: Any = None

        def handler(d: Datagram) -> None:
            seen.append(d.data)
            srv.close()

        srv = udpkit.aio.Server(udpkit.udp_bind("127.0.0.1", 0), handler, fast=fast)
        where = srv.local_address
        task = asyncio.create_task(srv.serve_forever())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"first", where)
            await asyncio.wait_for(task, TIMEOUT)  # returns: no error
            # The descriptor number is free again; a new socket may get it.
            async with udpkit.aio.bind_udp("127.0.0.1", 0) as other:
                tx.sendto(b"for-the-new-socket", other.local_address)
                assert (await other.recv(timeout=TIMEOUT)).data == b"for-the-new-socket"
        assert seen == [b"first"]

    run(main)


@linux_only
def test_busy_server_yields_even_when_it_cannot_keep_up() -> None:
    """A busy-polling server whose handler is slower than the stream never returned to
    the loop: the spin only looked at the clock when the socket was empty."""

    def slow(d: Datagram) -> None:
        end = time.perf_counter() + 50e-6
        while time.perf_counter() < end:
            pass

    async def main() -> None:
        async with await udpkit.aio.serve("127.0.0.1", 0, slow, busy_poll_us=1000) as server:
            sender = asyncio.create_task(_flood(server.local_address, 0.4))
            stall = await _longest_stall(sender, 0.4)
        assert stall < 0.1

    run(main)


def test_small_conveniences() -> None:
    """From writing programs off the README: a str payload got a bare TypeError,
    local_address raised after close, and cancelling serve_forever left the server open."""

    async def main() -> None:
        srv = await udpkit.aio.serve("127.0.0.1", 0, lambda d: d.data)
        where = srv.local_address
        task = asyncio.create_task(srv.serve_forever())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert srv.closed and srv.local_address == where
        async with udpkit.aio.bind_udp("127.0.0.1", 0) as ep:
            with pytest.raises(udpkit.UsageError, match=r"cannot send str 'hi': give bytes"):
                await ep.send("hi", where)  # type: ignore[arg-type]

    run(main)


def test_datagram_repr_stays_short() -> None:
    d = Datagram(b"x" * 2000, ("127.0.0.1", 5005), 3000)
    text = repr(d)
    assert text == (
        "Datagram(data=b'" + "x" * 32 + "'... (2000 bytes), peer=('127.0.0.1', 5005), "
        "length=3000, truncated)"
    )
    assert repr(Datagram(b"", None, 0)) == "Datagram(data=b'', peer=None, length=0)"
