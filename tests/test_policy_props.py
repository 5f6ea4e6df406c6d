"""Hypothesis properties of udpkit._core.policy: the budget and the bucket hold for any input."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from udpkit._core.errors import UsageError
from udpkit._core.policy import ADMIT, DENIED, RATE_LIMITED, Policy, parse_cidr, parse_rate_limit

# A few untrusted sources (two share an address on different ports, one is
# IPv4-mapped) and one trusted loopback source.
_PEERS: list[Any] = [
    ("192.0.2.1", 1000),
    ("192.0.2.1", 2000),
    ("::ffff:192.0.2.2", 3000, 0, 0),
    ("2001:db8::7", 4000, 0, 0),
    ("198.51.100.9", 5000),
    ("127.0.0.1", 6000),
]
# The budget is per address: ports and the mapped spelling do not matter.
_ADDRESS = ["192.0.2.1", "192.0.2.1", "192.0.2.2", "2001:db8::7", "198.51.100.9", "127.0.0.1"]

_op = st.tuples(
    st.sampled_from(["recv", "reply"]),
    st.integers(0, len(_PEERS) - 1),
    st.integers(0, 2000),  # bytes
    st.floats(0.0, 2.0),  # seconds since the previous step
)


@settings(max_examples=200)
@given(
    ops=st.lists(_op, max_size=80),
    factor=st.sampled_from([0.0, 0.5, 1.0, 2.5, 3.0]),
    max_entries=st.sampled_from([1, 2, 64]),
    rate=st.sampled_from([None, "3/s:2"]),
)
def test_amplification_never_exceeded(
    ops: list[tuple[str, int, int, float]], factor: float, max_entries: int, rate: str | None
) -> None:
    """Over any ordering of receives and replies, reply bytes <= factor x admitted bytes.

    Tables as small as one entry are included: eviction restarts a source at zero
    credit *and* zero spent, so the total over its whole history still holds.
    """
    policy = Policy(amplification=factor, max_entries=max_entries, rate_limit=rate)
    received: dict[str, int] = {}
    sent: dict[str, int] = {}
    now = 0.0
    for kind, index, size, dt in ops:
        now += dt
        peer, address = _PEERS[index], _ADDRESS[index]
        if kind == "recv":
            if policy.admit(peer, size, now) is ADMIT:
                received[address] = received.get(address, 0) + size
        elif policy.may_reply(peer, size, now):
            sent[address] = sent.get(address, 0) + size
        for addr, total in sent.items():
            if addr != "127.0.0.1":
                assert total <= factor * received.get(addr, 0), (addr, policy.counters)


@settings(max_examples=200)
@given(
    rate=st.floats(0.1, 1000.0),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=120),
    hosts=st.lists(st.integers(0, 255), min_size=1, max_size=120),
)
def test_token_bucket_bound(rate: float, burst: int, gaps: list[float], hosts: list[int]) -> None:
    """Admitted <= rate x T + burst over every window [t_i, t_j] of arrival times.

    Sources all sit in one /24 with prefix grouping on, so the bound holds for the
    group, not just for one address.
    """
    policy = Policy(rate_limit=f"{rate!r}/s:{burst}", rate_limit_prefix=True)
    times: list[float] = []
    now = 0.0
    admitted: list[bool] = []
    for i, gap in enumerate(gaps):
        now += gap
        peer = (f"192.0.2.{hosts[i % len(hosts)]}", 1024 + i)
        verdict = policy.admit(peer, 1, now)
        assert verdict in (ADMIT, RATE_LIMITED)
        times.append(now)
        admitted.append(verdict is ADMIT)
    parsed_rate = parse_rate_limit(f"{rate!r}/s").rate
    for i in range(len(times)):
        count = 0
        for j in range(i, len(times)):
            count += admitted[j]
            # A tiny slack for float rounding in the refill arithmetic.
            assert count <= parsed_rate * (times[j] - times[i]) + burst + 1e-6
    assert policy.counters["rate_limited"] == admitted.count(False)


_host = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["127.0.0.1", "::1", "::ffff:1.2.3.4", "fe80::1%lo", "255.255.255.255", "::"]),
    st.ip_addresses().map(str),
    st.binary(max_size=16),
    st.integers(),
    st.none(),
)
_port = st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=5), st.none(), st.floats())
_peer = st.one_of(
    st.tuples(_host, _port),
    st.tuples(_host, _port, st.integers(-1, 2**32), st.one_of(st.integers(-1, 2**32), st.text())),
    st.tuples(),
    st.tuples(_host),
    st.tuples(st.lists(st.integers(), max_size=2), _port),  # unhashable
    st.none(),
    st.text(max_size=20),
    st.binary(max_size=20),
)


@settings(max_examples=300)
@given(peer=_peer, size=st.integers(0, 70000))
def test_admit_never_raises(peer: Any, size: int) -> None:
    policy = Policy(
        deny=["10.0.0.0/8"],
        rate_limit="5/s:2",
        rate_limit_prefix=True,
        local=("0.0.0.0", 5005),
        broadcasts=["192.168.0.0/16"],
    )
    assert policy.admit(peer, size, 1.0) in (ADMIT, DENIED, RATE_LIMITED)
    assert isinstance(policy.may_reply(peer, size, 1.0), bool)
    assert all(isinstance(v, int) and v >= 0 for v in policy.counters.values())


@given(text=st.text(max_size=40))
def test_parsers_raise_only_usage_error(text: str) -> None:
    for parse in (parse_cidr, parse_rate_limit):
        try:
            parse(text)
        except UsageError as exc:
            assert repr(text) in str(exc)
