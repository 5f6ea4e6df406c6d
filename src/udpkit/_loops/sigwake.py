"""Signals for loops: one way to stop a long-running command, and waking a sleeping loop.

:func:`on_signals` is the sequence every long-running command uses (SIGINT and
SIGTERM stop, SIGUSR1 reports, the old handlers come back afterwards);
:func:`stops_held` holds them during the set-up before it.

:func:`signals_wake`: a Python signal handler runs between bytecodes of the main thread.  When a
signal lands after a loop last looked at its stop flag but before its thread
enters a blocking wait, the handler (which would set the flag and write the
loop's wake-up socket) stays pending until that wait ends, and a wait with no
timeout may never end: ``udpkit serve`` then ignores SIGTERM.  With the wake-up
socket registered as the interpreter's wakeup fd, the C-level handler writes a
byte to it at once, the wait returns, and the Python handler runs.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["STOP_SIGNALS", "on_signals", "signals_wake", "stops_held"]


@contextlib.contextmanager
def signals_wake(fd: int) -> Iterator[None]:
    """While the block runs, every signal also writes a byte to ``fd`` (non-blocking).

    Only in the main thread (the only one that runs signal handlers), and only
    when no wakeup fd is set already: asyncio keeps its own there, and it must
    go on seeing every signal number.
    """
    try:
        old = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except (ValueError, OSError):  # not the main thread, or a blocking or closed fd
        yield
        return
    if old != -1:  # someone else's: give it back untouched
        signal.set_wakeup_fd(old)
        yield
        return
    try:
        yield
    finally:
        signal.set_wakeup_fd(-1)


STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
# Held while handlers change: SIGUSR1's default would end the process.
_HELD = STOP_SIGNALS | {signal.SIGUSR1}


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGUSR1 (blocked, not lost) in this thread while the block runs.

    For the set-up before :func:`on_signals`: a stop that lands while sockets
    are bound or a recorder starts waits for the handler that drains and
    counts, instead of killing the process with no summary.  Threads started
    inside inherit the block, so the kernel never hands a stop to them.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)


@contextlib.contextmanager
def on_signals(
    stop: Callable[[], None], report: Callable[[], None] | None = None
) -> Iterator[list[int]]:
    """Run the block with SIGINT/SIGTERM calling ``stop`` and SIGUSR1 calling ``report``.

    The one signal sequence of every long-running command: stops are held
    while the handlers go in (so none is lost or handled by the old handler),
    released once they are in place, and the old handlers come back when the
    block ends.  SIGUSR1 without a ``report`` keeps its handler.

    A SIGUSR1 whose handler was the default (end the process) is ignored
    afterwards instead: a late "report" request must not kill a command while
    it prints its summary.

    Yields:
        The stop signals received, in order (the first is what stopped the loop).
    """
    stopped: list[int] = []

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        stopped.append(signum)
        stop()

    def on_report(_signum: int, _frame: FrameType | None) -> None:
        if report is not None:
            report()

    old: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
    signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        for signum in sorted(STOP_SIGNALS):
            old[signum] = signal.signal(signum, on_stop)
        if report is not None:
            old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_report)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
        yield stopped
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        for number, handler in old.items():
            late_report = number == signal.SIGUSR1 and handler == signal.SIG_DFL
            signal.signal(number, signal.SIG_IGN if late_report else handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
