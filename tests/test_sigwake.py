"""A signal stops a sleeping loop at once, wherever the kernel delivers it.

The loops sleep in epoll/poll/select with no timeout.  A Python signal handler
runs only when the main thread runs bytecode, so a signal that lands just before
the main thread starts to sleep (or that the kernel hands to another thread) would
leave the handler pending and the loop asleep: ``udpkit serve --busy-poll``
ignored a SIGTERM that way in CI.  These tests deliver the signal to a helper
thread, which leaves the main thread exactly in that state, and check that the
loop still ends promptly.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.conftest import linux_only

from udpkit._loops.engine import Engine
from udpkit._loops.relay import Relay
from udpkit._loops.server import StreamServer
from udpkit._loops.sigwake import signals_wake
from udpkit._net.sockets import udp_bind
from udpkit._net.stream import tcp_listen

pytestmark = linux_only

FALLBACK = 6.0  # the loop's own bound, should the signal never reach it
PROMPT = 2.0  # what "at once" must beat, on a loaded 2-core machine


@contextmanager
def handler(sig: int, fn: Callable[[], None]) -> Iterator[list[int]]:
    """Install ``fn`` as the handler of ``sig``; yield the list of signals it saw."""
    seen: list[int] = []

    def on(signum: int, _frame: object) -> None:
        seen.append(signum)
        fn()

    old = signal.signal(sig, on)
    try:
        yield seen
    finally:
        signal.signal(sig, old)


def signal_from_helper(sig: int, after: float = 0.3) -> threading.Thread:
    """Raise ``sig`` in a helper thread (not the main one) after ``after`` seconds."""

    def fire() -> None:
        time.sleep(after)
        signal.pthread_kill(threading.get_ident(), sig)

    t = threading.Thread(target=fire, daemon=True)
    t.start()
    return t


def test_engine_run_ends_on_a_signal_the_main_thread_did_not_take() -> None:
    with udp_bind("127.0.0.1", 0) as sock:
        engine = Engine(sock.sock, None)
        try:
            with handler(signal.SIGUSR2, engine.stop) as seen:
                t = signal_from_helper(signal.SIGUSR2)
                start = time.monotonic()
                engine.run(duration=FALLBACK)
                took = time.monotonic() - start
                t.join(FALLBACK)
        finally:
            engine.close()
    assert seen == [signal.SIGUSR2]
    assert took < PROMPT


def test_engine_keeps_serving_through_a_signal_that_does_not_stop_it() -> None:
    """A wake-up by a signal that only reports (SIGUSR1 in serve) is not a stop."""
    with udp_bind("127.0.0.1", 0) as sock:
        engine = Engine(sock.sock, None)
        try:
            with handler(signal.SIGUSR2, lambda: None) as seen:
                t = signal_from_helper(signal.SIGUSR2, after=0.1)
                start = time.monotonic()
                engine.run(duration=0.8)
                took = time.monotonic() - start
                t.join(FALLBACK)
        finally:
            engine.close()
    assert seen == [signal.SIGUSR2]
    assert took >= 0.75


def test_relay_run_ends_on_a_signal_the_main_thread_did_not_take() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listen,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target,
    ):
        listen.bind(("127.0.0.1", 0))
        target.bind(("127.0.0.1", 0))
        relay = Relay(listen, target.getsockname())
        try:
            with handler(signal.SIGUSR2, relay.stop) as seen:
                t = signal_from_helper(signal.SIGUSR2)
                start = time.monotonic()
                relay.run(duration=FALLBACK)
                took = time.monotonic() - start
                t.join(FALLBACK)
        finally:
            relay.close()
    assert seen == [signal.SIGUSR2]
    assert took < PROMPT


def test_stream_server_ends_on_a_signal_and_goes_on_through_others() -> None:
    with tcp_listen("127.0.0.1", 0) as listener:
        server = StreamServer(listener, None)
        fallback = threading.Timer(FALLBACK, server.stop)
        fallback.start()
        try:
            # SIGUSR1 only reports: the server must still be serving afterwards.
            with (
                handler(signal.SIGUSR1, lambda: None) as reports,
                handler(signal.SIGUSR2, server.stop) as stops,
            ):
                signal_from_helper(signal.SIGUSR1, after=0.2)
                t = signal_from_helper(signal.SIGUSR2, after=0.8)
                start = time.monotonic()
                server.serve()
                took = time.monotonic() - start
                t.join(FALLBACK)
        finally:
            fallback.cancel()
            server.close()
    assert reports == [signal.SIGUSR1]
    assert stops == [signal.SIGUSR2]
    assert 0.7 <= took < PROMPT


def test_someone_elses_wakeup_fd_is_left_in_place() -> None:
    """asyncio keeps its wakeup fd set while it runs: a nested run must not take it."""
    r, w = socket.socketpair()
    mine_r, mine_w = socket.socketpair()
    try:
        for s in (r, w, mine_r, mine_w):
            s.setblocking(False)
        old = signal.set_wakeup_fd(w.fileno())
        try:
            with signals_wake(mine_w.fileno()):
                assert signal.set_wakeup_fd(w.fileno()) == w.fileno()
            assert signal.set_wakeup_fd(w.fileno()) == w.fileno()
        finally:
            signal.set_wakeup_fd(old)
        # Without one set before, ours is in place inside the block and gone after.
        with signals_wake(mine_w.fileno()):
            assert signal.set_wakeup_fd(mine_w.fileno()) == mine_w.fileno()
        assert signal.set_wakeup_fd(-1) == -1
    finally:
        for s in (r, w, mine_r, mine_w):
            s.close()


def test_outside_the_main_thread_it_does_nothing() -> None:
    mine_r, mine_w = socket.socketpair()
    mine_w.setblocking(False)
    errors: list[BaseException] = []

    def body() -> None:
        try:
            with signals_wake(mine_w.fileno()):
                pass
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    try:
        t = threading.Thread(target=body)
        t.start()
        t.join(FALLBACK)
        assert not errors
        assert signal.set_wakeup_fd(-1) == -1
    finally:
        mine_r.close()
        mine_w.close()


def test_a_blocking_fd_is_refused_quietly() -> None:
    r, w = socket.socketpair()
    try:
        with signals_wake(w.fileno()):
            assert signal.set_wakeup_fd(-1) == -1
    finally:
        r.close()
        w.close()
