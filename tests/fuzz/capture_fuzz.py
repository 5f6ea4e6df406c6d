"""atheris target for the capture reader (``udpkit._core.capture``): only CaptureError may escape.

Run it (with atheris installed) from the repository root::

    PYTHONPATH=src python3 tests/fuzz/capture_fuzz.py tests/fuzz/corpus/capture -max_total_time=60

Every input is a file someone hands ``udpkit read``: it is read as found by
content and as forced pcap and pcapng, through a stream that returns a few
bytes per ``read`` (as a pipe does).  The seed corpus in
``tests/fuzz/corpus/capture`` (hand-built files and captures written by
dumpcap and tcpdump) is replayed by ``tests/test_fuzz_corpus.py``.
"""

from __future__ import annotations

import importlib
import io
import sys
from typing import IO


class _Trickle(io.BytesIO):
    """A stream that hands out at most 7 bytes per read, like a slow pipe."""

    def read(self, size: int | None = -1, /) -> bytes:
        return super().read(7 if size is None or size < 0 else min(size, 7))


def one_input(data: bytes) -> None:
    """Read ``data`` as a capture in every way: only CaptureError may escape."""
    from udpkit._core.capture import CaptureError, iter_capture_untrusted

    results: list[list[object]] = []
    streams: list[tuple[str | None, IO[bytes]]] = [
        (None, io.BytesIO(data)),
        (None, _Trickle(data)),
        ("pcap", io.BytesIO(data)),
        ("pcapng", io.BytesIO(data)),
    ]
    for fmt, stream in streams:
        reader = iter_capture_untrusted(stream, "fuzz", fmt)
        got: list[object] = []
        try:
            for d in reader:
                assert len(d.data) <= d.length and d.proto in (17, 136), d
                assert 0 <= d.src[1] <= 0xFFFF and 0 <= d.dst[1] <= 0xFFFF, d
                got.append(d)
        except CaptureError as exc:
            assert "\n" not in str(exc), exc
            got.append(None)
        assert 0 <= reader.torn_tail_bytes <= len(data)
        assert sum(reader.skipped.values()) + reader.count == reader.packets
        results.append(got)
    assert results[0] == results[1], "a stream read in small pieces must read the same"


def main() -> None:
    atheris = importlib.import_module("atheris")  # optional: not a test dependency
    with atheris.instrument_imports(include=["udpkit"]):
        import udpkit._core.capture  # noqa: F401 - instrumented before one_input imports it
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
