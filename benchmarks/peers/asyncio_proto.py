"""asyncio's DatagramProtocol (or uvloop's, with ``--uvloop``): the callback API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import _common


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1


class Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1
        self.transport.sendto(data, addr)


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    s = _common.bound_socket(args)
    proto = Sink() if args.mode == "sink" else Echo()
    transport, _ = await loop.create_datagram_endpoint(lambda: proto, sock=s)
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    _common.ready(s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), args.duration)
    transport.close()
    return proto.received


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--uvloop", action="store_true")
    args = _common.parse("", p)
    if args.uvloop:
        import uvloop

        received = uvloop.run(serve(args))
    else:
        received = asyncio.run(serve(args))
    _common.result(received=received, loop="uvloop" if args.uvloop else "asyncio")


if __name__ == "__main__":
    main()
