"""SO_REUSEPORT workers: one process per socket, counters summed at the end.

The parent binds every socket before forking (so an ephemeral port is shared
and no bind can race another program), each child serves its own socket and
closes the rest, and the parent forwards SIGINT/SIGTERM and sums what the
children report over a pipe.  POSIX only (``os.fork``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from udpkit._core.errors import UsageError
from udpkit._loops.server import DatagramServer, ServeStats
from udpkit._net.sockets import DatagramSocket

__all__ = ["cpu_count", "parse_workers", "run_workers"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_GRACE = 5.0  # seconds a worker gets to report after SIGTERM before SIGKILL


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_workers(text: str) -> int:
    """``"auto"`` (one per core) or a whole number 1-256.

    Raises:
        UsageError: anything else.
    """
    if text == "auto":
        return cpu_count()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 256:
        raise UsageError(f"invalid workers {text!r}: use a whole number 1-256 or 'auto'")
    return n


def run_workers(
    socks: Sequence[DatagramSocket],
    servers: Sequence[DatagramServer],
    stopped: list[int],
) -> ServeStats:
    """Serve each socket in a child process until SIGINT/SIGTERM; return the summed counters.

    Args:
        socks: bound sockets sharing one port (SO_REUSEPORT); closed here in the parent.
        servers: one ready server per socket (built before forking, so a worker
            serves the moment it exists); the parent closes them.
        stopped: the signal numbers that stopped the parent are appended here.

    Returns:
        The counters of every worker, merged.
    """
    if not hasattr(os, "fork"):
        raise UsageError("--workers needs a POSIX system (os.fork)")
    children: dict[int, int] = {}  # pid -> read end of its report pipe
    sys.stdout.flush()
    sys.stderr.flush()
    # Signals wait (blocked) until each process has the handler meant for it:
    # a worker must never die to a stop that arrives while it starts.
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    parent = os.getpid()
    try:
        for i in range(len(servers)):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _worker(i, socks, servers, w, parent)  # never returns
            os.close(w)
            children[pid] = r
    finally:
        for server in servers:
            server.close()
        for sock in socks:
            sock.close()

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopped.append(signum)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def forward_usr1(_signum: int, _frame: FrameType | None) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)

    old = {s: signal.signal(s, forward) for s in stops}
    old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, forward_usr1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    total = ServeStats()
    try:
        pending = dict(children)
        deadline: float | None = None
        while pending:
            if stopped and deadline is None:
                deadline = time.monotonic() + _GRACE
            if deadline is not None and time.monotonic() > deadline:
                for pid in pending:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.05)
                continue
            if pid not in pending:
                continue
            r = pending.pop(pid)
            with os.fdopen(r, "rb") as report:
                data = report.read()
            if data:
                total.merge(ServeStats.from_dict(json.loads(data)))
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return total


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel send SIGTERM when the parent dies, even by SIGKILL.

    Otherwise a worker whose parent was killed would serve on, holding the port.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(
    i: int,
    socks: Sequence[DatagramSocket],
    servers: Sequence[DatagramServer],
    report: int,
    parent: int,
) -> NoReturn:
    """A worker's whole life: serve socket ``i``, write its counters to ``report``, exit."""
    code = 0
    try:
        server = servers[i]
        for j, other in enumerate(servers):
            if j != i:
                other.close()
                socks[j].close()

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            server.stop()

        def on_usr1(_signum: int, _frame: FrameType | None) -> None:
            st = server.stats
            kd = "unavailable" if st.kernel_drops is None else st.kernel_drops
            sys.stderr.write(
                f"udpkit: worker {i} counters: {st.received} datagrams, "
                f"{st.bytes_received} bytes, {st.truncated} truncated; kernel_drops={kd}\n"
            )
            sys.stderr.flush()

        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, on_signal)
        signal.signal(signal.SIGUSR1, on_usr1)
        _die_with_parent(parent)  # its SIGTERM waits, blocked, for the handler above
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        stats = server.serve()
        os.write(report, json.dumps(stats.as_dict()).encode())
    except BaseException as exc:  # a worker must always exit here, never return to the CLI
        code = 1
        with contextlib.suppress(Exception):
            sys.stderr.write(f"udpkit: worker {i} failed: {exc!r}\n")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
