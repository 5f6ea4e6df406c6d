"""``udpkit reflect``: the far end of ``udpkit bench`` (:mod:`udpkit._loops.bench`).

The reflector is a batch answer (:class:`~udpkit._core.serving.BatchAnswer`) served
by the :class:`~udpkit._loops.engine.Engine`: for each received batch it tracks every
run's probes (:class:`~udpkit._core.stats.SequenceTracker`), echoes ``PROBE`` with
its own return sequence number, and answers ``REPORT_REQUEST`` with what it saw,
so loss, duplicates and reordering are known per direction.  No answer is ever
longer than its request, so the serving step clears whole batches against the
anti-amplification budget at once.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

from udpkit._core.errors import NetworkError
from udpkit._core.policy import Policy
from udpkit._core.probe import HEADER, HEADER_SIZE, MAGIC, VERSION, Kind, Report, build_report
from udpkit._core.serving import ServeStep
from udpkit._core.stats import Jitter, SequenceTracker
from udpkit._loops.engine import Engine
from udpkit._net.kernel import DEFAULT_RCVBUF, clock_ns
from udpkit._net.sockets import Datagram, DatagramSocket, set_receive_buffer

__all__ = ["Reflector"]

_RSEQ_OFF = 24
# RFC 3550 jitter over m transit differences in one step: J_m = J_0 * DECAY**m +
# sum(|D_k| * DECAY**(m-1-k) / 16).  _WEIGHTS[-m:] are those m weights, in order.
_DECAY = 15 / 16
_MAX_RUN = 1025  # more than any batch (the engine takes at most 1024 at once)
_POW = [_DECAY**k for k in range(_MAX_RUN + 1)]
_WEIGHTS = [p / 16 for p in reversed(_POW[:_MAX_RUN])]


# -- the reflector ----------------------------------------------------------------------


@dataclass
class _RunState:
    tracker: SequenceTracker = field(default_factory=SequenceTracker)
    jitter: Jitter = field(default_factory=Jitter)
    bytes: int = 0
    echoed: int = 0
    first_ns: int = 0
    last_ns: int = 0
    drops_start: int | None = None
    errors_start: int = 0
    transit: int | None = None  # the last arrival's transit time, for the jitter


class Reflector:
    """Echo bench probes, count every run, and answer report requests.

    Args:
        sock: a bound UDP socket (the caller keeps ownership).
        fast: as for :class:`~udpkit._loops.engine.Engine`.
        busy_poll_us: as for :class:`~udpkit._loops.engine.Engine`.
        max_runs: runs remembered at once; the oldest is forgotten past this.
        policy: admission and reply rules, as for :class:`udpkit.DatagramServer`
            (by default loopback trusted, every other source held to its
            anti-amplification budget, which reflected probes always fit).
        rcvbuf: the kernel receive buffer to ask for (bench's bursts queue
            there), ``None`` to leave the socket's; :attr:`rcvbuf` is then what
            the kernel granted (0: it refused the option).
    """

    reply_ratio = 1.0  # a reflection or a report is never longer than its request

    def __init__(
        self,
        sock: DatagramSocket,
        *,
        fast: bool | None = None,
        busy_poll_us: int = 0,
        max_runs: int = 4096,
        policy: Policy | None = None,
        rcvbuf: int | None = DEFAULT_RCVBUF,
    ) -> None:
        self.rcvbuf = 0
        if rcvbuf is not None:
            with contextlib.suppress(NetworkError):  # a smaller buffer still reflects
                self.rcvbuf = set_receive_buffer(sock.sock, rcvbuf)
        self.runs: dict[int, _RunState] = {}
        self.max_runs = max_runs
        self.malformed = 0
        self.ignored = 0
        self.refused_small = 0
        self.reports = 0
        if policy is None:
            policy = Policy(local=sock.local_address)
        self.policy = policy
        self.step = ServeStep(self, policy=policy)
        self.engine = Engine(
            sock.sock,
            self.step,
            bufsize=65535,
            fast=fast,
            gro=False,
            busy_poll_us=busy_poll_us,
        )

    def answer_batch(self, batch: Sequence[Datagram]) -> list[bytes | None]:
        """Account a whole batch at once; return each datagram's answer (or None), in order.

        Doing the work per batch keeps the per-datagram Python small (one
        arrival time per batch, consecutive numbers tracked in one step).
        """
        uniform = self._answer_uniform(batch)
        if uniform is not None:
            return uniform
        now = clock_ns()  # one arrival time per batch, as read by the application
        answers: list[bytes | None] = []
        unpack = HEADER.unpack_from
        cur = -1
        st: _RunState | None = None
        seqs: list[int] = []
        nbytes = 0
        transit: int | None = None
        jit = 0.0
        for d in batch:
            data = d[0]
            ln = len(data)
            if ln < HEADER_SIZE or d[2] != ln:
                self.malformed += 1
                answers.append(None)
                continue
            magic, ver, kind, run_id, seq, ts, _ = unpack(data)
            if magic != MAGIC or ver != VERSION:
                self.malformed += 1
                answers.append(None)
                continue
            if kind != Kind.PROBE and kind != Kind.PROBE_ONEWAY:  # noqa: PLR1714 - hot path
                answers.append(self._control(kind, run_id, seq, ln))
                continue
            if run_id != cur or st is None:
                if st is not None:
                    self._flush(st, seqs, nbytes, transit, jit, now)
                st = self.runs.get(run_id) or self._run(run_id)
                cur, seqs, nbytes = run_id, [], 0
                transit, jit = st.transit, st.jitter.jitter_ns
            seqs.append(seq)
            nbytes += ln
            # RFC 3550 jitter, inline (see _stats.Jitter): the per-datagram cost matters here.
            t = now - ts
            if transit is not None:
                dt = t - transit
                jit += ((dt if dt >= 0 else -dt) - jit) / 16.0
            transit = t
            if kind == Kind.PROBE:
                rseq = st.echoed
                st.echoed = rseq + 1
                # The same bytes, marked REFLECTED and carrying the return path's number.
                answers.append(
                    b"%b%c%b%b%b" % (
                        data[:3], Kind.REFLECTED, data[4:_RSEQ_OFF], rseq.to_bytes(8, "big"),
                        data[_RSEQ_OFF + 8 :],
                    )
                )  # fmt: skip
            else:
                answers.append(None)
        if st is not None:
            self._flush(st, seqs, nbytes, transit, jit, now)
        return answers

    def _answer_uniform(self, batch: Sequence[Datagram]) -> list[bytes | None] | None:
        """The usual batch, at C speed: whole probes of one kind, all of one run.

        Every field is read for the batch at once (``map``/``zip``, no Python
        per datagram but the reflected copies); anything else returns ``None``
        and the batch goes through the general loop.
        """
        datas, _, lens = zip(*batch, strict=True)
        if min(lens) < HEADER_SIZE or list(map(len, datas)) != list(lens):
            return None  # short or truncated: malformed, counted by the general loop
        magics, vers, kinds, runs, seqs, sent, _ = zip(*map(HEADER.unpack_from, datas), strict=True)
        if len(set(kinds)) != 1 or len(set(runs)) != 1:
            return None
        kind = kinds[0]
        if set(magics) != {MAGIC} or set(vers) != {VERSION}:
            return None
        if kind != Kind.PROBE and kind != Kind.PROBE_ONEWAY:  # noqa: PLR1714 - hot path
            return None
        now = clock_ns()
        st = self.runs.get(runs[0]) or self._run(runs[0])
        # Transit differences: all arrived at `now`, so D_k = sent[k-1] - sent[k].
        gaps = list(map(abs, map(operator.sub, sent[:-1], sent[1:])))
        if st.transit is not None:
            gaps.insert(0, abs(now - sent[0] - st.transit))
        m = len(gaps)
        jit = st.jitter.jitter_ns * _POW[m] + sum(map(operator.mul, gaps, _WEIGHTS[_MAX_RUN - m :]))
        self._flush(st, list(seqs), sum(lens), now - sent[-1], jit, now)
        if kind == Kind.PROBE_ONEWAY:
            return [None] * len(datas)
        first = st.echoed
        st.echoed = first + len(datas)
        # The same bytes, marked REFLECTED and carrying the return path's number.
        return [
            b"%b%c%b%b%b" % (
                d[:3], Kind.REFLECTED, d[4:_RSEQ_OFF], rseq.to_bytes(8, "big"), d[_RSEQ_OFF + 8 :],
            )
            for rseq, d in enumerate(datas, first)
        ]  # fmt: skip

    def _flush(  # noqa: PLR0917 - the batch loop's locals, handed back
        self, st: _RunState, seqs: list[int], nbytes: int, transit: int | None, jit: float, now: int
    ) -> None:
        st.tracker.observe_many(seqs)
        st.jitter.samples += len(seqs)
        st.jitter.jitter_ns = jit
        st.transit = transit
        st.bytes += nbytes
        if not st.first_ns:
            st.first_ns = now
        st.last_ns = now

    def _send_errors(self) -> int:
        return sum(self.engine.stats.send_errors.values())

    def _run(self, run_id: int) -> _RunState:
        st = self.runs.get(run_id)
        if st is None:
            if len(self.runs) >= self.max_runs:
                del self.runs[next(iter(self.runs))]
            st = _RunState(
                drops_start=self.engine.read_kernel_drops(), errors_start=self._send_errors()
            )
            self.runs[run_id] = st
        return st

    def _control(self, kind: int, run_id: int, nonce: int, length: int) -> bytes | None:
        if kind == Kind.REPORT_REQUEST:
            return self._report(run_id, nonce, length)
        self.ignored += 1  # REFLECTED/REPORT: never answered, so reflectors cannot ping-pong
        return None

    def report(self, run_id: int) -> Report:
        """What the reflector saw of ``run_id`` so far (a new, empty run if unknown)."""
        st = self._run(run_id)
        t = st.tracker
        drops = self.engine.read_kernel_drops()
        return Report(
            received=t.received,
            unique=t.unique,
            duplicates=t.duplicates,
            reordered=t.reordered,
            reorder_extent_max=t.extent_max,
            out_of_window=t.out_of_window,
            highest_seq=t.highest,
            bytes=st.bytes,
            echoed=st.echoed,
            jitter_ns=st.jitter.jitter_ns,
            first_ns=st.first_ns,
            last_ns=st.last_ns,
            kernel_drops=drops,
            kernel_drops_run=None
            if drops is None or st.drops_start is None
            else drops - st.drops_start,
            send_errors=self._send_errors() - st.errors_start,
        )

    def _report(self, run_id: int, nonce: int, request_len: int) -> bytes | None:
        out = build_report(run_id, nonce, clock_ns(), self.report(run_id))
        if len(out) > request_len:
            self.refused_small += 1  # never answer with more bytes than were sent
            return None
        self.reports += 1
        return out

    def run(self, *, duration: float | None = None) -> None:
        """Serve until :meth:`stop` (or ``duration`` seconds)."""
        self.engine.run(duration=duration)

    def stop(self) -> None:
        """End :meth:`run`; safe from signal handlers and other threads."""
        self.engine.stop()

    def close(self) -> None:
        """Release the engine's wake-up sockets (the served socket is the caller's)."""
        self.engine.close()
