"""What a datagram is, apart from any socket: its bytes, its sender and its real length.

The types every layer shares, so the core can speak of peers and replies
without importing the OS layer:

* :data:`SockAddr`: a socket address as the ``socket`` module gives it:
  ``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6,
  a path (``str``) or a Linux abstract name (``bytes``) for Unix sockets;
* :data:`Peer`: a sender, which is ``None`` for an unbound Unix client;
* :data:`AnySockAddr`: an address handed back to the caller (a datagram's
  sender, a socket's own address), typed ``Any`` as typeshed types what
  ``recvfrom`` returns: the exact union would make every caller narrow before
  ``peer[0]`` or ``udp_connect(*sock.local_address)``.  Everything that takes
  an address takes :data:`SockAddr` or :data:`Peer`;
* :data:`Payload`: bytes a reply may be given as;
* :class:`Datagram`: one datagram as received;
* :func:`unmap_v4`: the one rule for showing an IPv4 peer of a dual-stack
  socket (``::ffff:a.b.c.d``) as the IPv4 address it is.
"""

from __future__ import annotations

import socket
from typing import Any, NamedTuple, TypeAlias, TypeVar

__all__ = ["V4_MAPPED_PREFIX", "AnySockAddr", "Datagram", "Payload", "Peer", "SockAddr", "unmap_v4"]

SockAddr = tuple[str, int] | tuple[str, int, int, int] | str | bytes
"""A socket address as ``recvfrom``/``getsockname`` return it."""

Peer = SockAddr | None
"""A datagram's sender: ``None`` (or ``""``) when an unbound Unix client sent it."""

AnySockAddr: TypeAlias = Any
"""A socket address returned to the caller: a :data:`Peer` at run time (see above)."""

Payload = bytes | bytearray | memoryview
"""Bytes a reply may be given as."""


class Datagram(NamedTuple):
    """One datagram as received.

    Attributes:
        data: the bytes kept (at most the buffer size given to ``recv``).
        peer: the sender's socket address, as the socket module gives it.
        length: the datagram's real length on the wire; larger than
            ``len(data)`` when it was truncated.
    """

    data: bytes
    # AnySockAddr spelled out: mypy joins a NamedTuple whose field is typed through an
    # Any alias differently: an asyncio.gather over Datagrams and tuples then fails to check.
    peer: Any
    length: int

    @property
    def truncated(self) -> bool:
        """Whether bytes were cut off because the buffer was too small."""
        return self.length > len(self.data)

    def __repr__(self) -> str:
        # A 64 KiB payload would bury the peer and length: show its start only.
        data = self.data
        shown = repr(data) if len(data) <= 32 else f"{data[:32]!r}... ({len(data)} bytes)"
        cut = ", truncated" if self.truncated else ""
        return f"Datagram(data={shown}, peer={self.peer!r}, length={self.length}{cut})"


_A = TypeVar("_A")

V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"
"""The first 12 bytes of an IPv4-mapped IPv6 address (``::ffff:0:0/96``)."""


def unmap_v4(addr: _A) -> _A | tuple[str, int]:
    """An IPv4 peer of a dual-stack socket as the IPv4 address it is; anything else unchanged.

    ``('::ffff:127.0.0.1', 5005, 0, 0)`` (or ``::ffff:7f00:1``) becomes
    ``('127.0.0.1', 5005)``, as an IPv4 socket would report it, so serve, the
    relay and bench name one peer alike.  Cheap for every other address: one
    prefix test (the kernel always spells a mapped address ``::ffff:...``).
    """
    if (
        isinstance(addr, tuple)
        and len(addr) >= 2
        and type(addr[0]) is str
        and addr[0].startswith("::ffff:")
    ):
        try:
            packed = socket.inet_pton(socket.AF_INET6, addr[0])
        except (OSError, ValueError):
            return addr
        if packed[:12] == V4_MAPPED_PREFIX:
            return (socket.inet_ntop(socket.AF_INET, packed[12:]), addr[1])
    return addr
