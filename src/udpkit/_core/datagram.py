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
* :class:`Datagram`: one datagram as received.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeAlias

__all__ = ["AnySockAddr", "Datagram", "Payload", "Peer", "SockAddr"]

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
