"""udpkit.aio: an Endpoint read with ``async for`` (sink), answered with ``await send`` (echo).

``--server`` uses ``udpkit.aio.serve`` with an engine handler instead; ``--uvloop`` runs on uvloop;
``--busy-poll-us N`` turns on either one's busy polling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import _common

import udpkit.aio
from udpkit import Datagram


async def _consume(ep: udpkit.aio.Endpoint, echo: bool) -> None:
    if echo:
        async for d in ep:
            await ep.send(d.data, d.peer)
    else:
        async for _ in ep:
            pass


def _echo(d: Datagram) -> bytes:
    return d.data


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    s = _common.bound_socket(args)
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    core: udpkit.aio.Endpoint | udpkit.aio.Server
    if args.server:
        core = await udpkit.aio.serve(
            s,
            0,
            _echo if args.mode == "echo" else None,
            bufsize=2048,
            busy_poll_us=args.busy_poll_us,
        )
        task = asyncio.create_task(core.serve_forever())
    else:
        core = udpkit.aio.Endpoint(s, bufsize=2048, queue_size=1024, busy_poll_us=args.busy_poll_us)
        task = asyncio.create_task(_consume(core, args.mode == "echo"))
    _common.ready(s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), args.duration)
    stats = core.stats.as_dict()
    core.close()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--server", action="store_true", help="udpkit.aio.serve with a handler")
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--busy-poll-us", type=int, default=0)
    args = _common.parse("", p)
    if args.uvloop:
        import uvloop

        stats = uvloop.run(serve(args))
    else:
        stats = asyncio.run(serve(args))
    _common.result(received=stats["received"], aio=stats)


if __name__ == "__main__":
    main()
