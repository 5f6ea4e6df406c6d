"""``udpkit bench``: the I/O around :mod:`udpkit._core.stats` and :mod:`udpkit._core.probe`.

The bench client is one thread and one loop: send what the schedule (``rate``)
or the window allows, read every reply that is queued (``recvmmsg`` batches on
Linux), and sleep in ``select`` until the next probe is due, a reply arrives or
an interval ends.  ``select`` sleeps with microsecond resolution, so pacing is
exact on average and probes due in the same wake-up (about 60 us of timer
slack) leave together in one ``sendmmsg``.

The far end, ``udpkit reflect``, is :class:`~udpkit._loops.reflect.Reflector`: it
echoes probes with a return sequence number and reports what it saw, so loss,
duplicates and reordering are known per direction.

Loss is split by where it happened (:func:`~udpkit._core.stats.split_loss`):
*sender* (numbered probes the sending kernel refused), *receiver kernel* (the
receiving socket's drop counter: the reflector's for the forward path, bench's
own for the return path) and *path* (the rest: lost in between).
"""

from __future__ import annotations

import contextlib
import errno
import math
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from udpkit._core.datagram import Peer
from udpkit._core.errors import ConnectionRefused, NetworkError, Timeout, UsageError
from udpkit._core.probe import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_PROBE_SIZE,
    VERSION,
    Kind,
    ProbeError,
    Report,
    build_report_request,
    parse_report_untrusted,
)
from udpkit._core.shortfall import RateShortfall, rate_shortfall
from udpkit._core.stats import IntervalMeter, IntervalRow, Jitter, LatencyHistogram, SequenceTracker
from udpkit._core.units import parse_probe_rate
from udpkit._loops.benchflow import BATCH, ProbeFlow
from udpkit._net.kernel import (
    UNANSWERED,
    clock_ns,
    errno_name,
    proc_drops,
)
from udpkit._net.mmsg import fast_path_available
from udpkit._net.sendmmsg import send_batch

__all__ = ["BenchConfig", "BenchResult", "FlowResult", "parse_bench_rate", "run_bench"]

_MAX_BURST = 1024  # most probes one flow sends per loop turn (the loop must still read)
_HELLO_TRIES = 5
_HELLO_WAIT = 0.3
# A stop (Ctrl-C) ends the send phase at once; the replies in flight and the far
# side's report still get these (seconds), so the figures of what ran are whole.
_STOP_POLL = 0.1  # longest sleep when a stop may come from another thread
_STOP_LINGER = 0.25
_STOP_REPORT = 0.5


def parse_bench_rate(text: str, size: int) -> float | None:
    """Parse ``bench --rate``: datagrams/s (``10k``, ``10kpps``), bits/s (``100Mbps``,
    ``1Gb/s``), bytes/s (``5MB/s``) of payload, or ``max``.

    The text is read by :func:`udpkit._core.units.parse_probe_rate` (k, M, G are
    powers of 1000; a bare ``100M`` is refused, naming ``-b 100M`` and
    ``100Mpps``).  Bits and bytes count UDP payload (``size`` per datagram), as
    iperf3's ``-b`` does.

    Returns:
        Datagrams per second, or ``None`` for ``max``.

    Raises:
        UsageError: anything else, or a rate that is not positive.
    """
    rate = parse_probe_rate(text)
    return None if rate.value == math.inf else rate.per_item(size)


