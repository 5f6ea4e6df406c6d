"""Request matching without a socket or an event loop (udpkit._core.requests)."""

from __future__ import annotations

from udpkit._core.datagram import Datagram
from udpkit._core.requests import Request, Requests

PEER = ("192.0.2.1", 5005)


def dg(data: bytes) -> Datagram:
    return Datagram(data, PEER, len(data))


def starts(prefix: bytes) -> Request:
    return Request(lambda d: d.data.startswith(prefix), 1)


def test_earliest_matching_request_gets_a_datagram_first() -> None:
    reqs = Requests()
    a, b = starts(b"x"), starts(b"x")
    reqs.enter(a)
    reqs.enter(b)
    assert reqs.claim(dg(b"x1")) is a
    assert a.satisfied() and not b.satisfied()
    # A satisfied request with match still takes what it accepts: a late second answer.
    assert reqs.claim(dg(b"x2")) is a
    assert reqs.leave(a) == 2  # never taken by its task: the caller counts them stale
    assert reqs.claim(dg(b"x3")) is b


def test_catch_all_takes_what_no_match_accepts_until_it_has_enough() -> None:
    reqs = Requests()
    m, catch = starts(b"id7"), Request(None, 2)
    reqs.enter(m)
    reqs.enter(catch)
    assert reqs.active
    assert reqs.claim(dg(b"other")) is None  # recv() only asks the requests with match
    assert reqs.route(dg(b"id7:answer")) is m
    assert reqs.route(dg(b"a")) is catch
    assert reqs.route(dg(b"b")) is catch
    assert reqs.route(dg(b"c")) is None  # the catch-all has its limit: stale
    assert [d.data for d in catch.got] == [b"a", b"b"]
    reqs.leave(m)
    reqs.leave(catch)
    assert not reqs.active and reqs.catch is None


def test_a_match_that_raises_fails_only_its_own_request() -> None:
    """Its error is kept for its own task to raise; the datagram goes on to the next."""

    def broken(d: Datagram) -> bool:
        raise KeyError("bad match")

    reqs = Requests()
    bad, good = Request(broken, 1), starts(b"")
    reqs.enter(bad)
    reqs.enter(good)
    assert reqs.claim(dg(b"z")) is good
    assert isinstance(bad.error, KeyError) and bad.satisfied()
    assert reqs.claim(dg(b"z")) is good  # the failed one is no longer asked
