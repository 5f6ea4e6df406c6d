"""Let a signal wake a loop that sleeps in poll, epoll or select.

A Python signal handler runs between bytecodes of the main thread.  When a
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
from collections.abc import Iterator

__all__ = ["signals_wake"]


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
