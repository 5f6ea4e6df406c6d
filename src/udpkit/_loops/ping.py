"""``udpkit ping``: the socket and the clock around :class:`~udpkit._core.pingstats.PingSession`.

One connected UDP socket, one probe outstanding: send the probe that is due,
then sleep in ``select`` until a datagram arrives, the probe times out or the
next one is due (or spin on the socket first, with ``busy_poll_us``).  Every
datagram read goes to the session, which tells a reply from a late one, a
duplicate or a stranger; every event is yielded to the caller as it happens.

A connected socket hears only the peer it pings, and the kernel reports an
ICMP "port unreachable" for a probe as ``ECONNREFUSED`` on the next receive or
send: that probe is then an error (nothing listens there), not a timeout.

:meth:`Pinger.stop` ends the run from a signal handler or another thread; the
wait wakes at once (a socket pair, registered as the interpreter's wakeup fd
while the run goes on, so even a signal that lands just before ``select`` is
not held until the wait ends).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

from udpkit._core.errors import UsageError, map_oserror
from udpkit._core.pingstats import PingEvent, PingResult, PingSession
from udpkit._loops.sigwake import signals_wake
from udpkit._net.addr import format_sockaddr
from udpkit._net.kernel import Waker, clock_ns
from udpkit._net.sockets import udp_connect

__all__ = ["Pinger", "ping"]

_BUFSIZE = 65535  # the largest UDP payload: a reply is never cut short


class Pinger:
    """Ping ``host``:``port`` with numbered, timestamped probes, one at a time.

    Any UDP echo answers (``udpkit serve --echo``, ``socat``, a four-line
    Python loop) and so does ``udpkit reflect``.  Iterate :meth:`events` for
    each probe's fate as it happens, or call :meth:`run` for the figures only.

    Args:
        host: the peer, any host form udpkit accepts.
        port: the peer's port (number or service name).
        count: probes to send (``None``: until :meth:`stop`).
        interval: seconds from one probe to the next (0: the next as soon as
            the previous is answered).
        size: each probe's size in bytes, 32 (the probe header) to 65507.
        timeout: seconds to await each probe (default: 1 s, or ``interval``
            if longer); a reply after that is counted as late.
        busy_poll_us: after each probe, spin on the socket up to this many
            microseconds before sleeping (lower round-trip time, one core busy).
        family: ``AF_UNSPEC``, ``AF_INET`` or ``AF_INET6``.

    Raises:
        UsageError: a value out of range, named.
        AddressError: a bad host or port.
        NetworkError: the socket could not be opened or connected.
    """

    def __init__(
        self,
        host: str | int | None,
        port: int | str,
        *,
        count: int | None = None,
        interval: float = 1.0,
        size: int = 64,
        timeout: float | None = None,
        busy_poll_us: int = 0,
        family: int = socket.AF_UNSPEC,
    ) -> None:
        if not 0 <= interval < float("inf"):
            raise UsageError(f"invalid interval {interval!r}: must be a number of seconds >= 0")
        if timeout is None:
            timeout = max(1.0, interval)
        if not 0 < timeout < float("inf"):
            raise UsageError(f"invalid timeout {timeout!r}: must be a number of seconds > 0")
        if busy_poll_us < 0:
            raise UsageError(f"invalid busy_poll_us {busy_poll_us!r}: must be >= 0")
        self.interval = interval
        self.timeout = timeout
        self.busy_poll_us = busy_poll_us
        self._settings = (size, round(interval * 1e9), round(timeout * 1e9), count)
        # Checked here, before any socket exists: the session's own rules.
        PingSession(run_id=0, start_ns=0, size=size, count=count)
        self.stopped_by: int | None = None  # the signal number given to stop(), if any
        self._stopping = False
        self.session: PingSession | None = None
        self._sock = udp_connect(host, port, family=family)
        try:
            self.peer_text = format_sockaddr(self._sock.peer)
            self._waker = Waker(self._sock.sock.fileno())
        except BaseException:
            self._sock.close()
            raise

    @property
    def peer(self) -> object:
        """The peer's socket address (as ``getpeername()`` gives it)."""
        return self._sock.peer

    def stop(self, signum: int | None = None) -> None:
        """End the run soon (safe from a signal handler or another thread).

        Args:
            signum: the signal that asked for it, kept in :attr:`stopped_by`.
        """
        if signum is not None and self.stopped_by is None:
            self.stopped_by = signum
        self._stopping = True
        self._waker.wake()

    def result(self) -> PingResult:
        """The figures so far (before the run: all zero)."""
        if self.session is None:
            return PingSession(run_id=0, start_ns=0, size=self._settings[0]).result()
        return self.session.result()

    def run(self) -> PingResult:
        """Ping until ``count`` probes are settled or :meth:`stop`; return the figures."""
        for _ in self.events():
            pass
        return self.result()

    def events(self) -> Iterator[PingEvent]:
        """Run the ping and yield each event as it happens.

        Ends when ``count`` probes are answered or timed out, or soon after
        :meth:`stop`.  An exception from the consumer's side (``KeyboardInterrupt``
        with Python's default handler) leaves :meth:`result` valid.
        """
        size, interval_ns, timeout_ns, count = self._settings
        now = clock_ns()
        sess = self.session = PingSession(
            run_id=int.from_bytes(os.urandom(4), "big"),
            start_ns=now,
            size=size,
            interval_ns=interval_ns,
            timeout_ns=timeout_ns,
            count=count,
        )
        sock = self._sock.sock
        sock.setblocking(False)
        recv, send = sock.recv, sock.send
        waker = self._waker
        spin_ns = self.busy_poll_us * 1000
        with signals_wake(waker.signal_fd):
            while not self._stopping:
                now = clock_ns()
                expired = sess.expire(now)
                if expired is not None:
                    yield expired
                    continue
                if sess.finished():
                    break
                due = sess.due_ns()
                if due is not None and now >= due:
                    data = sess.probe(clock_ns())
                    try:
                        send(data)
                    except OSError as exc:
                        yield sess.error(clock_ns(), _why(exc, "send"))
                    continue
                deadline = sess.deadline_ns()
                assert deadline is not None  # not finished: a probe is due or awaited
                ready = False
                if spin_ns and sess.awaiting >= 0:
                    # Spin: a receive that finds nothing costs no sleep and no wake-up.
                    end = min(deadline, sess.awaiting_since_ns + spin_ns)
                    while not self._stopping:
                        try:
                            data = recv(_BUFSIZE)
                        except BlockingIOError:
                            if clock_ns() >= end:
                                break
                            continue
                        except OSError as exc:
                            yield sess.error(clock_ns(), _why(exc, "receive"))
                        else:
                            yield sess.datagram(data, clock_ns())
                        ready = True
                        break
                if not ready and not self._stopping:
                    wait = (deadline - clock_ns()) / 1e9
                    if wait > 0:
                        waker.wait(wait)  # a reply, stop(), a signal, or the deadline
                # Read everything queued (a reply and any duplicates or strangers).
                while True:
                    try:
                        data = recv(_BUFSIZE)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        yield sess.error(clock_ns(), _why(exc, "receive"))
                        break  # the error is reported once: read on at the next turn
                    yield sess.datagram(data, clock_ns())
        sess.expire(clock_ns())  # a probe past its timeout as the run ends counts as one

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._sock.close()
        self._waker.close()

    def __enter__(self) -> Pinger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _why(exc: OSError, what: str) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "port unreachable (nothing listening there?)"
    return str(map_oserror(exc, f"{what} failed"))


def ping(
    host: str | int | None,
    port: int | str,
    *,
    count: int = 4,
    interval: float = 1.0,
    size: int = 64,
    timeout: float | None = None,
    busy_poll_us: int = 0,
    family: int = socket.AF_UNSPEC,
) -> PingResult:
    """Ping ``host``:``port`` ``count`` times and return the figures.

    Args:
        host: the peer, any host form udpkit accepts.
        port: the peer's port.
        count: probes to send.
        interval: seconds between probes (0: each as soon as the previous is answered).
        size: probe size in bytes (32-65507).
        timeout: seconds to await each probe (default 1 s, or ``interval`` if longer).
        busy_poll_us: spin this long on the socket before sleeping.
        family: ``AF_UNSPEC``, ``AF_INET`` or ``AF_INET6``.

    Returns:
        The figures: sent, received, loss, duplicates, reordering, round trips.

    Raises:
        UsageError: a value out of range, named.
        AddressError: a bad host or port.
        NetworkError: the socket could not be opened.
    """
    with Pinger(
        host,
        port,
        count=count,
        interval=interval,
        size=size,
        timeout=timeout,
        busy_poll_us=busy_poll_us,
        family=family,
    ) as p:
        return p.run()
