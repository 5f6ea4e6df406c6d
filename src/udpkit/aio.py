"""asyncio API: UDP endpoints with ``await recv()``/``await send()`` and a batching server.

Example (a complete program; it starts its own server)::

    import asyncio

    import udpkit.aio


    def shout(dgram: udpkit.Datagram) -> bytes:
        return dgram.data.upper()


    async def main() -> None:
        async with await udpkit.aio.serve("127.0.0.1", 0, shout) as server:
            host, port = server.local_address
            async with await udpkit.aio.open_udp(host, port) as ep:
                await ep.send(b"hello")
                print((await ep.recv()).data)
                reply = await ep.request(b"again", timeout=1.0, retries=2)
                print(reply.data)
            async with await udpkit.aio.bind_udp("127.0.0.1", 0) as ep:
                await ep.send(b"", to=(host, port))  # zero-length datagrams are sent too
                async for dgram in ep:
                    print(dgram.length, dgram.peer == (host, port))
                    break
            print(server.stats.received)


    asyncio.run(main())

It prints ``b'HELLO'``, ``b'AGAIN'``, ``0 True`` and ``3``.

How it differs from ``loop.create_datagram_endpoint``:

* reads in batches on readiness (``recvmmsg`` on Linux, until the socket is empty)
  into a bounded queue; when the queue is full it stops reading, so the kernel's
  buffer fills and the kernel counts what it drops (``stats.kernel_drops``);
  nothing is thrown away uncounted;
* sends are queued and go out together (``sendmmsg``/GSO) when the task next
  waits; on a full send buffer ``send`` waits for room instead of raising;
* zero-length datagrams are sent, and every udpkit host form works, including
  ``"<broadcast>"`` (with ``broadcast=True``); an endpoint opened to a broadcast
  or multicast address is never connected, so replies from any host arrive;
* under light load a lone datagram is read with one ``recvfrom_into`` (cheaper
  than a batch call) and batches resume as soon as datagrams queue up;
  ``busy_poll_us`` trades a busy core for the wake-up latency of each round trip;
* ICMP errors (ECONNREFUSED, EHOSTUNREACH, ...) are soft: counted in
  ``stats.icmp_errors`` and kept in ``last_error``; ``recv`` keeps working.
  Only :meth:`Endpoint.request` on a connected endpoint raises
  :class:`~udpkit.ConnectionRefused`.

An endpoint must be created and used inside one running event loop (asyncio's
selector loop or uvloop: it needs ``loop.add_reader``).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

from udpkit._aio.core import AioSocket, EndpointStats
from udpkit._aio.endpoint import Endpoint
from udpkit._aio.server import Server
from udpkit._core.errors import PermissionDenied
from udpkit._core.policy import Policy
from udpkit._core.serving import Handler
from udpkit._net.addr import Address, is_broadcast, is_multicast, resolve_one
from udpkit._net.sockets import DatagramSocket, udp_bind, udp_connect

__all__ = [
    "Endpoint",
    "EndpointStats",
    "Handler",
    "Server",
    "bind_udp",
    "open_udp",
    "serve",
]

# Documented and shown as udpkit.aio names (they are defined in private modules).
for _cls in (Endpoint, EndpointStats, Server):
    _cls.__module__ = __name__
del _cls

_T = TypeVar("_T", bound=AioSocket)


class _Opening(Generic[_T]):
    """What open_udp/bind_udp/serve return: ``await`` it, or use it in ``async with`` directly."""

    def __init__(self, make: Callable[[], Awaitable[_T]]) -> None:
        self._make = make
        self._obj: _T | None = None

    def __await__(self) -> Generator[Any, None, _T]:
        return self._make().__await__()

    async def __aenter__(self) -> _T:
        self._obj = await self._make()
        return self._obj

    async def __aexit__(self, *exc_info: object) -> None:
        if self._obj is not None:
            await self._obj.aclose()


def _guard(sock: DatagramSocket | socket.socket, build: Callable[[], _T]) -> _T:
    try:
        return build()
    except BaseException:
        sock.close()  # never leak the socket when the endpoint cannot be made
        raise


def _endpoint(
    sock: DatagramSocket,
    queue_size: int,
    bufsize: int,
    busy_poll_us: int,
    *,
    default_to: Address | None = None,
) -> Endpoint:
    """An :class:`Endpoint` on a socket just opened for it (closed again if that fails)."""
    return _guard(
        sock,
        lambda: Endpoint(
            sock,
            queue_size=queue_size,
            bufsize=bufsize,
            default_to=default_to,
            busy_poll_us=busy_poll_us,
        ),
    )


def open_udp(
    host: str | int | None,
    port: int | str,
    *,
    bind: tuple[str | int | None, int | str] | None = None,
    broadcast: bool = False,
    family: int = socket.AF_UNSPEC,
    queue_size: int = 512,
    bufsize: int = 65535,
    busy_poll_us: int = 0,
) -> _Opening[Endpoint]:
    """Open an endpoint that talks to ``host``:``port``.

    A unicast destination is connected (only its datagrams arrive, and ICMP
    reports are seen). A multicast destination, ``"<broadcast>"``, and any
    destination opened with ``broadcast=True`` (a subnet's broadcast such as
    ``192.0.2.255`` looks like unicast) are not: the socket is bound (to
    ``bind``, else the wildcard) and ``send(data)`` goes there, so replies from
    every host arrive.

    Args:
        host: any udpkit host form: a name, ``"127.0.0.1"``, ``"::1"``,
            ``"fe80::1%eth0"``, an integer, ``""`` or ``"<broadcast>"``.
        port: a number, numeric string or service name.
        bind: a local ``(host, port)`` to bind first.
        broadcast: set SO_BROADCAST; needed for ``"<broadcast>"`` and subnet broadcasts.
        family: AF_UNSPEC, AF_INET or AF_INET6.
        queue_size: datagrams read ahead at most (see :class:`Endpoint`).
        bufsize: bytes kept per datagram.
        busy_poll_us: spin this long before sleeping in ``recv`` (see :class:`Endpoint`).

    Returns:
        An awaitable (``await open_udp(...)`` gives the :class:`Endpoint`) that
        also works as ``async with open_udp(...) as ep``.

    Raises:
        AddressError: a bad host or port.
        PermissionDenied: a broadcast destination without ``broadcast=True``.
        NetworkError: the OS refused (e.g. the bind address is in use).
    """

    async def make() -> Endpoint:
        dest = resolve_one(host, port, family=family)
        if is_broadcast(dest) and not broadcast:
            raise PermissionDenied(
                errno.EACCES,
                f"cannot open {host!r} port {port}: a broadcast address needs broadcast=True",
            )
        if broadcast or is_broadcast(dest) or is_multicast(dest):
            # As `udpkit send --broadcast`: replies come from each responder's own address.
            local = bind if bind is not None else ("", 0)
            sock = udp_bind(local[0], local[1], family=dest.family, broadcast=broadcast)
            return _endpoint(sock, queue_size, bufsize, busy_poll_us, default_to=dest)
        sock = udp_connect(dest.host, dest.port, bind=bind, family=dest.family, broadcast=broadcast)
        return _endpoint(sock, queue_size, bufsize, busy_poll_us)

    return _Opening(make)


def bind_udp(
    host: str | int | None = "127.0.0.1",
    port: int | str = 0,
    *,
    broadcast: bool = False,
    family: int = socket.AF_UNSPEC,
    reuse_port: bool = False,
    queue_size: int = 512,
    bufsize: int = 65535,
    busy_poll_us: int = 0,
) -> _Opening[Endpoint]:
    """Open an endpoint bound to ``host``:``port`` that sends anywhere (``send(data, to=...)``).

    Args:
        host: any udpkit host form; ``""``/``None`` is every interface.
        port: a number, numeric string or service name; 0 picks a free port.
        broadcast: set SO_BROADCAST (to send to broadcast addresses).
        family: AF_UNSPEC, AF_INET or AF_INET6.
        reuse_port: set SO_REUSEPORT.
        queue_size: datagrams read ahead at most (see :class:`Endpoint`).
        bufsize: bytes kept per datagram.
        busy_poll_us: spin this long before sleeping in ``recv`` (see :class:`Endpoint`).

    Returns:
        An awaitable giving the :class:`Endpoint`, usable in ``async with`` directly too.

    Raises:
        AddressError: a bad host or port.
        AddressInUse: the address is taken.
        NetworkError: any other refusal.
    """

    async def make() -> Endpoint:
        sock = udp_bind(host, port, family=family, broadcast=broadcast, reuse_port=reuse_port)
        return _endpoint(sock, queue_size, bufsize, busy_poll_us)

    return _Opening(make)


def serve(
    sock_or_host: DatagramSocket | socket.socket | str | int | None,
    port: int | str = 0,
    handler: Handler | None = None,
    *,
    broadcast: bool = False,
    family: int = socket.AF_UNSPEC,
    reuse_port: bool = False,
    bufsize: int = 65535,
    batch: int = 64,
    policy: Policy | None = None,
    busy_poll_us: int = 0,
) -> _Opening[Server]:
    """Start a :class:`Server` that answers with ``handler``; it serves until closed.

    Args:
        sock_or_host: a bound socket (the server takes it over), or a host to bind.
        port: the port to bind when a host is given.
        handler: the engine's handler type; ``None`` receives and counts only.
        broadcast: set SO_BROADCAST (replies to broadcast addresses).
        family: AF_UNSPEC, AF_INET or AF_INET6, when a host is given.
        reuse_port: set SO_REUSEPORT, when a host is given.
        bufsize: bytes kept per datagram.
        batch: datagrams per receive call.
        policy: admission and reply rules (see :class:`Server`; ``None``: the default).
        busy_poll_us: keep answering without sleeping this long (see :class:`Server`).

    Returns:
        An awaitable giving the running :class:`Server` (``async with`` closes it).

    Raises:
        AddressError: a bad host or port.
        AddressInUse: the address is taken.
        UsageError: a bad size, or a non-datagram socket.
    """

    async def make() -> Server:
        sock: DatagramSocket | socket.socket
        if isinstance(sock_or_host, DatagramSocket | socket.socket):
            sock = sock_or_host
        else:
            sock = udp_bind(
                sock_or_host, port, family=family, broadcast=broadcast, reuse_port=reuse_port
            )
        return _guard(
            sock,
            lambda: Server(
                sock,
                handler,
                bufsize=bufsize,
                batch=batch,
                policy=policy,
                busy_poll_us=busy_poll_us,
            ),
        )

    return _Opening(make)
