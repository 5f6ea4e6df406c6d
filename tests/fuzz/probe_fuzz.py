"""atheris target for the probe parsers (``udpkit._core.probe``): only ProbeError may escape.

Run it (with atheris installed) from the repository root::

    PYTHONPATH=src python3 tests/fuzz/probe_fuzz.py tests/fuzz/corpus/probe -max_total_time=60

Every input is a datagram a peer could send: it goes through
``parse_probe_untrusted`` and ``parse_report_untrusted`` as bytes, bytearray
and memoryview.  The seed corpus in ``tests/fuzz/corpus/probe`` is replayed
by ``tests/test_fuzz_corpus.py``.
"""

from __future__ import annotations

import contextlib
import importlib
import sys


def one_input(data: bytes) -> None:
    """Parse ``data`` as a probe and as a report: only ProbeError may escape."""
    from udpkit._core.probe import ProbeError, parse_probe_untrusted, parse_report_untrusted

    for view in (data, bytearray(data), memoryview(data)):
        try:
            probe = parse_probe_untrusted(view)
        except ProbeError:
            pass
        else:
            assert probe.length == len(data), (probe, len(data))
        with contextlib.suppress(ProbeError):
            parse_report_untrusted(view)


def main() -> None:
    atheris = importlib.import_module("atheris")  # optional: not a test dependency
    with atheris.instrument_imports(include=["udpkit"]):
        import udpkit._core.probe  # noqa: F401 - instrumented before one_input imports it
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
