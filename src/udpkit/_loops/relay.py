"""The relay's loop: every route's sockets in one poller, its timers, its live control.

Policy (which flow, when it expires, what the faults do, which phase is on) is
in :mod:`udpkit._core.relay` and :mod:`udpkit._core.scenario`; one route's
state is :class:`udpkit._loops.relay_routes.Route`; the datagram paths are in
:mod:`udpkit._loops.relay_io`.  This module owns the clock and the loop: it
wakes for traffic, fault timers, phase changes, NAT rebindings and control
requests, which other threads hand over through a queue (never touching the
loop's state themselves).
"""

from __future__ import annotations

import math
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from udpkit._core.datagram import Peer, SockAddr
from udpkit._core.errors import UsageError
from udpkit._core.relay import Flow, FlowTable, ImpairConfig, Impairment, ImpairStats
from udpkit._core.relaystats import FlowRow, RelayStats, format_stats
from udpkit._core.scenario import RouteText, Scenario, faults_from, impair_configs
from udpkit._loops.relay_io import RelayIO
from udpkit._loops.relay_routes import Route, RouteSpec, Upstream, show_peer
from udpkit._loops.sigwake import signals_wake
from udpkit._net.addr import Address
from udpkit._net.kernel import Waker, errno_name, inode, proc_drops_by_inode
from udpkit._net.mmsg import InetAddr, PeerKey, fast_path_available
from udpkit._net.sockets import DatagramSocket

__all__ = ["Relay", "RelayStats", "RouteSpec", "format_stats"]

_T = TypeVar("_T")
_show = show_peer  # the tests' name for it
_CALL_WAIT = 10.0  # longest a control call waits for the loop
_HAS_DRAIN = hasattr(Impairment, "drain")


