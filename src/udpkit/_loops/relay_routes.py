"""A relay's routes: one listening socket and its flows, faults, NAT behaviour and phases.

:class:`Route` holds what belongs to one LISTEN -> TARGET pair (its flow table,
its fault configs per direction, its blackout, NAT rebinding and timeout, the
counters per phase); :class:`udpkit._loops.relay.Relay` runs every route in one
loop.  Nothing here waits: each call takes ``now`` from the loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from udpkit._core.datagram import Peer, SockAddr
from udpkit._core.errors import NetworkError, UsageError
from udpkit._core.relay import Flow, FlowTable, ImpairConfig, Impairment, ImpairRng, ImpairStats
from udpkit._net.addr import Address, format_sockaddr
from udpkit._net.kernel import DEFAULT_RCVBUF, inode
from udpkit._net.mmsg import NAME_SPACE, InetAddr
from udpkit._net.sockets import DatagramSocket, set_receive_buffer

__all__ = ["Route", "RouteSpec", "Upstream", "flat_counts", "show_peer"]

# What a blackout does where the core has no blackout of its own: drop everything.
_BLACKOUT = ImpairConfig(loss=1.0)
_CLEAR = ImpairConfig()


def show_peer(peer: Peer) -> str:
    """A flow's client as text, as bench and ``serve`` name that same peer (IPv4-mapped as IPv4)."""
    try:
        return format_sockaddr(peer)
    except Exception:  # an unusual address is still shown, not fatal
        return repr(peer)


@dataclass
class RouteSpec:
    """One LISTEN -> TARGET pair for :class:`~udpkit.Relay` (``routes=[...]``).

    Attributes:
        listen: a bound UDP socket (the caller keeps ownership).
        target: an :class:`~udpkit.Address` or a sockaddr tuple.
        name: the route's name in the counters and the control API.
        impair_up: faults client -> target (``None``: none).
        impair_down: faults target -> client.
        rebind_every: move every flow to a new upstream port this often (seconds), as a NAT.
        nat_timeout: a flow whose client is silent this long gets a new upstream port.
        faults: the base faults as text (a scenario's route), merged under each phase's.
    """

    listen: DatagramSocket | socket.socket
    target: Address | InetAddr
    name: str = "r1"
    impair_up: ImpairConfig | None = None
    impair_down: ImpairConfig | None = None
    rebind_every: float | None = None
    nat_timeout: float | None = None
    faults: dict[str, str] | None = None


class Upstream:
    """A flow's I/O side: a connected upstream socket and the client's raw sockaddr.

    After a NAT rebinding the flow gets a new one; the old one is kept in ``old``
    until ``closes_at`` so replies already on their way still reach the client.
    """

    __slots__ = (
        "closes_at",
        "fd",
        "flow",
        "ino",
        "last_up",
        "name",
        "name_addr",
        "namelen",
        "old",
        "raw",
        "route",
        "sock",
    )

    def __init__(self, sock: socket.socket, raw_name: bytes, flow: Flow, route: Route) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        # /proc/net/udp lists a socket by inode: its drops are read by this key.
        self.ino = inode(self.fd)
        self.raw = raw_name
        self.name = ctypes.create_string_buffer(raw_name, NAME_SPACE)
        self.name_addr = ctypes.addressof(self.name)
        self.namelen = len(raw_name)
        self.flow = flow
        self.route = route
        self.last_up = 0.0  # when the client last sent (NAT timeout)
        self.old: list[Upstream] = []
        self.closes_at = math.inf


def flat_counts(counts: dict[str, int], up: ImpairStats, down: ImpairStats) -> dict[str, int]:
    """Flow counters and both directions' fault counters as one flat dict."""
    out = dict(counts)
    out.update({f"up_{k}": v for k, v in up.as_dict().items()})
    out.update({f"down_{k}": v for k, v in down.as_dict().items()})
    return out


def _reconfigure(imp: Impairment, cfg: ImpairConfig, now: float) -> None:
    fn: Any = getattr(imp, "reconfigure", None)
    if fn is not None:
        fn(cfg, now)
    else:
        imp.config = cfg


