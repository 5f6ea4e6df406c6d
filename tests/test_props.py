"""Hypothesis properties the other test files do not already cover.

Already elsewhere: the escaper on ``st.binary``/``st.text`` (test_escape.py),
the policy (test_policy_props.py), the record reader (test_record.py).  Here:
the address parser (only AddressError, for any text, int or other value; a
valid dotted quad, its integer form and any IPv6 address round-trip), the
escaper on text with lone surrogates (``st.text()`` never draws them, but
``surrogateescape`` decoding of a peer's bytes does) and on ``safe_repr`` of
arbitrary data, and random bytes through every atheris target.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.test_fuzz_corpus import TARGETS, load_module, load_target

from udpkit._core.errors import AddressError
from udpkit._core.escape import escape_bytes, escape_controls, escape_text, safe_repr
from udpkit._net.addr import parse_host, parse_port, resolve

# The same check the atheris target runs on each input.
check_address = load_module("addr").check


# Every code point, lone surrogates included.
ANY_TEXT = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=64)
# Text that looks like an address: what a mistyped CLI argument is made of.
ADDRESSY = st.text(st.sampled_from("0123456789abcdefABCDEF.:[]%<>-+ xyz\x00\u0663"), max_size=40)
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(
    host=st.one_of(ANY_TEXT, ADDRESSY, st.integers(), st.just("<broadcast>")),
    port=st.one_of(ANY_TEXT, ADDRESSY, st.integers()),
)
def test_address_parser_raises_only_address_error(host: str | int, port: str | int) -> None:
    """parse_host, parse_port, split_hostport and (numeric hosts) resolve: AddressError only."""
    check_address(host, port)


@given(ODD_VALUES)
def test_odd_types_are_address_errors(value: Any) -> None:
    with pytest.raises(AddressError):
        parse_port(value)
    if value is not None:  # None is the wildcard
        with pytest.raises(AddressError):
            parse_host(value)


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_dotted_quad_round_trips(ip: ipaddress.IPv4Address, port: int) -> None:
    text = str(ip)
    assert parse_host(text) == text
    assert parse_host(int(ip)) == text  # host byte order integer, as the textbook says
    assert parse_host(str(int(ip))) == text
    if port == 0 or ip in ipaddress.IPv4Network("0.0.0.0/8"):  # never a destination
        with pytest.raises(AddressError, match=r"never a destination|not a destination"):
            resolve(text, port)
        return
    (addr,) = resolve(text, port)
    assert (addr.family, addr.sockaddr, addr.host, addr.port) == (
        socket.AF_INET,
        (text, port),
        text,
        port,
    )
    assert resolve(addr.host, str(addr.port)) == [addr]


@given(st.ip_addresses(v=6), st.integers(0, 65535))
def test_ipv6_round_trips(ip: ipaddress.IPv6Address, port: int) -> None:
    if ip.is_link_local:  # fe80::/10 means nothing without an interface
        with pytest.raises(AddressError, match="needs a scope"):
            resolve(str(ip), port)
        return
    v4 = ip.ipv4_mapped
    if port == 0 or ip.is_unspecified or (v4 is not None and v4.packed[0] == 0):
        with pytest.raises(AddressError, match=r"never a destination|not a destination"):
            resolve(str(ip), port)
        return
    for text in (str(ip), ip.exploded, f"[{ip}]"):
        (addr,) = resolve(text, port)
        assert addr.family == socket.AF_INET6 and addr.port == port
        assert ipaddress.IPv6Address(addr.host) == ip
        assert resolve(addr.host, port) == [addr]


@given(st.integers(0, 65535))
def test_port_round_trips(port: int) -> None:
    assert parse_port(port) == parse_port(str(port)) == port


@given(ANY_TEXT)
def test_escaper_handles_lone_surrogates(text: str) -> None:
    """No control character survives, even in text decoded with surrogateescape."""
    assert escape_text(text).isprintable()
    once = escape_controls(text)
    assert once.isprintable()
    assert escape_controls(once) == once
    raw = text.encode("utf-8", "surrogatepass")
    assert escape_bytes(raw).isprintable()


_DATA = st.recursive(
    st.one_of(st.none(), st.integers(), st.floats(), ANY_TEXT, st.binary(max_size=32)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(ANY_TEXT, inner, max_size=4),
        st.tuples(inner, inner),
    ),
    max_leaves=12,
)


@given(_DATA)
def test_safe_repr_is_always_printable(value: object) -> None:
    assert safe_repr(value).isprintable()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(TARGETS), data=st.binary(max_size=300))
def test_fuzz_targets_hold_on_random_bytes(name: str, data: bytes) -> None:
    """A short random-bytes run of every atheris target, for machines without atheris."""
    load_target(name)(data)