class Relay(RelayIO):
    """Forward datagrams between the clients of each route and its target.

    Each client address gets its own upstream socket connected to the target, so
    the target sees one source port per client and its replies go back to the
    right client.  ICMP errors from the target (it is down) are counted and the
    flow stays: the first datagram after the target is back goes through.  Every
    route runs in the one loop of :meth:`run`; the control methods
    (:meth:`set_faults`, :meth:`clear_faults`, :meth:`rebind`, :meth:`blackout`,
    :meth:`snapshot`) are safe from any thread while it runs.

    Args:
        listen_sock: a bound UDP socket (``socket.socket`` or ``DatagramSocket``),
            the first route's; the caller keeps ownership.  ``None`` with ``routes``.
        target_addr: an :class:`~udpkit.Address` or a sockaddr tuple.
        name: the first route's name.
        routes: more routes (:class:`RouteSpec`), each with its own faults and counters.
        idle_timeout: seconds without traffic either way after which a flow ends.
        max_flows: flows at once per route; datagrams from further clients are refused.
        impair_up: faults client -> target (``None``: none), for the first route.
        impair_down: faults target -> client.
        seed: seeds the faults' random streams (``None``: a random seed, reported in
            ``stats.seed`` so the run can be repeated).
        scenario: phases over time (:func:`udpkit.parse_scenario`); time 0 is :meth:`run`.
        drain: at stop, send what fault queues still hold (else it is counted ``abandoned``).
        rebind_every: NAT rebinding of the first route's flows every this many seconds.
        nat_timeout: a flow whose client is silent this long gets a new upstream port.
        rebind_grace: after a rebinding, the old upstream socket still delivers
            replies for this many seconds, then closes.
        batch: datagrams per receive call.
        fast: ``None`` uses recvmmsg/sendmmsg where available, ``False`` the portable path.
        clock: the monotonic clock (seconds).
        on_report: called with ``stats`` when :meth:`request_report` was called.
        spin_us: after traffic, poll without sleeping for this many microseconds.

    Raises:
        UsageError: a bad ``batch``, no route, or ``fast=True`` where the fast path is missing.
    """

    def __init__(
        self,
        listen_sock: DatagramSocket | socket.socket | None = None,
        target_addr: Address | InetAddr | None = None,
        *,
        name: str = "r1",
        routes: Sequence[RouteSpec] = (),
        idle_timeout: float = 60.0,
        max_flows: int = 1024,
        impair_up: ImpairConfig | None = None,
        impair_down: ImpairConfig | None = None,
        seed: int | None = None,
        scenario: Scenario | None = None,
        drain: bool = False,
        rebind_every: float | None = None,
        nat_timeout: float | None = None,
        rebind_grace: float = 1.0,
        batch: int = 64,
        bufsize: int = 65535,
        fast: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_report: Callable[[RelayStats], None] | None = None,
        spin_us: int = 50,
    ) -> None:
        if not 1 <= batch <= 1024:
            raise UsageError(f"invalid batch {batch!r}: must be 1-1024 datagrams")
        if not 0 <= spin_us <= 1_000_000:
            raise UsageError(f"invalid spin_us {spin_us!r}: must be 0-1000000 microseconds")
        if not 1 <= bufsize <= 65535:
            raise UsageError(f"invalid bufsize {bufsize!r}: must be 1-65535 bytes")
        if not rebind_grace >= 0:
            raise UsageError(f"invalid rebind_grace {rebind_grace!r}: must be 0 seconds or more")
        specs = list(routes)
        if listen_sock is not None:
            if target_addr is None:
                raise UsageError("Relay: a listening socket needs a target_addr")
            first = RouteSpec(
                listen_sock, target_addr, name, impair_up, impair_down, rebind_every, nat_timeout
            )
            specs.insert(0, first)
        if not specs:
            raise UsageError("Relay: give listen_sock and target_addr, or routes=[RouteSpec(...)]")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise UsageError(f"invalid routes: names must differ ({', '.join(names)})")
        can_fast = fast_path_available() and _is_64bit()
        if fast and not can_fast:
            raise UsageError("fast=True: recvmmsg/sendmmsg are not available here; pass None")
        self._fast = can_fast if fast is None else bool(fast)
        self._clock = clock
        self._spin = spin_us / 1e6
        self._on_report = on_report
        self._batch = batch
        self._bufsize = bufsize
        self._drain = drain
        self._grace = rebind_grace
        if seed is None and scenario is not None:
            seed = scenario.seed
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
        self.scenario = scenario
        self.routes: dict[str, Route] = {
            s.name: Route(s, i, self.seed, max_flows=max_flows, idle_timeout=idle_timeout)
            for i, s in enumerate(specs)
        }
        self._by_fd: dict[int, Upstream | Route] = {r.lfd: r for r in self.routes.values()}
        self._pending: dict[int, tuple[Flow, Impairment, bool]] = {}
        self._retiring: list[Upstream] = []
        self._stop = False
        self._report = False
        self._t0: float | None = None
        self._next_change: float | None = None
        self._ops: queue.SimpleQueue[tuple[Callable[[float], Any], Future[Any]]]
        self._ops = queue.SimpleQueue()
        self._ops_flag = False
        self._ops_lock = threading.Lock()
        self._loop_thread: int | None = None
        if self._fast:
            self._setup_fast()
        for r in self.routes.values():
            r.sock.setblocking(False)
        self._waker = Waker(*(r.lfd for r in self.routes.values()))

    # -- control -----------------------------------------------------------------

    def stop(self) -> None:
        """End :meth:`run` soon.  Safe from another thread and from a signal handler."""
        self._stop = True
        self._waker.wake()

    def request_report(self) -> None:
        """Have the loop call ``on_report(stats)`` soon (what SIGUSR1 does)."""
        self._report = True
        self._waker.wake()

    def close(self) -> None:
        """Close every upstream socket and the wake-up pair (not the listening sockets)."""
        drops = proc_drops_by_inode()
        for route in self.routes.values():
            for flow in list(route.table):
                self._end_flow(flow, drops)
                route.table.remove(flow)
        for old in list(self._retiring):
            self._close_up(old, drops)
        self._waker.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def table(self) -> FlowTable:
        """The first route's flow table."""
        return next(iter(self.routes.values())).table

    @property
    def fast(self) -> bool:
        """True when recvmmsg/sendmmsg are in use."""
        return self._fast

    def _call(self, fn: Callable[[float], _T]) -> _T:
        """Run ``fn(now)`` in the loop's thread (at once when the loop is not running)."""
        with self._ops_lock:
            if self._loop_thread is None or self._loop_thread == threading.get_ident():
                return fn(self._clock())
            fut: Future[_T] = Future()
            self._ops.put((fn, fut))
            self._ops_flag = True
        self._waker.wake()
        return fut.result(_CALL_WAIT)

    def _run_ops(self) -> None:
        self._ops_flag = False
        while True:
            try:
                fn, fut = self._ops.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn(self._clock()))
            except Exception as exc:  # handed to the caller's thread
                fut.set_exception(exc)

    def _route(self, name: str | None) -> list[Route]:
        if name is None:
            return list(self.routes.values())
        r = self.routes.get(name)
        if r is None:
            known = ", ".join(self.routes)
            raise KeyError(f"no route named {name!r}: the routes are {known}")
        return [r]

    def set_faults(
        self,
        route: str | None = None,
        config: ImpairConfig | None = None,
        *,
        direction: str = "both",
        **fields: object,
    ) -> None:
        """Change a route's faults (every route's with ``route=None``) while traffic runs.

        Args:
            route: the route's name.
            config: the faults; or give ``fields`` as the scenario and the command
                line write them (``loss="5%"``, ``delay="20ms"``).
            direction: ``"both"``, ``"up"`` (client -> target) or ``"down"``; the
                other direction is cleared.

        Raises:
            KeyError: no such route.
            UsageError: a field that does not parse, or an unknown one.
        """
        if config is not None:
            if fields:
                raise UsageError("set_faults: give config or fields, not both")
            up, down = (
                config if direction in ("both", "up") else None,
                config if direction in ("both", "down") else None,
            )
        else:
            up, down = impair_configs(faults_from(fields, "faults", set()), direction)
        targets = self._route(route)

        def op(now: float) -> None:
            for r in targets:
                r.set_faults(up, down, now)

        self._call(op)

    def clear_faults(self, route: str | None = None) -> None:
        """Take every fault off a route (what is held still leaves as it was due)."""
        self.set_faults(route, ImpairConfig())

    def rebind(self, route: str | None = None) -> int:
        """Move each flow of a route to a new upstream source port now, as a NAT does.

        Returns:
            How many flows moved.
        """
        targets = self._route(route)

        def op(now: float) -> int:
            return sum(self._rebind_route(r, now) for r in targets)

        return self._call(op)

    def blackout(
        self, route: str | None = None, seconds: float | None = None, on: bool = True
    ) -> None:
        """Drop everything on a route (counted) for ``seconds`` (``None``: until ``on=False``)."""
        if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
            raise UsageError(f"invalid blackout seconds {seconds!r}: must be more than 0")
        targets = self._route(route)

        def op(now: float) -> None:
            for r in targets:
                r.set_blackout(on, now)
                r.blackout_until = now + seconds if on and seconds is not None else None
            self._plan(now)

        self._call(op)

    def snapshot(self, route: str | None = None, *, flows: bool = True) -> dict[str, Any]:
        """Every route's counters (with ``held``), phase, faults and flows, ready for JSON."""
        targets = self._route(route)
        return self._call(lambda now: {r.name: self._route_doc(r, now, flows) for r in targets})

    def _route_doc(self, r: Route, now: float, flows: bool) -> dict[str, Any]:
        hu, hd = r.held()
        doc: dict[str, Any] = {
            "name": r.name,
            "route": r.where,
            "phase": r.phase,
            "blackout": r.blackout,
            "faults": {
                "up": None if r.cfg_up is None else _cfg_dict(r.cfg_up),
                "down": None if r.cfg_down is None else _cfg_dict(r.cfg_down),
            },
            "flows": len(r.table),
            "counters": {**r.flat(), "up_held": hu, "down_held": hd},
            "phases": r.phases(),
            "send_errors": dict(r.send_errors),
            "seed": self.seed,
        }
        if flows:
            doc["per_flow"] = r.flow_rows()
        return doc

    # -- stats -----------------------------------------------------------------------

    @property
    def stats(self) -> RelayStats:
        """A snapshot of every counter, totals and per live flow, over every route."""
        drops = proc_drops_by_inode()
        parts = [self._route_stats(r, drops, len(self.routes) > 1) for r in self.routes.values()]
        if len(parts) == 1:
            return parts[0]
        total = RelayStats(counts={}, seed=parts[0].seed)
        for p in parts:
            _merge_stats(total, p)
        kds = [p.kernel_drops for p in parts]
        total.kernel_drops = None if None in kds else sum(k or 0 for k in kds)
        return total

    def route_stats(self, name: str) -> RelayStats:
        """One route's :class:`RelayStats`."""
        (r,) = self._route(name)
        return self._route_stats(r, proc_drops_by_inode(), False)

    def _route_stats(self, r: Route, drops: dict[int, int], label: bool) -> RelayStats:
        t = r.table
        tot = t.totals()
        kd: int | None = None
        if drops:
            ino = inode(r.lfd)
            if ino is not None:
                # Every socket the relay reads: the listening one and each flow's upstream.
                kd = drops.get(ino, 0) + r.ended_drops
                for flow in t:
                    up: Upstream | None = flow.handle
                    if up is not None:
                        kd += sum(drops.get(u.ino, 0) for u in (up, *up.old) if u.ino)
        hu, hd = r.held()
        _set_held(tot.up, hu)
        _set_held(tot.down, hd)
        rows: list[FlowRow] = []
        for row in r.flow_rows():
            if label:
                row["peer"] = f"{r.name}:{row['peer']}"
            rows.append(row)  # type: ignore[arg-type]
        impaired = r.impaired or self.scenario is not None
        return RelayStats(
            flows=len(t),
            peak_flows=t.peak,
            flows_created=t.created,
            flows_expired=t.expired,
            refused=t.refused,
            counts=tot.counts,
            up=tot.up,
            down=tot.down,
            send_errors=dict(r.send_errors),
            kernel_drops=kd,
            seed=self.seed if impaired else None,
            per_flow=rows,
        )

    # -- the loop ------------------------------------------------------------------

    def run(self, *, duration: float | None = None) -> RelayStats:
        """Relay until :meth:`stop` (or ``duration`` seconds); return the final stats.

        At the end what fault queues still hold is sent (``drain=True``) or
        counted ``abandoned``, so ``in == out + dropped`` holds in the result.

        Raises:
            NetworkError: a listening socket itself failed.
        """
        clock = self._clock
        start = clock()
        if duration is None and self.scenario is not None:
            duration = self.scenario.duration
        end = None if duration is None else start + duration
        with self._ops_lock:
            self._loop_thread = threading.get_ident()
        self._start_timers(start)
        try:
            with signals_wake(self._waker.signal_fd):
                self._loop(end)
            self._finish(clock())
        finally:
            self._stop = False
            with self._ops_lock:
                self._loop_thread = None
            self._run_ops()
        return self.stats

    def _loop(self, end: float | None) -> None:
        clock = self._clock
        waker = self._waker
        by_fd = self._by_fd
        fast = self._fast
        busy = False
        spin = self._spin
        spin_until = 0.0
        while not self._stop:
            now = clock()
            if end is not None and now >= end:
                break
            timeout = 0.0 if busy or now < spin_until else self._timeout(now, end)
            ready = waker.wait(timeout)
            now = clock()
            busy = False
            if spin and ready:
                # Traffic: keep polling without sleeping for a while, so the next
                # datagram does not pay for waking this process up.
                spin_until = now + spin
            for fd in ready:
                obj = by_fd.get(fd)
                if obj is None:
                    continue
                if isinstance(obj, Route):
                    if fast:
                        busy |= self._from_clients_fast(obj, now)
                    else:
                        busy |= self._from_clients_portable(obj, now)
                elif fast:
                    busy |= self._from_upstream_fast(obj, now)
                else:
                    busy |= self._from_upstream_portable(obj, now)
            if self._pending:
                self._run_timers(now)
            if self._next_change is not None and self._next_change <= now:
                self._timed(now)
            for r in self.routes.values():
                nxt = r.table.next_expiry()
                if nxt is not None and nxt <= now:
                    ended = r.table.expire(now)
                    drops = proc_drops_by_inode() if ended else {}
                    for flow in ended:
                        self._end_flow(flow, drops)
            if self._ops_flag:
                self._run_ops()
            if self._report:
                self._report = False
                if self._on_report is not None:
                    self._on_report(self.stats)

    def _timeout(self, now: float, end: float | None) -> float | None:
        """Seconds until the next timer, or ``None`` when there is none."""
        best = end
        for cand in (self._next_change, *(r.table.next_expiry() for r in self.routes.values())):
            if cand is not None and (best is None or cand < best):
                best = cand
        for _, imp, _ in self._pending.values():
            d = imp.deadline
            if d is not None and (best is None or d < best):
                best = d
        return None if best is None else max(best - now, 0.0)

    # -- timed changes: phases, events, rebinding, NAT timeouts, blackouts, closes --

    def _start_timers(self, now: float) -> None:
        self._t0 = now
        for r in self.routes.values():
            if r.rebind_every is not None:
                r.next_rebind = now + r.rebind_every
            if r.nat_timeout is not None:
                r.next_nat_check = now + _nat_tick(r.nat_timeout)
        if self.scenario is not None:
            self._apply_phases(now, -1.0)
        self._plan(now)

    def _plan(self, now: float) -> None:
        """When the next timed change is due (``_next_change``)."""
        cands: list[float] = [u.closes_at for u in self._retiring]
        for r in self.routes.values():
            cands += [t for t in (r.next_rebind, r.next_nat_check, r.blackout_until) if t]
        if self.scenario is not None and self._t0 is not None:
            nxt = self.scenario.next_change(now - self._t0)
            if nxt is not None:
                cands.append(self._t0 + nxt)
        self._next_change = min(cands) if cands else None

    def _timed(self, now: float) -> None:
        if self.scenario is not None and self._t0 is not None:
            self._apply_phases(now, self._scenario_t)
        for r in self.routes.values():
            if r.blackout_until is not None and r.blackout_until <= now:
                r.blackout_until = None
                r.set_blackout(False, now)
            if r.next_rebind is not None and r.next_rebind <= now and r.rebind_every:
                self._rebind_route(r, now)
                r.next_rebind = now + r.rebind_every
            if r.next_nat_check is not None and r.next_nat_check <= now and r.nat_timeout:
                self._nat_check(r, now)
                r.next_nat_check = now + _nat_tick(r.nat_timeout)
        due = [u for u in self._retiring if u.closes_at <= now]
        if due:
            drops = proc_drops_by_inode()
            for u in due:
                self._close_up(u, drops)
        self._plan(now)

    _scenario_t = -1.0  # scenario time up to which changes were applied

    def _apply_phases(self, now: float, before: float) -> None:
        sc = self.scenario
        assert sc is not None and self._t0 is not None
        t = now - self._t0
        for r in self.routes.values():
            text = RouteText(r.name, "", "", r.base_text, "both")
            faults, direction, black, name = sc.faults_at(t, text)
            if name != r.phase or before < 0:
                if name != r.phase:
                    r.enter_phase(name)
                if name == "base" and not r.base_text:
                    up, down = r.base
                else:
                    up, down = impair_configs(faults, direction, f"phase {name}")
                r.set_faults(up, down, now)
                if black != r.blackout:
                    r.set_blackout(black, now)
        for ev in sc.events_between(before, t):
            for r in self.routes.values():
                if ev.rebind and (ev.routes is None or r.name in ev.routes):
                    self._rebind_route(r, now)
        self._scenario_t = t

    def _rebind_route(self, r: Route, now: float) -> int:
        moved = 0
        for flow in r.table:
            if flow.handle is not None and self._rebind_flow(r, flow, now, self._grace):
                r.rebinds += 1
                moved += 1
        self._plan(now)
        return moved

    def _nat_check(self, r: Route, now: float) -> None:
        assert r.nat_timeout is not None
        limit = now - r.nat_timeout
        for flow in r.table:
            up: Upstream | None = flow.handle
            if up is not None and up.last_up <= limit and self._rebind_flow(r, flow, now, 0.0):
                r.nat_timeouts += 1
                flow.handle.last_up = math.inf  # forgotten until the client speaks again

    def _rebind_flow(self, r: Route, flow: Flow, now: float, grace: float) -> bool:
        old: Upstream = flow.handle
        try:
            s = r.open_upstream()
        except OSError as exc:
            r.count_error(errno_name(exc.errno))
            return False
        new = Upstream(s, old.raw, flow, r)
        new.last_up = old.last_up
        old.closes_at = now + grace
        new.old = [*old.old, old]
        old.old = []
        flow.handle = new
        self._by_fd[new.fd] = new
        self._waker.register(new.fd)
        self._retiring.append(old)
        return True

    def _close_up(self, u: Upstream, drops: dict[int, int]) -> None:
        # Keep what the kernel dropped on this socket: /proc forgets it at close.
        if u.ino is not None:
            u.route.ended_drops += drops.get(u.ino, 0)
        if self._by_fd.get(u.fd) is u:
            del self._by_fd[u.fd]
            self._waker.unregister(u.fd)
        u.sock.close()
        if u in self._retiring:
            self._retiring.remove(u)
        cur: Upstream | None = u.flow.handle
        if cur is not None and u in cur.old:
            cur.old.remove(u)

    def _finish(self, now: float) -> None:
        """At stop: send what is held (``drain``) or count it abandoned."""
        for r in self.routes.values():
            for flow in r.table:
                for imp, up in ((flow.up, True), (flow.down, False)):
                    if imp is None or not imp.held:
                        continue
                    if self._drain and flow.handle is not None:
                        self._send_payloads(flow, _drain(imp, now), up)
                    imp.abandon()
                    self._pending.pop(id(imp), None)

    # -- flows ---------------------------------------------------------------------

    def _admit(
        self,
        route: Route,
        key: PeerKey | Peer,
        raw: bytes,
        peer: SockAddr,
        now: float,
        *,
        count: int,
    ) -> Flow | None:
        t = route.table
        flow = t.admit(key, peer, now, 0)
        if flow is None:
            ended = t.expire(now)
            drops = proc_drops_by_inode() if ended else {}
            for old in ended:
                self._end_flow(old, drops)
            flow = t.admit(key, peer, now, count)
            if flow is None:
                return None
        if flow.handle is None:
            try:
                s = route.open_upstream()
            except OSError as exc:
                t.remove(flow)
                t.refused += count
                route.count_error(errno_name(exc.errno), count)
                return None
            up = Upstream(s, raw, flow, route)
            up.last_up = now
            flow.handle = up
            self._by_fd[up.fd] = up
            self._waker.register(up.fd)
        return flow

    def _end_flow(self, flow: Flow, drops: dict[int, int] | None = None) -> None:
        for imp in (flow.up, flow.down):
            if imp is not None:
                imp.abandon()
                self._pending.pop(id(imp), None)
        up: Upstream | None = flow.handle
        if up is not None:
            if drops is None:
                drops = proc_drops_by_inode()
            for u in (*up.old, up):
                self._close_up(u, drops)
            flow.handle = None