@dataclass
class BenchConfig:
    """What to measure; see ``udpkit bench --help`` for each field's meaning.

    ``rate`` is datagrams/s for all flows together (``None``: as fast as possible),
    ``count`` probes per flow, ``window`` outstanding probes per flow
    (request/response), ``timeout`` how long an unanswered probe holds its
    window slot, ``linger`` the longest wait for late replies and reports.
    """

    host: str
    port: int | str
    family: int = socket.AF_UNSPEC
    size: int = 64
    rate: float | None = 1000.0
    duration: float | None = 10.0
    count: int | None = None
    window: int | None = None
    parallel: int = 1
    interval: float = 1.0
    one_way: bool = False
    timeout: float = 0.5
    linger: float = 1.0
    fast: bool | None = None
    iface: str | None = None  # multicast: the interface to send from
    ttl: int | None = None  # multicast: the hop limit

    def check(self) -> None:
        """Raise UsageError naming the first field out of range."""
        if not HEADER_SIZE <= self.size <= MAX_PROBE_SIZE:
            raise UsageError(
                f"invalid size {self.size!r}: must be {HEADER_SIZE}-{MAX_PROBE_SIZE} bytes "
                f"(a probe's header takes {HEADER_SIZE})"
            )
        if self.rate is not None and not self.rate > 0:
            raise UsageError(f"invalid rate {self.rate!r}: must be > 0 datagrams/s")
        if self.duration is not None and not 0 < self.duration <= 86400:
            raise UsageError(f"invalid duration {self.duration!r}: must be 0-86400 seconds")
        if self.count is not None and self.count < 1:
            raise UsageError(f"invalid count {self.count!r}: must be 1 or more probes")
        if self.duration is None and self.count is None:
            raise UsageError("give --duration or --count (or both): the run must end")
        if self.window is not None and not 1 <= self.window <= 65536:
            raise UsageError(f"invalid window {self.window!r}: must be 1-65536 probes")
        if self.window is not None and self.one_way:
            raise UsageError("--window needs replies: it cannot be combined with --one-way")
        if not 1 <= self.parallel <= 128:
            raise UsageError(f"invalid parallel {self.parallel!r}: must be 1-128 flows")
        if not 0.01 <= self.interval <= 3600:
            raise UsageError(f"invalid interval {self.interval!r}: must be 0.01-3600 seconds")
        if not 0.001 <= self.timeout <= 60:
            raise UsageError(f"invalid timeout {self.timeout!r}: must be 0.001-60 seconds")
        if not 0 <= self.linger <= 60:
            raise UsageError(f"invalid linger {self.linger!r}: must be 0-60 seconds")


@dataclass
class FlowResult:
    """One flow's figures: its own counters and, from a reflector, the far side's report."""

    run_id: int
    local: str
    control_local: str = ""  # the control socket: its own flow through a relay
    control_sent: int = 0  # report requests (and the opening one) sent on it
    # To a multicast group: every reflector's report, by its address.
    receivers: dict[str, Report] = field(default_factory=dict)
    control_received: int = 0  # datagrams that came back on it (reports, echoes)
    numbered: int = 0  # probes given a number: sent + sender_lost
    sent: int = 0
    sent_bytes: int = 0
    sender_lost: int = 0
    send_errors: dict[str, int] = field(default_factory=dict)
    send_blocked: int = 0  # sends the kernel refused with EAGAIN (retried, not lost)
    replies: int = 0
    reply_bytes: int = 0
    malformed: int = 0
    late: int = 0  # replies that came after their window slot timed out
    # ICMP errors reported on receive, by errno name ({"EMSGSIZE": 1}), as udpkit.aio counts.
    icmp_errors: dict[str, int] = field(default_factory=dict)
    round_trip: SequenceTracker = field(default_factory=SequenceTracker)
    reverse: SequenceTracker = field(default_factory=SequenceTracker)
    rtt: LatencyHistogram = field(default_factory=LatencyHistogram)
    rtt_jitter: Jitter = field(default_factory=Jitter)
    kernel_drops_start: int | None = None
    kernel_drops_end: int | None = None
    report: Report | None = None

    @property
    def kernel_drops(self) -> int | None:
        """Drops bench's own socket counted during the run (None where unknown)."""
        if self.kernel_drops_start is None or self.kernel_drops_end is None:
            return None
        return self.kernel_drops_end - self.kernel_drops_start


