"""The ``bench`` and ``reflect`` commands: arguments, live rows, the final table, JSON, plot.

Every JSON key carries its unit (``_datagrams``, ``_bytes``, ``_ms``, ``_s``,
``_per_s``, ``_ratio``).  Throughput is UDP payload over the send phase, as
iperf3 counts it.
"""

from __future__ import annotations

import argparse
import math
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from udpkit._cli import options
from udpkit._cli.common import SubParsers, Writer, add_command
from udpkit._cli.common import family as _family
from udpkit._core import units
from udpkit._core.errors import UsageError

# Registering the parsers must cost no start-up: the measuring modules load on use.
if TYPE_CHECKING:
    from udpkit._core.stats import IntervalRow, LatencyHistogram, LossSplit
    from udpkit._loops.bench import BenchConfig, BenchResult, FlowResult
    from udpkit._loops.reflect import Reflector

__all__ = ["add_parser", "bench_command", "bench_document", "run_reflect"]

DEFAULT_REFLECT_PORT = "5202"
_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


# A JSON object of the document: its values are read back by the table below.
_Doc: TypeAlias = dict[str, Any]


# ---------------------------------------------------------------- arguments


def add_parser(sub: SubParsers) -> None:
    """Register ``bench`` and ``reflect`` on the CLI's subparsers."""
    bench = add_command(
        sub,
        "bench",
        help="measure a UDP path: throughput, loss per direction, reordering, jitter, RTT",
        description="Send numbered, timestamped probes to HOST PORT, where 'udpkit reflect' "
        "(loss, duplicates and reordering per direction) or 'udpkit serve --echo' (round "
        "trip only) answers, and report what happened to them.",
    )
    bench.add_argument("host", metavar="HOST")
    bench.add_argument("port", metavar="PORT")
    bench.add_argument(
        "--size",
        type=options.PROBE_SIZE,
        default=64,
        metavar="BYTES",
        help="probe size (default 64)",
    )
    bench.add_argument(
        "--rate",
        type=options.BENCH_RATE,
        metavar="RATE",
        help="datagrams/s (10000, 10k), bits/s of payload (100Mbps, 1Gb/s), bytes/s of "
        "payload (5MB/s) or 'max'; all flows together (default 1k, or max with --window)",
    )
    bench.add_argument(
        "--duration",
        "-t",
        type=options.DURATION,
        metavar="S",
        help="how long to send (default 10 seconds; 500ms, 2min)",
    )
    bench.add_argument(
        "--count",
        "-n",
        type=options.COUNT,
        metavar="N",
        help="probes per flow (then no time limit)",
    )
    bench.add_argument(
        "--window", type=options.WINDOW, metavar="N", help="request/response: N probes outstanding"
    )
    bench.add_argument(
        "--parallel", "-P", type=options.PARALLEL, default=1, metavar="N", help="flows (default 1)"
    )
    bench.add_argument(
        "--interval",
        "-i",
        type=options.INTERVAL,
        default=1.0,
        metavar="S",
        help="seconds per live row (default 1; 500ms)",
    )
    bench.add_argument(
        "--one-way", action="store_true", help="the reflector only counts: no echoes"
    )
    bench.add_argument(
        "--timeout",
        type=options.TIMEOUT,
        default=0.5,
        metavar="S",
        help="with --window: a probe's slot frees after S (default 500ms)",
    )
    bench.add_argument(
        "--linger",
        type=options.LINGER,
        default=1.0,
        metavar="S",
        help="longest wait for late replies (default 1 second)",
    )
    bench.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    bench.add_argument("--plot", metavar="FILE.png", help="latency CDF and throughput plot")
    bench.add_argument("--quiet", "-q", action="store_true", help="no live rows")
    bench.add_argument("--no-batch", action="store_true", help="recv one datagram a call")
    bench.add_argument("--iface", metavar="IFACE", help="to a multicast group: send out of IFACE")
    options.add_ttl(bench, "to a multicast group: hop limit (0-255)")
    options.add_family_flags(bench)
    options.allow_negative_values(bench)
    _add_reflect(sub)


