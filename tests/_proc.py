"""Subprocess helpers for the CLI and interop tests: every wait has a deadline.

``udpkit`` runs as ``[sys.executable, "-m", "udpkit", ...]`` so the tests use
the interpreter (and the working tree) pytest runs under.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

UDPKIT = [sys.executable, "-m", "udpkit"]

# The first line `udpkit serve` writes on stderr once its socket is bound.
LISTENING = re.compile(rb"udpkit: listening on (\S+) \(([^),]+)(?:, [^)]*)?\)")

# Generous per-step limit: a loaded 2-core CI box must still pass.
STEP = 10.0


def _popen_sigint_default(args: list[str], **kw: object) -> subprocess.Popen[bytes]:
    """``Popen`` whose child has SIGINT at its default disposition.

    A shell that starts pytest in the background sets SIGINT to "ignore",
    children inherit that, and Python then installs no KeyboardInterrupt
    handler. A *handler* (unlike "ignore") is reset to the default at exec, so
    one is installed around the fork instead of using an unsafe preexec_fn.
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN or (
        threading.current_thread() is not threading.main_thread()
    ):
        return subprocess.Popen(args, **kw)  # type: ignore[call-overload, no-any-return]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(args, **kw)  # type: ignore[call-overload, no-any-return]
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run(
    *args: str, input: bytes | None = None, timeout: float = STEP
) -> subprocess.CompletedProcess[bytes]:
    """Run ``udpkit ARGS`` to completion and return its result (bytes)."""
    return subprocess.run(
        [*UDPKIT, *args],
        input=input if input is not None else b"",
        capture_output=True,
        timeout=timeout,
        check=False,
    )


class LineReader:
    """Reads lines from a pipe with a deadline (never blocks past it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.buf = b""
        self.eof = False
        self.seen = b""  # everything read so far, for error messages

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0 or self.eof:
            return False
        ready, _, _ = select.select([self.fd], [], [], left)
        if not ready:
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        self.seen += chunk
        return True

    def readline(self, timeout: float = STEP) -> bytes:
        """Return the next whole line (with its newline).

        Raises:
            AssertionError: no whole line within ``timeout`` or end of file.
        """
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if not self._fill(deadline) and (self.eof or time.monotonic() >= deadline):
                raise AssertionError(
                    f"no line within {timeout} s (eof={self.eof}); got so far {self.seen!r}"
                )
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def read_rest(self, timeout: float = STEP) -> bytes:
        """Everything up to end of file (or what arrived before ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._fill(deadline)
        rest, self.buf = self.buf, b""
        return rest


@dataclass
class Served:
    """A running ``udpkit serve``: its process, address and output readers."""

    proc: subprocess.Popen[bytes]
    out: LineReader
    err: LineReader
    where: str
    transport: str
    port: int | None
    banner: bytes = b""
    rest_err: bytes = field(default=b"")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STEP) -> tuple[int, bytes, bytes]:
        """Send ``sig`` and return ``(exit code, rest of stdout, rest of stderr)``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.finish(timeout)

    def finish(self, timeout: float = STEP) -> tuple[int, bytes, bytes]:
        """Wait for exit and return ``(exit code, rest of stdout, rest of stderr)``."""
        code = self.proc.wait(timeout=timeout)
        return code, self.out.read_rest(1.0), self.err.read_rest(1.0)


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def end_process(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` by its PID if it still runs, reap it and close its pipes."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STEP)
    _close_pipes(proc)


@contextlib.contextmanager
def serving(*args: str, banner: bool = True, busy_skips: bool = False) -> Iterator[Served]:
    """Start ``udpkit serve ARGS``; wait until it listens; kill it on the way out.

    ``banner``: also read the first stdout line (false for ``--format json``,
    whose banner goes to stderr). ``busy_skips``: skip the test when a fixed
    port turns out to be in use (another program took it after the probe).
    """
    proc = _popen_sigint_default(
        [*UDPKIT, "serve", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = LineReader(proc.stdout.fileno()), LineReader(proc.stderr.fileno())
        first_err = b""
        match = None
        while match is None:
            first_err = err.readline()
            match = LISTENING.search(first_err)
            if match is None and busy_skips and b"in use" in first_err:
                pytest.skip(f"the fixed port is busy: {first_err.decode().strip()}")
        where, transport = match.group(1).decode(), match.group(2).decode()
        port = int(where.rsplit(":", 1)[1]) if transport in ("UDP", "TCP") else None
        served = Served(proc, out, err, where, transport, port)
        if banner:
            served.banner = out.readline()
        yield served
    finally:
        end_process(proc)


def start_listening(
    *args: str, stdout: int = subprocess.PIPE
) -> tuple[subprocess.Popen[bytes], int, LineReader]:
    """Start ``udpkit ARGS`` and read its port from the ``listening on`` line.

    The caller ends the process (``end_process``); it is ended here if it never listens.
    """
    proc = _popen_sigint_default(
        [*UDPKIT, *args], stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        err = LineReader(proc.stderr.fileno())
        line = err.readline()
        match = LISTENING.search(line)
        assert match is not None, line
        return proc, int(match.group(1).decode().rsplit(":", 1)[1]), err
    except BaseException:
        end_process(proc)
        raise


def free_port(family: socket.AddressFamily, host: str, kind: int = socket.SOCK_DGRAM) -> int:
    """A port that was free a moment ago (bind a probe to port 0 and close it)."""
    with socket.socket(family, kind) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


def port_is_free(family: socket.AddressFamily, host: str, port: int) -> bool:
    """True when ``host:port`` can be bound for UDP right now."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, port))
    except OSError:
        return False
    return True


