"""``udpkit bench``'s figures as text: the JSON document, the live rows, the final table, the plot.

Every JSON key carries its unit (``_datagrams``, ``_bytes``, ``_ms``, ``_s``,
``_per_s``, ``_ratio``).  Throughput is UDP payload over the send phase, as
iperf3 counts it.  No socket here: a :class:`~udpkit._loops.bench.BenchResult`
goes in, text comes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from udpkit._core.shortfall import RateShortfall
    from udpkit._core.stats import IntervalRow, LatencyHistogram, LossSplit
    from udpkit._loops.bench import BenchConfig, BenchResult, FlowResult

__all__ = [
    "ROW_HEADER",
    "bench_document",
    "format_row",
    "format_table",
    "icmp_errors",
    "plot",
    "shortfall_document",
]

_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))

# A JSON object of the document: its values are read back by the table below.
_Doc: TypeAlias = dict[str, Any]


# ---------------------------------------------------------------- the document


def _ms(ns: float) -> float:
    return round(ns / 1e6, 6)


def _rate(n: float, seconds: float) -> float:
    return round(n / seconds, 3) if seconds > 0 else 0.0


def _split_dict(s: LossSplit, numbered: int) -> _Doc:
    return {
        "lost_datagrams": s.lost,
        "lost_sender_datagrams": s.sender,
        "lost_path_datagrams": s.path,
        "lost_receiver_kernel_datagrams": s.receiver_kernel,
        "loss_ratio": round(s.lost / numbered, 9) if numbered else 0.0,
    }


def _direction(  # noqa: PLR0917 - one row of the table, field by field
    numbered: int,
    received: int,
    unique: int,
    dups: int,
    reordered: int,
    extent: int,
    split: LossSplit,
    jitter_ms: float | None,
    seconds: float,
    size: int,
) -> _Doc:
    return {
        "sent_datagrams": numbered,
        "received_datagrams": received,
        "unique_datagrams": unique,
        **_split_dict(split, numbered),
        "duplicate_datagrams": dups,
        "reordered_datagrams": reordered,
        "reordered_ratio": round(reordered / unique, 9) if unique else 0.0,
        "reorder_extent_max_datagrams": extent,
        "jitter_ms": jitter_ms,
        "datagrams_per_s": _rate(unique, seconds),
        "bits_per_s": _rate(unique * size * 8, seconds),
    }


def _flow_doc(f: FlowResult, peer: str, cfg: BenchConfig, seconds: float) -> _Doc:
    from udpkit._core.stats import split_loss

    size = cfg.size
    own = f.kernel_drops
    doc: _Doc = {
        "run_id": f.run_id,
        "local": f.local,
        "control_local": f.control_local,
        "control_sent_datagrams": f.control_sent,
        "control_received_datagrams": f.control_received,
        "receivers": [
            {
                "peer": peer,
                "received_datagrams": r.received,
                "unique_datagrams": r.unique,
                "lost_datagrams": max(f.sent - r.unique, 0),
                "duplicate_datagrams": r.duplicates,
                "reordered_datagrams": r.reordered,
                "kernel_drops_datagrams": r.kernel_drops_run,
            }
            for peer, r in sorted(f.receivers.items())
        ],
        "sent_datagrams": f.sent,
        "sent_bytes": f.sent_bytes,
        "send_datagrams_per_s": _rate(f.sent, seconds),
        "send_bits_per_s": _rate(f.sent_bytes * 8, seconds),
        "send_errors": dict(f.send_errors),
        "icmp_errors_count": sum(f.icmp_errors.values()),
        "send_blocked_count": f.send_blocked,
        "malformed_datagrams": f.malformed,
        "late_replies_datagrams": f.late,
        "kernel_drops_datagrams": own,
        "forward": None,
        "return": None,
        "round_trip": None,
    }
    r = f.report
    fwd_kernel = None if r is None else r.kernel_drops_run
    if r is not None:
        fs = split_loss(f.numbered, r.unique, f.sender_lost, r.kernel_drops_run)
        doc["forward"] = _direction(
            f.numbered, r.received, r.unique, r.duplicates, r.reordered,
            r.reorder_extent_max, fs, _ms(r.jitter_ns), seconds, size,
        )  # fmt: skip
        doc["forward"]["receiver_kernel_drops_datagrams"] = r.kernel_drops_run
        if not cfg.one_way:
            t = f.reverse
            rs = split_loss(r.echoed, t.unique, min(r.send_errors, r.echoed), own)
            doc["return"] = _direction(
                r.echoed, t.received, t.unique, t.duplicates, t.reordered,
                t.extent_max, rs, None, seconds, size,
            )  # fmt: skip
    if not cfg.one_way:
        t = f.round_trip
        kernel = None if own is None and fwd_kernel is None else (own or 0) + (fwd_kernel or 0)
        ts = split_loss(f.numbered, t.unique, f.sender_lost, kernel)
        doc["round_trip"] = _direction(
            f.numbered, t.received, t.unique, t.duplicates, t.reordered,
            t.extent_max, ts, _ms(f.rtt_jitter.jitter_ns), seconds, size,
        )  # fmt: skip
    doc.update(_rtt(f.rtt, cfg.one_way))
    paths = [doc[k]["lost_path_datagrams"] for k in ("forward", "return") if doc[k] is not None]
    if peer == "echo":
        paths = [doc["round_trip"]["lost_path_datagrams"]]
    doc["path_lost_datagrams"] = sum(paths)
    return doc


def _rtt(h: LatencyHistogram, none: bool) -> _Doc:
    keys = ["rtt_min_ms", "rtt_mean_ms", *[f"rtt_{n}_ms" for n, _ in _PERCENTILES], "rtt_max_ms"]
    if none or not h.count:
        return {"rtt_samples_count": h.count, **dict.fromkeys(keys)}
    vals = [h.min_ns, h.mean_ns, *[h.percentile(p) for _, p in _PERCENTILES], h.max_ns]
    return {"rtt_samples_count": h.count, **{k: _ms(v) for k, v in zip(keys, vals, strict=True)}}


def _sum_dirs(docs: Sequence[_Doc | None]) -> _Doc | None:
    present = [d for d in docs if d is not None]
    if not present:
        return None
    out: _Doc = {}
    for key in present[0]:
        vals = [d[key] for d in present]
        if key == "reorder_extent_max_datagrams":
            out[key] = max(vals)
        elif key == "jitter_ms":
            out[key] = None if None in vals else round(sum(vals) / len(vals), 6)
        elif key.endswith("_ratio"):
            continue
        elif all(isinstance(v, int | float) for v in vals):
            out[key] = sum(vals)
        else:
            out[key] = None if None in vals else sum(vals)
    sent = out["sent_datagrams"]
    out["loss_ratio"] = round(out["lost_datagrams"] / sent, 9) if sent else 0.0
    uniq = out["unique_datagrams"]
    out["reordered_ratio"] = round(out["reordered_datagrams"] / uniq, 9) if uniq else 0.0
    return out


def shortfall_document(short: RateShortfall | None, size: int) -> _Doc | None:
    """``under_rate`` in the document: the send rate under 90 % of the asked one, and why."""
    if short is None:
        return None
    return {
        "asked_datagrams_per_s": round(short.asked_per_s, 3),
        "achieved_datagrams_per_s": round(short.achieved_per_s, 3),
        "achieved_ratio": round(short.ratio, 6),
        "send_idle_ratio": round(short.idle_ratio, 6),
        "causes": list(short.causes),
        "message": short.message(size),
    }


def bench_document(result: BenchResult, stopped_by: str | None = None) -> _Doc:
    """The run as one JSON-ready dict; every key names its unit.

    ``stopped_by`` names what ended the run early (``"SIGINT"``; a stopped run
    without a name is ``"stop"``): the figures are those of what ran.
    """
    from udpkit._core.stats import LatencyHistogram

    cfg = result.config
    secs = result.send_seconds
    flows = [_flow_doc(f, result.peer, cfg, secs) for f in result.flows]
    hist = LatencyHistogram()
    for f in result.flows:
        hist.merge(f.rtt)
    total: _Doc = {}
    for key in (
        "sent_datagrams",
        "sent_bytes",
        "send_blocked_count",
        "malformed_datagrams",
        "icmp_errors_count",
    ):
        total[key] = sum(d[key] for d in flows)
    total["send_datagrams_per_s"] = _rate(total["sent_datagrams"], secs)
    total["send_bits_per_s"] = _rate(total["sent_bytes"] * 8, secs)
    errors: dict[str, int] = {}
    for f in result.flows:
        for k, v in f.send_errors.items():
            errors[k] = errors.get(k, 0) + v
    total["send_errors"] = errors
    drops = [d["kernel_drops_datagrams"] for d in flows]
    total["kernel_drops_datagrams"] = None if None in drops else sum(drops)
    for key in ("forward", "return", "round_trip"):
        total[key] = _sum_dirs([d[key] for d in flows])
    total.update(_rtt(hist, cfg.one_way))
    total["path_lost_datagrams"] = sum(d["path_lost_datagrams"] for d in flows)
    total["send_idle_ratio"] = round(min(result.send_idle_seconds / secs, 1.0), 6) if secs else 0.0
    return {
        "version": 1,
        "target": result.target,
        "peer": result.peer,
        "settings": {
            "size_bytes": cfg.size,
            "rate_datagrams_per_s": cfg.rate,
            # What iperf3's -b calls the rate: payload bits, as asked (None: max).
            "rate_bits_per_s": None if cfg.rate is None else round(cfg.rate * cfg.size * 8, 3),
            "duration_s": cfg.duration,
            "count_datagrams": cfg.count,
            "window_datagrams": cfg.window,
            "parallel_flows": cfg.parallel,
            "interval_s": cfg.interval,
            "one_way": cfg.one_way,
            "timeout_s": cfg.timeout,
            "linger_s": cfg.linger,
        },
        "send_seconds_s": round(secs, 6),
        "stopped_by": stopped_by or ("stop" if result.stopped else None),
        "under_rate": shortfall_document(result.shortfall(), cfg.size),
        "total": total,
        "flows": flows,
        "intervals": [_interval(r) for r in result.intervals],
    }


def _interval(r: IntervalRow) -> _Doc:
    rx = r.sums.get("rx", 0)
    return {
        "start_s": round(r.start_ns / 1e9, 6),
        "end_s": round(r.end_ns / 1e9, 6),
        "sent_datagrams": r.sums.get("sent", 0),
        "send_datagrams_per_s": round(r.per_second("sent"), 3),
        "send_bits_per_s": round(r.per_second("sent_bytes") * 8, 3),
        "received_datagrams": rx,
        "receive_datagrams_per_s": round(r.per_second("rx"), 3),
        "receive_bits_per_s": round(r.per_second("rx_bytes") * 8, 3),
        "rtt_mean_ms": _ms(r.sums.get("rtt_sum_ns", 0) / rx) if rx else None,
        "rtt_max_ms": _ms(r.peaks["rtt_max_ns"]) if "rtt_max_ns" in r.peaks else None,
    }


# ---------------------------------------------------------------- text output


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


ROW_HEADER = "interval         sent/s      bitrate          replies/s    rtt mean/max ms\n"


def format_row(r: IntervalRow) -> str:
    """One live row, iperf3-like."""
    d = _interval(r)
    rtt = "-"
    if d["rtt_mean_ms"] is not None:
        rtt = f"{d['rtt_mean_ms']:.3f}/{d['rtt_max_ms']:.3f}"
    return (
        f"{d['start_s']:6.2f}-{d['end_s']:<6.2f} s {d['send_datagrams_per_s']:>10.0f}  "
        f"{_si(d['send_bits_per_s'], 'bit/s'):>15}  "
        f"{d['receive_datagrams_per_s']:>10.0f}    {rtt}\n"
    )


def icmp_errors(result: BenchResult) -> dict[str, int]:
    """ICMP errors reported on receive, by errno name, over all flows."""
    out: dict[str, int] = {}
    for f in result.flows:
        for k, v in f.icmp_errors.items():
            out[k] = out.get(k, 0) + v
    return out


def format_table(doc: _Doc, icmp: dict[str, int] | None = None) -> str:
    """The final table (plain text); ``icmp``: ICMP errors by errno name, if any."""
    t = doc["total"]
    s = doc["settings"]
    flows = s["parallel_flows"]
    stopped = f" (stopped by {doc['stopped_by']})" if doc.get("stopped_by") else ""
    lines = [
        f"udpkit bench: {doc['target']} ({doc['peer']}), {flows} flow{'s' * (flows > 1)}, "
        f"{s['size_bytes']} B probes: {t['sent_datagrams']} sent in {doc['send_seconds_s']:.2f} s "
        f"({t['send_datagrams_per_s']:.0f} datagrams/s, {_si(t['send_bits_per_s'], 'bit/s')})"
        + stopped,
        f"{'direction':<11}{'received':>10}{'datagrams/s':>13}{'bitrate':>16}{'lost':>9}"
        f"  {'sender/path/kernel':<19}{'dup':>6}{'reordered':>10}{'extent':>7}{'jitter ms':>10}",
    ]
    for key, name in (("forward", "forward"), ("return", "return"), ("round_trip", "round trip")):
        d = t[key]
        if d is None:
            continue
        split = (
            f"{d['lost_sender_datagrams']}/{d['lost_path_datagrams']}/"
            f"{d['lost_receiver_kernel_datagrams']}"
        )
        jitter = "-" if d["jitter_ms"] is None else f"{d['jitter_ms']:.3f}"
        lines.append(
            f"{name:<11}{d['unique_datagrams']:>10}{d['datagrams_per_s']:>13.0f}"
            f"{_si(d['bits_per_s'], 'bit/s'):>16}{d['lost_datagrams']:>9}  {split:<19}"
            f"{d['duplicate_datagrams']:>6}{d['reordered_datagrams']:>10}"
            f"{d['reorder_extent_max_datagrams']:>7}{jitter:>10}"
        )
    if t["rtt_samples_count"] and t["rtt_p50_ms"] is not None:
        lines.append(
            "rtt ms: "
            + "  ".join(
                f"{k} {t[f'rtt_{k}_ms']:.3f}" for k in ("min", "p50", "p90", "p99", "p99_9", "max")
            ).replace("p99_9", "p99.9")
            + f"  ({t['rtt_samples_count']} samples)"
        )
    extra = []
    if t["send_errors"]:
        extra.append("send errors " + ", ".join(f"{k} {v}" for k, v in t["send_errors"].items()))
    if icmp:
        # The probe each one was about is lost: it is in the loss above.
        extra.append("ICMP errors " + ", ".join(f"{k} {v}" for k, v in sorted(icmp.items())))
    elif t.get("icmp_errors_count"):
        extra.append(f"ICMP errors {t['icmp_errors_count']}")
    if t["malformed_datagrams"]:
        extra.append(f"{t['malformed_datagrams']} malformed replies")
    # Lost between the two sockets, in neither kernel's count: a relay, a router or the wire.
    extra.append(f"lost on the path {t['path_lost_datagrams']}")
    lines.append("; ".join(extra))
    fl = doc["flows"]
    for f in fl:
        for r in f.get("receivers", []):
            lines.append(
                f"receiver {r['peer']}: received {r['unique_datagrams']}, lost "
                f"{r['lost_datagrams']}, duplicates {r['duplicate_datagrams']}, reordered "
                f"{r['reordered_datagrams']}"
            )
    if fl and fl[0].get("control_local"):
        # Through a relay these are separate flows: compare its per-flow counters.
        sent = sum(f["control_sent_datagrams"] for f in fl)
        got = sum(f["control_received_datagrams"] for f in fl)
        lines.append(
            f"probes from {', '.join(f['local'] for f in fl)}; control exchange from "
            f"{', '.join(f['control_local'] for f in fl)} ({sent} sent, {got} received), "
            "a flow of its own, not in the figures above"
        )
    return "\n".join(lines) + "\n"


def plot(path: str, result: BenchResult, doc: _Doc) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from udpkit._core.stats import LatencyHistogram

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    hist = LatencyHistogram()
    for f in result.flows:
        hist.merge(f.rtt)
    cdf = hist.cdf()
    if cdf:
        ax1.step([v / 1e6 for v, _ in cdf], [q for _, q in cdf], where="post")
    ax1.set_xlabel("round-trip time (ms)")
    ax1.set_ylabel("fraction of replies")
    ax1.set_title("RTT CDF" if cdf else "RTT CDF (no replies)")
    ax1.grid(True, alpha=0.3)
    rows = doc["intervals"]
    ends = [r["end_s"] for r in rows]
    ax2.plot(ends, [r["send_datagrams_per_s"] for r in rows], marker="o", label="sent")
    if doc["peer"] == "reflector" and doc["settings"]["one_way"]:
        pass
    else:
        ax2.plot(ends, [r["receive_datagrams_per_s"] for r in rows], marker="x", label="replies")
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("datagrams/s")
    ax2.set_title("throughput per interval")
    ax2.legend()
    ax2.grid(True, alpha=0.3)
    fig.suptitle(f"udpkit bench {doc['target']} ({doc['settings']['size_bytes']} B)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
