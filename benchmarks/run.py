#!/usr/bin/env python3
"""udpkit benchmark: sink, drain, echo, workers, relay and bench, next to Python and C peers.

    python3 benchmarks/run.py [--quick] [--smoke] [--json PATH] [--servers a,b,...]
                              [--only drain,sink,echo,workers,relay,bench]

The product is measured as users start it (``udpkit serve ...``, ``udpkit reflect``,
``udpkit relay``, ``udpkit bench``: the serve-* rows and the relay and bench cases), next
to the bare ``Engine`` (the udpkit-* rows) and the Python and C peers.  The report starts
with the machine, its kernel and what one system call costs on it.

Every server runs in its own process, pinned to core 1 where the machine has one; the
load generator or echo client runs on core 0.  Every process is ended by its PID
(SIGTERM, then SIGKILL after a grace period) and every case has a hard timeout.
Peers that are missing (uvloop, trio, sockperf, socat, a C compiler, ``udpkit serve
--workers``) are reported as skipped with the reason; nothing is installed.

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "peers"
CSRC = HERE / "c"
PY = sys.executable
RCVBUF = 4 << 20  # asked of every server alike (SO_RCVBUFFORCE as root, else capped by rmem_max)
DRAIN_RCVBUF = 256 << 20  # the drain case's backlog: ~100-300k datagrams
DRAIN_FILL_S = 1.0  # long enough to fill the 256 MiB queue at 64 B too (same depth for all)
DRAIN_LIMIT_S = 20.0  # a slow server (asyncio) gets this long to empty it
GRACE = 2.0  # seconds between SIGTERM and SIGKILL
DRAIN = 0.3  # seconds a sink gets after the generator stops, to empty its queue

SERVER_CPU = 1
CLIENT_CPU = 0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set()


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None or cpu not in _cpus():
        return None

    def pin() -> None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})

    return pin


# -- processes ---------------------------------------------------------------------------


class Proc:
    """A child process read line by line with deadlines, ended by PID and never left behind."""

    def __init__(
        self,
        argv: Sequence[str],
        cpu: int | None,
        *,
        stderr_pipe: bool = False,
        read_stderr: bool = False,
    ) -> None:
        # read_stderr: the lines read are stderr's (the udpkit CLI reports there: its
        # "listening on" line and its final summary); stdout is discarded.
        self.argv = list(argv)
        self.read_stderr = read_stderr
        self.p = subprocess.Popen(
            self.argv,
            stdout=subprocess.DEVNULL if read_stderr else subprocess.PIPE,
            stderr=subprocess.PIPE if stderr_pipe or read_stderr else subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=_env(),
            cwd=str(ROOT),
            preexec_fn=_pin(cpu),  # noqa: PLW1509 - the runner starts no threads
            start_new_session=True,  # a signal to the group reaches its own children (workers)
        )
        self._buf = b""
        self.lines: list[str] = []

    def _read_some(self, timeout: float) -> bool:
        stream = self.p.stderr if self.read_stderr else self.p.stdout
        assert stream is not None
        fd = stream.fileno()
        r, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if not r:
            return False
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        self._buf += chunk
        *done, self._buf = self._buf.split(b"\n")
        self.lines.extend(x.decode(errors="replace") for x in done)
        return True

    def wait_match(self, pattern: str, timeout: float) -> re.Match[str] | None:
        """The first line that ``pattern`` matches (re.match), or None by the deadline/at EOF."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                m = rx.match(line)
                if m:
                    return m
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self._read_some(left) and self.p.poll() is not None:
                # Exited: collect what is left in the pipe once more.
                while self._read_some(0):
                    pass
                for line in self.lines[seen:]:
                    m = rx.match(line)
                    if m:
                        return m
                return None

    def wait_line(self, prefix: str, timeout: float) -> str | None:
        """The first line starting with ``prefix`` (its rest), or None by the deadline/at EOF."""
        m = self.wait_match(re.escape(prefix) + r"(.*)", timeout)
        return None if m is None else m.group(1).strip()

    def result(self, timeout: float) -> dict[str, Any] | None:
        line = self.wait_line("RESULT ", timeout)
        if line is None:
            return None
        try:
            out: dict[str, Any] = json.loads(line)
        except ValueError:
            return None
        return out

    def signal(self, sig: int) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.p.pid, sig)

    def end(self) -> None:
        """SIGTERM, then SIGKILL after GRACE seconds; reap; close pipes."""
        self.signal(signal.SIGTERM)
        try:
            self.p.wait(GRACE)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.p.wait(GRACE)
        # The group may hold children (workers) that outlived the leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.p.pid, signal.SIGKILL)
        for f in (self.p.stdout, self.p.stderr):
            if f is not None:
                f.close()

    def stderr_text(self, timeout: float) -> str:
        if self.p.stderr is None:
            return ""
        try:
            _, err = self.p.communicate(timeout=timeout)
        except (subprocess.TimeoutExpired, ValueError):
            return ""
        return (err or b"").decode(errors="replace")


@contextlib.contextmanager
def started(argv: Sequence[str], cpu: int | None, **kw: Any) -> Iterator[Proc]:
    proc = Proc(argv, cpu, **kw)
    try:
        yield proc
    finally:
        proc.end()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_udp(port: int) -> dict[str, int] | None:
    """The /proc/net/udp row(s) of 127.0.0.1:port summed: drops and queued bytes (Linux)."""
    want = f"0100007F:{port:04X}"
    found = None
    try:
        with open("/proc/net/udp", encoding="ascii") as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) > 12 and cols[1] == want:
                    found = found or {"drops": 0, "rx_queue": 0, "sockets": 0}
                    found["drops"] += int(cols[12])
                    found["rx_queue"] += int(cols[4].split(":")[1], 16)
                    found["sockets"] += 1
    except OSError:
        return None
    return found


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields after the command name: state is index 0, utime 11, stime 12.
    return (int(fields[11]) + int(fields[12])) / _TICK