@dataclass
class BenchResult:
    """A finished run: settings, mode, per-flow figures and the interval rows.

    ``stopped`` is true when ``run_bench``'s ``stop`` ended the run early (the
    figures are those of what ran); ``send_idle_seconds`` is how long the send
    loop slept during ``send_seconds`` (near 0: the sender's CPU set the pace).
    """

    config: BenchConfig
    target: str
    peer: str  # "reflector" or "echo"
    send_seconds: float
    flows: list[FlowResult]
    intervals: list[IntervalRow]
    stopped: bool = False
    send_idle_seconds: float = 0.0

    def shortfall(self) -> RateShortfall | None:
        """Why the send rate stayed under 90 % of the asked rate, or ``None`` if it did not
        (or the rate was ``max``); see :mod:`udpkit._core.shortfall`."""
        errors: dict[str, int] = {}
        for f in self.flows:
            for name, n in f.send_errors.items():
                errors[name] = errors.get(name, 0) + n
        return rate_shortfall(
            asked_per_s=self.config.rate,
            sent=sum(f.sent for f in self.flows),
            seconds=self.send_seconds,
            idle_seconds=self.send_idle_seconds,
            blocked=sum(f.send_blocked for f in self.flows),
            errors=errors,
            window=self.config.window,
        )


def _new_result(local: str, control_local: str) -> FlowResult:
    return FlowResult(random.getrandbits(32), local, control_local)


