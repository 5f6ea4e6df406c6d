#!/usr/bin/env python3
"""udpkit relay vs socat, side by side: forwarding rate and added round-trip latency.

    python3 benchmarks/relay_bench.py [--duration S] [--size BYTES] [--pings N] [--json]

Forwarding: a load generator (``udpkit.send_batch``, 64 datagrams per call)
sends as fast as it can through the relay to a udpkit engine sink; the figure is
what the sink received per second.  Latency: one client pings a udpkit echo
engine directly, then through each relay, one datagram at a time; the added RTT
is the relay's p50 minus the direct p50.

socat runs as ``socat -T 5 UDP-LISTEN:P,reuseaddr UDP:127.0.0.1:Q`` (one peer,
no fork: its fastest relay); it is restarted for each measurement because it
serves only the first peer it hears from.  Every process is ended by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from udpkit import send_batch  # noqa: E402

PY = sys.executable
STEP = 10.0
RELAY_ARGS: list[str] = []  # extra `udpkit relay` options (--relay-arg)

# A udpkit engine in its own process: sink (count only) or echo.  It prints its port,
# then on SIGTERM the datagrams it received.
_ENGINE = r"""
import json, signal, socket, sys
from udpkit._loops.engine import Engine
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
with __import__("contextlib").suppress(OSError):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
e = Engine(s, (lambda d: d.data) if sys.argv[1] == "echo" else None, bufsize=2048)
signal.signal(signal.SIGTERM, lambda *_: e.stop())
print(s.getsockname()[1], flush=True)
st = e.run()
print(json.dumps({"received": st.rx_datagrams, "kernel_drops": st.kernel_drops}), flush=True)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _readline(proc: subprocess.Popen[bytes], stream: str, timeout: float = STEP) -> str:
    pipe = proc.stdout if stream == "out" else proc.stderr
    assert pipe is not None
    fd = pipe.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError(f"no line from {proc.args!r} within {timeout} s")
        ch = os.read(fd, 1)
        if not ch:
            raise RuntimeError(f"{proc.args!r} ended early: {buf!r}")
        buf += ch
    return buf.decode()


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STEP)


