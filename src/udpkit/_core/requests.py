"""Request matching: which running request each arriving datagram answers.

No socket, no clock, no event loop: :class:`udpkit.aio.Endpoint` owns those and
hands each datagram to :meth:`Requests.claim` (from ``recv``) or
:meth:`Requests.route` (from a request collecting its answer).  UDP carries no
request ids, so a request either brings a ``match`` (and runs concurrently with
the others that do, the earliest started getting a datagram first), or takes
the catch-all place (``request`` without ``match``, ``request_all``: one at a
time, under the endpoint's turn lock).  What no request accepts is *stale*: the
caller counts it.
"""

from __future__ import annotations

from collections.abc import Callable

from udpkit._core.datagram import Datagram

__all__ = ["Request", "Requests"]


class Request:
    """One running request: what it accepts, what was routed to it, and its match's error.

    ``want`` is how many datagrams satisfy it (1 for ``request``, ``limit`` for
    ``request_all``). A matched request keeps accepting what its ``match`` accepts
    after that (a second answer to a resent request): the surplus is stale.
    """

    __slots__ = ("error", "got", "match", "want")

    def __init__(self, match: Callable[[Datagram], bool] | None, want: int) -> None:
        self.match = match
        self.want = want
        self.got: list[Datagram] = []
        self.error: Exception | None = None

    def satisfied(self) -> bool:
        """Whether it has what it waits for (or its ``match`` raised)."""
        return self.error is not None or len(self.got) >= self.want


class Requests:
    """The running requests of one endpoint.

    Attributes:
        matching: requests with ``match``, in start order (the list object stays
            the same, so a caller may keep a reference for a cheap emptiness test).
        catch: the one request without ``match``, or None.
    """

    __slots__ = ("catch", "matching")

    def __init__(self) -> None:
        self.matching: list[Request] = []
        self.catch: Request | None = None

    @property
    def active(self) -> bool:
        """Whether any request is running."""
        return bool(self.matching) or self.catch is not None

    def enter(self, me: Request) -> None:
        """Start routing to ``me`` (a request without ``match`` must hold the turn)."""
        if me.match is not None:
            self.matching.append(me)
        else:
            self.catch = me

    def leave(self, me: Request) -> int:
        """Stop routing to ``me``; returns how many routed datagrams it never took (stale)."""
        if me.match is not None:
            self.matching.remove(me)
        elif self.catch is me:
            self.catch = None
        n = len(me.got)  # routed to it, never taken (timed out, cancelled, match raised)
        me.got.clear()
        return n

    def claim(self, d: Datagram) -> Request | None:
        """The first request with ``match`` that accepts ``d`` gets it; None if none does.

        A ``match`` that raises keeps the exception, for its own request to raise.
        """
        for a in self.matching:
            match = a.match
            if a.error is not None or match is None:  # all here have a match
                continue
            try:
                ok = match(d)
            except Exception as exc:
                a.error = exc
                continue
            if ok:
                a.got.append(d)
                return a
        return None

    def route(self, d: Datagram) -> Request | None:
        """Route a datagram a request took: to a matching request, else the catch-all
        request (while it wants more), else nowhere (None: the caller counts it stale)."""
        if self.matching:
            a = self.claim(d)
            if a is not None:
                return a
        c = self.catch
        if c is not None and len(c.got) < c.want:
            c.got.append(d)
            return c
        return None