class _Run:
    """The bench loop's state; ``run_bench`` is its only user."""

    def __init__(
        self,
        cfg: BenchConfig,
        on_rows: Callable[[list[IntervalRow]], None] | None,
        stop: threading.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_rows = on_rows
        self.stop = stop
        self.idle_ns = 0  # the send loop's sleep: near 0 when the CPU sets the pace
        fast = fast_path_available() if cfg.fast is None else cfg.fast
        self.flows: list[ProbeFlow] = []
        try:
            for _ in range(cfg.parallel):
                self.flows.append(ProbeFlow(cfg, fast, _new_result))
        except BaseException:
            self.close()
            raise
        self.pad = bytes(cfg.size - HEADER_SIZE)
        self.kind = Kind.PROBE_ONEWAY if cfg.one_way else Kind.PROBE
        self.meter = IntervalMeter(0, int(cfg.interval * 1e9))
        self.start = 0

    def close(self) -> None:
        for f in self.flows:
            f.close()

    @property
    def stopping(self) -> bool:
        """``stop`` was set: end the send phase, and end the rest soon."""
        return self.stop is not None and self.stop.is_set()

    # -- receiving ------------------------------------------------------------------

    def drain(self, f: ProbeFlow) -> int:
        """Read and account every queued datagram of flow ``f``; return how many."""
        got = 0
        res = f.res
        run_id = res.run_id
        window = self.cfg.window is not None
        while True:
            batch = f.recv_batch()
            if not batch:
                return got
            now = clock_ns()
            data = f.data
            seqs: list[int] = []
            rseqs: list[int] = []
            rtt = res.rtt
            jit = res.rtt_jitter
            nbytes = 0
            rtt_sum = 0
            rtt_max = 0
            for off, ln in batch:
                if ln < HEADER_SIZE or ln > f.bufsize:
                    res.malformed += 1
                    continue
                magic, ver, kind, run, seq, ts, rseq = HEADER.unpack_from(data, off)
                if magic != MAGIC or ver != VERSION or run != run_id:
                    res.malformed += 1
                    continue
                if kind in (Kind.REFLECTED, Kind.PROBE):
                    seqs.append(seq)
                    if kind == Kind.REFLECTED:
                        rseqs.append(rseq)
                    nbytes += ln
                    d = now - ts
                    rtt.record(d)
                    jit.observe(ts, now)
                    rtt_sum += d
                    rtt_max = max(rtt_max, d)
                    if window and f.outstanding.pop(seq, None) is None:
                        res.late += 1
                else:
                    self._control(f, kind, seq, bytes(data[off : off + ln]))
            if seqs:
                res.round_trip.observe_many(seqs)
                if rseqs:
                    res.reverse.observe_many(rseqs)
                res.replies += len(seqs)
                res.reply_bytes += nbytes
                got += len(seqs)
                m = self.meter
                m.add("rx", len(seqs))
                m.add("rx_bytes", nbytes)
                m.add("rtt_sum_ns", rtt_sum)
                m.peak("rtt_max_ns", rtt_max)

    def _control(self, f: ProbeFlow, kind: int, nonce: int, data: bytes, peer: Peer = None) -> None:
        if nonce != f.nonce:
            return  # an old request's answer (or its duplicate)
        if kind == Kind.REPORT_REQUEST:
            f.echo_peer = True  # our request came back unchanged: a plain echo server
            f.reported = True
        elif kind == Kind.REPORT:
            try:
                _head, report = parse_report_untrusted(data)
            except ProbeError:
                f.res.malformed += 1
                return
            if f.multicast:
                from udpkit._net.addr import format_sockaddr

                f.res.receivers[format_sockaddr(peer)] = report
                if f.res.report is None or report.unique > f.res.report.unique:
                    f.res.report = report  # the figures above: the best-served member
            else:
                f.res.report = report
            f.reported = True
        else:
            f.res.malformed += 1

    # -- control exchange -------------------------------------------------------------

    def ask(
        self, flows: Sequence[ProbeFlow], tries: int, wait: float, *, stoppable: bool = False
    ) -> list[ProbeFlow]:
        """Send each flow a REPORT_REQUEST until answered; return the flows left unanswered.

        With ``stoppable``, a stop ends the asking (the opening exchange).
        """
        pending = list(flows)
        for _ in range(tries):
            if not pending or (stoppable and self.stopping):
                break
            for f in pending:
                f.reported = False
                f.nonce = random.getrandbits(63)
                with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                    request = build_report_request(f.res.run_id, f.nonce, clock_ns())
                    if f.ctrl_to is not None:  # a multicast run's unconnected socket
                        f.ctrl.sendto(request, f.ctrl_to)
                    else:
                        f.ctrl.send(request)
                    f.res.control_sent += 1
            deadline = time.monotonic() + wait
            while pending and time.monotonic() < deadline:
                left = deadline - time.monotonic()
                if stoppable and self.stop is not None:
                    if self.stopping:
                        break
                    left = min(left, _STOP_POLL)
                if left > 0:
                    select.select([f.ctrl_fd for f in pending], [], [], left)
                for f in pending:
                    self.drain_ctrl(f)
                pending = [f for f in pending if not f.reported]
        return pending

    def drain_ctrl(self, f: ProbeFlow) -> None:
        """Take the answers queued on flow ``f``'s control socket."""
        for data, peer in f.recv_ctrl():
            f.res.control_received += 1
            if len(data) < HEADER_SIZE:
                f.res.malformed += 1
                continue
            magic, ver, kind, run, seq, _ts, _rseq = HEADER.unpack_from(data, 0)
            if magic != MAGIC or ver != VERSION or run != f.res.run_id:
                f.res.malformed += 1
                continue
            self._control(f, kind, seq, data, peer)

    def wait(self, seconds: float, flows: Sequence[ProbeFlow]) -> None:
        if self.stop is not None:
            seconds = min(seconds, _STOP_POLL)  # a stop from another thread is seen soon
        if seconds > 0:
            select.select([f.fd for f in flows], [], [], seconds)

    # -- sending ----------------------------------------------------------------------

    def send(self, f: ProbeFlow, n: int) -> int:
        """Number and send up to ``n`` probes on flow ``f``; return how many were numbered."""
        res = f.res
        seq = res.numbered
        now = clock_ns()
        pack = HEADER.pack
        pad = self.pad
        kind = self.kind
        run = res.run_id
        payloads = [pack(MAGIC, VERSION, kind, run, s, now, 0) + pad for s in range(seq, seq + n)]
        try:
            k = self._send_batch(f, payloads)
        except NetworkError as exc:
            # The kernel refused the first probe (an ICMP error from an earlier one,
            # an unreachable route): it is lost at the sender, and counted so.
            name = errno_name(exc.errno)
            res.send_errors[name] = res.send_errors.get(name, 0) + 1
            res.sender_lost += 1
            res.numbered += 1
            return 1
        if k < n:
            res.send_blocked += 1  # EAGAIN: the rest keep their numbers and go next time
        if k:
            res.numbered += k
            res.sent += k
            res.sent_bytes += k * self.cfg.size
            if self.cfg.window is not None:
                for s in range(seq, seq + k):
                    f.outstanding[s] = now
            self.meter.add("sent", k)
            self.meter.add("sent_bytes", k * self.cfg.size)
        return k

    @staticmethod
    def _send_batch(f: ProbeFlow, payloads: list[bytes]) -> int:
        try:
            return send_batch(f.raw, payloads, gso=f.gso)
        except NetworkError as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
        if len(payloads) > 1 and f.gso is None:
            # Probes larger than the path MTU cannot go as GSO segments (they are
            # never fragmented): send them one datagram each from now on.
            f.gso = False
        else:
            # ICMP "packet too big" about an earlier probe, reported on this send,
            # which then sent nothing (the report is consumed): count it as the ICMP
            # error it is and send again.  A probe the kernel refuses fails again.
            f.count_icmp(errno.EMSGSIZE)
        return send_batch(f.raw, payloads, gso=f.gso)

    def _tick(self) -> None:
        rows = self.meter.tick(clock_ns() - self.start)
        if rows and self.on_rows is not None:
            self.on_rows(rows)

    def loop(self) -> float:
        """Send for the run's duration or count; return the send phase's length in seconds."""
        cfg = self.cfg
        flows = self.flows
        per_flow = None if cfg.rate is None else cfg.rate / len(flows)
        count = cfg.count
        self.start = start = clock_ns()
        end = None if cfg.duration is None else start + int(cfg.duration * 1e9)
        window = cfg.window
        timeout_ns = int(cfg.timeout * 1e9)
        one_way = cfg.one_way
        last_send = start
        while not self.stopping:
            now = clock_ns()
            if end is not None and now >= end:
                break
            active = [f for f in flows if count is None or f.res.numbered < count]
            if not active:
                break
            next_due = now + 10**9
            for f in active:
                res = f.res
                room = _MAX_BURST if count is None else min(_MAX_BURST, count - res.numbered)
                if window is not None:
                    for s, t in list(f.outstanding.items()):
                        if now - t < timeout_ns:
                            next_due = min(next_due, t + timeout_ns)
                            break
                        del f.outstanding[s]  # no reply in time: the slot is free again
                    room = min(room, window - len(f.outstanding))
                if per_flow is not None:
                    due = int((now - start) * per_flow / 1e9) + 1 - res.numbered
                    # A full window waits for a reply (or a slot's timeout), not for the
                    # schedule, which may be past: that would spin instead of sleeping.
                    full = window is not None and room <= 0
                    room = min(room, due)
                    if room <= 0 and not full:
                        nxt = start + math.ceil(res.numbered * 1e9 / per_flow)
                        next_due = min(next_due, nxt)
                elif window is None:
                    room = min(room, BATCH * 4)
                if room > 0:
                    self.send(f, room)
                    last_send = clock_ns()
                    next_due = now
            got = 0
            if not one_way:
                for f in flows:
                    got += self.drain(f)
            self._tick()
            now = clock_ns()
            if next_due > now and not got:  # a reply may have opened the window: no sleep
                wake = min(next_due, self.start + self.meter.current.end_ns)
                if end is not None:
                    wake = min(wake, end)
                self.wait((wake - now) / 1e9, [] if one_way else flows)
                self.idle_ns += clock_ns() - now
        return max(last_send - start, 1) / 1e9

    def _after_stop(self, seconds: float, most: float) -> float:
        """``seconds``, or at most ``most`` once stopped: what ran is printed within a second."""
        return min(seconds, most) if self.stopping else seconds

    def linger(self) -> None:
        """Collect late replies until all are in or ``linger`` passes (after a stop, less)."""
        deadline = time.monotonic() + self._after_stop(self.cfg.linger, _STOP_LINGER)
        if self.cfg.one_way:
            return
        while time.monotonic() < deadline:
            if all(f.res.round_trip.unique >= f.res.sent for f in self.flows):
                return
            self.wait(min(0.05, deadline - time.monotonic()), self.flows)
            for f in self.flows:
                self.drain(f)
            self._tick()

    def final_reports(self) -> None:
        """Ask the reflector for each flow's report; in one-way mode until it saw everything."""
        wait = max(self.cfg.linger, _HELLO_WAIT)
        deadline = time.monotonic() + self._after_stop(wait, _STOP_REPORT)
        if all(f.multicast for f in self.flows):
            # Several members answer each request: ask, then listen until the deadline
            # (asking again now and then, for requests or reports the path lost).
            while time.monotonic() < deadline:
                self.ask(self.flows, 1, 0)
                end = min(deadline, time.monotonic() + _HELLO_WAIT)
                while time.monotonic() < end:
                    select.select([f.ctrl_fd for f in self.flows], [], [], end - time.monotonic())
                    for f in self.flows:
                        self.drain_ctrl(f)
            return
        flows = list(self.flows)
        while flows:
            self.ask(flows, 1, min(_HELLO_WAIT, max(deadline - time.monotonic(), 0.05)))
            flows = [
                f
                for f in flows
                if f.res.report is None or (self.cfg.one_way and f.res.report.unique < f.res.sent)
            ]
            if not flows or time.monotonic() >= deadline:
                return
            time.sleep(0.02)


def run_bench(
    cfg: BenchConfig,
    on_rows: Callable[[list[IntervalRow]], None] | None = None,
    *,
    stop: threading.Event | None = None,
) -> BenchResult:
    """Measure the path to a reflector or echo server.

    Args:
        cfg: what to measure.
        on_rows: called with interval rows as they close (live output).
        stop: set it (from another thread or a signal handler) to end the run
            early: sending stops within 0.1 s, replies in flight and the
            reflector's report are collected for at most 0.75 s more, and the
            figures of what ran come back with ``stopped`` true.

    Returns:
        The run's figures.

    Raises:
        UsageError: a setting out of range.
        AddressError: a bad host or port.
        ConnectionRefused: nothing listens at the target.
        Timeout: the target never answered the opening exchange.
    """
    cfg.check()
    run = _Run(cfg, on_rows, stop)
    try:
        target = run.flows[0].sock.local_text
        with contextlib.suppress(OSError):
            from udpkit._net.addr import format_sockaddr

            target = format_sockaddr(run.flows[0].raw.getpeername())
        missing = run.ask(run.flows, _HELLO_TRIES, _HELLO_WAIT, stoppable=True)
        if missing:
            if any(f.res.icmp_errors.get(n) for f in missing for n in map(errno_name, UNANSWERED)):
                raise ConnectionRefused(
                    errno.ECONNREFUSED,
                    f"nothing listening at {target}: start 'udpkit reflect' "
                    "(or 'udpkit serve --echo') there",
                )
            raise Timeout(
                f"no answer from {target} within {_HELLO_TRIES * _HELLO_WAIT:.1f} s: is "
                "'udpkit reflect' or 'udpkit serve --echo' running there?"
            )
        echo = any(f.echo_peer for f in run.flows)
        if echo and cfg.one_way:
            raise UsageError(
                f"--one-way needs 'udpkit reflect' at {target}: it is a plain echo server"
            )
        for f in run.flows:
            f.res.report = None
            f.res.kernel_drops_start = proc_drops(f.fd)
        send_seconds = run.loop()
        run.linger()
        for f in run.flows:
            run.drain(f)
        if not echo:
            run.final_reports()
        for f in run.flows:
            f.res.kernel_drops_end = proc_drops(f.fd)
        rows = run.meter.finish(clock_ns() - run.start)
        if rows and on_rows is not None:
            on_rows(rows)
        if not any(f.res.sent for f in run.flows) and any(f.res.send_errors for f in run.flows):
            errs = ", ".join(sorted(run.flows[0].res.send_errors))
            raise NetworkError(errno.EIO, f"no probe could be sent to {target}: {errs}")
        return BenchResult(
            cfg,
            target,
            "echo" if echo else "reflector",
            send_seconds,
            [f.res for f in run.flows],
            run.meter.rows,
            stopped=run.stopping,
            send_idle_seconds=min(run.idle_ns / 1e9, send_seconds),
        )
    finally:
        run.close()
