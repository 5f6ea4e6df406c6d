"""atheris target for the address parser (``udpkit._net.addr``): only AddressError may escape.

Run it (with atheris installed) from the repository root::

    PYTHONPATH=src python3 tests/fuzz/addr_fuzz.py tests/fuzz/corpus/addr -max_total_time=60

An input is ``HOST`` or ``HOST\\0PORT`` (UTF-8, bad bytes kept as lone
surrogates); its first 9 bytes are also tried as a signed integer host and port.
Host *names* are not resolved (that would be a DNS query per input): only hosts
that parse as numeric go through :func:`udpkit._net.addr.resolve`.  The seed corpus
in ``tests/fuzz/corpus/addr`` is replayed by ``tests/test_fuzz_corpus.py``.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
import sys

_FAMILIES = (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6, socket.AF_UNIX, -1)


def _is_numeric(text: str) -> bool:
    addr = text.partition("%")[0]
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, addr)
        except (OSError, ValueError):
            continue
        return True
    return text == ""


def check(host: str | int, port: str | int) -> None:
    """Parse ``host`` and ``port`` every way; anything but AddressError escapes (a bug)."""
    from udpkit._core.errors import AddressError
    from udpkit._net.addr import parse_host, parse_port, resolve, split_hostport

    text: str | None = None
    with contextlib.suppress(AddressError):
        text = parse_host(host)
    try:
        number = parse_port(port)
        assert 0 <= number <= 65535, number
    except AddressError:
        pass
    if isinstance(host, str):
        with contextlib.suppress(AddressError):
            split_hostport(host)
    if text is not None and _is_numeric(text):
        for family in _FAMILIES:
            try:
                addrs = resolve(host, port, family=family)
            except AddressError:
                continue
            assert len(addrs) == 1, addrs  # a numeric host is exactly one address


def one_input(data: bytes) -> None:
    """One fuzz input: see the module docstring for its layout."""
    head, _, tail = data.partition(b"\0")
    host = head.decode("utf-8", "surrogateescape")
    port = tail.decode("utf-8", "surrogateescape") if tail else "0"
    check(host, port)
    number = int.from_bytes(data[:9], "big", signed=True)
    check(number, number)
    check(host, number)


def main() -> None:
    atheris = importlib.import_module("atheris")  # optional: not a test dependency
    with atheris.instrument_imports(include=["udpkit"]):
        import udpkit._net.addr  # noqa: F401 - instrumented before one_input imports it
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
