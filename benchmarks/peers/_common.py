"""What every Python benchmark peer shares: arguments, the bound socket, the READY/RESULT lines.

A peer binds 127.0.0.1 (port 0 unless told), prints ``READY <port>``, serves until
SIGTERM (or ``--duration``), then prints ``RESULT {json}`` with at least ``received``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys


def parse(description: str, extra: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    p = extra or argparse.ArgumentParser(description=description)
    p.add_argument("--mode", choices=("sink", "echo"), default="sink")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF to ask for (0: default)")
    p.add_argument("--duration", type=float, default=None)
    return p.parse_args()


def bound_socket(args: argparse.Namespace) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.rcvbuf:
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, args.rcvbuf)  # SO_RCVBUFFORCE (root)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    s.bind(("127.0.0.1", args.port))
    return s


def ready(s: socket.socket) -> None:
    print(f"READY {s.getsockname()[1]}", flush=True)


def result(**fields: object) -> None:
    print("RESULT " + json.dumps(fields), flush=True)
    sys.stdout.flush()
