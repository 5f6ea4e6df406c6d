"""Refusal notices in the core: who was refused and why, throttled per reason, no I/O.

Driven by hand with a made-up clock; the CLI's use of them is in test_serve_output.py.
"""

from __future__ import annotations

import pytest

import udpkit
from udpkit._cli.format import format_refusal
from udpkit._core.notices import Refusal, RefusalNotices

UNTRUSTED = ("192.0.2.7", 40000)


def _collect(interval: float = 5.0) -> tuple[RefusalNotices, list[Refusal]]:
    told: list[Refusal] = []
    return RefusalNotices(told.append, interval=interval), told


def test_first_of_each_reason_is_told_then_one_per_interval_with_the_rest_counted() -> None:
    notices, told = _collect()
    notices("denied", ("10.0.0.1", 1), 100.0)
    notices("denied", ("10.0.0.2", 2), 101.0)
    notices("rate_limited", ("10.0.0.3", 3), 101.0)
    notices("denied", ("10.0.0.4", 4), 104.9)
    assert notices.held == {"denied": 2}
    notices("denied", ("10.0.0.5", 5), 105.0)
    assert told == [
        Refusal("denied", ("10.0.0.1", 1), 0, True),
        Refusal("rate_limited", ("10.0.0.3", 3), 0, True),
        Refusal("denied", ("10.0.0.5", 5), 2, False),
    ]
    assert notices.held == {}


def test_a_bad_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        RefusalNotices(print, interval=-1)


def test_policy_reports_each_refusal_where_it_is_counted() -> None:
    seen: list[tuple[str, object]] = []
    policy = udpkit.Policy(
        deny=["10.0.0.0/8"],
        rate_limit="1/s:1",
        on_refused=lambda reason, peer, now: seen.append((reason, peer)),
    )
    assert policy.admit(("10.1.2.3", 5), 10, 0.0) != 0 and seen == [("denied", ("10.1.2.3", 5))]
    policy.admit(UNTRUSTED, 10, 0.0)
    policy.admit(UNTRUSTED, 10, 0.0)  # the bucket held one
    assert seen[-1] == ("rate_limited", UNTRUSTED)
    assert not policy.may_reply(UNTRUSTED, 11, 0.0)  # 11 > 1 x 10 received
    assert seen[-1] == ("over_budget", UNTRUSTED)
    assert not policy.may_reply(("192.0.2.8", 0), 1, 0.0)
    assert seen[-1] == ("unreplyable_port0", ("192.0.2.8", 0))
    counters = policy.counters
    assert [r for r, _ in seen] == ["denied", "rate_limited", "over_budget", "unreplyable_port0"]
    assert counters["denied"] == counters["rate_limited"] == counters["over_budget"] == 1


def test_a_batch_served_whole_calls_nothing() -> None:
    """The whole-batch fast path refuses nothing, so it must not pay for notices."""
    calls: list[str] = []
    policy = udpkit.Policy(on_refused=lambda reason, peer, now: calls.append(reason))
    step = udpkit.ServeStep(udpkit.ECHO, policy=policy)
    assert step.serve_whole([("127.0.0.1", 4000)], [10, 10, 10])
    _, replies = step.serve([udpkit.Datagram(b"x", UNTRUSTED, 1)], now=0.0)
    assert replies == [b"x"] and calls == []


def test_the_line_names_peer_reason_and_flag_and_is_terminal_safe() -> None:
    text = format_refusal("over_budget", UNTRUSTED, fixed_reply=True)
    assert text.startswith("udpkit: no reply to 192.0.2.7:40000: it would exceed")
    assert "--trust 192.0.2.7/32" in text and "--amplification N (at most 3)" in text
    assert "--echo" in text and text.endswith("\n") and text.count("\n") == 1
    at_max = format_refusal("over_budget", ("2001:db8::7", 9, 0, 0), amplification=3)
    assert "--trust 2001:db8::7/128" in at_max and "--amplification" not in at_max
    mapped = format_refusal("denied", ("::ffff:192.0.2.9", 9, 0, 0), suppressed=4)
    assert "refused 192.0.2.9:9: denied" in mapped and "--allow 192.0.2.9/32" in mapped
    assert "4 more like it" in mapped
    hostile = format_refusal("unreplyable_invalid", "/tmp/s\x1b[2J\n")
    assert "\x1b" not in hostile and hostile.count("\n") == 1
