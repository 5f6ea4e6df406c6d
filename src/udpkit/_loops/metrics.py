"""Prometheus metrics for a running server: every engine, policy and recording counter.

prometheus-client is imported only when ``--metrics`` is asked for, so it
costs nothing on the ``send``/``serve`` start-up path otherwise.  Figures are
read at scrape time from a callable that returns the server's current
counters, so nothing is copied on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from udpkit._core.errors import UsageError, map_oserror

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from udpkit._loops.server import ServeStats

__all__ = ["serve_metrics"]

_PREFIX = "udpkit"
_HOST = "127.0.0.1"  # metrics stay on this host unless asked

# (ServeStats field, metric name, help)
_COUNTERS = (
    ("received", "datagrams_received", "Datagrams read from the socket, whole or truncated."),
    ("bytes_received", "bytes_received", "Bytes received, by real length on the wire."),
    ("truncated", "datagrams_truncated", "Datagrams longer than the receive buffer."),
    ("truncated_bytes_lost", "truncated_bytes_lost", "Bytes cut off by truncation."),
    ("replies", "replies_sent", "Replies sent."),
    ("bytes_sent", "bytes_sent", "Reply bytes sent."),
    ("handler_errors", "handler_errors", "Exceptions raised by the handler."),
    ("unreplyable", "unreplyable", "Datagrams from peers with no address to answer."),
)


def serve_metrics(
    where: str | tuple[str, int | str], snapshot: Callable[[], ServeStats]
) -> tuple[Callable[[], None], str]:
    """Serve Prometheus text format at ``http://HOST:PORT/metrics`` from a daemon thread.

    Args:
        where: ``"[HOST:]PORT"`` (host 127.0.0.1) or ``(host, port)`` to listen on.
        snapshot: returns the current counters (a fresh :class:`ServeStats`).

    Returns:
        A function that stops the metrics server, and the URL it serves.

    Raises:
        UsageError: prometheus-client is not installed.
        AddressError: a bad host or port.
        NetworkError: the address cannot be bound.
    """
    import socket

    from udpkit._net.addr import resolve_one, split_hostport

    host, port = where if isinstance(where, tuple) else split_hostport(where, default_host=_HOST)
    addr = resolve_one(host, port, type=socket.SOCK_STREAM, proto="tcp", passive=True)
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise UsageError(
            "--metrics needs prometheus-client: pip install prometheus-client"
        ) from None

    class _Collector:
        def collect(self) -> Iterator[Metric]:
            return _families(snapshot())

    registry = CollectorRegistry()
    registry.register(_Collector())
    try:
        server, thread = start_http_server(addr.port, addr=addr.host, registry=registry)
    except OSError as exc:
        raise map_oserror(exc, f"cannot serve metrics on {addr}") from exc

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    bound_host, bound_port = server.server_address[:2]
    text = bound_host.decode() if isinstance(bound_host, bytes | bytearray) else str(bound_host)
    shown = f"[{text}]" if ":" in text else text
    return stop, f"http://{shown}:{bound_port}/metrics"


# (ServeStats field, metric name, help, label) of the counters kept by kind
_BY_KIND = (
    ("reply_errors", "reply_errors", "Reply send errors by errno.", "errno"),
    ("policy", "policy", "Policy decisions by kind.", "kind"),
    ("record", "record", "Recording counters by kind.", "kind"),
)


def _families(snap: ServeStats) -> Iterator[Metric]:
    """One scrape's metric families, from one snapshot of the counters."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for key, name, doc in _COUNTERS:
        c = CounterMetricFamily(f"{_PREFIX}_{name}", doc)
        c.add_metric([], float(getattr(snap, key)))
        yield c
    drops = snap.kernel_drops
    g = GaugeMetricFamily(
        f"{_PREFIX}_kernel_drops",
        "Datagrams the kernel dropped for a full receive buffer (absent when unknown).",
    )
    if drops is not None:
        g.add_metric([], float(drops))
    yield g
    for key, name, doc, label in _BY_KIND:
        family = CounterMetricFamily(f"{_PREFIX}_{name}", doc, labels=[label])
        by_kind: dict[str, int] = getattr(snap, key)
        for kind, n in sorted(by_kind.items()):
            family.add_metric([str(kind)], float(n))
        yield family
