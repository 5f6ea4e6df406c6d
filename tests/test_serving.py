"""The serving step (``_serving.ServeStep``) on a hand-driven clock: no socket, no sleep.

Each test feeds batches of datagrams with a ``now`` it chooses and checks the
replies the step returns and every counter it leaves, including that a batch
decided at once ends with the same counters and budgets as one decided per
datagram.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from udpkit import Datagram, Policy
from udpkit._core.serving import ECHO, Fixed, ServeStep

LOOP = ("127.0.0.1", 40000)
REMOTE = ("192.0.2.7", 40000)
REMOTE2 = ("192.0.2.8", 40000)
LOCAL = ("0.0.0.0", 5005)


def dg(data: bytes, peer: Any = LOOP, length: int | None = None) -> Datagram:
    return Datagram(data, peer, len(data) if length is None else length)


def test_echo_answers_every_datagram_in_order() -> None:
    step = ServeStep(ECHO, policy=Policy(local=LOCAL))
    sources, replies = step.serve([dg(b"a"), dg(b"bc"), dg(b"")], now=1.0)
    assert list(sources) == [0, 1, 2]
    assert replies == [b"a", b"bc", b""]
    assert step.policy is not None and step.policy.counters["admitted"] == 3


def test_counting_only_is_told_to_the_loop() -> None:
    assert ServeStep(None).counting_only
    assert not ServeStep(None, count_peers=True).counting_only
    assert not ServeStep(None, policy=Policy(deny="10.0.0.0/8")).counting_only
    assert ServeStep(None, policy=Policy()).counting_only  # nothing to refuse, nothing to say
    assert not ServeStep(ECHO).counting_only


def test_whole_batch_echo_from_one_untrusted_source_charges_its_budget() -> None:
    """A batch decided at once leaves the budget as admit/may_reply per datagram would."""
    whole, each = Policy(local=LOCAL), Policy(local=LOCAL)
    step = ServeStep(ECHO, policy=whole)
    lens = [10, 20, 30]
    assert step.serve_whole([REMOTE], lens)
    for ln in lens:
        each.admit(REMOTE, ln, 0.0)
        assert each.may_reply(REMOTE, ln, 0.0)
    assert whole.counters == each.counters
    # The same budget left: a 61-byte reply fits neither, a 0-byte one fits both.
    assert not whole.may_reply(REMOTE, 61, 0.0) and not each.may_reply(REMOTE, 61, 0.0)
    assert step.stats.whole_batches == 1


def test_fixed_reply_over_budget_goes_per_datagram_and_is_refused() -> None:
    """16 bytes to a 13-byte request from another host: not sent, counted over_budget."""
    step = ServeStep(Fixed(b"Hello UDP Client"), policy=Policy(local=LOCAL))
    assert not step.serve_whole([REMOTE], [13])  # cannot be decided at once
    assert step.policy is not None and step.policy.counters["admitted"] == 0  # nothing counted
    sources, replies = step.serve([dg(b"Hello UDP Ser", REMOTE)], now=0.0)
    assert replies == [] and list(sources) == []
    assert step.policy.counters["over_budget"] == 1
    assert step.policy.counters["admitted"] == 1


def test_fixed_reply_fits_when_every_request_is_long_enough() -> None:
    step = ServeStep(Fixed(b"0123456789"), policy=Policy(local=LOCAL))
    assert step.serve_whole([REMOTE], [10, 12])
    assert not step.serve_whole([REMOTE], [10, 9])  # one request too short: per datagram


def test_trusted_sources_may_get_anything_several_untrusted_go_per_datagram() -> None:
    policy = Policy(local=LOCAL, trust="198.51.100.0/24")
    step = ServeStep(Fixed(b"x" * 100), policy=policy)
    assert step.serve_whole([LOOP, ("198.51.100.1", 9)], [1, 1])
    assert not ServeStep(ECHO, policy=Policy(local=LOCAL)).serve_whole([REMOTE, REMOTE2], [5, 5])


def test_never_reply_sources_are_never_decided_wholesale() -> None:
    step = ServeStep(ECHO, policy=Policy(local=LOCAL))
    for peer in [("127.0.0.1", 0), ("255.255.255.255", 9), ("224.0.0.1", 9), ("127.0.0.1", 5005)]:
        assert not step.serve_whole([peer], [4]), peer
    _, replies = step.serve([dg(b"ping", ("127.0.0.1", 0))], now=0.0)
    assert replies == []
    assert step.policy is not None and step.policy.counters["unreplyable_port0"] == 1


def test_rate_limit_refuses_on_the_hand_driven_clock() -> None:
    """2/s with a burst of 2: the third datagram at t=0 is refused, one more fits at t=0.5."""
    step = ServeStep(ECHO, policy=Policy(local=LOCAL, rate_limit="2/s:2"), count_peers=True)
    assert not step.serve_whole([LOOP], [1])  # a rule may refuse: never at once
    sources, replies = step.serve([dg(b"1"), dg(b"2"), dg(b"3")], now=0.0)
    assert replies == [b"1", b"2"] and list(sources) == [0, 1]
    _, replies = step.serve([dg(b"4"), dg(b"5")], now=0.5)
    assert replies == [b"4"]
    assert step.policy is not None
    assert step.policy.counters["rate_limited"] == 2 and step.policy.counters["admitted"] == 3
    assert step.peers is not None and step.peers.count == 1


def test_refused_datagrams_are_not_shown_and_sources_index_the_batch() -> None:
    shown: list[Sequence[Datagram]] = []
    step = ServeStep(
        lambda d: d.data.upper(),
        policy=Policy(local=LOCAL, deny="192.0.2.7/32"),
        observer=shown.append,
    )
    batch = [dg(b"a", REMOTE), dg(b"b"), dg(b"c", REMOTE), dg(b"d")]
    sources, replies = step.serve(batch, now=0.0)
    assert list(sources) == [1, 3] and replies == [b"B", b"D"]
    assert [d.data for d in shown[0]] == [b"b", b"d"]


def test_handler_errors_are_counted_and_the_rest_still_answered() -> None:
    seen: list[Exception] = []

    def handler(d: Datagram) -> Any:
        if d.data == b"boom":
            raise RuntimeError("boom")
        if d.data == b"text":
            return "not bytes"
        if d.data == b"list":
            return [b"one", 2]
        return d.data

    step = ServeStep(handler, on_error=seen.append)
    sources, replies = step.serve([dg(b"boom"), dg(b"text"), dg(b"list"), dg(b"ok")], now=0.0)
    assert replies == [b"one", b"ok"] and list(sources) == [2, 3]
    assert step.stats.handler_errors == 3
    assert isinstance(seen[0], RuntimeError) and isinstance(seen[1], TypeError)


def test_unnamed_sources_are_unreplyable_and_the_handler_is_not_called() -> None:
    calls: list[Datagram] = []

    def handler(d: Datagram) -> bytes:
        calls.append(d)
        return d.data

    step = ServeStep(handler)
    _, replies = step.serve([dg(b"x", peer=None), dg(b"y", peer="")], now=0.0)
    assert replies == [] and calls == []
    assert step.stats.unreplyable == 2


def test_halted_step_discards_the_rest_of_the_batch() -> None:
    step = ServeStep(ECHO)

    def halt_after_first(d: Datagram) -> bytes:
        step.halted = True
        return d.data

    step.answer = halt_after_first
    _, replies = step.serve([dg(b"a"), dg(b"b"), dg(b"c")], now=0.0)
    assert replies == [b"a"] and step.stats.discarded == 2


class _Reflect:
    reply_ratio = 1.0

    def answer_batch(self, batch: Sequence[Datagram]) -> list[bytes | None]:
        return [d.data[::-1] if d.data != b"quiet" else None for d in batch]


def test_batch_answer_is_called_once_per_batch() -> None:
    step = ServeStep(_Reflect(), policy=Policy(local=LOCAL))
    sources, replies = step.serve([dg(b"ab", REMOTE), dg(b"quiet", REMOTE), dg(b"cd", REMOTE)], 0.0)
    assert replies == [b"ba", b"dc"] and list(sources) == [0, 2]
    # One untrusted source, answers never longer than requests: decided at once, charged.
    assert step.stats.whole_batches == 1
    assert step.policy is not None and step.policy.counters["admitted"] == 3
    assert not step.policy.may_reply(REMOTE, 6, 0.0)  # 9 received, 4 sent: 5 left


def test_peers_are_counted_after_admission() -> None:
    step = ServeStep(None, policy=Policy(local=LOCAL, deny="192.0.2.8/32"), count_peers=True)
    step.serve([dg(b"a"), dg(b"b", REMOTE), dg(b"c", REMOTE2)], now=0.0)
    assert step.peers is not None and step.peers.count == 2


def test_fixed_needs_bytes() -> None:
    with pytest.raises(TypeError, match="encode text first"):
        Fixed("text")  # type: ignore[arg-type]
    assert Fixed(b"")(dg(b"x")) == b""
    assert not math.isnan(Policy().reply_bound(LOOP))


def test_a_source_that_spent_beyond_its_factor_is_decided_per_datagram() -> None:
    """A source charged past its factor (address validation once allowed it) must not
    have a whole batch cleared on the factor alone: its budget is already overdrawn."""
    policy = Policy(local=LOCAL)
    step = ServeStep(ECHO, policy=policy)
    policy.charge(REMOTE, 10, 100)  # 100 bytes sent for 10 received
    assert not step.serve_whole([REMOTE], [10])  # 100 > 1 x 10: not provable at once
    _, replies = step.serve([dg(b"x" * 10, REMOTE)], now=5.0)
    assert replies == [] and policy.counters["over_budget"] == 1
