"""udpkit: a fast, safe UDP toolkit.

The textbook UDP server and client, grown into a library: every host and port
form (``"<broadcast>"``, ``""``, integers, service names, IPv6 scope ids),
endpoints for UDP, TCP and Unix sockets, a generic socket constructor, and
servers that never truncate or drop a datagram without counting it.

Quick start::

    import udpkit

    with udpkit.udp_bind("127.0.0.1", 0) as server:
        with udpkit.udp_connect(*server.local_address) as client:
            client.send(b"Hello UDP Server")
            dgram = server.recv(timeout=1)
            server.send(b"Hello UDP Client", dgram.peer)
            print(client.recv(timeout=1).data)
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; loaded lazily below
    from . import aio
    from ._addr import (
        BROADCAST,
        MAX_UDP_PAYLOAD,
        Address,
        format_sockaddr,
        is_broadcast,
        is_multicast,
        parse_host,
        parse_port,
        resolve,
        resolve_one,
        split_hostport,
    )
    from ._bench import BenchConfig, run_bench
    from ._client import request, request_all, stream_request
    from ._engine import Engine, EngineStats, fast_path_available, send_batch
    from ._errors import (
        AddressError,
        AddressInUse,
        ConnectionRefused,
        MessageTooLarge,
        NetworkError,
        PermissionDenied,
        Timeout,
        UdpkitError,
        Unsupported,
        UsageError,
    )
    from ._escape import escape_bytes, escape_text
    from ._generic import IPPROTO_UDPLITE, open_socket, parse_domain, parse_protocol, parse_type
    from ._mcast import join_group, leave_group, set_multicast_send
    from ._policy import Policy, Verdict
    from ._record import Record, Recorder, RecordError, RecordStats, read_records_untrusted
    from ._reflect import Reflector
    from ._relay import Relay
    from ._relaystats import RelayStats
    from ._server import (
        BatchObserver,
        DatagramServer,
        Handler,
        ServeStats,
        StreamServer,
        reply_handler,
    )
    from ._serving import ECHO, BatchAnswer, Echo, Fixed, ServeStep, StepStats
    from ._sockets import (
        Datagram,
        DatagramSocket,
        set_receive_buffer,
        udp_bind,
        udp_connect,
    )
    from ._stream import StreamListener, StreamSocket, tcp_connect, tcp_listen
    from ._unix import (
        unix_datagram_bind,
        unix_datagram_connect,
        unix_stream_connect,
        unix_stream_listen,
    )

__version__ = "0.1.0"

__all__ = [
    "BROADCAST",
    "ECHO",
    "IPPROTO_UDPLITE",
    "MAX_UDP_PAYLOAD",
    "Address",
    "AddressError",
    "AddressInUse",
    "BatchAnswer",
    "BatchObserver",
    "BenchConfig",
    "ConnectionRefused",
    "Datagram",
    "DatagramServer",
    "DatagramSocket",
    "Echo",
    "Engine",
    "EngineStats",
    "Fixed",
    "Handler",
    "MessageTooLarge",
    "NetworkError",
    "PermissionDenied",
    "Policy",
    "Record",
    "RecordError",
    "RecordStats",
    "Recorder",
    "Reflector",
    "Relay",
    "RelayStats",
    "ServeStats",
    "ServeStep",
    "StepStats",
    "StreamListener",
    "StreamServer",
    "StreamSocket",
    "Timeout",
    "UdpkitError",
    "Unsupported",
    "UsageError",
    "Verdict",
    "__version__",
    "aio",
    "escape_bytes",
    "escape_text",
    "fast_path_available",
    "format_sockaddr",
    "is_broadcast",
    "is_multicast",
    "join_group",
    "leave_group",
    "open_socket",
    "parse_domain",
    "parse_host",
    "parse_port",
    "parse_protocol",
    "parse_type",
    "read_records_untrusted",
    "reply_handler",
    "request",
    "request_all",
    "resolve",
    "resolve_one",
    "run_bench",
    "send_batch",
    "set_multicast_send",
    "set_receive_buffer",
    "split_hostport",
    "stream_request",
    "tcp_connect",
    "tcp_listen",
    "udp_bind",
    "udp_connect",
    "unix_datagram_bind",
    "unix_datagram_connect",
    "unix_stream_connect",
    "unix_stream_listen",
]

# Public names load on first use (PEP 562), so `udpkit send` does not pay for
# modules it never touches.
_LAZY: dict[str, str] = {
    "Policy": "_policy",
    "Verdict": "_policy",
    "Recorder": "_record",
    "RecordStats": "_record",
    "Record": "_record",
    "RecordError": "_record",
    "read_records_untrusted": "_record",
    "Relay": "_relay",
    "RelayStats": "_relaystats",
    "BenchConfig": "_bench",
    "run_bench": "_bench",
    "Reflector": "_reflect",
    "BROADCAST": "_addr",
    "MAX_UDP_PAYLOAD": "_addr",
    "Address": "_addr",
    "format_sockaddr": "_addr",
    "is_broadcast": "_addr",
    "is_multicast": "_addr",
    "join_group": "_mcast",
    "leave_group": "_mcast",
    "set_multicast_send": "_mcast",
    "parse_host": "_addr",
    "parse_port": "_addr",
    "resolve": "_addr",
    "resolve_one": "_addr",
    "split_hostport": "_addr",
    "request": "_client",
    "request_all": "_client",
    "stream_request": "_client",
    "AddressError": "_errors",
    "AddressInUse": "_errors",
    "ConnectionRefused": "_errors",
    "MessageTooLarge": "_errors",
    "NetworkError": "_errors",
    "PermissionDenied": "_errors",
    "Timeout": "_errors",
    "UdpkitError": "_errors",
    "Unsupported": "_errors",
    "UsageError": "_errors",
    "escape_bytes": "_escape",
    "escape_text": "_escape",
    "DatagramServer": "_server",
    "ECHO": "_serving",
    "Echo": "_serving",
    "Fixed": "_serving",
    "ServeStep": "_serving",
    "StepStats": "_serving",
    "BatchAnswer": "_serving",
    "Handler": "_serving",
    "ServeStats": "_server",
    "StreamServer": "_server",
    "reply_handler": "_server",
    "BatchObserver": "_serving",
    "Engine": "_engine",
    "EngineStats": "_engine",
    "fast_path_available": "_engine",
    "send_batch": "_engine",
    "set_receive_buffer": "_sockets",
    "IPPROTO_UDPLITE": "_generic",
    "Datagram": "_sockets",
    "DatagramSocket": "_sockets",
    "StreamListener": "_stream",
    "StreamSocket": "_stream",
    "open_socket": "_generic",
    "parse_domain": "_generic",
    "parse_protocol": "_generic",
    "parse_type": "_generic",
    "tcp_connect": "_stream",
    "tcp_listen": "_stream",
    "udp_bind": "_sockets",
    "udp_connect": "_sockets",
    "unix_datagram_bind": "_unix",
    "unix_datagram_connect": "_unix",
    "unix_stream_connect": "_unix",
    "unix_stream_listen": "_unix",
}


def __getattr__(name: str) -> Any:
    from importlib import import_module

    if name == "aio":  # the asyncio API is a public submodule; it imports asyncio
        return import_module("udpkit.aio")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'udpkit' has no attribute {name!r}")
    value = getattr(import_module(f"udpkit.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
