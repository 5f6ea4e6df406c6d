"""Quick figures: datagrams/s the engine takes from a loopback flood, per receive path.

Run: ``PYTHONPATH=src python3 benchmarks/engine_smoke.py [seconds] [payload]``.
A separate process floods with ``send_batch`` (sendmmsg + GSO); the receiver is
the engine's fast path, its portable path, or a plain ``recvfrom`` loop.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import socket
import sys
import time
from typing import Any

from udpkit._loops.engine import Engine
from udpkit._net.sendmmsg import send_batch


def _flood(addr: Any, size: int, seconds: float, gso: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        batch = [b"x" * size] * 64
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(OSError):
                send_batch(s, batch, gso=None if gso else False)


def _plain(sock: socket.socket, seconds: float) -> int:
    sock.settimeout(0.2)
    n = 0
    end = time.monotonic() + seconds
    recvfrom = sock.recvfrom
    while time.monotonic() < end:
        for _ in range(256):
            try:
                recvfrom(65535)
            except TimeoutError:
                break
            n += 1
    return n


def measure(kind: str, size: int, seconds: float, gso: bool = True) -> tuple[float, float]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        proc = mp.Process(target=_flood, args=(sock.getsockname(), size, seconds + 0.5, gso))
        proc.start()
        time.sleep(0.2)
        t0 = time.monotonic()

        if kind == "plain":
            n = _plain(sock, seconds)
        else:
            fast = kind.startswith("fast")
            gro = kind.endswith("+gro")
            with Engine(sock, None, fast=fast, gro=gro if fast else False) as e:
                st = e.run(duration=seconds)
                n = st.rx_datagrams
        dt = time.monotonic() - t0
        proc.join()
    return n / dt, dt


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    for size in (64, 1400):
        for kind in ("fast", "fast+gro", "portable", "plain"):
            rate, _ = measure(kind, size, seconds)
            print(f"{size:5d} B  {kind:10s} {rate / 1e6:6.3f} M datagrams/s")


if __name__ == "__main__":
    main()