class Peer:
    """The seed's server written the plain way, in a thread: recvfrom, record, reply.

    Binds before its thread starts; ``reply`` ``None`` stays silent. Every
    receive has a short timeout so ``close()`` ends the thread promptly.
    """

    def __init__(
        self,
        family: socket.AddressFamily,
        host: str,
        port: int = 0,
        reply: bytes | None = b"Hello UDP Client",
    ) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.reply = reply
        self.received: list[tuple[bytes, tuple[object, ...]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                continue
            with self._lock:
                self.received.append((data, addr))
            if self.reply is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(self.reply, addr)

    def wait_for(self, n: int, timeout: float = STEP) -> list[tuple[bytes, tuple[object, ...]]]:
        """The first ``n`` datagrams received, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= n:
                    return list(self.received[:n])
            time.sleep(0.01)
        raise AssertionError(f"peer got {len(self.received)} datagrams, wanted {n}")

    def close(self) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        self._thread.join(timeout=STEP)
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def one_line_error(stderr: bytes) -> str:
    """Check ``stderr`` is one line with no traceback, and return it."""
    text = stderr.decode("utf-8")
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


def datagram_client(
    family: socket.AddressFamily, host: str, port: int, payloads: Sequence[bytes]
) -> None:
    """Send ``payloads`` from a fresh unconnected socket and forget them."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        for data in payloads:
            s.sendto(data, (host, port))


def run_piped_into_head(argv: Sequence[str], port: int, payload: bytes) -> tuple[int, bytes, bytes]:
    """Run ``argv | head -1`` through a shell, sending ``payload`` to 127.0.0.1:``port``
    every 50 ms until the pipeline ends (bounded by STEP); ``(returncode, out, err)``
    of the pipeline, whose process group is killed if it outlives the bound."""
    cmd = " ".join(repr(a) for a in argv) + " | head -1"
    proc = subprocess.Popen(
        ["sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + STEP
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            while proc.poll() is None and time.monotonic() < deadline:
                c.sendto(payload, ("127.0.0.1", port))
                time.sleep(0.05)
        out, err = proc.communicate(timeout=STEP)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this helper created
        end_process(proc)
    return proc.returncode, out, err
