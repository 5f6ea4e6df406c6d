"""on_signals and stops_held: the one signal sequence of every long-running command."""

from __future__ import annotations

import os
import signal

from udpkit._loops.sigwake import on_signals, stops_held


def test_stops_call_stop_and_are_listed_then_old_handlers_return() -> None:
    calls: list[str] = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with on_signals(lambda: calls.append("stop"), lambda: calls.append("report")) as stopped:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert calls == ["report", "stop", "stop"]
    assert stopped == [signal.SIGTERM, signal.SIGINT]
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_late_report_request_is_ignored_not_fatal() -> None:
    """SIGUSR1's default ends the process: after the loop, a late one must not kill the
    command while it prints its summary."""
    old = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        with on_signals(lambda: None, lambda: None):
            pass
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the test run with SIG_DFL
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_a_stop_held_during_set_up_reaches_the_handler() -> None:
    """A stop that lands while sockets are bound waits for the loop's handler instead of
    ending the process with no summary."""
    calls: list[str] = []
    with stops_held():
        os.kill(os.getpid(), signal.SIGTERM)  # held: the old handler would raise or kill
        with on_signals(lambda: calls.append("stop")) as stopped:
            pass
    assert calls == ["stop"] and stopped == [signal.SIGTERM]
