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
from collections.abc import Callable, Sequence
from typing import NoReturn

from udpkit._core.errors import UsageError
from udpkit._loops.server import DatagramServer, ServeStats
from udpkit._loops.sigwake import on_signals, stops_held
from udpkit._net.kernel import LINUX

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
    servers: Sequence[DatagramServer], *, on_stop: Callable[[], None] | None = None
) -> tuple[ServeStats, list[int]]:
    """Serve each server in a child process until SIGINT/SIGTERM; return the summed counters.

    Args:
        servers: one ready server per socket, the sockets sharing one port
            (:func:`udpkit.bind_server` with ``workers``), built before forking so
            a worker serves the moment it exists.  The parent closes the servers
            and their sockets once the children have them.
        on_stop: called in a worker (from its signal handler) when it is told
            to stop, after its server's ``stop()``: e.g. to break off a write
            to a pipe nobody reads.

    Returns:
        ``(counters of every worker merged, the stop signals the parent received)``.

    Raises:
        UsageError: no ``os.fork`` here.
    """
    if not hasattr(os, "fork"):
        raise UsageError("--workers needs a POSIX system (os.fork)")
    sys.stdout.flush()
    sys.stderr.flush()
    # Signals wait (held) until each process has the handler meant for it:
    # a worker must never die to a stop that arrives while it starts.
    with stops_held():
        children = _fork_workers(servers, on_stop)

        def forward(signum: int) -> None:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

        with on_signals(
            lambda: forward(signal.SIGTERM), lambda: forward(signal.SIGUSR1)
        ) as stopped:
            return _collect(children, stopped), stopped


def _fork_workers(
    servers: Sequence[DatagramServer], on_stop: Callable[[], None] | None
) -> dict[int, int]:
    """Start one child per server; return ``{pid: read end of its report pipe}``."""
    children: dict[int, int] = {}
    parent = os.getpid()
    try:
        for i in range(len(servers)):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _worker(i, servers, w, parent, on_stop)  # never returns
            os.close(w)
            children[pid] = r
    finally:
        for server in servers:
            server.close()
            server.sock.close()
    return children


def _collect(children: dict[int, int], stopped: list[int]) -> ServeStats:
    """Wait for every child and sum their reports; SIGKILL stragglers _GRACE s after a stop."""
    total = ServeStats()
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
        with os.fdopen(pending.pop(pid), "rb") as report:
            data = report.read()
        if data:
            total.merge(ServeStats.from_dict(json.loads(data)))
    return total


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel send SIGTERM when the parent dies, even by SIGKILL.

    Otherwise a worker whose parent was killed would serve on, holding the port.
    """
    if not LINUX:
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(
    i: int,
    servers: Sequence[DatagramServer],
    report: int,
    parent: int,
    on_stop: Callable[[], None] | None,
) -> NoReturn:
    """A worker's whole life: serve server ``i``, write its counters to ``report``, exit."""
    code = 0
    try:
        server = servers[i]
        for j, other in enumerate(servers):
            if j != i:
                other.close()
                other.sock.close()

        def counters() -> None:
            st = server.stats
            kd = "unavailable" if st.kernel_drops is None else st.kernel_drops
            sys.stderr.write(
                f"udpkit: worker {i} counters: {st.received} datagrams, "
                f"{st.bytes_received} bytes, {st.truncated} truncated; kernel_drops={kd}\n"
            )
            sys.stderr.flush()

        def stop() -> None:
            server.stop()
            if on_stop is not None:
                on_stop()

        _die_with_parent(parent)  # its SIGTERM waits, held, for the handler below
        with on_signals(stop, counters):
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
