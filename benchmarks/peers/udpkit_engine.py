"""udpkit's Engine: recvmmsg/sendmmsg batches (or the portable path), optional GRO and busy-poll."""

from __future__ import annotations

import argparse
import signal
from typing import Any

import _common

from udpkit._loops.engine import Engine


def _noop(d: Any) -> None:
    return None


def _echo(d: Any) -> bytes:
    return bytes(d.data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--portable", action="store_true", help="fast=False")
    p.add_argument("--gro", action="store_true", help="gro=True (else gro=False)")
    p.add_argument("--handler", action="store_true", help="sink through a no-op Python handler")
    p.add_argument("--busy-poll-us", type=int, default=0)
    p.add_argument("--batch", type=int, default=None, help="default: the engine's own")
    args = _common.parse("", p)
    s = _common.bound_socket(args)
    if args.mode == "echo":
        handler: Any = _echo
    else:
        handler = _noop if args.handler else None
    bufsize = 65535 if args.gro else 2048
    engine = Engine(
        s,
        handler,
        bufsize=bufsize,
        batch=args.batch,
        fast=False if args.portable else None,
        gro=bool(args.gro),
        busy_poll_us=args.busy_poll_us,
    )
    signal.signal(signal.SIGTERM, lambda *_: engine.stop())
    _common.ready(s)
    stats = engine.run(duration=args.duration)
    _common.result(
        received=stats.rx_datagrams,
        fast=engine.fast,
        gro=engine.gro,
        gso=engine.gso,
        stats=stats.as_dict(),
    )
    engine.close()
    s.close()


if __name__ == "__main__":
    main()
