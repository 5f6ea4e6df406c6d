"""trio: ``await sock.recvfrom()`` / ``await sock.sendto()`` in a task."""

from __future__ import annotations

import argparse
import signal

import _common
import trio  # type: ignore[import-untyped,unused-ignore]


async def serve(args: argparse.Namespace) -> int:
    raw = _common.bound_socket(args)
    sock = trio.socket.from_stdlib_socket(raw)
    received = 0

    async def loop() -> None:
        nonlocal received
        if args.mode == "sink":
            while True:
                await sock.recvfrom(65535)
                received += 1
        else:
            while True:
                data, addr = await sock.recvfrom(65535)
                received += 1
                await sock.sendto(data, addr)

    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop)
            print(f"READY {raw.getsockname()[1]}", flush=True)
            with trio.move_on_after(args.duration if args.duration is not None else float("inf")):
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
    sock.close()
    return received


def main() -> None:
    args = _common.parse(__doc__ or "")
    received = trio.run(serve, args)
    _common.result(received=received)


if __name__ == "__main__":
    main()
