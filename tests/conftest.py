"""Shared fixtures: address families probed for real, never assumed."""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Iterator

import pytest


def _can_bind(family: socket.AddressFamily, host: str) -> bool:
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


HAVE_IPV6 = socket.has_ipv6 and _can_bind(socket.AF_INET6, "::1")
LINUX = sys.platform.startswith("linux")

needs_ipv6 = pytest.mark.skipif(not HAVE_IPV6, reason="::1 cannot be bound here")
linux_only = pytest.mark.skipif(not LINUX, reason="Linux-only socket feature")


def needs_tool(name: str) -> pytest.MarkDecorator:
    """Skip unless the external program ``name`` is on PATH."""
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} is not installed")


@pytest.fixture(
    params=[
        pytest.param((socket.AF_INET, "127.0.0.1"), id="ipv4"),
        pytest.param((socket.AF_INET6, "::1"), id="ipv6", marks=needs_ipv6),
    ]
)
def family(request: pytest.FixtureRequest) -> Iterator[tuple[socket.AddressFamily, str]]:
    """Run a test once over IPv4 loopback and once over IPv6 loopback."""
    yield request.param
