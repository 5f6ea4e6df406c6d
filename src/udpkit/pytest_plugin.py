"""pytest plugin: the ``udp_relay`` fixture puts a fault-injecting relay in front of your code.

Installed with udpkit (entry point ``pytest11``), nothing else to start::

    def test_survives_loss(udp_relay):
        relay = udp_relay(target=("127.0.0.1", server_port), seed=7)
        client.connect(*relay.address)         # talk through the relay
        relay.set_faults(loss="5%")            # change faults mid-test
        relay.rebind()                         # a NAT rebinding, now
        relay.blackout(2.0)                    # 2 s of total loss
        assert relay.counters["up_lost"] > 0   # exact counters, any time

Each relay runs in a thread and is stopped at teardown; its final counters stay
readable after :meth:`RelayHandle.stop`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

# Every pytest run in an environment with udpkit loads this plugin: the relay
# itself loads only when a test asks for the fixture.
if TYPE_CHECKING:
    from udpkit._core.relaystats import RelayStats
    from udpkit._loops.relay import Relay

__all__ = ["RelayHandle", "udp_relay"]


class RelayHandle:
    """A running relay for one test: its address, its faults, its counters."""

    def __init__(self, target: tuple[str, int], seed: int | None, **relay_kw: Any) -> None:
        from udpkit._loops.relay import Relay

        host = target[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.relay: Relay = Relay(self._sock, tuple(target), name="relay", seed=seed, **relay_kw)  # type: ignore[arg-type]
        self.final: RelayStats | None = None
        self._thread = threading.Thread(target=self._run, name="udp_relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.final = self.relay.run()

    @property
    def address(self) -> tuple[str, int]:
        """Where the code under test should send (host, port)."""
        name = self._sock.getsockname()
        return name[0], name[1]

    @property
    def seed(self) -> int:
        """The seed in use (give it back to replay the same faults)."""
        return self.relay.seed

    def set_faults(self, direction: str = "both", **fields: object) -> None:
        """Change faults now: ``loss="5%"``, ``delay="20ms"``, as ``udpkit relay`` takes them."""
        self.relay.set_faults(None, None, direction=direction, **fields)

    def clear_faults(self) -> None:
        """Take every fault off."""
        self.relay.clear_faults()

    def rebind(self) -> int:
        """Move every flow to a new upstream source port now (a NAT rebinding)."""
        return self.relay.rebind()

    def blackout(self, seconds: float | None = None, *, on: bool = True) -> None:
        """Drop everything, both ways, for ``seconds`` (counted as lost)."""
        self.relay.blackout(seconds=seconds, on=on)

    @property
    def counters(self) -> dict[str, int]:
        """Every counter, flat: ``up_in``, ``up_out``, ``up_lost``, ``up_held``, ``rebinds``, ..."""
        counters: dict[str, int] = self.relay.snapshot(flows=False)["relay"]["counters"]
        return dict(counters)

    @property
    def flows(self) -> list[dict[str, object]]:
        """Each live flow's counters (with ``held`` and its upstream port)."""
        return list(self.relay.snapshot()["relay"]["per_flow"])

    def stop(self) -> RelayStats:
        """Stop the relay (what fault queues hold is counted ``abandoned``); final stats."""
        if self._thread.is_alive():
            self.relay.stop()
            self._thread.join(10)
        assert self.final is not None, "the relay did not stop"
        return self.final

    def close(self) -> None:
        """Stop, close every socket."""
        try:
            self.stop()
        finally:
            self.relay.close()
            self._sock.close()


@pytest.fixture
def udp_relay() -> Iterator[Callable[..., RelayHandle]]:
    """A factory: ``udp_relay(target=(host, port), seed=7, **Relay options)`` -> RelayHandle.

    Every relay made is stopped and closed at teardown.
    """
    made: list[RelayHandle] = []

    def make(target: tuple[str, int], seed: int | None = 0, **kw: Any) -> RelayHandle:
        h = RelayHandle(target, seed, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
