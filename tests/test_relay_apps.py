"""Real programs through the relay: aioquic through bursty loss and a NAT rebinding, dig
against unbound through a blackout; each program's own counts held against the relay's."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from udpkit._core.relay import ImpairConfig
from udpkit._loops.relay import Relay, RelayStats

STEP = 10.0


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


def _cert(tmp: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    c, k = tmp / "cert.pem", tmp / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(c), str(k)


def _count(obj: Any, attr: str, box: list[int]) -> None:
    """Count calls of ``obj.attr`` (an asyncio transport's sendto, a protocol's receive)."""
    orig: Callable[..., Any] = getattr(obj, attr)

    def counted(*a: Any, **kw: Any) -> Any:
        box[0] += 1
        return orig(*a, **kw)

    setattr(obj, attr, counted)


def test_aioquic_survives_bursty_loss_and_a_rebinding(tmp_path: Path) -> None:
    """50 request/response streams over one QUIC connection through 5 % loss in bursts
    and one NAT rebinding mid-way; aioquic's datagram counts equal the relay's."""
    aq = pytest.importorskip("aioquic.asyncio")
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.configuration import QuicConfiguration

    cert, key = _cert(tmp_path)
    ls = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ls.bind(("127.0.0.1", 0))
    faults = ImpairConfig.from_text(loss="5%", loss_burst="3")
    counts = {k: [0] for k in ("c_sent", "c_recv", "s_sent", "s_recv")}

    async def main(relay: Relay) -> int:
        tasks: set[asyncio.Future[None]] = set()
        scfg = QuicConfiguration(is_client=False, alpn_protocols=["udpkit"])
        scfg.load_cert_chain(cert, key)

        def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def echo() -> None:
                writer.write(await reader.read())
                writer.write_eof()

            tasks.add(asyncio.ensure_future(echo()))

        server = await aq.serve("127.0.0.1", 0, configuration=scfg, stream_handler=handler)
        sport = server._transport.get_extra_info("sockname")[1]
        relay_target.append(sport)
        _count(server._transport, "sendto", counts["s_sent"])
        _count(server, "datagram_received", counts["s_recv"])

        class Counting(QuicConnectionProtocol):
            """Counts from the first datagram (the handshake's too)."""

            def connection_made(self, transport: Any) -> None:
                _count(transport, "sendto", counts["c_sent"])
                super().connection_made(transport)

            def datagram_received(self, data: bytes | str, addr: Any) -> None:
                counts["c_recv"][0] += 1
                super().datagram_received(data, addr)

        ccfg = QuicConfiguration(is_client=True, alpn_protocols=["udpkit"])
        ccfg.verify_mode = ssl.CERT_NONE
        ok = 0
        try:
            async with aq.connect(
                *ls.getsockname(), configuration=ccfg, create_protocol=Counting
            ) as client:
                for i in range(50):
                    if i == 25:
                        assert relay.rebind() == 1
                    reader, writer = await client.create_stream()
                    writer.write(b"ping %d" % i)
                    writer.write_eof()
                    assert await asyncio.wait_for(reader.read(), 10) == b"ping %d" % i
                    ok += 1
                client.close()
                await client.wait_closed()
            await asyncio.sleep(0.3)  # the last datagrams in flight land
        finally:
            server.close()
        return ok

    relay_target: list[int] = []
    # The target port is known only once the server is up: bind it first on a probe port.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    relay = Relay(ls, ("127.0.0.1", port), impair_up=faults, impair_down=faults, seed=7)
    with running(relay) as done:
        # Serve on the port the relay forwards to.
        async def on_port() -> int:
            orig = aq.serve

            async def serve_here(host: str, _p: int, **kw: Any) -> Any:
                return await orig(host, port, **kw)

            aq.serve = serve_here
            try:
                return await asyncio.wait_for(main(relay), 60)
            finally:
                aq.serve = orig

        assert asyncio.run(on_port()) == 50
    ls.close()
    st = done[0]
    u, d = st.up, st.down
    assert st.counts["up_in"] == counts["c_sent"][0]
    assert st.counts["up_out"] == counts["s_recv"][0]
    assert st.counts["down_in"] == counts["s_sent"][0]
    assert st.counts["down_out"] == counts["c_recv"][0]
    assert u.lost + d.lost > 0
    assert relay.snapshot()["r1"]["counters"]["rebinds"] == 1
    assert u.unaccounted() == 0 and d.unaccounted() == 0


UNBOUND_CONF = """server:
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  use-syslog: no
  logfile: ""
  username: ""
  chroot: ""
  directory: "{dir}"
  pidfile: ""
  do-ip6: no
  do-tcp: no
  access-control: 127.0.0.0/8 allow
  local-zone: "udpkit.test." static
  local-data: "a.udpkit.test. 60 IN A 192.0.2.7"
  verbosity: 0
remote-control:
  control-enable: no
"""


@pytest.fixture
def unbound(tmp_path: Path) -> Iterator[int]:
    exe = shutil.which("unbound") or (
        "/usr/sbin/unbound" if Path("/usr/sbin/unbound").exists() else None
    )
    if exe is None or shutil.which("dig") is None:
        pytest.skip("unbound and dig are not installed (.ci/run installs them with apt-get)")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    conf = tmp_path / "unbound.conf"
    conf.write_text(UNBOUND_CONF.format(port=port, dir=tmp_path))
    proc = subprocess.Popen([exe, "-d", "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + STEP
        while time.monotonic() < end:
            r = subprocess.run(
                [
                    "dig",
                    "@127.0.0.1",
                    "-p",
                    str(port),
                    "a.udpkit.test",
                    "+short",
                    "+tries=1",
                    "+time=1",
                ],
                check=False,
                capture_output=True,
                timeout=STEP,
            )
            if r.stdout.strip() == b"192.0.2.7":
                break
            time.sleep(0.1)
        else:
            pytest.skip("unbound did not answer on loopback")
        yield port
    finally:
        proc.terminate()
        proc.wait(STEP)
        if proc.stderr:
            proc.stderr.close()


def test_dig_retries_through_a_blackout_and_counts_agree(unbound: int) -> None:
    """dig's timed-out tries are exactly the queries the relay dropped in the blackout."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ls.bind(("127.0.0.1", 0))
    relay = Relay(ls, ("127.0.0.1", unbound), seed=3)
    with running(relay) as done:
        relay.blackout(seconds=1.5)
        r = subprocess.run(
            [
                "dig",
                "@127.0.0.1",
                "-p",
                str(ls.getsockname()[1]),
                "a.udpkit.test",
                "+tries=5",
                "+time=1",
            ],
            check=False,
            capture_output=True,
            timeout=30,
        )
    ls.close()
    out = r.stdout.decode()
    assert "192.0.2.7" in out, out
    timeouts = out.count("timed out")
    st = done[0]
    assert timeouts >= 1
    assert st.counts["up_in"] == timeouts + 1  # every try reached the relay
    assert st.up.blackout_drop == timeouts
    assert st.counts["up_out"] == 1 and st.counts["down_out"] == 1
