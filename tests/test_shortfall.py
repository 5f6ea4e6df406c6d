"""The under-rate verdict of a bench run: when it is said, and which cause it names.

Pure accounting (:mod:`udpkit._core.shortfall`): hand-made counters, no sockets, no clock.
"""

from __future__ import annotations

from typing import Any

import pytest

from udpkit._core.shortfall import SHORT_RATIO, rate_shortfall


def _verdict(**kw: Any) -> Any:
    facts: dict[str, Any] = {
        "asked_per_s": 10_000.0,
        "sent": 5_000,
        "seconds": 1.0,
        "idle_seconds": 0.0,
        "blocked": 0,
        "errors": {},
        "window": None,
    }
    facts.update(kw)
    return rate_shortfall(**facts)


@pytest.mark.parametrize(
    "kw",
    [
        {"asked_per_s": None},  # max: nothing was asked
        {"sent": 9_000},  # 90 %: kept up
        {"sent": 1},  # one probe has no rate
        {"sent": 0},
        {"seconds": 0.0},
    ],
)
def test_nothing_said_when_the_rate_was_kept_or_not_asked(kw: dict[str, Any]) -> None:
    assert _verdict(**kw) is None


def test_just_under_the_line_is_said() -> None:
    short = _verdict(sent=int(SHORT_RATIO * 10_000) - 1)
    assert short is not None and short.ratio < SHORT_RATIO


def test_a_loop_that_never_idled_is_the_sender_cpu() -> None:
    short = _verdict(idle_seconds=0.01)
    assert short.causes == ("sender_cpu",)
    assert short.achieved_per_s == 5000.0 and short.ratio == 0.5
    text = short.message(1000)
    assert text.startswith("sent 5000 datagrams/s (40 Mbit/s), 50% of the 10000 (80 Mbit/s) asked")
    assert "the sender's CPU: the send loop never idled" in text


def test_eagain_and_enobufs_are_a_full_socket_buffer_not_the_cpu() -> None:
    """A full buffer keeps the loop busy too (it retries at once): the buffer is named."""
    short = _verdict(blocked=12, errors={"ENOBUFS": 3})
    assert short.causes == ("socket_buffer_full",)
    assert "EAGAIN 12 times (retried) and ENOBUFS 3 (probes lost)" in short.message(64)


def test_other_refusals_are_kernel_refusals() -> None:
    short = _verdict(idle_seconds=0.5, errors={"ECONNREFUSED": 4, "EHOSTUNREACH": 1})
    assert short.causes == ("kernel_refusals",)
    assert "ECONNREFUSED 4, EHOSTUNREACH 1 (each lost at the sender)" in short.message(64)


def test_a_window_that_waited_for_replies() -> None:
    short = _verdict(idle_seconds=0.8, window=1)
    assert short.causes == ("window",)
    assert "at most 1 probe outstanding" in short.message(64)


def test_no_visible_cause_is_said_so() -> None:
    short = _verdict(idle_seconds=0.5)
    assert short.causes == ("unknown",)
    assert "none bench can see (the send loop idled 50% of the run" in short.message(64)


def test_causes_add_up() -> None:
    short = _verdict(blocked=1, errors={"ENOBUFS": 1, "EPERM": 2})
    assert short.causes == ("socket_buffer_full", "kernel_refusals")
    assert len(short.reasons) == 2
