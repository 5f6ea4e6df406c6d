"""Load generator: udpkit's ``send_batch`` (sendmmsg, with UDP GSO unless ``--no-gso``).

Sends same-size datagrams to 127.0.0.1:PORT as fast as it can for ``--duration``
seconds, from ``--flows`` sockets in turn (several source ports spread the load over
SO_REUSEPORT workers), then prints ``RESULT {"sent": N, "seconds": T, ...}``: ``sent``
is exactly what the kernel accepted.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

from udpkit._net.sendmmsg import send_batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--flows", type=int, default=1)
    p.add_argument("--burst", type=int, default=1024, help="datagrams per send_batch call")
    p.add_argument("--no-gso", action="store_true")
    args = p.parse_args()
    socks = []
    for _ in range(args.flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.connect(("127.0.0.1", args.port))
        socks.append(s)
    payloads = [bytes([i % 256]) * args.size for i in range(args.burst)]
    gso = False if args.no_gso else None
    sent = 0
    calls = 0
    start = time.monotonic()
    end = start + args.duration
    now = start
    while now < end:
        for s in socks:
            sent += send_batch(s, payloads, gso=gso)
            calls += 1
        now = time.monotonic()
    elapsed = time.monotonic() - start
    info = {"sent": sent, "seconds": elapsed, "calls": calls, "rate": sent / elapsed}
    print("RESULT " + json.dumps(info), flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
