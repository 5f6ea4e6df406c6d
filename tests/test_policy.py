"""Tests for udpkit._core.policy: allow/deny, rate limits, amplification budget, never-reply rules.

The policy never reads the clock, so every test drives ``now`` by hand: no sleeps.
The parsers live in ``_policy_rules``; they are imported here through ``_policy``.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from udpkit._core.errors import UsageError
from udpkit._core.policy import (
    ADMIT,
    DENIED,
    RATE_LIMITED,
    Policy,
    RateLimit,
    Verdict,
    parse_cidr,
    parse_rate_limit,
    wildcard_warning,
)

HELLO = b"Hello, World!"  # the textbook client's 13-byte request
REPLY = b"Hello UDP Client"  # a 16-byte answer: more than the request
OUTSIDE = ("192.0.2.1", 40000)  # TEST-NET-1: never loopback, never trusted by default
OUTSIDE6 = ("2001:db8::1", 40000, 0, 0)


def _nonzero(policy: Policy) -> dict[str, int]:
    return {k: v for k, v in policy.counters.items() if v}


# -- parsers ---------------------------------------------------------------------


def test_rule_names_stay_importable_from_policy() -> None:
    """The parsers moved to _policy_rules; _policy re-exports every public one."""
    from udpkit._core import policy as _policy
    from udpkit._core import policy_rules as _policy_rules

    for name in _policy_rules.__all__:
        assert name in _policy.__all__
        assert getattr(_policy, name) is getattr(_policy_rules, name)


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),  # host bits masked, as iptables does
        ("192.0.2.7", "192.0.2.7/32"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("::1", "::1/128"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),  # mapped CIDRs mean IPv4
        ("::ffff:192.0.2.1", "192.0.2.1/32"),
        ("::/0", "::/0"),  # too short to be "mapped": stays IPv6
        (" 0.0.0.0/0 ", "0.0.0.0/0"),
    ],
)
def test_parse_cidr(text: str, network: str) -> None:
    assert parse_cidr(text) == ipaddress.ip_network(network)


@pytest.mark.parametrize(
    "text", ["10.0.0.300/8", "10.0.0.0/33", "::1/129", "example.com", "", "fe80::1%eth0/64", "1/x"]
)
def test_parse_cidr_rejects_naming_the_input(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_cidr(text)
    assert f"invalid CIDR {text!r}: " in str(info.value)
    assert "10.0.0.0/8" in str(info.value)  # says what would be right


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100", RateLimit(100.0, 100)),
        ("100/s", RateLimit(100.0, 100)),
        ("100/s:200", RateLimit(100.0, 200)),
        ("100:5", RateLimit(100.0, 5)),
        (" 10 / s : 1 ", RateLimit(10.0, 1)),
        ("0.5/s", RateLimit(0.5, 1)),  # burst at least one datagram
        ("2.5/s", RateLimit(2.5, 3)),
    ],
)
def test_parse_rate_limit(text: str, expected: RateLimit) -> None:
    assert parse_rate_limit(text) == expected


@pytest.mark.parametrize(
    "text", ["0/s", "0", "-1/s", "abc", "100/m", "100/s:0", "100/s:1.5", "", "/s", "1e3/s"]
)
def test_parse_rate_limit_rejects_naming_the_input(text: str) -> None:
    with pytest.raises(UsageError, match=r"invalid rate limit ") as info:
        parse_rate_limit(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"allow": ["10.0.0.300/8"]}, "invalid CIDR '10.0.0.300/8'"),
        ({"deny": "nope"}, "invalid CIDR 'nope'"),
        ({"trust": ["1.2.3.4/40"]}, "invalid CIDR '1.2.3.4/40'"),
        ({"rate_limit": "fast"}, "invalid rate limit 'fast'"),
        ({"rate_limit": RateLimit(0.0, 1)}, "invalid rate limit"),
        ({"amplification": 3.5}, "invalid amplification factor 3.5: must be 0 to 3"),
        ({"amplification": -1.0}, "invalid amplification factor -1.0"),
        ({"amplification": float("nan")}, "invalid amplification factor nan"),
        ({"max_entries": 0}, "invalid table size 0"),
        ({"broadcasts": ["ff02::1"]}, "invalid broadcast address 'ff02::1'"),
        ({"local": ("localhost", 5005)}, "invalid local address"),
        ({"local_addresses": ["eth0"]}, "invalid local address 'eth0'"),
    ],
)
def test_bad_options_raise_usage_error(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        Policy(**kwargs)
    assert fragment in str(info.value)


def test_amplification_cap_is_inclusive() -> None:
    assert Policy(amplification=3.0).amplification == 3.0
    assert Policy(amplification=0).amplification == 0.0


# -- allow / deny ----------------------------------------------------------------

_ACL: list[tuple[list[str], list[str], Any, Verdict]] = [
    ([], [], OUTSIDE, ADMIT),
    ([], ["192.0.2.0/24"], OUTSIDE, DENIED),
    ([], ["192.0.2.0/24"], ("192.0.3.1", 1), ADMIT),
    (["10.0.0.0/8"], [], OUTSIDE, DENIED),  # an allow list admits only what it names
    (["10.0.0.0/8"], [], ("10.9.9.9", 1), ADMIT),
    (["10.0.0.0/8"], ["10.1.0.0/16"], ("10.1.2.3", 1), DENIED),  # deny wins
    (["10.0.0.0/8"], ["10.1.0.0/16"], ("10.2.2.3", 1), ADMIT),
    (["10.0.0.0/8"], ["10.0.0.0/8"], ("10.0.0.1", 1), DENIED),
    (["2001:db8::/32"], [], OUTSIDE6, ADMIT),
    (["2001:db8::/32"], [], ("2001:db9::1", 1, 0, 0), DENIED),
    ([], ["2001:db8::/48"], OUTSIDE6, DENIED),
    ([], ["2001:db8::/48"], ("2001:db8:1::1", 1, 0, 0), ADMIT),
    # IPv4-mapped peers (dual-stack sockets) are judged as IPv4, both ways.
    ([], ["192.0.2.0/24"], ("::ffff:192.0.2.1", 1, 0, 0), DENIED),
    ([], ["::ffff:192.0.2.0/120"], OUTSIDE, DENIED),
    (["192.0.2.0/24"], [], ("::ffff:192.0.2.9", 1, 0, 0), ADMIT),
    ([], ["::/0"], ("::ffff:192.0.2.1", 1, 0, 0), ADMIT),  # ::/0 is "all IPv6"
    ([], ["::/0"], ("::1", 1, 0, 0), DENIED),
    (["0.0.0.0/0"], [], ("::1", 1, 0, 0), DENIED),
    ([], ["fe80::/10"], ("fe80::1%lo", 1, 0, 1), DENIED),  # scoped peers match too
    (["10.0.0.0/8"], [], "/tmp/sock", DENIED),  # not an IP: an allow list cannot vouch
    ([], ["10.0.0.0/8"], "/tmp/sock", ADMIT),
]


@pytest.mark.parametrize(("allow", "deny", "peer", "verdict"), _ACL)
def test_allow_deny(allow: list[str], deny: list[str], peer: Any, verdict: Verdict) -> None:
    policy = Policy(allow=allow, deny=deny)
    for _ in range(2):  # second call comes from the peer cache
        assert policy.admit(peer, 10, 0.0) is verdict
    assert policy.counters["denied"] == (2 if verdict is DENIED else 0)
    if verdict is DENIED:
        assert policy.may_reply(peer, 1, 0.0) is False  # never answered
        assert policy.counters["unreplyable_denied"] == 1


# -- rate limits -------------------------------------------------------------------


def test_token_bucket_burst_then_rate() -> None:
    policy = Policy(rate_limit="2/s:3")
    got = [policy.admit(OUTSIDE, 1, 0.0) for _ in range(5)]
    assert got == [ADMIT, ADMIT, ADMIT, RATE_LIMITED, RATE_LIMITED]
    assert policy.admit(OUTSIDE, 1, 0.25) is RATE_LIMITED  # half a token
    assert policy.admit(OUTSIDE, 1, 0.5) is ADMIT  # one token
    assert policy.admit(OUTSIDE, 1, 0.5) is RATE_LIMITED
    # A long pause refills to the burst, not beyond.
    got = [policy.admit(OUTSIDE, 1, 100.0) for _ in range(4)]
    assert got == [ADMIT, ADMIT, ADMIT, RATE_LIMITED]
    assert policy.counters["rate_limited"] == 5
    assert policy.counters["admitted"] == 7
    assert policy.dropped == 5


def test_rate_limit_applies_to_trusted_sources_too() -> None:
    policy = Policy(rate_limit="1/s:1")
    assert policy.admit(("127.0.0.1", 5), 1, 0.0) is ADMIT
    assert policy.admit(("127.0.0.1", 6), 1, 0.0) is RATE_LIMITED  # per address, not port


def test_clock_stepping_back_refills_nothing() -> None:
    policy = Policy(rate_limit="1/s:1")
    assert policy.admit(OUTSIDE, 1, 10.0) is ADMIT
    assert policy.admit(OUTSIDE, 1, 5.0) is RATE_LIMITED
    assert policy.admit(OUTSIDE, 1, 10.5) is RATE_LIMITED
    assert policy.admit(OUTSIDE, 1, 11.0) is ADMIT


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        (("192.0.2.1", 1), ("192.0.2.254", 1), True),
        (("192.0.2.1", 1), ("192.0.3.1", 1), False),
        (("192.0.2.1", 1), ("::ffff:192.0.2.7", 1, 0, 0), True),
        (("2001:db8:0:ff::1", 1, 0, 0), ("2001:db8:0:1::2", 1, 0, 0), True),  # same /56
        (("2001:db8:0:ff::1", 1, 0, 0), ("2001:db8:0:100::1", 1, 0, 0), False),
        (("0.0.0.1", 1), ("::1", 1, 0, 0), False),  # v4 and v6 keys never collide
    ],
)
def test_rate_limit_prefix_grouping(first: Any, second: Any, shared: bool) -> None:
    grouped = Policy(rate_limit="1/s:1", rate_limit_prefix=True)
    assert grouped.admit(first, 1, 0.0) is ADMIT
    assert grouped.admit(second, 1, 0.0) is (RATE_LIMITED if shared else ADMIT)
    single = Policy(rate_limit="1/s:1")
    assert single.admit(first, 1, 0.0) is ADMIT
    assert single.admit(second, 1, 0.0) is ADMIT


def test_log_only_counts_but_admits() -> None:
    policy = Policy(rate_limit="1/s:2", log_only=True)
    got = [policy.admit(OUTSIDE, 5, 0.0) for _ in range(5)]
    assert got == [ADMIT] * 5
    assert _nonzero(policy) == {"admitted": 5, "rate_limited_logged": 3}
    assert policy.dropped == 0


def test_rate_table_evicts_least_recently_seen() -> None:
    policy = Policy(rate_limit="1/s:1", max_entries=2)
    a, b, c = ("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.3", 1)
    assert policy.admit(a, 1, 0.0) is ADMIT
    assert policy.admit(b, 1, 0.0) is ADMIT
    assert policy.admit(a, 1, 0.0) is RATE_LIMITED  # a is now the most recent
    assert policy.admit(c, 1, 0.0) is ADMIT  # evicts b, not a
    assert policy.admit(a, 1, 0.0) is RATE_LIMITED  # a's empty bucket survived
    assert policy.admit(b, 1, 0.0) is ADMIT  # b came back as a new source
    assert policy.table_sizes["rate_limit"] == 2
    assert policy.counters["rate_table_evictions"] == 2


def test_100k_spoofed_sources_stay_bounded() -> None:
    """100k distinct sources cannot grow any table past its bound."""
    bound = 4096
    policy = Policy(rate_limit="10/s:1", max_entries=bound)
    for i in range(100_000):
        peer = (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1024 + i % 60000)
        assert policy.admit(peer, 20, i * 1e-6) is ADMIT
        assert policy.may_reply(peer, 20, i * 1e-6) is True
    sizes = policy.table_sizes
    assert sizes["rate_limit"] == bound
    assert sizes["budget"] == bound
    assert sizes["peer_cache"] <= 65_536
    c = policy.counters
    assert c["rate_table_evictions"] == c["budget_table_evictions"] == 100_000 - bound


def test_default_table_bound() -> None:
    policy = Policy()
    assert policy.max_entries == 8192  # fills fast under spoofing, then memory stays flat


# -- amplification -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        (("127.0.0.1", 54312), True),  # the textbook's exchange keeps working
        (("127.9.8.7", 54312), True),
        (("::1", 54312, 0, 0), True),
        (("::ffff:127.0.0.1", 54312, 0, 0), True),
        (OUTSIDE, False),
        (OUTSIDE6, False),
        (("::ffff:192.0.2.1", 54312, 0, 0), False),
        (("10.0.0.1", 54312), False),  # private is not trusted: it can be spoofed
    ],
)
def test_textbook_exchange_13_bytes_answered_with_16(peer: Any, allowed: bool) -> None:
    policy = Policy()
    assert policy.admit(peer, len(HELLO), 1.0) is ADMIT
    assert policy.may_reply(peer, len(REPLY), 1.0) is allowed
    assert policy.counters["over_budget"] == (0 if allowed else 1)


def test_next_reply_must_fit_not_allowance_above_zero() -> None:
    """A 3-byte allowance left does not let a 4-byte reply through."""
    policy = Policy()
    policy.admit(OUTSIDE, 13, 0.0)
    assert policy.may_reply(OUTSIDE, 10, 0.0) is True
    assert policy.may_reply(OUTSIDE, 4, 0.0) is False  # 10 + 4 > 13
    assert policy.may_reply(OUTSIDE, 3, 0.0) is True  # exactly fits
    assert policy.may_reply(OUTSIDE, 1, 0.0) is False
    assert policy.may_reply(OUTSIDE, 0, 0.0) is True
    policy.admit(OUTSIDE, 13, 0.0)  # more received, more credit
    assert policy.may_reply(OUTSIDE, 13, 0.0) is True
    assert policy.counters["over_budget"] == 2


@pytest.mark.parametrize(
    ("factor", "request_size", "fits", "refused"),
    [(1.0, 13, 13, 14), (3.0, 13, 39, 40), (2.5, 10, 25, 26), (0.0, 13, 0, 1)],
)
def test_amplification_factor(factor: float, request_size: int, fits: int, refused: int) -> None:
    policy = Policy(amplification=factor)
    policy.admit(OUTSIDE, request_size, 0.0)
    assert policy.may_reply(OUTSIDE, refused, 0.0) is False
    assert policy.may_reply(OUTSIDE, fits, 0.0) is True


def test_budget_is_per_address_across_ports() -> None:
    policy = Policy()
    policy.admit(("192.0.2.1", 1000), 13, 0.0)
    assert policy.may_reply(("192.0.2.1", 2000), 13, 0.0) is True
    assert policy.may_reply(("192.0.2.1", 1000), 1, 0.0) is False


def test_dropped_datagrams_earn_no_credit() -> None:
    policy = Policy(rate_limit="1/s:1", deny=["198.51.100.0/24"])
    denied = ("198.51.100.1", 1)
    assert policy.admit(denied, 1000, 0.0) is DENIED
    assert policy.admit(OUTSIDE, 13, 0.0) is ADMIT
    assert policy.admit(OUTSIDE, 1000, 0.0) is RATE_LIMITED
    assert policy.may_reply(OUTSIDE, 14, 0.0) is False
    assert policy.may_reply(OUTSIDE, 13, 0.0) is True


def test_trust_extends_loopback() -> None:
    policy = Policy(trust=["192.0.2.0/24", "2001:db8::/32"])
    for peer in (OUTSIDE, OUTSIDE6, ("127.0.0.1", 9)):
        policy.admit(peer, 13, 0.0)
        assert policy.may_reply(peer, 1000, 0.0) is True
    policy.admit(("198.51.100.1", 9), 13, 0.0)
    assert policy.may_reply(("198.51.100.1", 9), 16, 0.0) is False


def test_budget_eviction_starts_from_zero_credit() -> None:
    policy = Policy(max_entries=1)
    policy.admit(OUTSIDE, 100, 0.0)
    policy.admit(("192.0.2.2", 1), 100, 0.0)  # evicts OUTSIDE's budget
    assert policy.may_reply(OUTSIDE, 1, 0.0) is False
    assert policy.may_reply(("192.0.2.2", 1), 100, 0.0) is True
    assert policy.table_sizes["budget"] == 1


def test_never_asked_peer_has_no_budget() -> None:
    assert Policy().may_reply(OUTSIDE, 1, 0.0) is False


# -- never reply ----------------------------------------------------------------------

_WILD_KNOWN = {"local": ("0.0.0.0", 5005), "local_addresses": ["192.0.2.1"]}
_OWN_PORT_KNOWN = {"own_port": 5005, "local_addresses": ["2001:db8::1"]}
_NEVER: list[tuple[dict[str, Any], Any, str | None]] = [
    ({}, ("127.0.0.1", 0), "unreplyable_port0"),
    ({}, ("::1", 0, 0, 0), "unreplyable_port0"),
    ({}, ("127.0.0.1", 70000), "unreplyable_invalid"),
    ({}, ("127.0.0.1", "53"), "unreplyable_invalid"),
    ({}, ("255.255.255.255", 68), "unreplyable_broadcast"),
    ({}, ("::ffff:255.255.255.255", 68, 0, 0), "unreplyable_broadcast"),
    ({"broadcasts": ["192.168.1.0/24"]}, ("192.168.1.255", 9), "unreplyable_broadcast"),
    ({"broadcasts": ["192.168.1.7/24"]}, ("192.168.1.255", 9), "unreplyable_broadcast"),
    ({"broadcasts": ["192.168.1.255"]}, ("192.168.1.255", 9), "unreplyable_broadcast"),
    ({"broadcasts": ["192.168.1.0/24"]}, ("192.168.1.254", 9), None),
    ({}, ("192.168.1.255", 9), None),  # not configured: an ordinary host
    ({}, ("224.0.0.251", 5353), "unreplyable_multicast"),
    ({}, ("239.255.255.250", 1900), "unreplyable_multicast"),
    ({}, ("ff02::1", 547, 0, 1), "unreplyable_multicast"),
    ({}, ("::ffff:224.0.0.1", 9, 0, 0), "unreplyable_multicast"),
    ({}, ("0.0.0.0", 9), "unreplyable_unspecified"),
    ({}, ("::", 9, 0, 0), "unreplyable_unspecified"),
    ({"local": ("127.0.0.1", 5005)}, ("127.0.0.1", 5005), "unreplyable_self"),
    ({"local": ("127.0.0.1", 5005)}, ("127.0.0.2", 5005), None),  # another socket
    ({"local": ("127.0.0.1", 5005)}, ("127.0.0.1", 5006), None),
    ({"local": ("::1", 5005, 0, 0)}, ("::1", 5005, 0, 0), "unreplyable_self"),
    ({"local": ("0.0.0.0", 5005)}, ("127.0.0.1", 5005), "unreplyable_self"),
    ({"local": ("0.0.0.0", 5005)}, ("127.1.2.3", 5005), "unreplyable_self"),
    ({"local": ("", 5005)}, ("::1", 5005, 0, 0), "unreplyable_self"),
    ({"local": ("::", 5005, 0, 0)}, ("::ffff:127.0.0.1", 5005, 0, 0), "unreplyable_self"),
    ({"local": ("0.0.0.0", 5005)}, ("127.0.0.1", 5006), None),
    (_WILD_KNOWN, ("192.0.2.1", 5005), "unreplyable_self"),
    (_WILD_KNOWN, ("192.0.2.2", 5005), None),
    (_OWN_PORT_KNOWN, ("2001:db8::1", 5005, 0, 0), "unreplyable_self"),
    ({"own_port": 5005}, ("127.0.0.1", 5005), "unreplyable_self"),
    ({}, None, "unreplyable_invalid"),  # a connected socket's "no address"
    ({}, ("host.example", 9), "unreplyable_invalid"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "peer", "counter"), _NEVER)
def test_never_reply(kwargs: dict[str, Any], peer: Any, counter: str | None) -> None:
    # Trust everything: the never-reply rules hold even for trusted peers.
    policy = Policy(trust=["0.0.0.0/0", "::/0"], **kwargs)
    assert policy.admit(peer, 13, 0.0) is ADMIT  # arriving is fine, answering is not
    assert policy.may_reply(peer, 1, 0.0) is (counter is None)
    assert _nonzero(policy) == ({"admitted": 1, counter: 1} if counter else {"admitted": 1})


def test_unix_socket_peers_are_local() -> None:
    policy = Policy()
    assert policy.admit("/tmp/client.sock", 13, 0.0) is ADMIT
    assert policy.may_reply("/tmp/client.sock", 1000, 0.0) is True


# -- counters ----------------------------------------------------------------------------


def test_counters_exact_over_a_scripted_run() -> None:
    policy = Policy(deny=["198.51.100.0/24"], rate_limit="1/s:2", local=("0.0.0.0", 5005))
    c0 = policy.counters
    assert set(c0) >= {
        "denied",
        "rate_limited",
        "rate_limited_logged",
        "over_budget",
        "unreplyable_port0",
        "unreplyable_broadcast",
        "unreplyable_multicast",
        "unreplyable_self",
    }
    assert not any(c0.values())
    loop = ("127.0.0.1", 40000)
    script: list[tuple[str, Any, int, Any]] = [
        ("admit", loop, 13, ADMIT),
        ("reply", loop, 16, True),
        ("admit", ("198.51.100.9", 1), 13, DENIED),
        ("admit", OUTSIDE, 13, ADMIT),
        ("reply", OUTSIDE, 16, False),
        ("reply", OUTSIDE, 13, True),
        ("admit", OUTSIDE, 13, ADMIT),
        ("admit", OUTSIDE, 13, RATE_LIMITED),
        ("admit", ("127.0.0.2", 0), 13, ADMIT),
        ("reply", ("127.0.0.2", 0), 1, False),
        ("admit", ("127.0.0.3", 5005), 13, ADMIT),
        ("reply", ("127.0.0.3", 5005), 1, False),
        ("reply", ("224.0.0.1", 9), 1, False),
        ("reply", ("198.51.100.9", 1), 1, False),
    ]
    for op, peer, size, expected in script:
        if op == "admit":
            assert policy.admit(peer, size, 0.0) is expected, (op, peer)
        else:
            assert policy.may_reply(peer, size, 0.0) is expected, (op, peer)
    assert _nonzero(policy) == {
        "admitted": 5,
        "denied": 1,
        "rate_limited": 1,
        "over_budget": 1,
        "unreplyable_port0": 1,
        "unreplyable_self": 1,
        "unreplyable_multicast": 1,
        "unreplyable_denied": 1,
    }
    snapshot = policy.counters
    snapshot["denied"] = 99  # a snapshot, not a live view
    assert policy.counters["denied"] == 1


# -- never raises ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "peer",
    [
        None,
        (),
        ("127.0.0.1",),
        ([], 1),  # unhashable
        ("127.0.0.1", [1]),  # unhashable
        (b"127.0.0.1", 1),
        ("127.0.0.1\0", 1),
        ("1.2.3", 1),
        ("::1%", 1, 0, 0),
        ("::1", 1, "flow", "scope"),
        (1, 2),
        b"\x02\x00",
        object(),
        ("127.0.0.1", -5),
        ("127.0.0.1", True),
        ("127.0.0.1", 1.5),
    ],
)
def test_odd_peers_never_raise(peer: Any) -> None:
    policy = Policy(allow=["0.0.0.0/0", "::/0"], rate_limit="5/s", rate_limit_prefix=True)
    verdict = policy.admit(peer, 1, 0.0)
    assert verdict in (ADMIT, DENIED)
    assert isinstance(policy.may_reply(peer, 1, 0.0), bool)


# -- wildcard warning -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "replies", "warns"),
    [
        ("", True, True),
        (None, True, True),
        ("0.0.0.0", True, True),
        ("::", True, True),
        ("0:0:0:0:0:0:0:0", True, True),
        ("0.0.0.0", False, False),
        ("127.0.0.1", True, False),
        ("::1", True, False),
        ("192.0.2.1", True, False),
    ],
)
def test_wildcard_warning(host: str | None, replies: bool, warns: bool) -> None:
    text = wildcard_warning(host, replies)
    if not warns:
        assert text is None
        return
    assert text is not None
    assert text.startswith("warning: ")
    assert "\n" not in text
    assert repr(host or "0.0.0.0") in text


# -- wired to a real socket ---------------------------------------------------------------


def test_textbook_exchange_over_loopback(family: tuple[socket.AddressFamily, str]) -> None:
    """The policy gates a real server loop the way the engine will: admit, then may_reply."""
    fam, host = family
    with socket.socket(fam, socket.SOCK_DGRAM) as server:
        server.bind((host, 0))
        server.settimeout(5.0)
        policy = Policy(local=server.getsockname())
        with socket.socket(fam, socket.SOCK_DGRAM) as client:
            client.settimeout(5.0)
            client.sendto(HELLO, server.getsockname())
            data, peer = server.recvfrom(2048)
            assert policy.admit(peer, len(data), 1.0) is ADMIT
            assert policy.may_reply(peer, len(REPLY), 1.0) is True
            server.sendto(REPLY, peer)
            assert client.recvfrom(2048)[0] == REPLY
        # Replying to ourselves would loop: refused.
        assert policy.may_reply(server.getsockname(), 1, 1.0) is False
        assert policy.counters["unreplyable_self"] == 1
