"""``udpkit read FILE``: print a recording made by ``udpkit serve --record``.

Only argparse is imported at the top: registering the command costs the
other commands no start-up time.
"""

from __future__ import annotations

import argparse

from udpkit._cli.common import SubParsers, Writer, add_command
from udpkit._cli.options import add_format

__all__ = ["add_parser", "run_read"]

_BATCH = 256  # records per write: _Out flushes every write


def add_parser(sub: SubParsers) -> None:
    """Register ``udpkit read`` on the ``udpkit`` subcommand parsers."""
    p = add_command(
        sub,
        "read",
        help="print a recording (serve --record) or a capture (pcap, pcapng)",
        description="Print every UDP datagram in a recording made by 'udpkit serve --record' "
        "(JSON Lines or pcap) or in a capture written by tcpdump, tshark, dumpcap or "
        "Wireshark (pcap or pcapng; Ethernet, raw IP, Linux cooked v1/v2 as 'tcpdump -i any' "
        "writes, loopback), told apart by content, escaped like serve's output. Then a line "
        "on stderr with the number of records, the packets skipped (not UDP, fragments, ...) "
        "and whether the file ends in a torn record (what an interrupted write leaves; the "
        "records before it are all shown).",
    )
    p.add_argument("file", metavar="FILE", help="the recording")
    add_format(
        p,
        "line",
        "how to print each datagram: line (default), textbook, hex or json (JSON Lines, "
        "keeps stdout pure)",
    )
    p.add_argument(
        "--input-format",
        choices=("auto", "jsonl", "pcap", "pcapng"),
        default="auto",
        help="the recording's format (default auto: by content)",
    )


def run_read(args: argparse.Namespace, out: Writer, err: Writer) -> int:
    """Print the records of ``args.file``; the summary line goes to ``err``.

    Returns:
        0 when the whole file was read (a torn tail included); 2 when it
        cannot be read or is no recording at all (one line on ``err``); 1 when
        it holds something that is not a record after records that were shown.
    """
    from udpkit._cli.format import format_datagram
    from udpkit._core.escape import escape_controls
    from udpkit._loops.record import RecordError, read_records_untrusted

    path: str = args.file
    fmt = None if args.input_format == "auto" else args.input_format
    reader = read_records_untrusted(path, fmt)
    fmt_out: str = args.format
    lines: list[str] = []
    try:
        for rec in reader:
            text = format_datagram(
                fmt_out, rec.data, rec.peer, length=rec.length, when=rec.time, local=rec.local
            )
            lines.append(text)
            if len(lines) >= _BATCH:
                out.write("".join(lines))
                lines.clear()
    except RecordError as exc:
        out.write("".join(lines))
        err.write(escape_controls(f"udpkit read: error: {exc}") + "\n")
        if not reader.count:
            return 2  # missing, unreadable, or no recording: nothing to show
        err.write(f"udpkit: {_records(reader.count)} read before the error\n")
        return 1
    out.write("".join(lines))
    kind = reader.format or "empty"
    if reader.torn_tail_bytes:
        tail = (
            f"torn tail: {reader.torn_tail_bytes} bytes at offset {reader.torn_tail_offset} "
            "ignored (an interrupted write)"
        )
    else:
        tail = "no torn tail"
    skipped = sum(reader.skipped.values())
    if skipped:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(reader.skipped.items()))
        kind += f"; {skipped} packet{'s' if skipped != 1 else ''} skipped: {reasons}"
    err.write(f"udpkit: {_records(reader.count)} ({kind}), {tail}\n")
    return 0


def _records(n: int) -> str:
    return f"{n} record" if n == 1 else f"{n} records"
