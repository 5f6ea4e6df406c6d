#!/usr/bin/env python3
"""udpkit bench's own top rate at 64 B next to ``iperf3 -u -b 0 -l 64``, same machine, same run.

    python3 benchmarks/bench_vs_iperf.py                # 3 s each
    python3 benchmarks/bench_vs_iperf.py --seconds 5 --json out.json

Both are one-way floods over 127.0.0.1: iperf3's client to its server, and
``udpkit bench --one-way --rate max`` to ``udpkit reflect``.  Receivers run on
core 1 and senders on core 0 when ``taskset`` exists (as benchmarks/run.py does).
The received rate is what the receiver counted over the sender's send time.
iperf3 takes whole seconds (3.12 reads ``-t 0.5`` as 0, i.e. forever), so both
tools run ``max(1, round(seconds))`` seconds.
bench splits its loss into sender / path / receiver kernel (the reflector
socket's drop counter); iperf3 reports loss without a cause.

``measure(seconds)`` returns the figures as a dict, for benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
LISTENING = re.compile(r"listening on (\S+)")


def _pin(core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > core:
        return ["taskset", "-c", str(core)]
    return []


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _whole_seconds(seconds: float) -> int:
    """iperf3 takes whole seconds (``-t 0.5`` is read as 0: run forever); bench gets the same."""
    return max(1, round(seconds))


def _listening_port(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> tuple[str, str]:
    """The port from ``udpkit: listening on HOST:PORT`` on stderr, or ("", what it said)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        *lines, _rest = buf.split(b"\n")
        for line in lines:
            m = LISTENING.search(line.decode(errors="replace"))
            if m is not None:
                return m.group(1).rsplit(":", 1)[1], ""
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return "", f"no 'listening on' line in {timeout:g} s: {buf.decode(errors='replace')}"
        chunk = os.read(fd, 4096)
        if not chunk:
            return "", buf.decode(errors="replace").strip() or "exited"
        buf += chunk


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)


def run_iperf3(seconds: float) -> dict[str, Any]:
    """``iperf3 -u -b 0 -l 64`` for ``seconds``; its own figures."""
    if shutil.which("iperf3") is None:
        return {"tool": "iperf3", "skipped": "iperf3 is not installed"}
    port = _free_port(socket.SOCK_STREAM)
    srv = subprocess.Popen(
        [*_pin(1), "iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        res = subprocess.run(
            [
                *_pin(0),
                "iperf3",
                "-c",
                "127.0.0.1",
                "-p",
                str(port),
                "-u",
                "-b",
                "0",
                "-l",
                "64",
                "-t",
                str(_whole_seconds(seconds)),
                "--json",
            ],
            capture_output=True,
            timeout=seconds + 20,
            check=False,
        )
    finally:
        _stop(srv)
    try:
        s = json.loads(res.stdout)["end"]["sum"]
    except (ValueError, KeyError) as exc:
        said = (res.stderr or res.stdout).decode(errors="replace").strip()[-300:]
        return {"tool": "iperf3", "error": f"no iperf3 figures ({exc}): {said}"}
    secs = float(s["seconds"])
    received = int(s["packets"]) - int(s["lost_packets"])
    return {
        "tool": "iperf3 -u -b 0 -l 64",
        "seconds_s": secs,
        "sent_datagrams": int(s["packets"]),
        "received_datagrams": received,
        "send_datagrams_per_s": int(s["packets"]) / secs,
        "receive_datagrams_per_s": received / secs,
        "lost_datagrams": int(s["lost_packets"]),
        "lost_sender_datagrams": None,
        "lost_path_datagrams": None,
        "lost_receiver_kernel_datagrams": None,
        "path_lost_datagrams": int(s["lost_packets"]),  # iperf3 cannot say where
    }


def run_udpkit(seconds: float) -> dict[str, Any]:
    """``udpkit bench --one-way --rate max --size 64`` against ``udpkit reflect``."""
    py = [sys.executable, "-m", "udpkit"]
    refl = subprocess.Popen(
        [*_pin(1), *py, "reflect", "127.0.0.1", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        port, said = _listening_port(refl)
        if not port:
            return {"tool": "udpkit bench", "error": f"udpkit reflect: {said}"}
        res = subprocess.run(
            [
                *_pin(0),
                *py,
                "bench",
                "127.0.0.1",
                port,
                "--one-way",
                "--rate",
                "max",
                "--size",
                "64",
                "-t",
                str(_whole_seconds(seconds)),
                "--json",
                "-q",
            ],
            capture_output=True,
            timeout=seconds + 30,
            check=False,
            env=ENV,
        )
    finally:
        _stop(refl)
    if res.returncode:
        return {"tool": "udpkit bench", "error": res.stderr.decode().strip()}
    doc = json.loads(res.stdout)
    t = doc["total"]
    fwd = t["forward"]
    secs = doc["send_seconds_s"]
    return {
        "tool": "udpkit bench --one-way --rate max --size 64",
        "seconds_s": secs,
        "sent_datagrams": t["sent_datagrams"],
        "received_datagrams": fwd["unique_datagrams"],
        "send_datagrams_per_s": t["send_datagrams_per_s"],
        "receive_datagrams_per_s": fwd["datagrams_per_s"],
        "lost_datagrams": fwd["lost_datagrams"],
        "lost_sender_datagrams": fwd["lost_sender_datagrams"],
        "lost_path_datagrams": fwd["lost_path_datagrams"],
        "lost_receiver_kernel_datagrams": fwd["lost_receiver_kernel_datagrams"],
        "path_lost_datagrams": t["path_lost_datagrams"],
    }


def measure(seconds: float = 3.0) -> dict[str, Any]:
    """Both runs, one after the other, and the ratio of received rates."""
    ip = run_iperf3(seconds)
    uk = run_udpkit(seconds)
    ratio = None
    if "receive_datagrams_per_s" in ip and "receive_datagrams_per_s" in uk:
        ratio = uk["receive_datagrams_per_s"] / ip["receive_datagrams_per_s"]
    return {"seconds_s": seconds, "rows": [ip, uk], "received_rate_ratio": ratio}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if isinstance(v, float) else f"{v:,}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per tool (default 3)")
    ap.add_argument("--json", metavar="PATH", help="also save the figures as JSON")
    args = ap.parse_args()
    doc = measure(args.seconds)
    print(
        f"{'tool':<46}{'sent/s':>12}{'received/s':>12}{'lost':>10}"
        f"  {'sender/path/kernel':<22}{'unexplained':>11}"
    )
    for r in doc["rows"]:
        if "skipped" in r or "error" in r:
            print(f"{r['tool']:<46}  {r.get('skipped') or r.get('error')}")
            continue
        split = "/".join(
            _fmt(r[k])
            for k in (
                "lost_sender_datagrams",
                "lost_path_datagrams",
                "lost_receiver_kernel_datagrams",
            )
        )
        print(
            f"{r['tool']:<46}{_fmt(r['send_datagrams_per_s']):>12}"
            f"{_fmt(r['receive_datagrams_per_s']):>12}{_fmt(r['lost_datagrams']):>10}"
            f"  {split:<22}{_fmt(r['path_lost_datagrams']):>11}"
        )
    if doc["received_rate_ratio"] is not None:
        print(f"udpkit bench / iperf3 received rate: {doc['received_rate_ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
