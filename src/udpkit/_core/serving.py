"""The serving step: one received batch in, the replies out, in one pass.

This is what every udpkit server does with a batch, whatever drives it (the
engine's socket loop, ``udpkit.aio``'s readiness callbacks, the reflector):

    admission -> shown -> answer -> reply validation -> reply budget -> counters

No socket, no clock: the loop reads the clock once per batch and passes ``now``;
the tests drive it with numbers.  What to answer is one of

* ``None``: count only;
* :data:`ECHO`: the datagram's own bytes;
* :class:`Fixed`: the same bytes for every datagram (``serve --reply TEXT``);
* a :class:`BatchAnswer`: one answer per datagram of the batch, computed for the
  whole batch at once (the reflector);
* any other callable: a handler, ``(Datagram) -> bytes | list of bytes | None``.

The first three and a batch answer with a known ``reply_ratio`` never send more
than a known multiple of what arrived, so when every source of a batch may get
that much (trusted, or one source within its amplification factor) the whole
batch is decided at once (:meth:`ServeStep.serve_whole`, and the fast branch of
:meth:`ServeStep.serve`), with the counters and budgets ending exactly as if
each datagram had been decided alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_not
from typing import Protocol, cast, runtime_checkable

from udpkit._core.datagram import Datagram, Payload, Peer
from udpkit._core.policy import ADMIT, Policy

__all__ = [
    "ECHO",
    "BatchAnswer",
    "BatchObserver",
    "Echo",
    "Fixed",
    "Handler",
    "PeerSet",
    "ServeStep",
    "StepStats",
    "reply_items",
]

Handler = Callable[[Datagram], "bytes | Sequence[bytes] | None"]
"""Given a datagram received, return the reply (or replies) to send back, or ``None``."""

BatchObserver = Callable[[Sequence[Datagram]], None]
"""Called with each batch of admitted datagrams, before the replies are sent."""

_INF = math.inf
_PLAIN = frozenset({bytes, type(None)})

# Counting distinct peers must not let spoofed sources grow memory: exact up to
# this many, then an estimate from a fixed-size bitmap (linear counting).
_PEER_EXACT = 4096
_SKETCH_BITS = 1 << 20  # 128 KiB; the estimate stays within ~1% to a few million peers
_BOUND_CACHE_MAX = 4096


class Echo:
    """Answer every datagram with its own bytes (``udpkit serve --echo``).

    Callable like a handler, so it works wherever one does; servers recognise it
    and answer whole batches without a Python call per datagram.
    """

    __slots__ = ()

    def __call__(self, dgram: Datagram) -> bytes:
        return dgram.data

    def __repr__(self) -> str:
        return "udpkit.ECHO"


ECHO = Echo()
"""The echo answer: every datagram is answered with its own bytes."""


class Fixed:
    """Answer every datagram with the same bytes (``udpkit serve --reply TEXT``).

    Args:
        payload: the reply.

    Raises:
        TypeError: ``payload`` is not bytes.
    """

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"Fixed reply {payload!r:.40}: must be bytes (encode text first)")
        self.payload = bytes(payload)

    def __call__(self, dgram: Datagram) -> bytes:
        return self.payload

    def __repr__(self) -> str:
        return f"udpkit.Fixed({self.payload!r:.60})"


@runtime_checkable
class BatchAnswer(Protocol):
    """Answers a whole batch at once: one reply (or ``None``) per datagram, in order.

    ``reply_ratio`` is the most reply bytes any answer has per byte of its own
    request (``None`` when unknown); the reflector's is 1.0.
    """

    @property
    def reply_ratio(self) -> float | None: ...

    def answer_batch(self, batch: Sequence[Datagram]) -> Sequence[bytes | None]: ...


def reply_items(r: object) -> Iterator[Payload]:
    """The datagrams a handler's non-bytes reply stands for; a bad one is a TypeError.

    The message names what the handler returned: a ``str`` would otherwise be
    taken for a sequence and blamed on its first character.
    """
    if isinstance(r, str) or not isinstance(r, Iterable):
        raise TypeError(
            f"handler returned {type(r).__name__} {r!r:.40}: return bytes, a list of bytes "
            "or None (encode text first)"
        )
    for x in r:
        if not isinstance(x, bytes | bytearray | memoryview):
            raise TypeError(
                f"handler's reply list holds {type(x).__name__} {x!r:.40}: every reply must "
                "be bytes"
            )
        yield x


def _unnamed(peer: Peer) -> bool:
    # An unbound Unix-domain client has no address to answer to.
    return peer is None or peer in ("", b"")


class PeerSet:
    """Distinct peers in fixed memory: an exact set while small, then linear counting."""

    def __init__(self) -> None:
        self.seen: set[Peer] = set()
        self.sketch: bytearray | None = None
        self.zeros = _SKETCH_BITS

    def _mark(self, peers: Iterable[Peer]) -> None:
        sketch = self.sketch
        assert sketch is not None
        mask = _SKETCH_BITS - 1
        for p in peers:
            h = hash(p) & mask
            bit = 1 << (h & 7)
            if not sketch[h >> 3] & bit:
                sketch[h >> 3] |= bit
                self.zeros -= 1

    def add(self, peers: Iterable[Peer]) -> None:
        """Note these peers (repeats cost a set lookup each)."""
        if self.sketch is not None:
            self._mark(peers)
            return
        seen = self.seen
        seen.update(peers)
        if len(seen) > _PEER_EXACT:
            self.sketch = bytearray(_SKETCH_BITS // 8)
            self._mark(seen)
            self.seen = set()

    @property
    def estimated(self) -> bool:
        """Whether :attr:`count` is an estimate (past the exact range)."""
        return self.sketch is not None

    @property
    def count(self) -> int:
        """How many distinct peers were seen (exact, or the linear-counting estimate)."""
        if self.sketch is None:
            return len(self.seen)
        zeros = max(self.zeros, 1)
        return round(-_SKETCH_BITS * math.log(zeros / _SKETCH_BITS))


@dataclass
class StepStats:
    """What the serving step counted beyond the policy's verdicts.

    Attributes:
        handler_errors: handlers that raised or returned something that is not a reply.
        unreplyable: datagrams from a source with no address (an unbound Unix client).
        discarded: datagrams never answered because the server was halted mid-batch.
        whole_batches: batches decided at once (no policy call per datagram).
    """

    handler_errors: int = 0
    unreplyable: int = 0
    discarded: int = 0
    whole_batches: int = 0


class ServeStep:
    """One serving step per received batch: admission, answer, validation, budget, counters.

    Args:
        answer: ``None`` (count only), :data:`ECHO`, a :class:`Fixed` reply, a
            :class:`BatchAnswer`, or a handler ``(Datagram) -> reply | None``.
        policy: admission and reply rules; ``None`` admits and answers everything.
        observer: called with each batch's admitted datagrams, before answering.
        count_peers: count distinct sources (:attr:`peers`).
        on_error: called with each exception a handler raised (after counting it).

    Attributes:
        stats: the step's own counters (:class:`StepStats`).
        peers: the distinct sources seen, or ``None`` when not counted.
        halted: set it to answer nothing more (the rest of a batch is counted
            as ``discarded``), e.g. when a handler closed its server.
    """

    def __init__(
        self,
        answer: Handler | BatchAnswer | None,
        *,
        policy: Policy | None = None,
        observer: BatchObserver | None = None,
        count_peers: bool = False,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.answer = answer
        self.policy = policy
        self.observer = observer
        self.peers = PeerSet() if count_peers else None
        self.on_error = on_error
        self.stats = StepStats()
        self.halted = False
        self._batch_answer = answer if isinstance(answer, BatchAnswer) else None
        self._echo = isinstance(answer, Echo)
        self._fixed = answer.payload if isinstance(answer, Fixed) else None
        # Reply bytes per request byte the answer can reach (None: no bound known).
        self._ratio: float | None = None
        if self._echo:
            self._ratio = 1.0
        elif self._batch_answer is not None:
            self._ratio = self._batch_answer.reply_ratio
        self._screen = policy is not None and policy.screens_arrivals
        # Admission has work to do: a rule may refuse, or replies spend earned budget.
        self._admits = policy is not None and (self._screen or answer is not None)
        self._bounds: dict[Peer, float] = {}
        # A whole batch may be decided at once: a reply known without calling up,
        # nothing to show, no rule that refuses arrivals.
        self._wholesale = (self._echo or self._fixed is not None) and observer is None
        self._wholesale = self._wholesale and not self._screen

    @property
    def counting_only(self) -> bool:
        """Nothing to answer, show or decide: the loop may merely count arrivals."""
        return (
            self.answer is None
            and self.observer is None
            and self.peers is None
            and not self._screen
        )

    @property
    def whole_reply(self) -> bytes | Echo | None:
        """What a loop may send for every datagram without calling up: ECHO, bytes, or None."""
        if self._echo:
            return ECHO
        return self._fixed

    def _bound(self, peer: Peer) -> float:
        bounds = self._bounds
        b = bounds.get(peer)
        if b is None:
            assert self.policy is not None
            b = self.policy.reply_bound(peer)
            if b == _INF:  # trusted for good; an untrusted peer's budget changes
                if len(bounds) >= _BOUND_CACHE_MAX:
                    bounds.clear()  # derived data: cheaper to start over than to age it
                bounds[peer] = b
        return b

    def _clear(self, peers: Collection[Peer], need: float) -> tuple[bool, Peer]:
        """Whether every reply of a batch provably fits, and the one source to charge.

        ``need``: reply bytes per request byte the batch may reach.  Trusted
        sources may get anything; a single untrusted source may get its factor
        (the caller then charges the batch's totals to it, returned second).
        Several untrusted sources go per datagram, each against its own budget.
        """
        if len(peers) == 1:
            for p in peers:
                b = self._bound(p)
                if b < need:
                    return False, None
                return True, (None if b == _INF else p)
        bound = self._bound
        for p in peers:
            if bound(p) != _INF:
                return False, None
        return True, None

    def serve_one(self, peer: Peer, length: int) -> bool:
        """:meth:`serve_whole` for a batch of one datagram (the cost of a lone request)."""
        if not self._wholesale:
            return False
        size = length if self._echo else len(self._fixed or b"")
        policy = self.policy
        if policy is not None:
            b = self._bounds.get(peer)
            if b is None:
                b = self._bound(peer)
            if b != _INF:
                if b < 0 or size > b * length:
                    return False
                policy.charge(peer, length, size)
            policy.count_admitted(1)
        self.stats.whole_batches += 1
        if self.peers is not None:
            self.peers.add((peer,))
        return True

    def serve_whole(
        self, peers: Collection[Peer], lens: Sequence[int], count: int | None = None
    ) -> bool:
        """Decide a whole batch for :attr:`whole_reply`, or say it must go per datagram.

        For a loop that can send :attr:`whole_reply` to every datagram of the
        batch itself (from its receive buffers), with nothing to show.

        Args:
            peers: the batch's distinct sources (every one a replyable address).
            lens: every datagram's length, none truncated; with ``count``, the
                lengths of GRO-coalesced buffers holding ``count`` datagrams (ECHO only).

        Returns:
            ``True``: every datagram is admitted and answered, counted so; the
            loop sends the replies.  ``False``: nothing was counted; call
            :meth:`serve` with the datagrams.
        """
        if not self._wholesale or (count is not None and not self._echo):
            return False
        n = len(lens) if count is None else count
        fixed = self._fixed
        if self._echo:
            need = 1.0
            replied = sum(lens)
            received = replied
        elif fixed is not None:
            received = sum(lens)
            size = len(fixed)
            replied = n * size
            shortest = min(lens)
            need = size / shortest if shortest else (0.0 if not size else _INF)
        else:
            return False
        policy = self.policy
        if policy is not None:
            ok, charged = self._clear(peers, need)
            if not ok:
                return False
            if charged is not None:
                policy.charge(charged, received, replied)
            policy.count_admitted(n)
        self.stats.whole_batches += 1
        if self.peers is not None:
            self.peers.add(peers)
        return True

    def serve(
        self, batch: Sequence[Datagram], now: float, peers: Collection[Peer] | None = None
    ) -> tuple[Sequence[int], list[Payload]]:
        """Serve one batch, datagram by datagram where it must.

        Args:
            batch: the datagrams received, in order.
            now: the monotonic clock, read once for the batch.
            peers: the batch's distinct sources, when the caller knows them.

        Returns:
            ``(sources, replies)``: each reply and the index in ``batch`` of the
            datagram it answers, in order.
        """
        policy = self.policy
        checked = policy is not None
        charged: Peer = None  # the one untrusted source a cleared batch is charged to
        # Every source an address (never an unbound Unix client): no check per datagram.
        named = peers is not None and all([type(p) is tuple for p in peers])
        index: Sequence[int] = range(len(batch))
        if self._admits:
            assert policy is not None
            if peers is None:
                peers = {d[1] for d in batch}
            ok = False
            if not self._screen:
                ok, charged = self._clear(peers, self._ratio or _INF)
            if ok:
                policy.count_admitted(len(batch))
                if charged is not None:
                    policy.charge(charged, sum([d[2] for d in batch]), 0)
                checked = False  # every reply provably fits: no check per reply
                self.stats.whole_batches += 1
            else:
                admit = policy.admit
                kept = [i for i, d in enumerate(batch) if admit(d[1], d[2], now) is ADMIT]
                if len(kept) != len(batch):
                    index = kept
                    batch = [batch[i] for i in kept]
                    peers = None
        if self.peers is not None:
            self.peers.add(peers if peers is not None else {d[1] for d in batch})
        if self.observer is not None and batch:
            self.observer(batch)
        if self.answer is None or not batch:
            return (), []
        out: tuple[Sequence[int], list[Payload]]
        if self._batch_answer is not None:
            out = self._answer_batch(batch, index, now, checked)
        elif not checked and named and not self.halted:
            out = self._answer_mapped(batch, index)
        else:
            out = self._answer_each(batch, index, now, checked)
        if charged is not None and out[1]:
            assert policy is not None
            policy.charge(charged, 0, sum([len(r) for r in out[1]]))
        return out

    def _answer_mapped(
        self, batch: Sequence[Datagram], index: Sequence[int]
    ) -> tuple[Sequence[int], list[Payload]]:
        """Call the handler on every datagram with no Python loop of our own around it.

        For batches whose sources are all addresses and whose replies need no
        budget check.  A handler that raises is counted and the rest go on.
        """
        results: list[object] = []
        calls = map(self.answer, batch)  # type: ignore[arg-type]
        while True:
            try:
                results.extend(calls)  # keeps what came before a raise; `calls` goes on after it
                break
            except Exception as exc:
                self._failed(exc)
                results.append(None)
        nothing = results.count(None)
        if nothing == len(results):
            return (), []
        kinds = set(map(type, results))
        if kinds <= _PLAIN:
            plain = cast("list[bytes | None]", results)
            if not nothing:
                return index, cast("list[Payload]", plain)
            keep = list(map(is_not, plain, repeat(None)))
            return list(compress(index, keep)), cast("list[Payload]", list(compress(plain, keep)))
        sources: list[int] = []
        replies: list[Payload] = []
        for j, r in zip(index, results, strict=True):
            self._take(j, None, r, 0.0, None, sources, replies)
        return sources, replies

    def _answer_each(
        self, batch: Sequence[Datagram], index: Sequence[int], now: float, checked: bool
    ) -> tuple[Sequence[int], list[Payload]]:
        answer = self.answer
        assert answer is not None and callable(answer)
        may_reply = self.policy.may_reply if checked and self.policy is not None else None
        st = self.stats
        sources: list[int] = []
        replies: list[Payload] = []
        for j, d in zip(index, batch, strict=True):
            peer = d[1]
            if type(peer) is not tuple and _unnamed(peer):
                st.unreplyable += 1
                continue
            if self.halted:
                st.discarded += 1
                continue
            try:
                r = answer(d)
            except Exception as exc:
                self._failed(exc)
                continue
            self._take(j, peer, r, now, may_reply, sources, replies)
        return sources, replies

    def _take(  # noqa: PLR0917 - the answering loop's locals
        self,
        j: int,
        peer: Peer,
        r: object,
        now: float,
        may_reply: Callable[[Peer, int, float], bool] | None,
        sources: list[int],
        replies: list[Payload],
    ) -> None:
        """Add what a handler returned for datagram ``j``: checked, each reply within budget."""
        if r is None:
            return
        try:
            for x in (r,) if isinstance(r, bytes | bytearray | memoryview) else reply_items(r):
                if may_reply is None or may_reply(peer, len(x), now):
                    sources.append(j)
                    replies.append(x)
        except Exception as exc:
            self._failed(exc)  # a bad reply is the handler's error; the ones before go

    def _answer_batch(
        self, batch: Sequence[Datagram], index: Sequence[int], now: float, checked: bool
    ) -> tuple[list[int], list[Payload]]:
        assert self._batch_answer is not None
        try:
            answers = self._batch_answer.answer_batch(batch)
        except Exception as exc:
            self._failed(exc)
            return [], []
        may_reply = self.policy.may_reply if checked and self.policy is not None else None
        sources: list[int] = []
        replies: list[Payload] = []
        for j, d, r in zip(index, batch, answers, strict=True):
            if r is not None and (may_reply is None or may_reply(d[1], len(r), now)):
                sources.append(j)
                replies.append(r)
        return sources, replies

    def _failed(self, exc: Exception) -> None:
        self.stats.handler_errors += 1
        if self.on_error is not None:
            self.on_error(exc)
