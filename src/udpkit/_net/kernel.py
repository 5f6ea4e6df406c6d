"""What the kernel says and how a loop waits for it: one home for each such fact.

* Whether the kernel is Linux (:data:`LINUX`), and the UDP offload, receive and
  multicast constants Python 3.11's ``socket`` module lacks (GRO/GSO,
  ``SO_RXQ_OVFL``, ``MSG_WAITFORONE``, ``MCAST_JOIN_GROUP``...), as plain ints: or-ing the
  socket module's IntFlag members costs a microsecond per call.
* The errno classes every loop sorts an error into: "try again"
  (:data:`AGAIN`), a soft ICMP report about an earlier datagram
  (:data:`ICMP_ERRORS`), an offload the kernel refuses (:data:`OFFLOAD_REFUSED`).
* The clock probes are timed with (:data:`clock_ns`).
* The receive buffer udpkit asks for on a socket that must absorb bursts
  (:data:`DEFAULT_RCVBUF`).
* The kernel's drop counters, from ``/proc/net/udp{,6}`` (:func:`proc_drops`,
  :func:`proc_drops_by_inode`): the one reader.
* The waits: a loop's sleep over its sockets with a wake-up pair
  (:class:`Waker`), and a wait for room in a send buffer (:func:`wait_writable`).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import socket
import sys
import time
from collections.abc import Iterator

__all__ = [
    "AGAIN",
    "DEFAULT_RCVBUF",
    "EARLIER",
    "GSO_MAX_BYTES",
    "ICMP_ERRORS",
    "IPV6_MULTICAST_ALL",
    "IP_MULTICAST_ALL",
    "LINUX",
    "MCAST_JOIN_GROUP",
    "MCAST_JOIN_SOURCE_GROUP",
    "MCAST_LEAVE_GROUP",
    "MCAST_LEAVE_SOURCE_GROUP",
    "MSG_DONTWAIT",
    "MSG_TRUNC",
    "MSG_WAITFORONE",
    "OFFLOAD_REFUSED",
    "SOL_UDP",
    "SO_BUSY_POLL",
    "SO_RXQ_OVFL",
    "UDP_GRO",
    "UDP_MAX_SEGMENTS",
    "UDP_SEGMENT",
    "UNANSWERED",
    "Waker",
    "clock_ns",
    "errno_name",
    "inode",
    "proc_drops",
    "proc_drops_by_inode",
    "wait_writable",
]

LINUX = sys.platform.startswith("linux")

# -- constants (include/uapi/linux/udp.h, asm-generic/socket.h) --------------------

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_RXQ_OVFL = 40
SO_BUSY_POLL = 46
# The kernel refuses GSO sends with more segments than this (64 until 6.x raised it to 128).
UDP_MAX_SEGMENTS = 64
# A GSO send may carry at most one IP datagram's worth of payload.
GSO_MAX_BYTES = 65000
MSG_TRUNC: int = int(getattr(socket, "MSG_TRUNC", 0x20))
MSG_DONTWAIT: int = int(getattr(socket, "MSG_DONTWAIT", 0))
# recvmmsg: sleep until the first datagram, then take what is queued without waiting.
MSG_WAITFORONE = 0x10000
# Multicast (include/uapi/linux/in.h, in6.h): the protocol-independent joins
# (RFC 3678), and the switch that makes a wildcard socket hear only its own groups.
MCAST_JOIN_GROUP = 42
MCAST_LEAVE_GROUP = 45
MCAST_JOIN_SOURCE_GROUP = 46
MCAST_LEAVE_SOURCE_GROUP = 47
IP_MULTICAST_ALL = 49
IPV6_MULTICAST_ALL = 29

# Receive buffer of every socket that must hold a burst while its loop is not
# scheduled (the relay's sockets, bench's and the reflector's): the default
# ~208 KiB is ~13 ms of 64-byte datagrams at 20k/s.
DEFAULT_RCVBUF = 4 << 20

# The clock of every probe timestamp and arrival time (bench's ``send_ns``, the
# reflector's arrivals, ping's probes): CLOCK_MONOTONIC in ns, so readings taken
# by different loops on one host compare, and none steps with the wall clock.
clock_ns = time.monotonic_ns

# -- errno classes ------------------------------------------------------------------

AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})
# What a connected socket reports on a later call about an earlier datagram (an
# ICMP error: port, host or net unreachable, packet too big, ...): soft, counted.
ICMP_ERRORS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EMSGSIZE,
        errno.ETIMEDOUT,
        errno.EPROTO,
    }
)
# On a connection's first send these can only be about an earlier datagram; the
# other ICMP errors may be this one's own fault.
EARLIER = frozenset({errno.ECONNREFUSED, errno.ECONNRESET})
# Of the ICMP errors, the ones that mean "nothing answers there".
UNANSWERED = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})
# What a kernel without (working) UDP GRO/GSO answers; the offload is then off for good.
OFFLOAD_REFUSED = frozenset({errno.EINVAL, errno.ENOPROTOOPT, errno.EIO, errno.EOPNOTSUPP})


def errno_name(code: int | None) -> str:
    """``ECONNREFUSED`` for 111; ``E<n>`` for numbers the platform has no name for."""
    if code is None:
        return "EUNKNOWN"
    return errno.errorcode.get(code, f"E{code}")


# -- the kernel's drop counters -------------------------------------------------------


def _proc_udp() -> Iterator[tuple[int, int]]:
    """``(inode, drops)`` of every UDP socket /proc/net/udp{,6} lists (none without /proc)."""
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name, encoding="ascii") as f:
                next(f, None)  # header
                for line in f:
                    cols = line.split()
                    if len(cols) > 12:
                        yield int(cols[9]), int(cols[12])
        except (OSError, ValueError):
            continue


def inode(fd: int) -> int | None:
    """The inode /proc/net/udp lists a socket by, or ``None`` for a closed descriptor."""
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


def proc_drops(fd: int) -> int | None:
    """The kernel's drop count for socket ``fd``, or ``None`` where it cannot tell.

    ``None``: not Linux, no /proc, or the socket is not listed (unbound, or in
    another network namespace).
    """
    if not LINUX:
        return None
    ino = inode(fd)
    if ino is None:
        return None
    for i, drops in _proc_udp():
        if i == ino:
            return drops
    return None


def proc_drops_by_inode() -> dict[int, int]:
    """inode -> drops for every UDP socket (one read for all; empty without /proc)."""
    return dict(_proc_udp()) if LINUX else {}


# -- waits ------------------------------------------------------------------------------


def wait_writable(fd: int, limit: float) -> float:
    """Wait up to ``limit`` seconds until ``fd`` can send; return the time waited (>= 1 ms)."""
    start = time.monotonic()
    if hasattr(select, "poll"):  # select.select cannot take a descriptor >= 1024
        p = select.poll()
        p.register(fd, select.POLLOUT)
        p.poll(max(1, int(limit * 1000)))
    else:
        select.select([], [fd], [], limit)
    return max(time.monotonic() - start, 0.001)


class Waker:
    """A loop's sleep: one poller over its sockets, and a wake-up socket pair.

    :meth:`wake` ends a :meth:`wait` at once, from another thread or a signal
    handler; :attr:`signal_fd` is the descriptor to give
    :func:`~udpkit._loops.sigwake.signals_wake`, so a signal does too.  epoll
    where there is one (it keeps the registrations between sleeps: cheaper per
    wake-up than poll), else poll, else select.

    Args:
        fds: descriptors to watch for reading from the start (more with :meth:`register`).
    """

    def __init__(self, *fds: int) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._wake_fd = self._r.fileno()
        self.signal_fd = self._w.fileno()
        self._epoll: select.epoll | None = None
        self._poll: select.poll | None = None
        self._fds: list[int] = []  # for select
        if hasattr(select, "epoll"):
            self._epoll = select.epoll()
        elif hasattr(select, "poll"):
            self._poll = select.poll()
        for fd in (self._wake_fd, *fds):
            self.register(fd)

    def register(self, fd: int) -> None:
        """Watch ``fd`` for reading."""
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        elif self._poll is not None:
            self._poll.register(fd, select.POLLIN)
        else:
            self._fds.append(fd)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd`` (one that is not watched is ignored)."""
        with contextlib.suppress(KeyError, ValueError, OSError):
            if self._epoll is not None:
                self._epoll.unregister(fd)
            elif self._poll is not None:
                self._poll.unregister(fd)
            else:
                self._fds.remove(fd)

    def wake(self) -> None:
        """End the current (or the next) :meth:`wait`.  Safe from any thread and signal handler."""
        with contextlib.suppress(OSError):
            self._w.send(b"\0")

    def wait(self, timeout: float | None) -> list[int]:
        """Sleep until a watched descriptor is readable, :meth:`wake`, or ``timeout`` seconds.

        Returns:
            The readable descriptors (never the wake-up one, which is emptied):
            empty after a wake-up or at the timeout.
        """
        if self._epoll is not None:
            events = self._epoll.poll(-1 if timeout is None else timeout)
        elif self._poll is not None:
            events = self._poll.poll(None if timeout is None else math.ceil(timeout * 1000))
        else:
            r, _, _ = select.select(self._fds, [], [], timeout)
            events = [(fd, 0) for fd in r]
        ready = [fd for fd, _ in events]
        if self._wake_fd in ready:
            ready.remove(self._wake_fd)
            with contextlib.suppress(OSError):
                while self._r.recv(256):
                    pass
        return ready

    def close(self) -> None:
        """Release the pair and the poller (the watched sockets belong to the caller)."""
        self._r.close()
        self._w.close()
        if self._epoll is not None:
            self._epoll.close()
