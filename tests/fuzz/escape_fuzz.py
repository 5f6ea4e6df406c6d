"""atheris target for the escaper (``udpkit._core.escape``): no control character survives.

Run it (with atheris installed) from the repository root::

    PYTHONPATH=src python3 tests/fuzz/escape_fuzz.py tests/fuzz/corpus/escape -max_total_time=60

Every input is a payload a peer could send.  ``escape_bytes`` must turn it
into printable text (``str.isprintable``: no C0/C1 control, DEL, bidi or other
format character, line/paragraph separator or lone surrogate); so must
``escape_text`` and ``escape_controls`` on its UTF-8 decoding, with
undecodable bytes kept as lone surrogates.  The seed corpus in
``tests/fuzz/corpus/escape`` is replayed by ``tests/test_fuzz_corpus.py``.
"""

from __future__ import annotations

import importlib
import sys


def check_printable(out: str, given: object) -> None:
    """Fail naming the first character of ``out`` that a terminal would act on."""
    if not out.isprintable():
        bad = next(c for c in out if not c.isprintable())
        raise AssertionError(f"U+{ord(bad):04X} survived escaping {given!r}: {out!r}")


def one_input(data: bytes) -> None:
    """Escape ``data`` every way; the output must be printable text."""
    from udpkit._core.escape import escape_bytes, escape_controls, escape_text

    check_printable(escape_bytes(data), data)
    text = data.decode("utf-8", "surrogateescape")
    check_printable(escape_text(text), text)
    check_printable(escape_controls(text), text)


def main() -> None:
    atheris = importlib.import_module("atheris")  # optional: not a test dependency
    with atheris.instrument_imports(include=["udpkit"]):
        import udpkit._core.escape  # noqa: F401 - instrumented before one_input imports it
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
