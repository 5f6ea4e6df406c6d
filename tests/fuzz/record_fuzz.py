"""atheris target for the recording reader (``udpkit._loops.record``).

Run it (with atheris installed) from the repository root::

    PYTHONPATH=src python3 tests/fuzz/record_fuzz.py tests/fuzz/corpus/record -max_total_time=60

The seed corpus in ``tests/fuzz/corpus/record`` is replayed by
``tests/test_record.py`` on every normal test run, through :func:`one_input`.
"""

from __future__ import annotations

import importlib
import sys


def one_input(data: bytes) -> None:
    """Parse ``data`` as a recording in every way: only RecordError may escape."""
    from udpkit._core.records import RecordError, parse_records_untrusted

    for fmt in (None, "jsonl", "pcap"):
        reader = parse_records_untrusted(data, fmt)
        try:
            for rec in reader:
                assert len(rec.data) <= rec.length, rec
        except RecordError:
            continue
        assert reader.torn_tail_bytes <= len(data)


def main() -> None:
    atheris = importlib.import_module("atheris")  # optional: not a test dependency
    with atheris.instrument_imports(include=["udpkit"]):
        import udpkit._loops.record  # noqa: F401 - instrumented before one_input imports it
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