def _is_64bit() -> bool:
    import ctypes

    return ctypes.sizeof(ctypes.c_void_p) == 8


def _nat_tick(timeout: float) -> float:
    return min(max(timeout / 4, 0.01), 1.0)


def _drain(imp: Impairment, now: float) -> list[bytes]:
    """Everything ``imp`` holds, in order, released now."""
    if _HAS_DRAIN:
        fn: Any = getattr(imp, "drain")  # noqa: B009
        got = fn(now)
        return list(got[0] if isinstance(got, tuple) else got)
    out: list[bytes] = []
    t = now
    for _ in range(100_000):  # a core without drain: later and later polls empty it
        if not imp.held:
            break
        t += 3600.0
        data, _ = imp.poll(t)
        out += data
    return out


def _set_held(st: ImpairStats, held: int) -> None:
    if "held" in getattr(type(st), "__dataclass_fields__", {}):
        setattr(st, "held", held)  # noqa: B010


def _cfg_dict(cfg: ImpairConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: v for k, v in asdict(cfg).items() if v not in (None, 0, 0.0, False)}


def _merge_stats(total: RelayStats, p: RelayStats) -> None:
    total.flows += p.flows
    total.peak_flows += p.peak_flows
    total.flows_created += p.flows_created
    total.flows_expired += p.flows_expired
    total.refused += p.refused
    for k, v in p.counts.items():
        total.counts[k] = total.counts.get(k, 0) + v
    total.up.merge(p.up)
    total.down.merge(p.down)
    for k, n in p.send_errors.items():
        total.send_errors[k] = total.send_errors.get(k, 0) + n
    total.seed = total.seed if total.seed is not None else p.seed
    total.per_flow += p.per_flow
