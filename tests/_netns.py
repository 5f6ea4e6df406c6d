"""Test hosts in network namespaces: a bridge joining N hosts, each with IPv4 and IPv6.

Every namespace, link and process made here is ours, named with a per-run
prefix and removed on the way out.  Traffic stays inside these namespaces: the
addresses below exist only there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

SUBNET4 = "10.77.0"  # hosts are .1, .2, ...; broadcast .255
SUBNET6 = "fd77::"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    name = f"ukt-probe-{os.getpid()}"
    res = _ip("netns", "add", name, check=False)
    if res.returncode != 0:
        return f"ip netns add failed: {res.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


needs_netns = pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))


@dataclass
class Host:
    """One test host: a namespace with one interface on the shared bridge."""

    ns: str
    ifname: str
    v4: str
    v6: str

    def cmd(self, *argv: str) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.cmd(*argv), capture_output=True, timeout=timeout, check=False)

    def link_local(self) -> str:
        """This host's fe80:: address on eth0 (without the scope)."""
        res = _ip("-n", self.ns, "-6", "-o", "addr", "show", "dev", self.ifname, "scope", "link")
        for word in res.stdout.split():
            if word.startswith("fe80:"):
                return word.split("/")[0]
        raise AssertionError(f"no link-local address on {self.ns}: {res.stdout!r}")

    def popen(self, *argv: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.cmd(*argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


@contextmanager
def hosts(n: int) -> Iterator[Sequence[Host]]:
    """``n`` hosts joined by a bridge (in a namespace of its own); torn down on exit."""
    tag = f"ukt{os.getpid() % 100000}"
    bridge_ns = f"{tag}-br"
    made: list[str] = []
    try:
        _ip("netns", "add", bridge_ns)
        made.append(bridge_ns)
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        out = []
        for i in range(1, n + 1):
            ns = f"{tag}-h{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            # No duplicate address detection: addresses (link-local too) work at once.
            for key in ("default", "all"):
                subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        "sysctl",
                        "-qw",
                        f"net.ipv6.conf.{key}.accept_dad=0",
                    ],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
            _ip("-n", ns, "link", "set", "lo", "up")
            # veth pair: eth0 in the host, its peer enslaved to the bridge.
            _ip(
                "-n",
                ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                f"p{i}",
                "netns",
                bridge_ns,
            )
            _ip("-n", bridge_ns, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", bridge_ns, "link", "set", f"p{i}", "up")
            v4, v6 = f"{SUBNET4}.{i}", f"{SUBNET6}{i}"
            _ip("-n", ns, "addr", "add", f"{v4}/24", "brd", f"{SUBNET4}.255", "dev", "eth0")
            _ip("-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
            _ip("-n", ns, "link", "set", "eth0", "up")
            # A default route on the test link, so 255.255.255.255 and groups have a way out.
            _ip("-n", ns, "route", "add", "default", "dev", "eth0")
            _ip("-n", ns, "-6", "route", "add", "default", "dev", "eth0")
            out.append(Host(ns, "eth0", v4, v6))
        yield out
    finally:
        for ns in reversed(made):
            # Ending the namespace's processes is the caller's job (by PID); deleting
            # it removes its links.
            _ip("netns", "del", ns, check=False)
