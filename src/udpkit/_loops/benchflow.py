"""One ``udpkit bench`` flow's sockets: the probe socket, the control socket, their reads.

A flow is a probe socket (connected to the target, or to a multicast group
with the send options set first) and a control socket of its own for the
opening exchange and report requests, so through a relay or NAT the control
datagrams form a flow apart and never mix into the probe flow's counts.
Receiving reads whole batches (``recvmmsg`` where there is one); an ICMP error
reported on a read is counted by errno name, never fatal.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from udpkit._core.datagram import Peer, SockAddr
from udpkit._core.errors import NetworkError, UsageError, map_oserror
from udpkit._core.probe import REPORT_REQUEST_SIZE
from udpkit._net.addr import Address, is_multicast, resolve_one
from udpkit._net.kernel import (
    AGAIN,
    DEFAULT_RCVBUF,
    ICMP_ERRORS,
    MSG_DONTWAIT,
    MSG_TRUNC,
    errno_name,
)
from udpkit._net.mcast import set_multicast_send
from udpkit._net.mmsg import MM, MsgArray, libc_mmsg
from udpkit._net.sockets import DatagramSocket, set_receive_buffer, udp_bind, udp_connect

if TYPE_CHECKING:
    from udpkit._loops.bench import BenchConfig, FlowResult

__all__ = ["BATCH", "ProbeFlow", "group_socket"]

BATCH = 64  # datagrams one receive call takes
_IFACE_HINT = "name the interface: --iface IFACE"


def group_socket(target: Address, cfg: BenchConfig, *, connect: bool) -> DatagramSocket:
    """A socket that sends to the group ``target``, connected to it if ``connect``.

    The multicast options come first: connecting to a link-scope IPv6 group
    (ff02::/16, ff12::/16) with no scope id takes the interface from
    IPV6_MULTICAST_IF, and the kernel refuses it (EINVAL) while that is unset.
    """
    sa = target.sockaddr
    if target.family == socket.AF_INET6 and isinstance(sa, tuple) and not cfg.iface:
        packed = socket.inet_pton(socket.AF_INET6, str(sa[0]))
        if packed[1] & 0x0F in (1, 2) and not (len(sa) > 3 and sa[3]):
            raise UsageError(
                f"the group {target.host} is link-scope: name the interface to send it "
                f"on with --iface IFACE (or write {target.host}%IFACE)"
            )
    wild = "::" if target.family == socket.AF_INET6 else "0.0.0.0"
    sock = udp_bind(wild, 0, family=target.family)
    try:
        set_multicast_send(sock.sock, ttl=cfg.ttl, iface=cfg.iface)
        if connect:
            try:
                sock.sock.connect(sa)
            except OSError as exc:
                # No route for the group (no default route, several interfaces):
                # the kernel cannot pick an interface by itself.
                hint = _IFACE_HINT if exc.errno == errno.ENETUNREACH and not cfg.iface else ""
                raise map_oserror(exc, f"connect to {target}", hint) from exc
    except BaseException:
        sock.close()
        raise
    return sock


class ProbeFlow:
    """One flow: its probe socket and control socket, receive buffers and counters."""

    def __init__(
        self, cfg: BenchConfig, fast: bool, result: Callable[[str, str], FlowResult]
    ) -> None:
        # Resolved once: probe and control sockets must reach the same address even
        # where a name resolves to several.
        target = resolve_one(cfg.host, cfg.port, family=cfg.family)
        self.multicast = is_multicast(target)
        if self.multicast and not cfg.one_way:
            raise UsageError(
                f"bench to the multicast group {cfg.host} needs --one-way: every "
                "member would echo each probe"
            )
        self.sock: DatagramSocket = (
            group_socket(target, cfg, connect=True)
            if self.multicast
            else udp_connect(target.host, target.port, family=target.family)
        )
        # The opening exchange and report requests use a socket of their own, so they
        # form a flow of their own through a relay or NAT: whatever an impairing relay
        # does to them never mixes into the probe flow's counts.
        self.ctrl_sock: DatagramSocket | None = None
        try:
            self.ctrl_to: SockAddr | None = None  # where a multicast run's requests go
            if self.multicast:
                # Every group member answers from its own address: an unconnected
                # control socket hears them all.
                self.ctrl_sock = group_socket(target, cfg, connect=False)
                self.ctrl_to = target.sockaddr
            else:
                self.ctrl_sock = udp_connect(target.host, target.port, family=target.family)
            self.ctrl = self.ctrl_sock.sock
            self.ctrl.setblocking(False)
            self.ctrl_fd = self.ctrl.fileno()
            self.raw = self.sock.sock
            self.raw.setblocking(False)
            with contextlib.suppress(NetworkError):
                set_receive_buffer(self.raw, DEFAULT_RCVBUF)
            self.fd = self.raw.fileno()
            self.res = result(self.sock.local_text, self.ctrl_sock.local_text)
            self.bufsize = max(cfg.size, 2048)
            self.rx = MsgArray(BATCH, self.bufsize) if fast else None
            self.buf = bytearray(self.bufsize)
            self.template = memoryview(self.rx.template) if self.rx else None
            self.outstanding: dict[int, int] = {}  # window mode: seq -> send time
            self.gso: bool | None = None  # False once probes proved too big for GSO
            self.nonce = -1
            self.echo_peer = False
            self.reported = False
        except BaseException:
            self.sock.close()
            if self.ctrl_sock is not None:
                self.ctrl_sock.close()
            raise

    def recv_ctrl(self) -> list[tuple[bytes, Peer]]:
        """Every datagram queued on the control socket, with its sender (ICMP errors counted)."""
        out: list[tuple[bytes, Peer]] = []
        while True:
            try:
                out.append(self.ctrl.recvfrom(max(self.bufsize, REPORT_REQUEST_SIZE)))
            except (BlockingIOError, InterruptedError):
                return out
            except OSError as exc:
                self._recv_error(exc.errno or 0)
                return out

    def recv_batch(self) -> list[tuple[int, int]]:
        """Read up to a batch of queued datagrams: ``(offset into buffer, length)`` each."""
        rx = self.rx
        if rx is not None:
            assert self.template is not None
            rx.hdr_view[: BATCH * MM] = self.template
            flags = MSG_TRUNC | MSG_DONTWAIT
            n = libc_mmsg.recvmmsg(self.fd, rx.hdrs_addr, BATCH, flags, None)
            if n > 0:
                size = self.bufsize
                return list(zip(range(0, n * size, size), rx.msg_lens(n), strict=True))
            code = ctypes.get_errno() if n < 0 else errno.EAGAIN
            return self._recv_error(code)
        try:
            ln = self.raw.recv_into(self.buf, self.bufsize, MSG_TRUNC | MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError as exc:
            return self._recv_error(exc.errno or 0)
        return [(0, ln)]

    def _recv_error(self, code: int) -> list[tuple[int, int]]:
        if code in AGAIN or code == errno.EINTR:
            return []
        if code in ICMP_ERRORS:  # about an earlier probe: counted, never fatal
            self.count_icmp(code)
            return []
        raise map_oserror(OSError(code, os.strerror(code)), "bench receive")

    def count_icmp(self, code: int) -> None:
        """Count an ICMP error (about an earlier probe) under its errno name."""
        name = errno_name(code)
        self.res.icmp_errors[name] = self.res.icmp_errors.get(name, 0) + 1

    @property
    def data(self) -> bytearray:
        return self.rx.data if self.rx is not None else self.buf

    def close(self) -> None:
        self.sock.close()
        if self.ctrl_sock is not None:
            self.ctrl_sock.close()
