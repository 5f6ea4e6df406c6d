"""The relay's HTTP control endpoint: JSON over stdlib ``http.server``, in a thread.

In the spirit of toxiproxy's API, for UDP routes::

    GET    /routes                  every route: counters (with held), phase, faults
    GET    /routes/NAME             one route, with its flows
    POST   /routes/NAME/faults      change faults while traffic runs (PUT too);
                                    body: {"loss": "5%", "delay": "20ms", "direction": "up"}
    DELETE /routes/NAME/faults      take every fault off
    POST   /routes/NAME/rebind      move every flow to a new upstream port (a NAT rebinding)
    POST   /routes/NAME/blackout    {"seconds": 2} (or {"on": false} to end one)

Every request becomes a call of a :class:`~udpkit.Relay` method, which hands it to
the relay's loop through its queue: this thread never touches the loop's state.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from udpkit._core.errors import UsageError

if TYPE_CHECKING:
    from udpkit._loops.relay import Relay

__all__ = ["ControlServer"]

_MAX_BODY = 65536


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the relay prints its own
        return

    def _send(self, code: int, doc: object) -> None:
        body = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        if n > _MAX_BODY:
            raise UsageError(f"body of {n} bytes: must be at most {_MAX_BODY}")
        raw = self.rfile.read(n) if n else b""
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except ValueError:
            raise UsageError('body is not JSON: send an object like {"loss": "5%"}') from None
        if not isinstance(doc, dict):
            raise UsageError('body must be a JSON object like {"loss": "5%"}')
        return doc

    def _dispatch(self, method: str) -> None:
        relay = self.server.relay
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        try:
            if not parts or parts[0] != "routes" or len(parts) > 3:
                self._send(404, {"error": f"no such path {self.path!r}: try /routes"})
                return
            name = parts[1] if len(parts) > 1 else None
            action = parts[2] if len(parts) > 2 else None
            self._send(200, self._do(relay, method, name, action))
        except KeyError as exc:
            self._send(404, {"error": str(exc.args[0] if exc.args else exc)})
        except (UsageError, ValueError, TypeError) as exc:
            self._send(400, {"error": str(exc)})
        except _NotAllowed as exc:
            self._send(405, {"error": str(exc)})

    def _do(self, relay: Relay, method: str, name: str | None, action: str | None) -> object:
        if action is None:
            if method != "GET":
                raise _NotAllowed(f"{method} {self.path}: only GET")
            return relay.snapshot(name, flows=name is not None)
        assert name is not None
        if action == "faults":
            if method in ("POST", "PUT"):
                body = self._body()
                direction = str(body.pop("direction", "both"))
                relay.set_faults(name, direction=direction, **body)
            elif method == "DELETE":
                relay.clear_faults(name)
            elif method != "GET":
                raise _NotAllowed(f"{method} {self.path}: GET, POST, PUT or DELETE")
            return relay.snapshot(name, flows=False)[name]
        if method != "POST":
            raise _NotAllowed(f"{method} {self.path}: only POST")
        if action == "rebind":
            return {"rebound": relay.rebind(name)}
        if action == "blackout":
            body = self._body()
            on = body.get("on", True)
            secs = body.get("seconds")
            if not isinstance(on, bool) or not (secs is None or isinstance(secs, int | float)):
                raise UsageError('blackout body: {"seconds": 2} or {"on": true|false}')
            relay.blackout(name, None if secs is None else float(secs), on=on)
            return relay.snapshot(name, flows=False)[name]
        raise KeyError(f"no such action {action!r}: faults, rebind or blackout")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")


class _NotAllowed(Exception):
    pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    relay: Relay


class _Server6(_Server):
    address_family = socket.AF_INET6


class ControlServer:
    """The control endpoint of one relay, served from a thread until :meth:`close`.

    Args:
        relay: the relay to control.
        host: where to listen (loopback by default: it changes faults, so keep it local).
        port: 0 for a free port (see :attr:`address`).

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, relay: Relay, host: str = "127.0.0.1", port: int = 0) -> None:
        cls = _Server6 if ":" in host else _Server
        self._server = cls((host, port), _Handler)
        self._server.relay = relay
        self.address: tuple[str, int] = self._server.server_address[:2]  # type: ignore[assignment]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