class Route:
    """One listening socket, its target, its flows and their faults."""

    def __init__(
        self,
        spec: RouteSpec,
        index: int,
        seed: int,
        *,
        max_flows: int,
        idle_timeout: float,
    ) -> None:
        sock = spec.listen.sock if isinstance(spec.listen, DatagramSocket) else spec.listen
        if not spec.name or "/" in spec.name:
            raise UsageError(f"invalid route name {spec.name!r}: must be text without '/'")
        for what, v in (("rebind_every", spec.rebind_every), ("nat_timeout", spec.nat_timeout)):
            if v is not None and not v > 0:
                raise UsageError(f"invalid {what} {v!r}: must be more than 0 seconds")
        self.name = spec.name
        self.sock = sock
        self.listen_text = format_sockaddr(sock.getsockname())
        self.lfd = sock.fileno()
        self.family = sock.family
        self.target: SockAddr | tuple[object, ...]
        if isinstance(spec.target, Address):
            self.tfamily, self.target = int(spec.target.family), spec.target.sockaddr
        else:
            self.target = tuple(spec.target)
            self.tfamily = socket.AF_INET6 if len(self.target) == 4 else socket.AF_INET
        # The first route keeps the streams a one-route relay always had.
        tag = "" if index == 0 else f"{spec.name}/"
        self.rng_up, self.rng_down = ImpairRng(seed, f"{tag}up"), ImpairRng(seed, f"{tag}down")
        self.base = (spec.impair_up, spec.impair_down)
        self.base_text = dict(spec.faults or {})
        self.cfg_up: ImpairConfig | None = spec.impair_up if _on(spec.impair_up) else None
        self.cfg_down: ImpairConfig | None = spec.impair_down if _on(spec.impair_down) else None
        self.impaired = self.cfg_up is not None or self.cfg_down is not None
        self.blackout = False
        self.blackout_until: float | None = None
        self.rebind_every = spec.rebind_every
        self.next_rebind: float | None = None
        self.nat_timeout = spec.nat_timeout
        self.next_nat_check: float | None = None
        self.rebinds = 0
        self.nat_timeouts = 0
        self.ended_drops = 0
        self.send_errors: dict[str, int] = {}
        self.phase = "base"
        self.phase_counts: dict[str, dict[str, int]] = {}
        self.phase_mark: dict[str, int] = {}
        self.table = FlowTable(
            max_flows=max_flows, idle_timeout=idle_timeout, make_impairments=self._make
        )

    def _make(self) -> tuple[Impairment | None, Impairment | None]:
        up = Impairment(self.cfg_up, self.rng_up) if self.cfg_up is not None else None
        down = Impairment(self.cfg_down, self.rng_down) if self.cfg_down is not None else None
        if self.blackout:
            up = self._blackout_one(up, self.rng_up, True)
            down = self._blackout_one(down, self.rng_down, True)
        return up, down

    @property
    def where(self) -> str:
        """``LISTEN -> TARGET`` as text."""
        try:
            target = format_sockaddr(self.target)
        except Exception:
            target = repr(self.target)
        return f"{self.listen_text} -> {target}"

    # -- faults --------------------------------------------------------------------

    def set_faults(self, up: ImpairConfig | None, down: ImpairConfig | None, now: float) -> None:
        """Change both directions' faults on every flow, now and for new flows."""
        self.cfg_up = up if _on(up) else None
        self.cfg_down = down if _on(down) else None
        if self.cfg_up is not None or self.cfg_down is not None:
            self.impaired = True
        for flow in self.table:
            flow.up = self._update(flow.up, self.cfg_up, self.rng_up, now)
            flow.down = self._update(flow.down, self.cfg_down, self.rng_down, now)
        if self.blackout:
            self.set_blackout(True, now)

    def _update(
        self, imp: Impairment | None, cfg: ImpairConfig | None, rng: ImpairRng, now: float
    ) -> Impairment | None:
        if imp is None:
            return None if cfg is None else Impairment(cfg, rng)
        # Kept even when cleared: what it holds still leaves, and its counts stay.
        _reconfigure(imp, cfg if cfg is not None else _CLEAR, now)
        return imp

    def set_blackout(self, on: bool, now: float) -> None:
        """Drop everything both ways (counted) while ``on``."""
        self.blackout = on
        if on:
            self.impaired = True
        for flow in self.table:
            flow.up = self._blackout_one(flow.up, self.rng_up, on, now)
            flow.down = self._blackout_one(flow.down, self.rng_down, on, now)

    def _blackout_one(
        self, imp: Impairment | None, rng: ImpairRng, on: bool, now: float = 0.0
    ) -> Impairment | None:
        if imp is None:
            if not on:
                return None
            imp = Impairment(_CLEAR, rng)
        fn: Any = getattr(imp, "set_blackout", None)
        if fn is not None:
            fn(on)
        else:  # a core without blackouts: everything lost while it lasts
            cfg = self.cfg_up if rng is self.rng_up else self.cfg_down
            _reconfigure(imp, _BLACKOUT if on else (cfg or _CLEAR), now)
        return imp

    # -- counters ------------------------------------------------------------------

    def held(self) -> tuple[int, int]:
        """Datagrams inside fault queues now, ``(up, down)``."""
        hu = hd = 0
        for flow in self.table:
            if flow.up is not None:
                hu += flow.up.held
            if flow.down is not None:
                hd += flow.down.held
        return hu, hd

    def flat(self) -> dict[str, int]:
        """Every counter of the route (flows live and ended) in one flat dict."""
        tot = self.table.totals()
        out = flat_counts(tot.counts, tot.up, tot.down)
        out["rebinds"] = self.rebinds
        out["nat_timeouts"] = self.nat_timeouts
        return out

    def enter_phase(self, name: str) -> None:
        """Close the counters of the current phase and start ``name``'s."""
        now_counts = self.flat()
        acc = self.phase_counts.setdefault(self.phase, {})
        for k, v in now_counts.items():
            acc[k] = acc.get(k, 0) + v - self.phase_mark.get(k, 0)
        self.phase_mark = now_counts
        self.phase = name

    def phases(self) -> dict[str, dict[str, int]]:
        """Counters per phase, the current one up to now."""
        out = {k: dict(v) for k, v in self.phase_counts.items()}
        cur = out.setdefault(self.phase, {})
        for k, v in self.flat().items():
            cur[k] = cur.get(k, 0) + v - self.phase_mark.get(k, 0)
        return out

    def count_error(self, name: str, n: int = 1) -> None:
        """Count a send error by errno name."""
        self.send_errors[name] = self.send_errors.get(name, 0) + n

    # -- sockets -------------------------------------------------------------------

    def open_upstream(self) -> socket.socket:
        """A new non-blocking socket connected to the target.

        Raises:
            OSError: it cannot be made or connected.
        """
        s = socket.socket(self.tfamily, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            # The target's replies queue here while the relay is not scheduled:
            # as big a buffer as bench and reflect use, so a busy box does not drop.
            with contextlib.suppress(NetworkError, UsageError):
                set_receive_buffer(s, DEFAULT_RCVBUF)
            s.connect(self.target)
        except OSError:
            s.close()
            raise
        return s

    def flow_rows(self) -> list[dict[str, object]]:
        """Each live flow's counters, with ``held`` per direction and its upstream port."""
        rows: list[dict[str, object]] = []
        for flow in self.table:
            up: Upstream | None = flow.handle
            row: dict[str, object] = {"peer": show_peer(flow.peer)}
            for name in ("up_in", "up_out", "down_in", "down_out", "send_errors"):
                row[name] = getattr(flow, name)
            row["upstream_refused"] = flow.upstream_refused
            for d, imp in (("up", flow.up), ("down", flow.down)):
                st = (imp.stats if imp else ImpairStats()).as_dict()
                st["held"] = imp.held if imp else 0
                row[d] = st
            if up is not None:
                with contextlib.suppress(OSError):
                    row["upstream_port"] = up.sock.getsockname()[1]
            rows.append(row)
        return rows


def _on(cfg: ImpairConfig | None) -> bool:
    return cfg is not None and (cfg.active or bool(getattr(cfg, "blackout", False)))


OnFlow = Callable[[Flow], None]
