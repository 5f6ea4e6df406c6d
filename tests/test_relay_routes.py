"""The relay's routes, live control, NAT behaviour, scenarios and stops, over loopback."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from udpkit._core.errors import UsageError
from udpkit._core.relay import ImpairConfig
from udpkit._core.scenario import parse_scenario
from udpkit._loops.relay import Relay, RelayStats, RouteSpec
from udpkit._loops.relay_control import ControlServer
from udpkit.pytest_plugin import RelayHandle

STEP = 5.0


class Sink:
    """A target that records (payload, source) and echoes; binds before its thread starts."""

    def __init__(self, echo: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.02)
        self.port: int = self.sock.getsockname()[1]
        self.got: list[tuple[bytes, tuple[str, int]]] = []
        self.echo = echo
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            self.got.append((data, addr))
            if self.echo:
                with contextlib.suppress(OSError):
                    self.sock.sendto(data, addr)

    def close(self) -> None:
        self._stop.set()
        self._t.join(STEP)
        self.sock.close()


@contextlib.contextmanager
def sink(echo: bool = True) -> Iterator[Sink]:
    s = Sink(echo)
    try:
        yield s
    finally:
        s.close()


def wait_for(cond: Callable[[], bool], limit: float = STEP) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


@contextlib.contextmanager
def running(relay: Relay) -> Iterator[list[RelayStats]]:
    done: list[RelayStats] = []
    t = threading.Thread(target=lambda: done.append(relay.run()), daemon=True)
    t.start()
    try:
        yield done
    finally:
        relay.stop()
        t.join(STEP)
        assert not t.is_alive()
        relay.close()


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def client() -> Iterator[socket.socket]:
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(2)
    try:
        yield c
    finally:
        c.close()


def balanced(c: dict[str, int], d: str) -> bool:
    """in == out + every drop + held (+ send errors), duplicates added on the in side."""
    drops = sum(
        c.get(f"{d}_{k}", 0)
        for k in (
            "lost",
            "blackout_drop",
            "mtu_drop",
            "queue_drop",
            "rate_dropped",
            "overflow",
            "abandoned",
        )
    )
    return c[f"{d}_in"] + c.get(f"{d}_duplicated", 0) == (
        c[f"{d}_out"] + drops + c[f"{d}_held"] + c.get("send_errors", 0)
    )


@pytest.mark.parametrize("drain", [False, True])
def test_held_at_stop_is_abandoned_or_drained(drain: bool) -> None:
    """Issue 13: datagrams still in --delay at stop were counted in `in` and nowhere else
    (up in=5 out=0 lost=0 abandoned=0)."""
    with sink(echo=False) as up, listener() as ls, client() as c:
        relay = Relay(
            ls, ("127.0.0.1", up.port), impair_up=ImpairConfig(delay=3.0), seed=1, drain=drain
        )
        with running(relay) as done:
            for i in range(5):
                c.sendto(b"%d" % i, ls.getsockname())
            wait_for(lambda: relay.snapshot()["r1"]["counters"]["up_held"] == 5)
            c1 = relay.snapshot()["r1"]["counters"]
            assert c1["up_in"] == 5 and c1["up_out"] == 0 and balanced(c1, "up")
        st = done[0]
        assert st.counts["up_in"] == 5
        if drain:
            assert st.counts["up_out"] == 5 and st.up.abandoned == 0
            wait_for(lambda: len(up.got) == 5)
        else:
            assert st.counts["up_out"] == 0 and st.up.abandoned == 5
            assert up.got == []


def test_two_routes_one_loop_own_faults_and_counters() -> None:
    with sink() as a, sink() as b, listener() as la, listener() as lb, client() as c:
        relay = Relay(
            routes=[
                RouteSpec(la, ("127.0.0.1", a.port), "a"),
                RouteSpec(lb, ("127.0.0.1", b.port), "b", impair_up=ImpairConfig(loss=1.0)),
            ],
            seed=3,
        )
        with running(relay):
            for _ in range(10):
                c.sendto(b"x", la.getsockname())
                assert c.recv(10) == b"x"
                c.sendto(b"y", lb.getsockname())
            snap = relay.snapshot()
            wait_for(lambda: relay.snapshot()["b"]["counters"]["up_in"] == 10)
            snap = relay.snapshot()
        assert snap["a"]["counters"]["up_out"] == 10 and snap["a"]["counters"]["down_out"] == 10
        assert snap["b"]["counters"]["up_lost"] == 10 and b.got == []
        assert all(balanced(snap[r]["counters"], d) for r in "ab" for d in ("up", "down"))


def _http(method: str, url: str, body: dict[str, object] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=STEP) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_control_api_changes_faults_rebinds_and_blacks_out_while_traffic_runs() -> None:
    with sink() as up, listener() as ls, client() as c:
        relay = Relay(ls, ("127.0.0.1", up.port), name="app", seed=5, rebind_grace=0.2)
        with running(relay), ControlServer(relay) as ctl:
            base = f"http://127.0.0.1:{ctl.address[1]}"
            code, doc = _http("GET", f"{base}/routes")
            assert code == 200 and set(doc) == {"app"}
            c.sendto(b"1", ls.getsockname())
            assert c.recv(10) == b"1"
            code, doc = _http("POST", f"{base}/routes/app/faults", {"loss": "100%"})
            assert code == 200 and doc["faults"]["up"]["loss"] == 1.0
            for _ in range(3):
                c.sendto(b"2", ls.getsockname())
            wait_for(lambda: relay.snapshot()["app"]["counters"]["up_lost"] == 3)
            assert _http("DELETE", f"{base}/routes/app/faults")[0] == 200
            first_port = up.got[0][1][1]
            code, doc = _http("POST", f"{base}/routes/app/rebind")
            assert code == 200 and doc == {"rebound": 1}
            c.sendto(b"3", ls.getsockname())
            assert c.recv(10) == b"3"
            assert up.got[-1][1][1] != first_port  # a new upstream source port
            code, doc = _http("POST", f"{base}/routes/app/blackout", {"seconds": 0.3})
            assert code == 200 and doc["blackout"] is True
            c.sendto(b"4", ls.getsockname())
            wait_for(lambda: not relay.snapshot()["app"]["blackout"])
            c.sendto(b"5", ls.getsockname())
            assert c.recv(10) == b"5"
            code, doc = _http("GET", f"{base}/routes/app")
            cnt = doc["app"]["counters"]
            assert cnt["rebinds"] == 1 and cnt["up_in"] == 7 and cnt["up_out"] == 3
            assert balanced(cnt, "up") and balanced(cnt, "down")
            assert _http("GET", f"{base}/routes/nope")[0] == 404
            assert _http("POST", f"{base}/routes/app/faults", {"loss": "2"})[0] == 400
            assert _http("POST", f"{base}/routes/app/faults", {"los": "2%"})[0] == 400
            assert _http("PATCH", f"{base}/routes/app")[0] == 405


def test_nat_timeout_forgets_a_silent_flow_and_it_returns_on_a_new_port() -> None:
    with sink() as up, listener() as ls, client() as c:
        relay = Relay(ls, ("127.0.0.1", up.port), nat_timeout=0.2, rebind_grace=0.0)
        with running(relay):
            c.sendto(b"a", ls.getsockname())
            assert c.recv(10) == b"a"
            wait_for(lambda: relay.snapshot()["r1"]["counters"]["nat_timeouts"] == 1)
            time.sleep(0.5)  # still silent: forgotten once, not again and again
            c.sendto(b"b", ls.getsockname())
            assert c.recv(10) == b"b"
            assert relay.snapshot()["r1"]["counters"]["nat_timeouts"] == 1
        assert up.got[0][1] != up.got[1][1]


SCENARIO = """
seed = 11
[[phase]]
name = "clean"
from = 0
to = "300ms"
[[phase]]
name = "outage"
from = "300ms"
to = "600ms"
loss = "100%"
[[event]]
at = "600ms"
rebind = true
"""


def test_scenario_phases_count_per_phase_and_events_rebind() -> None:
    sc = parse_scenario(SCENARIO)
    assert sc.phase_at(0.1) is not None and sc.phase_at(0.1).name == "clean"  # type: ignore[union-attr]
    assert sc.phase_at(0.7) is None
    with sink() as up, listener() as ls, client() as c:
        relay = Relay(ls, ("127.0.0.1", up.port), scenario=sc, rebind_grace=0.1)
        start = time.monotonic()
        with running(relay):
            sent = 0
            while time.monotonic() - start < 0.9:
                c.sendto(b"p", ls.getsockname())
                sent += 1
                time.sleep(0.01)
            time.sleep(0.1)
            snap = relay.snapshot()["r1"]
    ph = snap["phases"]
    assert set(ph) == {"clean", "outage", "base"}
    assert (
        ph["outage"]["up_lost"] > 0 and ph["clean"]["up_lost"] == 0 and ph["base"]["up_lost"] == 0
    )
    assert sum(p["up_in"] for p in ph.values()) == sent == snap["counters"]["up_in"]
    assert snap["counters"]["rebinds"] == 1 and relay.seed == 11


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[[phase]]\nfrom = 1\nloss = 'x'", "--loss"),
        ("[[phase]]\nto = 1", "'from'"),
        ("[[phase]]\nfrom = 2\nto = 1", "must be after"),
        ("[[phase]]\nfrom = 0\nto = 2\n[[phase]]\nfrom = 1", "overlaps"),
        ("[[phase]]\nfrom = 0\nlosss = 1", "invalid key 'losss'"),
        ("nonsense = 1", "invalid key 'nonsense'"),
        ("[[route]]\nlisten = 1", "'target'"),
        ("{not json", "not JSON"),
    ],
)
def test_bad_scenarios_are_one_line(text: str, needle: str) -> None:
    with pytest.raises(UsageError) as ei:
        parse_scenario(text, "f.toml")
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_json_scenario_same_as_toml() -> None:
    doc = {"seed": 1, "phase": [{"from": 0, "to": 1, "loss": "5%"}]}
    assert parse_scenario(json.dumps(doc)) == parse_scenario(
        "seed = 1\n[[phase]]\nfrom = 0\nto = 1\nloss = '5%'"
    )


def test_udp_relay_fixture(udp_relay: Callable[..., RelayHandle]) -> None:
    """The pytest plugin's fixture: set faults mid-test, read exact counters."""
    with sink() as up, client() as c:
        relay = udp_relay(target=("127.0.0.1", up.port), seed=7)
        c.sendto(b"a", relay.address)
        assert c.recv(10) == b"a"
        relay.set_faults(loss="100%", direction="up")
        c.sendto(b"b", relay.address)
        wait_for(lambda: relay.counters["up_lost"] == 1)
        relay.clear_faults()
        assert relay.rebind() == 1
        c.sendto(b"c", relay.address)
        assert c.recv(10) == b"c"
        cnt = relay.counters
        assert (cnt["up_in"], cnt["up_out"], cnt["rebinds"]) == (3, 2, 1)
        final = relay.stop()
        assert final.counts["up_in"] == 3