def wait_bound(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc_udp(port) is not None:
            return True
        time.sleep(0.02)
    return False


# -- peers -------------------------------------------------------------------------------


@dataclass
class Server:
    """How to start one server: its argv for a mode, or why it is skipped."""

    name: str
    argv: Callable[[str, int], list[str]]  # (mode, port) -> argv; port 0 = the server picks
    fixed_port: bool = False  # True: the server cannot report its port (socat)
    cli: bool = False  # True: `udpkit serve` (port from its stderr, summary at exit)
    skip: str | None = None
    modes: tuple[str, ...] = ("sink", "echo")
    note: str = ""


def _module_missing(name: str) -> str | None:
    try:
        r = subprocess.run(
            [PY, "-c", f"import {name}"], capture_output=True, timeout=30, env=_env(), check=False
        )
    except subprocess.TimeoutExpired:
        return f"importing {name} timed out"
    return None if r.returncode == 0 else f"{name} not installed (pip install '.[bench]')"


def _py(script: str, *extra: str) -> Callable[[str, int], list[str]]:
    def argv(mode: str, port: int) -> list[str]:
        return [PY, str(PEERS / script), "--mode", mode, "--rcvbuf", str(RCVBUF), *extra]

    return argv


def _serve(*opts: str) -> Callable[[str, int], list[str]]:
    """``udpkit serve OPTS --rcvbuf N 127.0.0.1 PORT`` as a user starts it (PORT 0: it picks)."""

    def argv(mode: str, port: int) -> list[str]:
        return [PY, "-m", "udpkit", "serve", *opts, "--rcvbuf", str(RCVBUF), "127.0.0.1", str(port)]

    return argv


_LISTENING = r"udpkit: listening on \S+:(\d+)"
_SUMMARY = re.compile(
    r"udpkit: (?P<received>[\d,]+) datagrams?, (?P<bytes>[\d,]+) bytes?"
    r"(?: from ~?(?P<peers>[\d,]+) peers?)?, (?P<truncated>[\d,]+) truncated"
    r"(?:; (?P<extra>.*?))?(?: \(stopped by (?P<stopped_by>\w+)\))?\s*$"
)


def serve_summary(line: str) -> dict[str, Any] | None:
    """``udpkit serve``'s one-line exit summary as numbers, e.g.

    ``udpkit: 3 datagrams, 48 bytes from 1 peer, 0 truncated; replies=3 kernel_drops=0
    (stopped by SIGTERM)`` -> received 3, bytes 48, peers 1, truncated 0, replies 3,
    kernel_drops 0, stopped_by SIGTERM.  ``kernel_drops`` is None when unavailable and
    ``replies`` 0 when the summary leaves it out (it does when there were none).
    """
    m = _SUMMARY.match(line.strip())
    if m is None:
        return None
    out: dict[str, Any] = {"summary": line.strip(), "replies": 0, "kernel_drops": None}
    for k in ("received", "bytes", "peers", "truncated"):
        if m.group(k) is not None:
            out[k] = int(m.group(k).replace(",", ""))
    for k, v in re.findall(r"(\w+)=(\S+)", m.group("extra") or ""):
        out[k] = int(v) if v.isdigit() else v
    if not isinstance(out["kernel_drops"], int):
        out["kernel_drops"] = None
    out["stopped_by"] = m.group("stopped_by")
    return out


def build_c(tmp: Path) -> tuple[dict[str, Path], str | None]:
    """Compile the C yardsticks with ``cc -O2``; return their paths or why not."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return {}, "no C compiler (cc) found"
    out: dict[str, Path] = {}
    for name in ("sink", "echo_server", "echo_client", "gen_gso", "syscost"):
        exe = tmp / name
        r = subprocess.run(
            [cc, "-O2", "-o", str(exe), str(CSRC / f"{name}.c")],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if r.returncode != 0:
            return {}, f"{cc} failed on {name}.c: {r.stderr.decode(errors='replace')[-300:]}"
        out[name] = exe
    return out, None


def servers(cexe: dict[str, Path], cskip: str | None) -> dict[str, Server]:
    uv = _module_missing("uvloop")
    tr = _module_missing("trio")
    socat = shutil.which("socat")
    s: dict[str, Server] = {}
    s["udpkit"] = Server("udpkit", _py("udpkit_engine.py"), note="Engine, recvmmsg fast path")
    s["udpkit-handler"] = Server(
        "udpkit-handler",
        _py("udpkit_engine.py", "--handler"),
        modes=("sink",),
        note="Engine with a no-op Python handler (a Datagram per datagram)",
    )
    s["udpkit-portable"] = Server(
        "udpkit-portable", _py("udpkit_engine.py", "--portable"), note="Engine(fast=False)"
    )
    s["udpkit-gro"] = Server(
        "udpkit-gro", _py("udpkit_engine.py", "--gro"), modes=("sink",), note="Engine(gro=True)"
    )
    s["udpkit-busy"] = Server(
        "udpkit-busy",
        _py("udpkit_engine.py", "--busy-poll-us", "200"),
        modes=("echo",),
        note="Engine(busy_poll_us=200)",
    )
    # The product as users start it: `udpkit serve` (python3 -m udpkit, PYTHONPATH=src).
    s["serve-echo"] = Server(
        "serve-echo",
        _serve("--echo", "--quiet"),
        cli=True,
        modes=("echo",),
        note="udpkit serve --echo --quiet",
    )
    s["serve-echo-nobatch"] = Server(
        "serve-echo-nobatch",
        _serve("--echo", "--quiet", "--no-batch"),
        cli=True,
        modes=("echo",),
        note="udpkit serve --echo --quiet --no-batch",
    )
    s["serve-busy"] = Server(
        "serve-busy",
        _serve("--echo", "--quiet", "--busy-poll", "200"),
        cli=True,
        modes=("echo",),
        note="udpkit serve --echo --quiet --busy-poll 200",
    )
    s["serve-quiet"] = Server(
        "serve-quiet",
        _serve("--quiet", "--no-reply"),
        cli=True,
        modes=("sink",),
        note="udpkit serve --quiet --no-reply",
    )
    s["serve-gro"] = Server(
        "serve-gro",
        _serve("--quiet", "--no-reply", "--gro"),
        cli=True,
        modes=("sink",),
        note="udpkit serve --quiet --no-reply --gro",
    )
    s["textbook"] = Server("textbook", _py("textbook.py"), note="recvfrom/sendto loop")
    s["asyncio"] = Server("asyncio", _py("asyncio_proto.py"), note="DatagramProtocol")
    s["uvloop"] = Server("uvloop", _py("asyncio_proto.py", "--uvloop"), skip=uv)
    s["udpkit-aio"] = Server("udpkit-aio", _py("udpkit_aio.py"), note="udpkit.aio Endpoint")
    s["udpkit-aio-server"] = Server(
        "udpkit-aio-server", _py("udpkit_aio.py", "--server"), note="udpkit.aio.serve, handler"
    )
    s["udpkit-aio-busy"] = Server(
        "udpkit-aio-busy",
        _py("udpkit_aio.py", "--busy-poll-us", "200"),
        modes=("echo",),
        note="udpkit.aio Endpoint(busy_poll_us=200)",
    )
    s["udpkit-aio-server-busy"] = Server(
        "udpkit-aio-server-busy",
        _py("udpkit_aio.py", "--server", "--busy-poll-us", "200"),
        modes=("echo",),
        note="udpkit.aio.serve(busy_poll_us=200)",
    )
    s["trio"] = Server("trio", _py("trio_server.py"), skip=tr)

    def c(name: str, *a: str) -> Callable[[str, int], list[str]]:
        return lambda mode, port: [str(cexe.get(name, name)), str(port), str(RCVBUF), *a]

    s["C-mmsg"] = Server(
        "C-mmsg",
        lambda mode, port: c("sink" if mode == "sink" else "echo_server", "mmsg")(mode, port),
        skip=cskip,
        note="recvmmsg (+sendmmsg) reference",
    )
    s["C-gro"] = Server("C-gro", c("sink", "gro"), skip=cskip, modes=("sink",), note="UDP GRO")
    s["C-busy"] = Server(
        "C-busy", c("echo_server", "busy"), skip=cskip, modes=("echo",), note="busy-polling"
    )

    def socat_argv(mode: str, port: int) -> list[str]:
        if mode == "sink":
            return [
                socat or "socat",
                "-u",
                f"UDP-RECV:{port},bind=127.0.0.1,rcvbuf={RCVBUF}",
                "OPEN:/dev/null",
            ]
        # One peer (the echo client's one socket); -b = request size keeps datagrams whole
        # through socat's pipe.  See README.
        return [
            socat or "socat",
            "-b",
            "64",
            f"UDP-LISTEN:{port},bind=127.0.0.1,reuseaddr,rcvbuf={RCVBUF}",
            "PIPE",
        ]

    s["socat"] = Server(
        "socat",
        socat_argv,
        fixed_port=True,
        skip=None if socat else "socat not installed",
        note="sink: UDP-RECV -> /dev/null, received = sent - kernel drops; echo: UDP-LISTEN PIPE",
    )
    return s


# -- cases -------------------------------------------------------------------------------


@dataclass
class Bench:
    seconds: float
    cexe: dict[str, Path]
    servers: dict[str, Server]
    results: list[dict[str, Any]] = field(default_factory=list)
    case_timeout: float = 30.0

    def start_server(self, srv: Server, mode: str) -> tuple[Proc, int] | str:
        if srv.cli:
            proc = Proc(srv.argv(mode, 0), SERVER_CPU, read_stderr=True)
            m = proc.wait_match(_LISTENING, 20)
            if m is None:
                proc.end()
                said = " | ".join(x.strip() for x in proc.lines[-3:] if x.strip())
                why = f"{srv.name} did not start (no 'listening on' line)"
                return f"{why}: {said}" if said else why
            return proc, int(m.group(1))
        if srv.fixed_port:
            port = free_port()
            proc = Proc(srv.argv(mode, port), SERVER_CPU)
            if not wait_bound(port, 10):
                proc.end()
                return f"{srv.name} did not bind 127.0.0.1:{port}"
            return proc, port
        proc = Proc(srv.argv(mode, 0), SERVER_CPU)
        line = proc.wait_line("READY ", 20)
        if line is None:
            proc.end()
            return f"{srv.name} did not start (no READY line)"
        return proc, int(line)

    def stop_server(self, srv: Server, proc: Proc) -> dict[str, Any] | None:
        """SIGTERM, then what the server says it received: its RESULT line, `udpkit serve`'s
        summary ({} for socat, which says nothing; None if the server said nothing)."""
        if srv.cli:
            proc.signal(signal.SIGTERM)
            m = proc.wait_match(_SUMMARY.pattern, 10)
            return serve_summary(m.group(0)) if m else None
        proc.signal(signal.SIGTERM)
        return proc.result(10) if not srv.fixed_port else {}

    def generator(self, gen: str, port: int, size: int, flows: int = 1) -> list[str] | str:
        secs = f"{self.seconds:g}"
        if gen == "udpkit":
            return [
                PY,
                str(PEERS / "gen.py"),
                "--port",
                str(port),
                "--size",
                str(size),
                "--duration",
                secs,
                "--flows",
                str(flows),
            ]
        if gen == "sockperf":
            exe = shutil.which("sockperf")
            if exe is None:
                return "sockperf not installed"
            return [
                exe,
                "tp",
                "-i",
                "127.0.0.1",
                "-p",
                str(port),
                "-m",
                str(size),
                "-t",
                str(max(1, round(self.seconds))),
                "--mps=max",
                "--dontwarmup",
            ]
        if gen == "C-gso":
            if "gen_gso" not in self.cexe:
                return "no C compiler"
            return [str(self.cexe["gen_gso"]), str(port), str(size), secs]
        return f"unknown generator {gen!r}"

    def run_generator(self, argv: list[str]) -> dict[str, Any] | str:
        with started(argv, CLIENT_CPU) as g:
            if argv[1] == "tp":  # sockperf: parse its summary
                line = g.wait_line("sockperf: Total of ", self.case_timeout)
                if line is None:
                    return "sockperf printed no total"
                m = re.match(r"(\d+) messages sent in ([\d.]+) sec", line)
                if not m:
                    return f"cannot parse sockperf line {line!r}"
                return {"sent": int(m.group(1)), "seconds": float(m.group(2))}
            res = g.result(self.case_timeout)
            return res if res is not None else "generator printed no RESULT"

    def drain(self, srv: Server, size: int) -> dict[str, Any]:
        """Capacity from a full queue: how fast the server empties a backlog.

        The server is stopped (SIGSTOP) while the fastest generator fills a large
        receive buffer, then continued; the time until /proc/net/udp shows its queue
        empty gives datagrams per second with no generator in the way (on a 2-core
        box a live generator, doing the loopback's kernel work on its own core, is
        often slower than the servers it feeds).
        """
        global RCVBUF
        row: dict[str, Any] = {"case": "drain", "server": srv.name, "size": size}
        if srv.skip:
            return {**row, "skipped": srv.skip}
        gen = "C-gso" if "gen_gso" in self.cexe else "udpkit"
        old = RCVBUF
        RCVBUF = DRAIN_RCVBUF
        try:
            started_ = self.start_server(srv, "sink")
        finally:
            RCVBUF = old
        if isinstance(started_, str):
            return {**row, "skipped": started_}
        proc, port = started_
        try:
            os.killpg(proc.p.pid, signal.SIGSTOP)
            seconds, self.seconds = self.seconds, DRAIN_FILL_S
            try:
                argv = self.generator(gen, port, size)
            finally:
                self.seconds = seconds
            if isinstance(argv, str):
                return {**row, "skipped": argv}
            g = self.run_generator(argv)
            if isinstance(g, str):
                return {**row, "error": g}
            kern = proc_udp(port)
            if not kern:
                return {**row, "error": "no /proc/net/udp row for the server"}
            queued = int(g["sent"]) - kern["drops"]
            os.killpg(proc.p.pid, signal.SIGCONT)
            t0 = time.monotonic()
            while time.monotonic() - t0 < DRAIN_LIMIT_S:
                k = proc_udp(port)
                if not k or k["rx_queue"] == 0:
                    break
                time.sleep(0.0005)
            elapsed = time.monotonic() - t0
            left = (proc_udp(port) or {}).get("rx_queue", 0)
            res = self.stop_server(srv, proc)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.p.pid, signal.SIGCONT)
            proc.end()
        received = int(res["received"]) if res and "received" in res else queued
        row.update(
            generator=gen,
            queued=queued,
            received=received,
            drain_s=round(elapsed, 4),
            rate=received / elapsed if elapsed > 0 else None,
            unfinished=bool(left),
        )
        if srv.cli:
            row["serve"] = res
            if res is None:
                row["note"] = "no summary from udpkit serve: received = queued"
        if left:
            row["note"] = f"not empty after {DRAIN_LIMIT_S:g} s"
        return row

    def sink(self, srv: Server, gen: str, size: int) -> dict[str, Any]:
        row: dict[str, Any] = {"case": "sink", "server": srv.name, "generator": gen, "size": size}
        if srv.skip:
            return {**row, "skipped": srv.skip}
        started_ = self.start_server(srv, "sink")
        if isinstance(started_, str):
            return {**row, "skipped": started_}
        proc, port = started_
        try:
            argv = self.generator(gen, port, size)
            if isinstance(argv, str):
                return {**row, "skipped": argv}
            cpu0 = proc_cpu(proc.p.pid)
            g = self.run_generator(argv)
            if isinstance(g, str):
                return {**row, "error": g}
            time.sleep(DRAIN)
            cpu1 = proc_cpu(proc.p.pid)
            kern = proc_udp(port)
            res = self.stop_server(srv, proc)
        finally:
            proc.end()
        sent = int(g["sent"])
        secs = float(g["seconds"])
        drops = kern["drops"] if kern else None
        if res is None:
            what = "summary" if srv.cli else "RESULT"
            return {**row, "error": f"server printed no {what}", "sent": sent}
        if srv.fixed_port:
            # socat reports nothing: what the kernel did not drop reached it.
            received = sent - (drops or 0) - (1 if kern and kern["rx_queue"] else 0)
            row["received_derived"] = True
        else:
            received = int(res["received"])
        row.update(
            sent=sent,
            seconds=round(secs, 4),
            received=received,
            rate=received / secs,
            sent_rate=sent / secs,
            lost_pct=100.0 * (sent - received) / sent if sent else 0.0,
            kernel_drops=drops,
        )
        if cpu0 is not None and cpu1 is not None and cpu1 > cpu0:
            # Datagrams per second of the server's own CPU time: what it could take if
            # the generator were not the limit (the generator, on one core, often is).
            row["server_cpu_s"] = round(cpu1 - cpu0, 3)
            row["per_cpu_s"] = received / (cpu1 - cpu0)
        if "stats" in res:
            st = res["stats"]
            kd = st.get("kernel_drops")
            row["engine"] = st
            # Every datagram sent is received, truncated-and-counted, or a counted kernel drop.
            row["unaccounted"] = sent - st["rx_datagrams"] - (kd if kd is not None else 0)
        if srv.cli:
            # udpkit serve's own summary: received + kernel drops must make up what was sent.
            row["serve"] = res
            if res.get("kernel_drops") is not None:
                row["unaccounted"] = sent - received - res["kernel_drops"]
        return row

    def echo(
        self, srv: Server, window: int, size: int = 64, *, busy_client: bool = True
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "case": "echo",
            "server": srv.name,
            "window": window,
            "size": size,
            "client": "busy" if busy_client else "sleeping",
        }
        if srv.skip:
            return {**row, "skipped": srv.skip}
        if "echo_client" not in self.cexe:
            return {**row, "skipped": "no C compiler for the echo client"}
        started_ = self.start_server(srv, "echo")
        if isinstance(started_, str):
            return {**row, "skipped": started_}
        proc, port = started_
        try:
            argv = [
                str(self.cexe["echo_client"]),
                "127.0.0.1",
                str(port),
                str(window),
                f"{self.seconds:g}",
                str(size),
                "1" if busy_client else "0",
            ]
            with started(argv, CLIENT_CPU) as c:
                res = c.result(self.case_timeout)
            sres = self.stop_server(srv, proc)
        finally:
            proc.end()
        if res is None:
            return {**row, "error": "echo client printed no RESULT"}
        row.update(res)
        if sres and "stats" in sres:
            row["engine"] = sres["stats"]
        if srv.cli and sres:
            row["serve"] = sres
        return row

    def workers(self, n: int, size: int) -> dict[str, Any]:
        row: dict[str, Any] = {
            "case": "workers",
            "server": f"udpkit x{n}",
            "workers": n,
            "size": size,
            "generator": "udpkit",
        }
        help_ = subprocess.run(
            [PY, "-m", "udpkit", "serve", "--help"],
            capture_output=True,
            env=_env(),
            timeout=30,
            check=False,
            cwd=str(ROOT),
        )
        text = help_.stdout.decode(errors="replace")
        if "--workers" not in text or "--quiet" not in text:
            return {**row, "skipped": "udpkit serve has no --workers/--quiet yet"}
        port = free_port()
        argv = [
            PY,
            "-m",
            "udpkit",
            "serve",
            "--quiet",
            "--no-reply",
            "--workers",
            str(n),
            "127.0.0.1",
            str(port),
        ]
        # Workers are not pinned: they share both cores with the generator.
        proc = Proc(argv, None, stderr_pipe=True)
        try:
            if not wait_bound(port, 10):
                return {**row, "skipped": "udpkit serve did not bind"}
            # Let every worker bind before load (SO_REUSEPORT hashes only among bound ones).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                k = proc_udp(port)
                if k and k["sockets"] >= n:
                    break
                time.sleep(0.05)
            g = self.run_generator(
                [
                    PY,
                    str(PEERS / "gen.py"),
                    "--port",
                    str(port),
                    "--size",
                    str(size),
                    "--duration",
                    f"{self.seconds:g}",
                    "--flows",
                    "8",
                ]
            )
            if isinstance(g, str):
                return {**row, "error": g}
            time.sleep(DRAIN)
            kern = proc_udp(port)
            proc.signal(signal.SIGINT)
            err = proc.stderr_text(15)
        finally:
            proc.end()
        nums = _summary_numbers(err)
        received = nums.get("received")
        sent = int(g["sent"])
        secs = float(g["seconds"])
        row.update(
            sent=sent,
            seconds=round(secs, 4),
            summary=err.strip()[-2000:],
            kernel_drops=kern["drops"] if kern else None,
        )
        if received is None:
            return {**row, "error": "no received count in the serve summary"}
        row.update(
            received=received,
            rate=received / secs,
            lost_pct=100.0 * (sent - received) / sent if sent else 0.0,
        )
        if "dropped" in nums:
            row["unaccounted"] = sent - received - nums["dropped"]
        return row


def _summary_numbers(text: str) -> dict[str, int]:
    """Pull 'received N' / 'N received' and kernel drops out of serve's final summary."""
    out: dict[str, int] = {}
    for key, pats in {
        "received": [
            r"(\d[\d,]*)\s+datagrams\b",
            r"(\d[\d,]*)\s+(?:datagrams?\s+)?received",
            r"received[:=\s]+(\d[\d,]*)",
            r"rx_datagrams[\"':=\s]+(\d[\d,]*)",
        ],
        "dropped": [
            r"(\d[\d,]*)\s+(?:dropped|kernel drops?)",
            r"kernel[_ ]drops[\"':=\s]+(\d[\d,]*)",
            r"dropped(?: by the kernel)?[:=\s]+(\d[\d,]*)",
        ],
    }.items():
        for pat in pats:
            m = re.search(pat, text, re.IGNORECASE)
            if m:
                out[key] = int(m.group(1).replace(",", ""))
                break
    return out


# -- relay and bench (issue 4): the two side-by-side scripts, each as a hard-timed child ---


def _child_output(argv: list[str], timeout: float) -> tuple[str, str | None]:
    """Run ``argv`` in its own session; its stdout, or why not.  The group is ended by PID."""
    proc = Proc(argv, None)
    out = b""
    why = None
    try:
        assert proc.p.stdout is not None
        fd = proc.p.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                why = f"timed out after {timeout:g} s"
                break
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                out += chunk
        if why is None and proc.p.wait(GRACE) != 0:
            why = f"exit code {proc.p.returncode}"
    except subprocess.TimeoutExpired:
        why = "did not exit after closing its output"
    finally:
        proc.end()  # SIGTERM then SIGKILL to the group: its relays and sinks too
    return out.decode(errors="replace"), why


def relay_case(seconds: float, smoke: bool) -> list[dict[str, Any]]:
    """``benchmarks/relay_bench.py --json``: udpkit relay and socat, forwarding and RTT."""
    argv = [PY, str(HERE / "relay_bench.py"), "--json", "--duration", f"{seconds:g}"]
    if smoke:
        argv += ["--pings", "300"]
    text, why = _child_output(argv, timeout=3 * seconds + 60)
    if why is not None:
        return [{"case": "relay", "server": "udpkit", "error": f"relay_bench.py {why}"}]
    try:
        doc = json.loads(text)
        rows = []
        for k, fwd in doc["forward"].items():
            rows.append(
                {
                    "case": "relay",
                    "server": k,
                    "rate": fwd["forwarded_per_s"],
                    "sent_rate": fwd["sent_per_s"],
                    "rtt_p50_us": doc["rtt"][k]["p50_us"],
                    "added_p50_us": doc["added_rtt_p50_us"][k],
                    "direct_p50_us": doc["rtt_direct"]["p50_us"],
                }
            )
        rows += [
            {"case": "relay", "server": k, "skipped": v} for k, v in doc.get("skipped", {}).items()
        ]
        if "rate_ratio_udpkit_over_socat" in doc:
            rows[0]["rate_ratio_udpkit_over_socat"] = doc["rate_ratio_udpkit_over_socat"]
    except (ValueError, KeyError, TypeError) as exc:
        return [{"case": "relay", "server": "udpkit", "error": f"bad JSON ({exc}): {text[-200:]}"}]
    return rows


def bench_case(seconds: float) -> list[dict[str, Any]]:
    """``benchmarks/bench_vs_iperf.py``: bench's own top rate at 64 B next to iperf3's."""
    with tempfile.TemporaryDirectory(prefix="udpkit-bvi-") as tmp:
        out = Path(tmp) / "bvi.json"
        argv = [PY, str(HERE / "bench_vs_iperf.py"), "--seconds", f"{seconds:g}", "--json"]
        _text, why = _child_output([*argv, str(out)], timeout=2 * seconds + 90)
        if why is not None:
            return [{"case": "bench", "server": "udpkit bench", "error": f"bench_vs_iperf {why}"}]
        try:
            doc = json.loads(out.read_text())
        except (OSError, ValueError) as exc:
            return [{"case": "bench", "server": "udpkit bench", "error": f"no JSON: {exc}"}]
    rows = []
    for r in doc["rows"]:
        name = "iperf3" if r["tool"].startswith("iperf3") else "udpkit bench"
        row: dict[str, Any] = {"case": "bench", "server": name, "size": 64}
        for k in ("skipped", "error"):
            if k in r:
                row[k] = r[k]
        if "receive_datagrams_per_s" in r:
            row.update(
                rate=r["receive_datagrams_per_s"],
                sent_rate=r["send_datagrams_per_s"],
                lost=r["lost_datagrams"],
                unexplained=r["path_lost_datagrams"],
            )
        rows.append(row)
    return rows


# -- report ------------------------------------------------------------------------------


def _median_row(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    ok = [r for r in rows if key in r]
    if not ok:
        return rows[0]
    ok.sort(key=lambda r: r[key])
    mid = dict(ok[len(ok) // 2])
    if len(ok) > 1:
        mid["runs"] = [r[key] for r in ok]
    return mid


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e6:.2f} M/s" if x >= 1e6 else f"{x / 1e3:.0f} k/s"


def default_json() -> Path:
    """Where a run saves its figures unless ``--json`` says: the user's cache, not the tree."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "udpkit" / "bench" / "latest.json"


def _find(results: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    for r in results:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def ratios(results: list[dict[str, Any]], sizes: Sequence[int]) -> list[dict[str, Any]]:
    """The issue's targets, each as a measured ratio with its verdict."""
    out: list[dict[str, Any]] = []

    def add(
        label: str,
        a: dict[str, Any] | None,
        b: dict[str, Any] | None,
        key: str,
        target: float,
        *,
        higher: bool = True,
        invert: bool = False,
    ) -> None:
        if a is None or b is None or key not in a or key not in b or not b[key] or not a[key]:
            out.append({"ratio": label, "value": None, "target": target, "met": None})
            return
        note = ""
        if key == "rate" and a.get("per_cpu_s") and b.get("per_cpu_s"):
            # A server that keeps up with the generator (one core, often the limit)
            # idles part of the time, so its received rate understates it. Datagrams per
            # second of its own CPU time is what it could take: compare that.
            note = f"per server CPU-second; received-rate ratio {a['rate'] / b['rate']:.2f}x"
            key = "per_cpu_s"
        # The verdict is on the ratio as printed (0.998 is "1.00x", and met against 1x).
        v = round((b[key] / a[key]) if invert else (a[key] / b[key]), 2)
        met = v >= target if higher else v <= target
        x: dict[str, Any] = {"ratio": label, "value": round(v, 2), "target": target, "met": met}
        # With --repeat: the ratio in each pass (the passes are interleaved, so a pass's two
        # figures were measured minutes apart at most), and in how many the target held.
        pa, pb = a.get("passes"), b.get("passes")
        if pa and pb and len(pa) == len(pb):
            per = [
                (q[key] / p[key]) if invert else (p[key] / q[key])
                for p, q in zip(pa, pb, strict=True)
                if p.get(key) and q.get(key)
            ]
            if len(per) > 1:
                per = [round(r, 2) for r in per]
                held = sum((r >= target) if higher else (r <= target) for r in per)
                x["passes"] = [round(r, 2) for r in per]
                spread = f"passes {min(per):.2f}-{max(per):.2f}x, met in {held}/{len(per)}"
                note = f"{spread}; {note}" if note else spread
        if note:
            x["note"] = note
        out.append(x)

    # The fastest generator that ran: a slower one leaves every fast server idle part of
    # the time, and the ratios then measure the generator.
    gens = {r.get("generator") for r in results if r["case"] == "sink" and "rate" in r}
    gen = next((g for g in ("C-gso", "udpkit", "sockperf") if g in gens), "udpkit")
    # Capacity: each server empties the same full queue, no generator in the way.
    for size in sizes:
        u = _find(results, case="drain", server="udpkit", size=size)
        for peer, tgt in (("C-mmsg", 0.9), ("textbook", 1.5), ("uvloop", 1.5), ("asyncio", 15)):
            p = _find(results, case="drain", server=peer, size=size)
            add(f"capacity {size}B udpkit/{peer} (drain)", u, p, "rate", tgt)
        add(
            f"capacity {size}B udpkit-gro/C-gro (drain)",
            _find(results, case="drain", server="udpkit-gro", size=size),
            _find(results, case="drain", server="C-gro", size=size),
            "rate",
            0.5,
        )
    # Live sink: what each server took from a running generator (often generator-bound).
    for size in sizes:
        u = _find(results, case="sink", server="udpkit", generator=gen, size=size)
        for peer, tgt in (("C-mmsg", 0.9), ("textbook", 1.5), ("uvloop", 1.5), ("asyncio", 15)):
            p = _find(results, case="sink", server=peer, generator=gen, size=size)
            add(f"sink {size}B udpkit/{peer} [{gen}]", u, p, "rate", tgt)
        ug = _find(results, case="sink", server="udpkit-gro", generator=gen, size=size)
        cg = _find(results, case="sink", server="C-gro", generator=gen, size=size)
        add(f"sink {size}B udpkit-gro/C-gro [{gen}]", ug, cg, "rate", 0.5)
    u = _find(results, case="echo", server="udpkit", window=32, client="busy")
    for peer, tgt in (("C-mmsg", 0.85), ("uvloop", 1.5), ("asyncio", 5)):
        add(
            f"echo w32 udpkit/{peer}",
            u,
            _find(results, case="echo", server=peer, window=32, client="busy"),
            "rate",
            tgt,
        )
    for size in sizes:  # issue 6: udpkit.aio against asyncio's DatagramProtocol
        a = _find(results, case="sink", server="udpkit-aio", generator=gen, size=size)
        p = _find(results, case="sink", server="asyncio", generator=gen, size=size)
        add(f"sink {size}B aio vs asyncio [{gen}]", a, p, "rate", 2)
    for window in (1, 32):
        p = _find(results, case="echo", server="asyncio", window=window, client="busy")
        variants = ["udpkit-aio", "udpkit-aio-server"]
        if window == 1:  # busy polling only pays with one request outstanding
            variants += ["udpkit-aio-busy", "udpkit-aio-server-busy"]
        for x in variants:
            a = _find(results, case="echo", server=x, window=window, client="busy")
            add(f"echo w{window} {x.replace('udpkit-', '')} vs asyncio", a, p, "rate", 2)
    ub = _find(results, case="echo", server="udpkit-busy", window=1, client="busy")
    add(
        "ping-pong p50 udpkit-busy/C-busy (<=)",
        ub,
        _find(results, case="echo", server="C-busy", window=1, client="busy"),
        "p50_us",
        2.0,
        higher=False,
    )
    # Two readings of ">= 3x better than every Python peer": each peer as it runs
    # (nothing spins, as in the baseline), and each peer with the same
    # busy-polling client udpkit-busy gets (only the server differs).
    for client, label in (("sleeping", "as it runs"), ("busy", "busy client for both")):
        for peer in ("textbook", "asyncio", "uvloop", "trio", "udpkit"):
            add(
                f"ping-pong p50 {peer}/udpkit-busy ({label})",
                ub,
                _find(results, case="echo", server=peer, window=1, client=client),
                "p50_us",
                3.0,
                invert=True,
            )
    # issue 4: relay >= 1.5x socat forwarding, added RTT p50 <= socat's; bench >= iperf3.
    ur, sr = (
        _find(results, case="relay", server="udpkit"),
        _find(results, case="relay", server="socat"),
    )
    add("relay forwarded/s udpkit/socat", ur, sr, "rate", 1.5)
    if ur is not None and sr is not None and "rtt_p50_us" in ur and "rtt_p50_us" in sr:
        # Same direct baseline for both, so added(udpkit) <= added(socat) exactly when
        # RTT(udpkit) <= RTT(socat): the ratio of whole RTTs stays meaningful where an
        # added figure is ~0 or negative (noise).
        v = ur["rtt_p50_us"] / sr["rtt_p50_us"]
        out.append(
            {
                "ratio": "relay RTT p50 udpkit/socat (<=)",
                "value": round(v, 2),
                "target": 1.0,
                "met": v <= 1.0,
                "note": f"added p50 udpkit {ur['added_p50_us']:.1f} us, "
                f"socat {sr['added_p50_us']:.1f} us",
            }
        )
    else:
        out.append(
            {"ratio": "relay RTT p50 udpkit/socat (<=)", "value": None, "target": 1.0, "met": None}
        )

    # issue 10: the product as users start it (`udpkit serve`), all in this one run.
    def echo_row(server: str, window: int) -> dict[str, Any] | None:
        return _find(results, case="echo", server=server, window=window, client="busy")

    def drain_row(server: str, size: int) -> dict[str, Any] | None:
        return _find(results, case="drain", server=server, size=size)

    se = echo_row("serve-echo", 32)
    for peer, tgt in (("C-mmsg", 0.9), ("textbook", 1.3), ("uvloop", 1.5)):
        add(f"echo w32 serve-echo/{peer}", se, echo_row(peer, 32), "rate", tgt)
    add(
        "ping-pong p50 serve-busy/C-busy (<=)",
        echo_row("serve-busy", 1),
        echo_row("C-busy", 1),
        "p50_us",
        1.5,
        higher=False,
    )
    # A Python handler per datagram (a Datagram built, the handler called, for each).
    add(
        "echo w32 udpkit/textbook (Python handler)",
        echo_row("udpkit", 32),
        echo_row("textbook", 32),
        "rate",
        1.3,
    )
    for size in sizes:
        add(
            f"capacity {size}B udpkit-handler/textbook (drain)",
            drain_row("udpkit-handler", size),
            drain_row("textbook", size),
            "rate",
            1.3,
        )
    for size in sizes:  # counting only
        add(
            f"capacity {size}B serve-quiet/C-mmsg (drain)",
            drain_row("serve-quiet", size),
            drain_row("C-mmsg", size),
            "rate",
            1.0,
        )
    for size in sizes:
        gro = next(
            (n for n in ("serve-gro", "udpkit-gro") if drain_row(n, size) is not None), "serve-gro"
        )
        add(
            f"capacity {size}B {gro}/C-gro (drain)",
            drain_row(gro, size),
            drain_row("C-gro", size),
            "rate",
            0.9,
        )
    ub, ib = (_find(results, case="bench", server=x) for x in ("udpkit bench", "iperf3"))
    add("bench 64B received/s bench/iperf3", ub, ib, "rate", 1.5)
    if out[-1]["value"] is not None and ub is not None:
        unexplained = ub.get("unexplained")
        out[-1]["note"] = f"bench lost on the path {unexplained} (target 0)"
        out[-1]["met"] = bool(out[-1]["met"]) and unexplained == 0
    return out


def _why(r: dict[str, Any]) -> str:
    return f"skipped: {r['skipped']}" if "skipped" in r else f"ERROR: {r['error']}"


def print_machine(mach: dict[str, Any], stream: Any = None) -> None:
    """The machine, the kernel and what one system call costs on it: the top of the report."""
    out = stream or sys.stdout
    w = out.write
    guest = f", {mach['hypervisor']} guest" if mach.get("hypervisor") else ""
    w(
        f"\nMACHINE  {mach.get('cpu_model', '?')} ({mach.get('cpu_vendor', '?')}), "
        f"{mach.get('cpus')} CPUs{guest}; kernel {mach.get('kernel', '?')}; "
        f"Python {mach.get('python')}{'; git ' + mach['git'] if mach.get('git') else ''}\n"
    )
    la = mach.get("loadavg_at_start")
    if la and la[0] >= 0.5:
        w(
            f"  load average {la[0]:.2f} before the first case: other work shares this "
            "machine and skews the figures\n"
        )
    other = mach.get("other_load")
    if other and other["share"] >= 0.05:
        w(
            f"  other work used {other['cpu_s']:g} CPU-s during the run "
            f"({100 * other['share']:.0f}% of the machine): the figures are skewed\n"
        )
    if other and other.get("steal_share", 0) >= 0.02:
        w(
            f"  the hypervisor took {other['steal_s']:g} CPU-s from this guest during the run "
            f"({100 * other['steal_share']:.0f}%): the figures are skewed\n"
        )
    if mach.get("mitigations"):
        w("  mitigations: " + "; ".join(f"{k}: {v}" for k, v in mach["mitigations"].items()) + "\n")
    sc = mach.get("syscall_cost") or {}
    py, c = sc.get("python"), sc.get("c")
    where = f"core {sc['cpu']}, " if sc.get("cpu") is not None else ""
    w(f"SYSCALL COST ({where}ns per call, median of 5 loops)\n")
    if isinstance(py, dict) and "getppid_ns" in py:
        w(
            f"  Python  os.getppid() {py['getppid_ns']:7.1f}   "
            f"sock.recvfrom(2048) -> EAGAIN {py['recvfrom_eagain_ns']:7.1f}   "
            f"empty loop {py['loop_ns']:5.1f}   C builtin call {py['builtin_call_ns']:5.1f}\n"
        )
    else:
        w(f"  Python  {py if isinstance(py, str) else 'not measured'}\n")
    if isinstance(c, dict) and "getppid_ns" in c:
        w(
            f"  C       getppid()    {c['getppid_ns']:7.1f}   "
            f"recvfrom(MSG_DONTWAIT) -> EAGAIN {c['recvfrom_eagain_ns']:7.1f}\n"
        )
    else:
        w(f"  C       {c if isinstance(c, str) else 'not measured'}\n")
    out.flush()


def print_report(
    results: list[dict[str, Any]], rat: list[dict[str, Any]], mach: dict[str, Any] | None = None
) -> None:
    w = sys.stdout.write
    if mach is not None:
        print_machine(mach)
    sinks = [r for r in results if r["case"] in ("sink", "workers")]
    if sinks:
        w("\nSINK (datagrams/s received; lost = (sent - received) / sent)\n")
        w(
            f"{'server':<17}{'gen':<9}{'size':>5}  {'received':>11}  {'sent':>11}  "
            f"{'lost':>6}  {'sent exactly':>12}  {'k.drops':>9}  {'per CPU-s':>10}  note\n"
        )
        for r in sinks:
            head = f"{r['server']:<17}{r.get('generator', ''):<9}{r['size']:>5}  "
            if "skipped" in r or "error" in r:
                w(head + _why(r) + "\n")
                continue
            note = ""
            if r["server"].endswith("gro"):
                note = "GRO: kernel drops count buffers, not datagrams"
            if r.get("received_derived"):
                note = "received = sent - kernel drops"
            if "unaccounted" in r:
                note = f"unaccounted {r['unaccounted']}" + (f"; {note}" if note else "")
            kd = r.get("kernel_drops")
            sent_rate = r["sent"] / r["seconds"]
            w(
                head + f"{_fmt_rate(r['rate']):>11}  {_fmt_rate(sent_rate):>11}  "
                f"{r['lost_pct']:>5.1f}%  {r['sent']:>12}  {'-' if kd is None else kd:>9}  "
                f"{_fmt_rate(r.get('per_cpu_s')):>10}  {note}\n"
            )
    drains = [r for r in results if r["case"] == "drain"]
    if drains:
        w(
            "\nDRAIN (capacity: datagrams/s to empty a full queue; "
            "the server was stopped while it filled)\n"
        )
        w(
            f"{'server':<18}{'size':>6}  {'queued':>10}  {'received':>10}  {'seconds':>8}  "
            f"{'rate':>10}  note\n"
        )
        for r in drains:
            head = f"{r['server']:<18}{r['size']:>6}  "
            if "skipped" in r or "error" in r:
                w(head + _why(r) + "\n")
                continue
            w(
                head + f"{r['queued']:>10}  {r['received']:>10}  {r['drain_s']:>8.3f}  "
                f"{_fmt_rate(r['rate']):>10}  {r.get('note', '')}\n"
            )
    echoes = [r for r in results if r["case"] == "echo"]
    if echoes:
        w("\nECHO (C client on one socket, W requests outstanding; client busy-polls or sleeps)\n")
        w(
            f"{'server':<17}{'W':>3}  {'client':>8}  {'rate':>10}  {'p50 us':>8}  {'p99 us':>8}  "
            f"{'p99.9 us':>9}  {'mean us':>8}  {'lost':>7}  note\n"
        )
        for r in echoes:
            head = f"{r['server']:<17}{r['window']:>3}  {r.get('client', 'busy'):>8}  "
            if "skipped" in r or "error" in r:
                w(head + _why(r) + "\n")
                continue
            note = f"malformed {r['malformed']}" if r.get("malformed") else ""
            w(
                head + f"{_fmt_rate(r['rate']):>10}  {r['p50_us']:>8.1f}  {r['p99_us']:>8.1f}  "
                f"{r['p999_us']:>9.1f}  {r['mean_us']:>8.1f}  {r['lost']:>7}  {note}\n"
            )
    others = [r for r in results if r["case"] in ("relay", "bench")]
    if others:
        w("\nRELAY (forwarded/s into a udpkit sink; RTT p50 one ping at a time) and BENCH (64 B)\n")
        for r in others:
            head = f"{r['case']:<6}{r['server']:<14}"
            if "skipped" in r or "error" in r:
                w(head + _why(r) + "\n")
            elif r["case"] == "relay":
                w(
                    head
                    + f"forwarded {_fmt_rate(r['rate']):>10}  sent {_fmt_rate(r['sent_rate']):>10}"
                    f"  RTT p50 {r['rtt_p50_us']:.1f} us (added {r['added_p50_us']:.1f} us)\n"
                )
            else:
                w(
                    head
                    + f"received {_fmt_rate(r['rate']):>10}  sent {_fmt_rate(r['sent_rate']):>10}"
                    f"  lost {r['lost']}  unexplained {r['unexplained']}\n"
                )
    if rat:
        w("\nRATIOS (targets from issues 3, 4, 6 and 10; every figure from this run)\n")
        for x in rat:
            v = "n/a (missing)" if x["value"] is None else f"{x['value']:.2f}x"
            verdict = {True: "met", False: "NOT met", None: ""}[x["met"]]
            cmp = "<=" if "(<=)" in x["ratio"] else ">="
            w(
                f"  {x['ratio']:<46} {v:>14}  target {cmp} {x['target']:g}x  {verdict}"
                f"{'  (' + x['note'] + ')' if x.get('note') else ''}\n"
            )
    sys.stdout.flush()


# Measured in a child Python (the servers' interpreter), pinned to the servers' core:
# ns per loop iteration, per os.getppid() (a system call that does nothing), per
# non-blocking recvfrom on an empty UDP socket (the call a server makes when its queue is
# empty: a system call that fails with EAGAIN, raised as BlockingIOError), and per call of
# a C builtin that makes no system call.  Each is the median of 5 loops of N.
_SYSCOST_PY = r"""
import json, os, socket, statistics, sys, time
N = int(sys.argv[1])
def per(fn):
    runs = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        fn()
        runs.append((time.perf_counter_ns() - t0) / N)
    return round(statistics.median(runs), 1)
def loop():
    for _ in range(N):
        pass
def getppid(g=os.getppid):
    for _ in range(N):
        g()
def builtin(f=abs):
    for _ in range(N):
        f(0)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.setblocking(False)
def recvfrom(r=s.recvfrom):
    for _ in range(N):
        try:
            r(2048)
        except BlockingIOError:
            pass
out = {"loop_ns": per(loop), "getppid_ns": per(getppid), "builtin_call_ns": per(builtin),
       "recvfrom_eagain_ns": per(recvfrom), "iterations": N}
print("RESULT " + json.dumps(out), flush=True)
"""
SYSCOST_N = 200_000


def syscall_cost(cexe: dict[str, Path], cskip: str | None) -> dict[str, Any]:
    """What one system call costs here, from Python and (with a compiler) from C."""
    cpu = SERVER_CPU if SERVER_CPU in _cpus() else None
    out: dict[str, Any] = {"cpu": cpu}
    runs: list[tuple[str, list[str]]] = [("python", [PY, "-c", _SYSCOST_PY, str(SYSCOST_N)])]
    if "syscost" in cexe:
        runs.append(("c", [str(cexe["syscost"]), str(SYSCOST_N)]))
    else:
        out["c"] = f"skipped: {cskip or 'syscost.c not built'}"
    for key, argv in runs:
        with started(argv, cpu) as proc:
            res = proc.result(60)
        out[key] = res if res is not None else "no RESULT (timed out or failed)"
    return out


def _cpu_now() -> tuple[float, float, float] | None:
    """(CPU-seconds the whole machine has been busy, CPU-seconds of this process and its
    reaped children, CPU-seconds stolen by the hypervisor): over a run, busy minus own is
    what other work on the machine used, and steal what other guests took from it."""
    line = (_read("/proc/stat") or "").split("\n", 1)[0].split()
    if len(line) < 9 or line[0] != "cpu":
        return None
    # user, nice, system, irq, softirq: a task's own times include the softirq work done
    # in its context (the loopback's receive path), so the machine's must too.
    busy = sum(int(line[i]) for i in (1, 2, 3, 6, 7)) / _TICK
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system, int(line[8]) / _TICK


def other_load(before: tuple[float, float, float] | None, seconds: float) -> dict[str, Any] | None:
    """CPU time the machine spent on work that is not this run (another benchmark, a test
    suite), over ``seconds`` of wall time: a share of more than a few % skews the figures.
    /proc/stat is sampled at each tick while a task's times are exact, so over a long run
    the two differ by a few %; ``machine_busy_s`` and ``own_s`` are kept to judge by."""
    after = _cpu_now()
    if before is None or after is None or seconds <= 0:
        return None
    busy, own, steal = (a - b for a, b in zip(after, before, strict=True))
    other = max(0.0, busy - own)
    ncpu = os.cpu_count() or 1
    return {
        "cpu_s": round(other, 1),
        "share": round(other / (seconds * ncpu), 3),
        "machine_busy_s": round(busy, 1),
        "own_s": round(own, 1),
        "steal_s": round(steal, 1),
        "steal_share": round(steal / (seconds * ncpu), 3),
    }


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def machine(syscost: dict[str, Any] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "affinity": sorted(_cpus()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rcvbuf_asked": RCVBUF,
    }
    cpuinfo = _read("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and "cpu_model" not in info:
            info["cpu_model"] = value.strip()
        elif key == "vendor_id" and "cpu_vendor" not in info:
            info["cpu_vendor"] = value.strip()
        elif key == "flags" and "hypervisor" not in info:
            info["hypervisor"] = "hypervisor" in value.split()
        elif key == "" and "cpu_model" in info:
            break  # the first processor is enough
    lscpu = shutil.which("lscpu")
    if lscpu:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            text = subprocess.run(
                [lscpu],
                capture_output=True,
                timeout=10,
                check=False,
                env={**os.environ, "LC_ALL": "C"},
            ).stdout.decode(errors="replace")
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "Model name" and "cpu_model" not in info:
                    info["cpu_model"] = value.strip()
                elif key.strip() == "Hypervisor vendor" and info.get("hypervisor"):
                    info["hypervisor"] = value.strip()
    if info.get("hypervisor") is True:
        info["hypervisor"] = "virtual machine"
    # The mitigations that make a kernel entry dearer, as the kernel reports them.
    vuln = Path("/sys/devices/system/cpu/vulnerabilities")
    mit = {}
    for name in ("meltdown", "spectre_v2", "retbleed", "spec_rstack_overflow", "mds"):
        v = _read(str(vuln / name))
        if v and v != "Not affected":
            mit[name] = v
    if mit:
        info["mitigations"] = mit
    # Other work on the machine (a test suite, a build) skews every figure: the load
    # average before the first case says whether there was any.
    load = (_read("/proc/loadavg") or "").split()
    if len(load) >= 3:
        info["loadavg_at_start"] = [float(x) for x in load[:3]]
    for k in ("rmem_max", "rmem_default"):
        v = _read(f"/proc/sys/net/core/{k}")
        if v is not None and v.isdigit():
            info[k] = int(v)
    if syscost is not None:
        info["syscall_cost"] = syscost
    # Which code was measured: src/ may hold uncommitted changes.
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        if head.returncode == 0:
            info["git"] = head.stdout.decode().strip() + (
                " + uncommitted src/ changes" if dirty.stdout.strip() else ""
            )
    return info


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=None, help="per case (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="1 s per case")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a subset (udpkit, textbook, C) at 0.5 s per case, for the test suite",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per case; the median is kept")
    p.add_argument(
        "--only",
        default="drain,sink,echo,workers,relay,bench",
        help="comma list of drain,sink,echo,workers,relay,bench",
    )
    p.add_argument(
        "--servers",
        default="",
        help="comma list of server names (default: all), e.g.\n"
        "serve-echo,serve-busy,serve-quiet,serve-gro,udpkit,textbook,uvloop,C-mmsg,C-busy",
    )
    p.add_argument(
        "--generators",
        default="udpkit,sockperf,C-gso",
        help="sink load generators: udpkit (send_batch, GSO), sockperf (sendto),\n"
        "C-gso (C sendmmsg+GSO, the fastest); default all three",
    )
    p.add_argument("--sizes", default="64,1400")
    p.add_argument(
        "--json",
        default=str(default_json()),
        help="where to save the figures (default: %(default)s, outside the repository, so a\n"
        "run never dirties the tree; benchmarks/results/ holds the committed reference runs)",
    )
    args = p.parse_args(argv)
    seconds = args.seconds or (0.5 if args.smoke else 1.0 if args.quick else 3.0)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    cases = {"drain", "sink", "echo", "workers", "relay", "bench"}
    if only - cases:
        p.error(f"unknown case(s) {sorted(only - cases)}: choose from {', '.join(sorted(cases))}")
    sizes = [int(x) for x in args.sizes.split(",")]
    gens = [g for g in args.generators.split(",") if g]
    if args.smoke:
        gens = ["udpkit"]
    start = time.monotonic()
    cpu_before = _cpu_now()
    with tempfile.TemporaryDirectory(prefix="udpkit-bench-") as tmp:
        cexe, cskip = build_c(Path(tmp))
        srvs = servers(cexe, cskip)
        chosen = [x.strip() for x in args.servers.split(",") if x.strip()] or (
            ["udpkit", "serve-quiet", "serve-echo", "textbook", "C-mmsg", "C-busy"]
            if args.smoke
            else list(srvs)
        )
        unknown = [x for x in chosen if x not in srvs]
        if unknown:
            p.error(f"unknown server(s) {unknown}: choose from {', '.join(srvs)}")
        # Before any load, on the servers' core: what one system call costs on this machine.
        mach = machine(syscall_cost(cexe, cskip))
        print_machine(mach, sys.stderr)  # progress; the report repeats it at its top
        b = Bench(seconds=seconds, cexe=cexe, servers=srvs, case_timeout=seconds * 4 + 20)
        results: list[dict[str, Any]] = []

        tasks: list[tuple[Callable[[], dict[str, Any]], str]] = []

        def run(fn: Callable[[], dict[str, Any]], key: str) -> None:
            tasks.append((fn, key))

        if "sink" in only:
            for gen in gens:
                for size in sizes:
                    for name in chosen:
                        if "sink" in srvs[name].modes:
                            run(functools.partial(b.sink, srvs[name], gen, size), "rate")
        if "drain" in only:
            for size in sizes:
                for name in chosen:
                    if "sink" in srvs[name].modes and name != "socat":
                        run(functools.partial(b.drain, srvs[name], size), "rate")
        if "echo" in only:
            for window in (1, 32):
                for name in chosen:
                    if "echo" in srvs[name].modes:
                        run(functools.partial(b.echo, srvs[name], window), "rate")
            # Ping-pong as the textbook runs it: the client sleeps in the kernel between
            # replies, as every peer without a busy-poll mode does (the baseline).
            for name in chosen:
                if "echo" in srvs[name].modes and "busy" not in name:
                    run(
                        functools.partial(b.echo, srvs[name], 1, busy_client=False),
                        "rate",
                    )
        if "workers" in only and not args.smoke:
            for n in (1, 2):
                run(functools.partial(b.workers, n, 64), "rate")
        # --repeat N: N passes over every case, interleaved (not N runs of one case back to
        # back), so a drift in the machine's speed over minutes reaches every server alike.
        # Each row is the median of its N runs; "passes" keeps them in pass order, and the
        # ratio lines give the ratio pass by pass too.
        repeat = max(1, args.repeat)
        runs: list[list[dict[str, Any]]] = [[] for _ in tasks]
        for n in range(repeat):
            for i, (fn, _key) in enumerate(tasks):
                row = fn()
                runs[i].append(row)
                label = " ".join(
                    str(row.get(k, "")) for k in ("case", "server", "generator", "size", "window")
                )
                if row.get("client") == "sleeping":
                    label += " sleeping"
                status = row.get("skipped") or row.get("error") or _fmt_rate(row.get("rate"))
                pass_ = f"[{n + 1}/{repeat}] " if repeat > 1 else ""
                print(f"  {pass_}{label.strip():<45} {status}", file=sys.stderr, flush=True)
        for rows, (_fn, key) in zip(runs, tasks, strict=True):
            row = _median_row(rows, key)
            if len(rows) > 1:
                row["passes"] = [
                    {k: r[k] for k in ("rate", "p50_us", "per_cpu_s") if k in r} for r in rows
                ]
            results.append(row)
        extra: dict[str, Callable[[], list[dict[str, Any]]]] = {
            "relay": functools.partial(relay_case, seconds, args.smoke),
            "bench": functools.partial(bench_case, seconds),
        }
        for case, rows_of in extra.items():
            if case in only:
                for row in rows_of():
                    results.append(row)
                    status = row.get("skipped") or row.get("error") or _fmt_rate(row.get("rate"))
                    print(
                        f"  {case + ' ' + row['server']:<45} {status}", file=sys.stderr, flush=True
                    )
    other = other_load(cpu_before, time.monotonic() - start)
    if other is not None:
        mach["other_load"] = other
    rat = ratios(results, sizes)
    print_report(results, rat, mach)
    doc = {
        "machine": mach,
        "settings": {
            "seconds": seconds,
            "repeat": args.repeat,
            "sizes": sizes,
            "generators": gens,
            "smoke": args.smoke,
        },
        "results": results,
        "ratios": rat,
        "elapsed": round(time.monotonic() - start, 1),
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nsaved {out} ({doc['elapsed']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
