"""Admission and reply policy: allow/deny lists, rate limits, anti-amplification.

This module does no I/O and never reads the clock: the engine passes ``now``
(``time.monotonic()``, read once per batch) into every call, and the tests drive
a hand-held clock.  Verdicts are return values and counters, never exceptions
(the only exceptions are :class:`~udpkit._core.errors.UsageError` for bad options,
raised at construction).

The engine asks two questions per datagram:

* :meth:`Policy.admit` when a datagram arrives -> ``ADMIT``, ``DENIED`` or
  ``RATE_LIMITED``; anything but ``ADMIT`` is dropped, already counted.
* :meth:`Policy.may_reply` before each reply -> ``True``/``False``, counted.

Anti-amplification follows aioquic's ``QuicNetworkPath.can_send``: a source
outside the trusted set gets a reply only if ``sent + len(reply) <= factor *
received`` (the *next* reply must fit, not "some allowance is left").  The
trusted set defaults to loopback, which nobody off the host can spoof.

Per-source state (token buckets, byte budgets) lives in bounded tables with
least-recently-seen eviction, so 100k spoofed sources cost at most
``max_entries`` entries each.  Eviction is safe for the budget (a source comes
back with zero credit) and, for rate limits, gives a source back a full bucket
(the usual trade-off of bounded rate limiters: BIND's RRL does the same).

Parsing the options (rate limits, CIDRs, numeric hosts) is in ``policy_rules.py``;
its public names are re-exported here.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

from udpkit._core.datagram import Peer, SockAddr
from udpkit._core.errors import UsageError
from udpkit._core.policy_rules import (
    RateLimit,
    _as_list,
    _is_wildcard,
    _NetSet,
    _parse_host,
    parse_cidr,
    parse_rate_limit,
    wildcard_warning,
)

__all__ = [
    "ADMIT",
    "DENIED",
    "RATE_LIMITED",
    "Policy",
    "RateLimit",
    "Verdict",
    "parse_cidr",
    "parse_rate_limit",
    "wildcard_warning",
]


class Verdict(enum.IntEnum):
    """What :meth:`Policy.admit` decided about one datagram."""

    ADMIT = 0
    DENIED = 1
    RATE_LIMITED = 2


ADMIT = Verdict.ADMIT
DENIED = Verdict.DENIED
RATE_LIMITED = Verdict.RATE_LIMITED

# Per-source tables hold at most this many entries (least recently seen evicted):
# small enough that a flood of spoofed sources fills them within seconds and the
# server's memory then stays flat, large enough for the real clients of one host.
DEFAULT_MAX_ENTRIES = 8192
MAX_AMPLIFICATION = 3.0  # RFC 9000 §8.1's limit before address validation
_PEER_CACHE_MAX = 4096

# IPv6 keys get this bit so they never collide with IPv4 keys in one table.
_V6_TAG = 1 << 128
_V4_BROADCAST = 0xFFFFFFFF

_DEFAULT_TRUST = ("127.0.0.0/8", "::1/128", "::ffff:127.0.0.0/104")

# Counter names, all present from the start so metrics show zeros, not gaps.
_COUNTERS = (
    "admitted", "denied", "rate_limited", "rate_limited_logged", "over_budget",
    "unreplyable_port0", "unreplyable_invalid", "unreplyable_broadcast",
    "unreplyable_multicast", "unreplyable_unspecified", "unreplyable_self",
    "unreplyable_denied", "rate_table_evictions", "budget_table_evictions",
)  # fmt: skip


class _Peer:
    """Everything the policy needs about one sockaddr, computed once and cached."""

    __slots__ = ("denied", "key", "refuse", "rl_key", "trusted")

    def __init__(
        self, key: Hashable, rl_key: Hashable, denied: bool, trusted: bool, refuse: str | None
    ) -> None:
        self.key = key  # amplification budget: the address
        self.rl_key = rl_key  # rate-limit bucket: the address or its prefix
        self.denied = denied
        self.trusted = trusted
        self.refuse = refuse  # counter name when no reply may ever go here


class _Budget:
    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


class Policy:
    """Admission, rate-limit and reply decisions for one serving socket.

    Args:
        allow: CIDRs; when any are given, only matching sources are admitted.
        deny: CIDRs whose sources are dropped; deny wins over allow.
        rate_limit: ``"N/s[:BURST]"`` or a :class:`RateLimit`; ``None`` for no limit.
            Applies to every source, trusted or not.
        rate_limit_prefix: share one bucket per /24 (IPv4) or /56 (IPv6).
        log_only: count what the rate limit would drop (``rate_limited_logged``)
            but admit it.
        amplification: reply bytes allowed per byte received from a source outside
            the trusted set, 0 to 3 (RFC 9000's limit); 0 never answers them.
        trust: CIDRs added to the trusted set (loopback, always trusted), which is
            exempt from the amplification budget.
        local: the socket's own address (``getsockname()``); a wildcard host means
            "the own port on any local address".
        own_port: the own port, when ``local`` is not given (wildcard bind).
        local_addresses: the host's addresses, when known, for the wildcard case.
        broadcasts: subnet broadcast addresses (or CIDRs, meaning their broadcast
            address) never to reply to; 255.255.255.255 always counts.
        max_entries: bound of each per-source table (rate limits, budgets).
        on_refused: called as ``on_refused(reason, peer, now)`` each time a
            datagram or a reply is refused, ``reason`` being the counter it went
            to (``"denied"``, ``"rate_limited"``, ``"over_budget"``,
            ``"unreplyable_port0"``...): a :class:`~udpkit.RefusalNotices` tells
            them at most once per reason every few seconds.  Called only where
            a refusal happens, so it costs nothing while every source is served.

    Raises:
        UsageError: an option out of range or malformed, naming it.
    """

    def __init__(
        self,
        *,
        allow: Iterable[str] | str | None = None,
        deny: Iterable[str] | str | None = None,
        rate_limit: str | RateLimit | None = None,
        rate_limit_prefix: bool = False,
        log_only: bool = False,
        amplification: float = 1.0,
        trust: Iterable[str] | str | None = None,
        local: SockAddr | None = None,
        own_port: int | None = None,
        local_addresses: Iterable[str] | str | None = None,
        broadcasts: Iterable[str] | str | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        on_refused: Callable[[str, Peer, float], object] | None = None,
    ) -> None:
        self.on_refused = on_refused
        self._allow = _NetSet(_as_list(allow))
        self._deny = _NetSet(_as_list(deny))
        self._trust = _NetSet([*_DEFAULT_TRUST, *_as_list(trust)])

        if isinstance(rate_limit, str):
            rate_limit = parse_rate_limit(rate_limit)
        elif rate_limit is not None and not (
            0 < rate_limit.rate < math.inf and rate_limit.burst >= 1
        ):
            raise UsageError(f"invalid rate limit {rate_limit!r}: rate must be > 0 and burst >= 1")
        self.rate_limit = rate_limit
        self._rate = rate_limit.rate if rate_limit else 0.0
        self._burst = float(rate_limit.burst) if rate_limit else 0.0
        self._prefix = rate_limit_prefix
        self._log_only = log_only

        factor = float(amplification)
        if not 0.0 <= factor <= MAX_AMPLIFICATION:
            raise UsageError(
                f"invalid amplification factor {amplification!r}: must be 0 to "
                f"{MAX_AMPLIFICATION:g} (reply bytes per byte received; trust=[CIDR] "
                "or --trust CIDR exempts networks you control)"
            )
        self.amplification = factor

        if not isinstance(max_entries, int) or max_entries < 1:
            raise UsageError(f"invalid table size {max_entries!r}: must be a whole number >= 1")
        self.max_entries = max_entries

        self._init_never_reply(local, own_port, local_addresses, broadcasts)

        self._peers: dict[Peer, _Peer] = {}
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._budgets: OrderedDict[Hashable, _Budget] = OrderedDict()
        self._c: dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    def _init_never_reply(
        self,
        local: SockAddr | None,
        own_port: int | None,
        local_addresses: Iterable[str] | str | None,
        broadcasts: Iterable[str] | str | None,
    ) -> None:
        self._broadcasts = {_V4_BROADCAST}
        for text in _as_list(broadcasts):
            net = parse_cidr(text)
            if net.version != 4:
                raise UsageError(f"invalid broadcast address {text!r}: IPv6 has no broadcast")
            self._broadcasts.add(int(net.broadcast_address))

        # The own address and port: a reply there would loop back to ourselves.
        self._self_exact: tuple[int, int] | None = None
        self._own_port = own_port
        self._wildcard = own_port is not None
        if local is not None:
            if not isinstance(local, tuple) or len(local) < 2:
                raise UsageError(f"invalid local address {local!r}: expected (host, port)")
            if self._own_port is None:
                self._own_port = int(local[1])
            if _is_wildcard(local[0]):
                self._wildcard = True
            else:
                parsed = _parse_host(local[0])
                if parsed is None:
                    raise UsageError(f"invalid local address {local!r}: host must be numeric")
                self._self_exact = (parsed[0], parsed[1])
        self._self_addrs: set[tuple[int, int]] = set()
        for host in _as_list(local_addresses):
            parsed = _parse_host(host)
            if parsed is None:
                raise UsageError(f"invalid local address {host!r}: must be a numeric IP address")
            self._self_addrs.add((parsed[0], parsed[1]))

    # -- per-peer facts, cached -------------------------------------------------

    def _remember(self, peer: Peer) -> _Peer:
        info = self._classify(peer)
        try:
            if len(self._peers) >= _PEER_CACHE_MAX:
                # Derived data only: dropping it all is cheaper than LRU upkeep.
                self._peers.clear()
            self._peers[peer] = info
        except TypeError:  # unhashable peer: answer without caching
            pass
        return info

    def _classify(self, peer: Peer) -> _Peer:
        parsed = None
        port: object = None
        if isinstance(peer, tuple) and len(peer) >= 2:
            parsed = _parse_host(peer[0])
            port = peer[1]
        if parsed is None:
            # AF_UNIX paths are host-local (nobody remote can spoof them); anything
            # else we cannot read is admitted only if no allow list is set.
            key: Hashable = peer if isinstance(peer, str | bytes) else repr(peer)
            local = isinstance(peer, str | bytes)
            denied = bool(self._allow)
            refuse = (
                "unreplyable_invalid" if not local else "unreplyable_denied" if denied else None
            )
            return _Peer(key, key, denied, local, refuse)

        version, value, scope_text = parsed
        scope: object = scope_text
        if version == 6 and isinstance(peer, tuple) and len(peer) >= 4 and peer[3]:
            scope = peer[3]
        if version == 4:
            key = value
            rl_key: Hashable = value >> 8 if self._prefix else key
        else:
            key = value | _V6_TAG if not scope else (value | _V6_TAG, str(scope))
            rl_key = (value >> 72) | _V6_TAG if self._prefix else key
            if self._prefix and scope:
                rl_key = (rl_key, str(scope))

        denied = bool(self._allow) and not self._allow.contains(version, value)
        denied = denied or self._deny.contains(version, value)
        trusted = self._trust.contains(version, value)
        return _Peer(key, rl_key, denied, trusted, self._refusal(version, value, port, denied))

    def _refusal(self, version: int, value: int, port: object, denied: bool) -> str | None:
        if port == 0:
            return "unreplyable_port0"
        if not isinstance(port, int) or not 0 < port <= 0xFFFF:
            return "unreplyable_invalid"
        if version == 4:
            if value in self._broadcasts:
                return "unreplyable_broadcast"
            if value >> 28 == 0xE:  # 224.0.0.0/4
                return "unreplyable_multicast"
            loopback = value >> 24 == 127
        else:
            if value >> 120 == 0xFF:  # ff00::/8
                return "unreplyable_multicast"
            loopback = value == 1
        if value == 0:
            return "unreplyable_unspecified"
        if port == self._own_port and (
            (version, value) == self._self_exact
            or (version, value) in self._self_addrs
            or (self._wildcard and loopback)
        ):
            return "unreplyable_self"
        if denied:
            return "unreplyable_denied"
        return None

    # -- the two questions ------------------------------------------------------

    def admit(self, peer: Peer, size: int, now: float) -> Verdict:
        """Decide whether a datagram that arrived from ``peer`` is handled.

        Args:
            peer: the sockaddr ``recvfrom`` returned (any value: never raises).
            size: the datagram's length in bytes (credits the reply budget).
            now: the monotonic clock, read once by the caller.

        Returns:
            ``ADMIT``; or ``DENIED``/``RATE_LIMITED``, already counted: drop it.
        """
        try:
            info = self._peers[peer]
        except (KeyError, TypeError):
            info = self._remember(peer)
        if info.denied:
            self._c["denied"] += 1
            if self.on_refused is not None:
                self.on_refused("denied", peer, now)
            return DENIED
        if self._rate and not self._take_token(info.rl_key, now):
            if not self._log_only:
                self._c["rate_limited"] += 1
                if self.on_refused is not None:
                    self.on_refused("rate_limited", peer, now)
                return RATE_LIMITED
            self._c["rate_limited_logged"] += 1
        if not info.trusted:
            self._budget(info.key).received += size
        self._c["admitted"] += 1
        return ADMIT

    def may_reply(self, peer: Peer, reply_size: int, now: float) -> bool:
        """Decide whether a reply of ``reply_size`` bytes may go to ``peer`` now.

        ``True`` also charges the reply to the peer's budget: call it once per
        reply, right before sending.

        Args:
            peer: the destination sockaddr (the datagram's source).
            reply_size: the reply's length in bytes.
            now: the monotonic clock, read once by the caller (no reply rule uses
                it today; every verdict takes it, so a timed rule changes no caller).

        Returns:
            ``True`` to send; ``False`` (counted as ``over_budget`` or
            ``unreplyable_<reason>``) to drop the reply.
        """
        try:
            info = self._peers[peer]
        except (KeyError, TypeError):
            info = self._remember(peer)
        if info.refuse is not None:
            self._c[info.refuse] += 1
            if self.on_refused is not None:
                self.on_refused(info.refuse, peer, now)
            return False
        if info.trusted:
            return True
        # .get, not _budget(): a reply must not create (or evict) table entries.
        budget = self._budgets.get(info.key)
        if budget is None:
            if reply_size <= 0:  # nothing received, so only an empty reply fits
                return True
        elif budget.sent + reply_size <= self.amplification * budget.received:
            budget.sent += reply_size
            return True
        self._c["over_budget"] += 1
        if self.on_refused is not None:
            self.on_refused("over_budget", peer, now)
        return False

    # -- whole batches ----------------------------------------------------------

    def reply_bound(self, peer: Peer) -> float:
        """How many reply bytes per request byte ``peer`` may always be sent.

        ``inf`` for a trusted source, the amplification factor for any other, and
        ``-1.0`` for a source that is denied or must never get a reply (port 0,
        broadcast, multicast, our own address).  A batch whose every reply is at
        most this many times its own request never goes over budget, so a server
        may decide it once with :meth:`admit_batch` instead of per datagram.
        """
        try:
            info = self._peers[peer]
        except (KeyError, TypeError):
            info = self._remember(peer)
        if info.refuse is not None or info.denied:
            return -1.0
        if info.trusted:
            return math.inf
        budget = self._budgets.get(info.key)
        if budget is not None and budget.sent > self.amplification * budget.received:
            return -1.0  # overdrawn (charged past its factor): decide per datagram
        return self.amplification

    def charge(self, peer: Peer, received: int, replied: int) -> None:
        """Charge a batch's totals to ``peer``'s budget (nothing for a trusted peer).

        For a batch already cleared with :meth:`reply_bound` when no rule can
        refuse an arrival (:attr:`screens_arrivals` is false): with
        :meth:`count_admitted`, the counters and the budget end as if
        :meth:`admit` and :meth:`may_reply` had been called for each datagram
        and each reply.
        """
        try:
            info = self._peers[peer]
        except (KeyError, TypeError):
            info = self._remember(peer)
        if not info.trusted:
            budget = self._budget(info.key)
            budget.received += received
            budget.sent += replied

    def count_admitted(self, n: int) -> None:
        """Count ``n`` datagrams as admitted (a batch cleared with :meth:`reply_bound`)."""
        self._c["admitted"] += n

    # -- tables -----------------------------------------------------------------

    def _take_token(self, key: Hashable, now: float) -> bool:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            # A new source starts with a full bucket, so first contact is never limited.
            bucket = buckets[key] = _Bucket(self._burst, now)
            if len(buckets) > self.max_entries:
                buckets.popitem(last=False)
                self._c["rate_table_evictions"] += 1
        else:
            buckets.move_to_end(key)
            elapsed = now - bucket.last
            if elapsed > 0:  # a clock that steps back refills nothing
                bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
                bucket.last = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def _budget(self, key: Hashable) -> _Budget:
        budgets = self._budgets
        budget = budgets.get(key)
        if budget is None:
            # An evicted source comes back with zero credit: the safe direction.
            budget = budgets[key] = _Budget()
            if len(budgets) > self.max_entries:
                budgets.popitem(last=False)
                self._c["budget_table_evictions"] += 1
        else:
            budgets.move_to_end(key)
        return budget

    # -- reporting --------------------------------------------------------------

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of every counter (all names present, zeros included)."""
        return dict(self._c)

    @property
    def screens_arrivals(self) -> bool:
        """Whether :meth:`admit` can ever refuse (an allow/deny list or a rate limit is set).

        A server with no such rule may skip per-datagram admission entirely.
        """
        return bool(self._allow) or bool(self._deny) or self.rate_limit is not None

    @property
    def dropped(self) -> int:
        """Datagrams the policy dropped on arrival: ``denied + rate_limited``."""
        return self._c["denied"] + self._c["rate_limited"]

    @property
    def table_sizes(self) -> dict[str, int]:
        """Entries held now in each bounded table (each <= ``max_entries``)."""
        return {
            "rate_limit": len(self._buckets),
            "budget": len(self._budgets),
            "peer_cache": len(self._peers),
        }
