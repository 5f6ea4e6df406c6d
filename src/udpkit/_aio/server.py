"""udpkit.aio.Server: engine handlers served from the event loop's readiness callbacks."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time

from udpkit._aio.core import BUSY_SLICE, SERVER_BATCHES, AioSocket, EndpointStats
from udpkit._core.datagram import Datagram
from udpkit._core.errors import UsageError
from udpkit._core.policy import Policy
from udpkit._core.serving import Handler, ServeStep
from udpkit._net.sockets import DatagramSocket

__all__ = ["Server"]


class Server(AioSocket):
    """Serve a datagram socket from the event loop with an engine handler.

    Each readable event reads batches (up to 16 of ``batch`` datagrams), calls
    ``handler`` for every datagram, and sends the replies together. Under light
    load (one datagram per event) the first datagram is read with one plain
    ``recvfrom_into`` and answered before the batch call, which keeps a lone
    request's round trip short. When the kernel's send buffer is full, reading
    stops until it drains.

    Args:
        sock: a bound datagram socket; the server owns it.
        handler: ``(Datagram) -> bytes | Sequence[bytes] | None`` as for the engine;
            ``None`` only counts. A handler that raises is counted, not fatal.
        bufsize: bytes kept per datagram; longer ones reach the handler truncated.
        batch: datagrams per receive call.
        fast: ``None`` uses recvmmsg where available, ``False`` the portable path.
        policy: admission and reply rules, as for :class:`udpkit.DatagramServer`;
            by default loopback is trusted and every other source is held to the
            anti-amplification budget (replies never exceed the bytes it sent).
        busy_poll_us: after serving, keep reading without sleeping until this many
            microseconds pass with no datagram, answering each one as it arrives
            (0: off). It trades a busy CPU for the wake-up latency of a round trip;
            the loop's other tasks still get a turn about every millisecond.

    Attributes:
        handler_error: the latest exception a handler raised (``stats.handler_errors``
            counts them all; the first also goes to the loop's exception handler).
        last_error: the latest soft error (an ICMP report, a reply not sent), or None.
        policy: the :class:`~udpkit.Policy` in force (None on a Unix socket); its
            verdicts show in ``stats.policy``.

    Raises:
        UsageError: no running event loop, a bad size, or a coroutine function
            as the handler (the reply must come back at once).
    """

    def __init__(
        self,
        sock: DatagramSocket | socket.socket,
        handler: Handler | None,
        *,
        bufsize: int = 65535,
        batch: int = 64,
        fast: bool | None = None,
        policy: Policy | None = None,
        busy_poll_us: int = 0,
    ) -> None:
        if inspect.iscoroutinefunction(handler):
            sock.close()
            raise UsageError(
                f"handler {getattr(handler, '__name__', handler)!r} is a coroutine function: "
                "a Server handler must return its reply at once (bytes, a list of bytes or "
                "None); for replies that await, read an Endpoint with async for"
            )
        self._handler = handler
        self.handler_error: Exception | None = None
        """The latest exception a handler raised (``stats.handler_errors`` counts them all)."""
        self._done: asyncio.Future[None] | None = None
        self._seen = 0.0  # perf_counter of the last datagram, for busy polling
        self._spin_soon = False
        super().__init__(sock, bufsize=bufsize, batch=batch, fast=fast, busy_poll_us=busy_poll_us)
        raw = self.sock
        if policy is None and raw.family in (socket.AF_INET, socket.AF_INET6):
            policy = Policy(local=raw.getsockname())
        self.policy = policy
        self._step = ServeStep(handler, policy=policy, on_error=self._handler_failed)

    @property
    def stats(self) -> EndpointStats:
        """The counters, with ``kernel_drops`` read afresh and the policy's verdicts."""
        st = super().stats
        if self.policy is not None:
            st.policy = {k: v for k, v in self.policy.counters.items() if v}
        return st

    def _on_readable(self) -> None:
        start = time.perf_counter()
        served = self._serve_ready(start)
        if self._busy and served >= 0:
            self._busy_serve(served > 0, start)

    def _busy_serve(self, fresh: bool, start: float) -> None:
        """Keep answering without sleeping until ``busy_poll_us`` passes with no datagram.

        The loop gets control back every ``BUSY_SLICE`` (counted from ``start``,
        when this callback began), however fast datagrams come; the spin then
        goes on from a ``call_soon`` callback while the budget lasts.
        """
        clock = time.perf_counter
        if fresh:
            self._seen = clock()
        slice_end = start + BUSY_SLICE
        while clock() < slice_end:
            d = self._recv_one()
            backlog = d is not None  # it was waiting already: more may be, read in batches
            if d is None:
                d = self._spin(min(self._seen + self._busy, slice_end))
                if d is None:
                    break
            self._seen = clock()
            if not self._answer([d]) or self._closed:
                return
            if backlog and self._serve_ready(start) < 0:
                return
        if (
            clock() < self._seen + self._busy
            and self._reading
            and not self._closed
            and not self._spin_soon
        ):
            self._spin_soon = True
            self._loop.call_soon(self._spin_on)

    def _spin_on(self) -> None:
        self._spin_soon = False
        if self._reading and not self._closed:
            self._on_readable()

    def _serve_ready(self, start: float) -> int:
        """Serve what is queued in the socket; the count, or -1 when reading paused or failed.

        Batches stop after ``SERVER_BATCHES`` or once ``BUSY_SLICE`` has passed
        since ``start``, so slow handlers cannot hold the loop; epoll is
        level-triggered, so the rest is served on the loop's next turn.
        """
        served = 0
        if self._light:
            d = self._recv_one()
            if d is not None:
                served = 1
                if not self._answer([d]):
                    return -1
            if self._fatal is not None or self._closed:
                return -1  # the socket failed, or the handler closed the server
        for _ in range(SERVER_BATCHES):
            got = self._recv_batch(self._batch)
            if got is None:
                continue
            if not got:
                break
            served += len(got)
            if not self._answer(got) or self._closed:
                return -1
            if len(got) < self._batch:
                break  # the socket is empty: no EAGAIN call needed
            if time.perf_counter() - start >= BUSY_SLICE:
                break
        self._light = self._fast and served <= 1
        return -1 if self._fatal is not None or self._closed else served

    def _answer(self, got: list[Datagram]) -> bool:
        """Serve ``got`` (one step) and send the replies; False when the send buffer is full."""
        step = self._step
        discarded = step.stats.discarded
        sources, replies = step.serve(got, time.monotonic())  # one clock read per batch
        self._st.discarded += step.stats.discarded - discarded  # the handler closed the server
        if self._closed or not replies:
            return True
        out_data, out_to = self._out_data, self._out_to
        for i, r in zip(sources, replies, strict=True):
            out_data.append(r if type(r) is bytes else bytes(r))
            out_to.append(got[i][1])
        if not self._flush():
            self._pause()  # the send buffer is full: read again once it drains
            return False
        return True

    def _handler_failed(self, exc: Exception) -> None:
        """Note a handler's failure (the step counted it); the first also goes to the loop."""
        self._st.handler_errors += 1
        self.handler_error = exc
        if self._st.handler_errors == 1:
            self._loop.call_exception_handler(
                {
                    "message": "udpkit.aio.Server handler failed (counted in "
                    "stats.handler_errors; only the first failure is reported here)",
                    "exception": exc,
                }
            )

    def _drained(self) -> None:
        self._resume()

    def _on_close(self) -> None:
        # A handler closed the server: the rest of its batch is not answered.
        self._step.halted = True
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` is called (the serving itself runs in the loop's callbacks).

        Cancelling it closes the server, as with ``asyncio.Server.serve_forever``.

        Raises:
            NetworkError: the socket failed.
        """
        if not self._closed:
            if self._done is None:
                self._done = self._loop.create_future()
            try:
                await asyncio.shield(self._done)
            except asyncio.CancelledError:
                self.close()
                raise
        if self._fatal is not None:
            raise self._fatal