def _add_reflect(sub: SubParsers) -> None:
    reflect = add_command(
        sub,
        "reflect",
        help="answer 'udpkit bench': echo probes and report what arrived",
        description="Echo bench probes and count each run's arrivals, so bench can tell "
        f"loss per direction. Default 127.0.0.1 {DEFAULT_REFLECT_PORT}.",
    )
    reflect.add_argument("host", nargs="?", default=None, metavar="HOST")
    reflect.add_argument("port", nargs="?", default=DEFAULT_REFLECT_PORT, metavar="PORT")
    options.add_rcvbuf(reflect, "4M")
    options.add_busy_poll(reflect)
    reflect.add_argument("--no-batch", action="store_true", help="recvfrom/sendto, no recvmmsg")
    reflect.add_argument("--quiet", "-q", action="store_true", help="no per-run lines at the end")
    reflect.add_argument(
        "--join",
        action="append",
        default=[],
        metavar="GROUP[@IFACE]",
        help="join a multicast group (repeatable), for 'bench GROUP PORT --one-way'",
    )
    reflect.add_argument("--source", metavar="ADDR", help="with --join: source-specific")
    options.add_family_flags(reflect)
    options.allow_negative_values(reflect)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Turn ``bench`` arguments (parsed by :mod:`udpkit._cli.options`) into a ``BenchConfig``."""
    from udpkit._loops.bench import BenchConfig

    duration = args.duration
    if duration is None and args.count is None:
        duration = 10.0
    rate = args.rate or units.Rate(math.inf if args.window else 1000.0, "")
    return BenchConfig(
        host=args.host,
        port=args.port,
        family=_family(args),
        size=args.size,
        rate=None if rate.value == math.inf else rate.per_item(args.size),
        duration=duration,
        count=args.count,
        window=args.window,
        parallel=args.parallel,
        interval=args.interval,
        one_way=args.one_way,
        timeout=args.timeout,
        linger=args.linger,
        fast=False if args.no_batch else None,
        iface=args.iface,
        ttl=args.ttl,
    )


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
    doc["unexplained_lost_datagrams"] = sum(paths)
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


def bench_document(result: BenchResult) -> _Doc:
    """The run as one JSON-ready dict; every key names its unit."""
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
    total["unexplained_lost_datagrams"] = sum(d["unexplained_lost_datagrams"] for d in flows)
    return {
        "version": 1,
        "target": result.target,
        "peer": result.peer,
        "settings": {
            "size_bytes": cfg.size,
            "rate_datagrams_per_s": cfg.rate,
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
    lines = [
        f"udpkit bench: {doc['target']} ({doc['peer']}), {flows} flow{'s' * (flows > 1)}, "
        f"{s['size_bytes']} B probes: {t['sent_datagrams']} sent in {doc['send_seconds_s']:.2f} s "
        f"({t['send_datagrams_per_s']:.0f} datagrams/s, {_si(t['send_bits_per_s'], 'bit/s')})",
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
    extra.append(f"unexplained loss {t['unexplained_lost_datagrams']}")
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


def _plot(path: str, result: BenchResult, doc: _Doc) -> None:
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


def bench_command(args: argparse.Namespace, out: Writer, err: Writer) -> int:
    """The ``bench`` command.

    Returns:
        0 (errors are raised: UsageError/AddressError exit 2, Timeout 3, NetworkError 1).
    """
    import json

    from udpkit._loops.bench import run_bench

    cfg = config_from_args(args)
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(
                f"--plot {args.plot!r} needs matplotlib: pip install matplotlib"
            ) from None
    live = None if args.quiet else (err if args.json else out)
    header = [False]

    def on_rows(rows: list[IntervalRow]) -> None:
        if live is None:
            return
        if not header[0]:
            live.write(ROW_HEADER)
            header[0] = True
        live.write("".join(format_row(r) for r in rows))

    result = run_bench(cfg, on_rows)
    doc = bench_document(result)
    if args.json:
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write(format_table(doc, icmp_errors(result)))
    if args.plot is not None:
        _plot(args.plot, result, doc)
    return 0


# ---------------------------------------------------------------- reflect


def run_reflect(args: argparse.Namespace, out: Writer, err: Writer) -> int:
    """The ``reflect`` command: serve until SIGINT/SIGTERM, then print the counters.

    Returns:
        0.
    """
    from udpkit._loops.reflect import Reflector
    from udpkit._loops.sigwake import on_signals
    from udpkit._net.addr import format_sockaddr
    from udpkit._net.binding import bind_server

    # The same bind as serve's: loopback by default, the wildcard with --join.
    (sock,) = bind_server(
        args.host, args.port, family=_family(args), join=args.join, source=args.source
    )
    with sock:
        refl = Reflector(
            sock,
            fast=False if args.no_batch else None,
            busy_poll_us=args.busy_poll or 0,
            **({} if args.rcvbuf is None else {"rcvbuf": args.rcvbuf}),  # else its default
        )
        where = format_sockaddr(sock.sock.getsockname())
        up = f"udpkit: listening on {where} (UDP, reflector, receive buffer {refl.rcvbuf} B)\n"

        def counters() -> None:
            err.write(_reflect_summary(refl, args.quiet))

        with on_signals(refl.stop, counters) as stopped:
            try:
                err.write(up)  # once a stop reaches the reflector's handler
                refl.run()
            finally:
                refl.close()
        note = f" (stopped by {signal.Signals(stopped[0]).name})" if stopped else ""
        err.write(_reflect_summary(refl, args.quiet).rstrip("\n") + note + "\n")
    return 0


def _reflect_summary(refl: Reflector, quiet: bool) -> str:
    st = refl.engine.stats
    drops = refl.engine.read_kernel_drops()
    lines = [
        f"udpkit reflect: {st.rx_datagrams} datagrams received, {st.tx_datagrams} sent, "
        f"{len(refl.runs)} runs, {refl.reports} reports, {refl.malformed} malformed, "
        f"{refl.ignored} ignored, kernel drops {'unavailable' if drops is None else drops}"
    ]
    if not quiet:
        for run_id, r in list(refl.runs.items())[-20:]:
            t = r.tracker
            lines.append(
                f"  run {run_id:08x}: received {t.received} (unique {t.unique}, duplicates "
                f"{t.duplicates}, reordered {t.reordered}), echoed {r.echoed}"
            )
    return "\n".join(lines) + "\n"
