"""udpkit.aio requests on one endpoint: with ``match`` they run concurrently, each datagram
going to the request that accepts it; without, they take turns. Real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest

import udpkit
import udpkit.aio
from udpkit import Datagram
from udpkit.aio import Endpoint

Family = tuple[socket.AddressFamily, str]
TIMEOUT = 5.0  # every await in these tests is bounded by this


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    """Run one test coroutine with a hard bound on its duration."""

    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), 20)

    asyncio.run(bounded())


def closed_port(host: str, family: socket.AddressFamily) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def is_(want: bytes) -> Callable[[Datagram], bool]:
    return lambda d: d.data == want


async def responder(
    host: str, answer: Callable[[bytes], Iterable[bytes]], delay: float = 0.0
) -> tuple[Endpoint, asyncio.Task[None]]:
    """An Endpoint that sends ``answer(request)`` back, ``delay`` seconds after each request."""
    srv = await udpkit.aio.bind_udp(host, 0)

    async def reply(d: Datagram) -> None:
        if delay:
            await asyncio.sleep(delay)
        for out in answer(d.data):
            if not srv.closed:
                await srv.send(out, d.peer)

    async def serve() -> None:
        async with asyncio.TaskGroup() as tg:
            async for d in srv:
                tg.create_task(reply(d))

    return srv, asyncio.create_task(serve())


async def stop(srv: Endpoint, task: asyncio.Task[None]) -> None:
    srv.close()
    await asyncio.wait_for(task, TIMEOUT)


def test_matched_requests_run_concurrently_despite_losses(family: Family) -> None:
    """100 requests gathered on one endpoint, 20 of them lost once: each loss used to stall
    every queued request for its full timeout (20 x 0.5 s = ~10 s serialized)."""
    _fam, host = family
    seen: dict[bytes, int] = {}

    def lossy(d: Datagram) -> bytes | None:
        seen[d.data] = seen.get(d.data, 0) + 1
        if int(d.data[1:]) % 5 == 0 and seen[d.data] == 1:
            return None  # every fifth id loses its first attempt
        return b"re:" + d.data

    async def main() -> None:
        async with (
            await udpkit.aio.serve(host, 0, lossy) as srv,
            await udpkit.aio.open_udp(*srv.local_address[:2]) as ep,
        ):
            ids = [b"r%03d" % i for i in range(100)]
            t0 = time.monotonic()
            answers = await asyncio.gather(
                *(ep.request(i, timeout=0.5, retries=3, match=is_(b"re:" + i)) for i in ids)
            )
            elapsed = time.monotonic() - t0
            assert [a.data for a in answers] == [b"re:" + i for i in ids]
            assert 0.5 <= elapsed < 3.0  # the lost ones waited out one timeout, together
            assert sum(seen.values()) == 120
            assert ep.stats.stale == 0

    run(main)


@pytest.mark.parametrize("busy", [0, 200], ids=["sleeping", "busy"])
def test_crossed_answers_reach_their_requests(family: Family, busy: int) -> None:
    """Answers sent in reverse order, and one that arrives after its request resent."""
    _fam, host = family

    async def main() -> None:
        async with (
            await udpkit.aio.bind_udp(host, 0) as srv,
            await udpkit.aio.open_udp(*srv.local_address[:2], busy_poll_us=busy) as ep,
        ):
            asks = [b"q%d" % i for i in range(10)]
            tasks = [
                asyncio.create_task(ep.request(q, timeout=TIMEOUT, match=is_(b"re:" + q)))
                for q in asks
            ]
            got = [await srv.recv(timeout=TIMEOUT) for _ in asks]
            assert sorted(d.data for d in got) == sorted(asks)
            for d in reversed(got):
                await srv.send(b"re:" + d.data, d.peer)
            answers = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
            assert [a.data for a in answers] == [b"re:" + q for q in asks]
            assert ep.stats.stale == 0

            # A answers late, after A resent; B waits meanwhile. Its second answer is stale.
            a = asyncio.create_task(ep.request(b"A", timeout=0.1, retries=2, match=is_(b"re:A")))
            b = asyncio.create_task(ep.request(b"B", timeout=TIMEOUT, match=is_(b"re:B")))
            reqs = [await srv.recv(timeout=TIMEOUT) for _ in range(3)]
            assert sorted(d.data for d in reqs) == [b"A", b"A", b"B"]
            peer = reqs[0].peer
            for out in (b"re:A", b"re:A", b"re:B"):
                await srv.send(out, peer)
            assert (await asyncio.wait_for(a, TIMEOUT)).data == b"re:A"
            assert (await asyncio.wait_for(b, TIMEOUT)).data == b"re:B"
            assert ep.stats.stale == 1

    run(main)


def test_a_match_that_raises_fails_only_its_own_request(family: Family) -> None:
    _fam, host = family

    def fussy(d: Datagram) -> bool:
        if d.data == b"boom":
            raise ValueError("cannot parse b'boom'")
        return d.data == b"re:A"

    async def main() -> None:
        async with (
            await udpkit.aio.bind_udp(host, 0) as srv,
            await udpkit.aio.open_udp(*srv.local_address[:2]) as ep,
        ):
            a = asyncio.create_task(ep.request(b"A", timeout=TIMEOUT, match=fussy))
            b = asyncio.create_task(ep.request(b"B", timeout=TIMEOUT, match=is_(b"re:B")))
            c = asyncio.create_task(ep.request(b"C", timeout=TIMEOUT, match=is_(b"re:C")))
            reqs = [await srv.recv(timeout=TIMEOUT) for _ in range(3)]
            for out in (b"boom", b"re:C", b"re:B"):
                await srv.send(out, reqs[0].peer)
            with pytest.raises(ValueError, match="cannot parse"):
                await asyncio.wait_for(a, TIMEOUT)
            assert (await asyncio.wait_for(b, TIMEOUT)).data == b"re:B"
            assert (await asyncio.wait_for(c, TIMEOUT)).data == b"re:C"
            assert ep.stats.stale == 1  # b"boom": nobody else wanted it
            # The endpoint goes on working, with or without match.
            d = asyncio.create_task(ep.request(b"D", timeout=TIMEOUT, match=is_(b"re:D")))
            q = await srv.recv(timeout=TIMEOUT)
            await srv.send(b"re:" + q.data, q.peer)
            assert (await asyncio.wait_for(d, TIMEOUT)).data == b"re:D"

    run(main)


def test_cancelled_request_leaves_others_working_and_counts_its_answer_stale(
    family: Family,
) -> None:
    _fam, host = family

    async def main() -> None:
        async with (
            await udpkit.aio.bind_udp(host, 0) as srv,
            await udpkit.aio.open_udp(*srv.local_address[:2]) as ep,
        ):
            a = asyncio.create_task(ep.request(b"A", timeout=TIMEOUT, match=is_(b"re:A")))
            c = asyncio.create_task(ep.request(b"C", timeout=TIMEOUT, match=is_(b"re:C")))
            reqs = [await srv.recv(timeout=TIMEOUT) for _ in range(2)]
            assert sorted(d.data for d in reqs) == [b"A", b"C"]
            peer = reqs[0].peer

            async def answer_one() -> None:
                q = await srv.recv(timeout=TIMEOUT)
                await srv.send(b"re:" + q.data, q.peer)

            helper = asyncio.create_task(answer_one())
            # A's answer reaches the client's socket while the loop does not run: A
            # cannot take it before it is cancelled. B's start routes it to A, whose
            # task then ends cancelled without taking it: stale.
            srv.sock.sendto(b"re:A", peer)
            time.sleep(0.05)
            a.cancel()
            assert (await ep.request(b"B", timeout=TIMEOUT, match=is_(b"re:B"))).data == b"re:B"
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(a, TIMEOUT)
            await asyncio.wait_for(helper, TIMEOUT)
            assert ep.stats.stale == 1
            assert not c.done()
            await srv.send(b"re:C", peer)
            assert (await asyncio.wait_for(c, TIMEOUT)).data == b"re:C"
            assert ep.stats.stale == 1

    run(main)


@pytest.mark.parametrize("busy", [0, 200], ids=["sleeping", "busy"])
def test_unmatched_request_gets_the_first_datagram_nobody_claims(busy: int) -> None:
    async def main() -> None:
        async with (
            await udpkit.aio.bind_udp("127.0.0.1", 0) as srv,
            await udpkit.aio.open_udp(*srv.local_address[:2], busy_poll_us=busy) as ep,
        ):
            m1 = asyncio.create_task(ep.request(b"m1", timeout=TIMEOUT, match=is_(b"re:m1")))
            u = asyncio.create_task(ep.request(b"u", timeout=TIMEOUT))
            m2 = asyncio.create_task(ep.request(b"m2", timeout=TIMEOUT, match=is_(b"re:m2")))
            # A second one without match waits for its turn: it is sent after u's answer.
            u2 = asyncio.create_task(ep.request(b"u2", timeout=TIMEOUT))
            reqs = [await srv.recv(timeout=TIMEOUT) for _ in range(3)]
            assert sorted(d.data for d in reqs) == [b"m1", b"m2", b"u"]
            peer = reqs[0].peer
            for out in (b"re:m2", b"re:m1", b"anything", b"re:m1"):
                await srv.send(out, peer)
            assert (await asyncio.wait_for(u, TIMEOUT)).data == b"anything"
            assert (await asyncio.wait_for(m1, TIMEOUT)).data == b"re:m1"
            assert (await asyncio.wait_for(m2, TIMEOUT)).data == b"re:m2"
            q = await srv.recv(timeout=TIMEOUT)
            assert q.data == b"u2"
            await srv.send(b"re:u2", peer)
            assert (await asyncio.wait_for(u2, TIMEOUT)).data == b"re:u2"
            assert ep.stats.stale == 1  # the second b"re:m1"

    run(main)


def test_request_all_does_not_take_matched_answers(family: Family) -> None:
    _fam, host = family

    def answer(q: bytes) -> list[bytes]:
        return [b"all-1", b"all-2"] if q == b"all" else [b"re:" + q]

    async def main() -> None:
        srv, task = await responder(host, answer, delay=0.05)
        try:
            async with await udpkit.aio.open_udp(*srv.local_address[:2]) as ep:
                asks = [b"m%d" % i for i in range(5)]
                t0 = time.monotonic()

                async def ask(q: bytes) -> tuple[Datagram, float]:
                    d = await ep.request(q, timeout=TIMEOUT, match=is_(b"re:" + q))
                    return d, time.monotonic() - t0

                found, *answers = await asyncio.gather(
                    ep.request_all(b"all", timeout=0.8), *(ask(q) for q in asks)
                )
                assert [d.data for d in found] == [b"all-1", b"all-2"]
                assert [a.data for a, _ in answers] == [b"re:" + q for q in asks]
                # Answered while request_all was still collecting, not after it.
                assert max(t for _, t in answers) < 0.6
                assert ep.stats.stale == 0
        finally:
            await stop(srv, task)

    run(main)


@pytest.mark.parametrize("busy", [0, 200], ids=["sleeping", "busy"])
def test_recv_does_not_take_a_pending_requests_answer(family: Family, busy: int) -> None:
    _fam, host = family

    async def main() -> None:
        async with (
            await udpkit.aio.bind_udp(host, 0) as srv,
            await udpkit.aio.open_udp(*srv.local_address[:2], busy_poll_us=busy) as ep,
        ):
            r = asyncio.create_task(ep.recv(timeout=TIMEOUT))  # waits first, so runs first
            await asyncio.sleep(0)
            req = asyncio.create_task(ep.request(b"q", timeout=TIMEOUT, match=is_(b"re:q")))
            q = await srv.recv(timeout=TIMEOUT)
            await srv.send(b"re:q", q.peer)
            await srv.send(b"other", q.peer)
            assert (await asyncio.wait_for(r, TIMEOUT)).data == b"other"
            assert (await asyncio.wait_for(req, TIMEOUT)).data == b"re:q"
            # async for likewise; once no request runs it gets everything again.
            req = asyncio.create_task(ep.request(b"q2", timeout=TIMEOUT, match=is_(b"re:q2")))
            q = await srv.recv(timeout=TIMEOUT)
            for out in (b"re:q2", b"x"):
                await srv.send(out, q.peer)
            async for d in ep:
                assert d.data == b"x"
                break
            assert (await asyncio.wait_for(req, TIMEOUT)).data == b"re:q2"
            await srv.send(b"re:q2", q.peer)
            async for d in ep:
                assert d.data == b"re:q2"
                break
            assert ep.stats.stale == 0

    run(main)


def test_matched_requests_are_refused_each(family: Family) -> None:
    fam, host = family

    async def main() -> None:
        async with await udpkit.aio.open_udp(host, closed_port(host, fam)) as ep:
            start = time.monotonic()
            results: list[Any] = await asyncio.gather(
                *(ep.request(b"p%d" % i, timeout=3.0, match=is_(b"x")) for i in range(3)),
                return_exceptions=True,
            )
            assert all(isinstance(r, udpkit.ConnectionRefused) for r in results), results
            assert time.monotonic() - start < 2.5  # refused at once, not timed out

    run(main)


def test_matched_requests_time_out_on_their_own(family: Family) -> None:
    """One silent request times out after its attempts; the others are answered meanwhile."""
    _fam, host = family

    async def main() -> None:
        srv, task = await responder(host, lambda q: [] if q == b"silent" else [b"re:" + q])
        try:
            async with await udpkit.aio.open_udp(*srv.local_address[:2]) as ep:
                silent = asyncio.create_task(
                    ep.request(b"silent", timeout=0.2, retries=1, match=is_(b"re:silent"))
                )
                t0 = time.monotonic()
                for i in range(20):
                    q = b"q%d" % i
                    got = await ep.request(q, timeout=TIMEOUT, match=is_(b"re:" + q))
                    assert got.data == b"re:" + q
                assert time.monotonic() - t0 < 0.3  # not behind the silent one
                with pytest.raises(udpkit.Timeout, match=r"0\.2 s \(2 attempts\)"):
                    await asyncio.wait_for(silent, TIMEOUT)
                assert 0.35 <= time.monotonic() - t0 < 3
        finally:
            await stop(srv, task)

    run(main)