@contextlib.contextmanager
def engine(mode: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    proc = subprocess.Popen(
        [PY, "-c", _ENGINE, mode], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env()
    )
    try:
        yield int(_readline(proc, "out")), proc
    finally:
        _end(proc)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.contextmanager
def relay(kind: str, target: int) -> Iterator[int]:
    """Start ``udpkit relay`` or socat towards 127.0.0.1:target; yield its port."""
    if kind == "udpkit":
        args = [PY, "-m", "udpkit", "relay", "127.0.0.1:0", f"127.0.0.1:{target}", *RELAY_ARGS]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    else:
        port = _free_port()
        args = ["socat", "-T", "5", f"UDP-LISTEN:{port},reuseaddr", f"UDP:127.0.0.1:{target}"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if kind == "udpkit":
            m = re.search(r"listening on \S+:(\d+) ", _readline(proc, "err"))
            assert m is not None
            port = int(m.group(1))
        else:
            time.sleep(0.3)  # socat prints nothing when ready
        yield port
    finally:
        _end(proc)
        if proc.stderr is not None:
            proc.stderr.close()


def _result(proc: subprocess.Popen[bytes]) -> dict[str, int]:
    os.kill(proc.pid, signal.SIGTERM)
    out: dict[str, int] = json.loads(_readline(proc, "out"))
    return out


def forward_rate(kind: str | None, duration: float, size: int) -> dict[str, float]:
    """Blast ``size``-byte datagrams for ``duration`` s; return what the sink got per second."""
    payloads = [b"x" * size] * 64
    with engine("sink") as (sink_port, sink), contextlib.ExitStack() as stack:
        port = sink_port if kind is None else stack.enter_context(relay(kind, sink_port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gen:
            gen.connect(("127.0.0.1", port))
            sent = 0
            start = time.monotonic()
            end = start + duration
            while time.monotonic() < end:
                with contextlib.suppress(OSError):
                    sent += send_batch(gen, payloads, gso=False)
            elapsed = time.monotonic() - start
            time.sleep(0.3)  # let the relay and the sink finish what is queued
            got = _result(sink)
    return {
        "sent_per_s": sent / elapsed,
        "forwarded_per_s": got["received"] / elapsed,
        "sink_kernel_drops": float(got["kernel_drops"] or 0),
    }


def rtt_p50(kind: str | None, pings: int, size: int) -> dict[str, float]:
    """Ping-pong ``pings`` times through ``kind`` (None: direct); return RTT p50/p99 in µs."""
    with engine("echo") as (echo_port, _), contextlib.ExitStack() as stack:
        port = echo_port if kind is None else stack.enter_context(relay(kind, echo_port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.connect(("127.0.0.1", port))
            c.settimeout(1.0)
            payload = b"p" * size
            samples: list[float] = []
            lost = 0
            for i in range(pings + 50):
                t0 = time.perf_counter()
                c.send(payload)
                try:
                    c.recv(65535)
                except TimeoutError:
                    lost += 1
                    continue
                if i >= 50:  # warm-up: flows created, caches hot
                    samples.append((time.perf_counter() - t0) * 1e6)
    qs = statistics.quantiles(samples, n=100)
    return {"p50_us": statistics.median(samples), "p99_us": qs[98], "lost": float(lost)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=3.0, help="seconds of load per relay")
    p.add_argument("--size", type=int, default=64, help="payload bytes (default 64)")
    p.add_argument("--pings", type=int, default=2000, help="RTT samples per path")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.add_argument(
        "--relay-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra option for udpkit relay (repeat; e.g. --relay-arg=--spin-us=0)",
    )
    args = p.parse_args()
    RELAY_ARGS[:] = args.relay_arg
    kinds: list[str] = ["udpkit"]
    skipped = {}
    if shutil.which("socat"):
        kinds.append("socat")
    else:
        skipped["socat"] = "socat is not installed"
    res: dict[str, object] = {"size_bytes": args.size, "duration_s": args.duration}
    rate = {k: forward_rate(k, args.duration, args.size) for k in kinds}
    direct = rtt_p50(None, args.pings, args.size)
    rtt = {k: rtt_p50(k, args.pings, args.size) for k in kinds}
    res["forward"] = rate
    res["rtt_direct"] = direct
    res["rtt"] = rtt
    added = {k: rtt[k]["p50_us"] - direct["p50_us"] for k in kinds}
    res["added_rtt_p50_us"] = added
    if "socat" in rate:
        res["rate_ratio_udpkit_over_socat"] = (
            rate["udpkit"]["forwarded_per_s"] / rate["socat"]["forwarded_per_s"]
        )
        res["added_rtt_ratio_udpkit_over_socat"] = added["udpkit"] / max(added["socat"], 1e-9)
    res["skipped"] = skipped
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"relay benchmark: {args.size}-byte datagrams, {args.duration:g} s load, loopback")
    print(
        f"{'relay':<8} {'sent/s':>12} {'forwarded/s':>12} {'RTT p50 µs':>11} "
        f"{'p99 µs':>8} {'added p50 µs':>13}"
    )
    print(f"{'direct':<8} {'':>12} {'':>12} {direct['p50_us']:>11.1f} {direct['p99_us']:>8.1f}")
    for k in kinds:
        r, t = rate[k], rtt[k]
        print(
            f"{k:<8} {r['sent_per_s']:>12,.0f} {r['forwarded_per_s']:>12,.0f} "
            f"{t['p50_us']:>11.1f} {t['p99_us']:>8.1f} {added[k]:>13.1f}"
        )
    if "socat" in rate:
        print(
            f"udpkit/socat: forwarding x{res['rate_ratio_udpkit_over_socat']:.2f} "
            f"(target >= 1.5), added RTT p50 x{res['added_rtt_ratio_udpkit_over_socat']:.2f} "
            "(target <= 1.0)"
        )
    for k, why in skipped.items():
        print(f"{k}: skipped ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
