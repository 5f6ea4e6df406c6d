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
    from udpkit import aio
    from udpkit._core.datagram import Datagram
    from udpkit._core.errors import (
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
    from udpkit._core.escape import escape_bytes, escape_text
    from udpkit._core.notices import Refusal, RefusalNotices
    from udpkit._core.policy import Policy, Verdict
    from udpkit._core.relay import ImpairConfig
    from udpkit._core.relaystats import RelayStats
    from udpkit._core.scenario import Scenario, parse_scenario
    from udpkit._core.serving import (
        ECHO,
        BatchAnswer,
        BatchObserver,
        Echo,
        Fixed,
        Handler,
        ServeStep,
        StepStats,
    )
    from udpkit._loops.bench import BenchConfig, BenchResult, FlowResult, run_bench
    from udpkit._loops.client import (
        first_answering,
        request,
        request_all,
        request_first,
        stream_request,
    )
    from udpkit._loops.engine import Engine, EngineStats
    from udpkit._loops.record import (
        Record,
        Recorder,
        RecordError,
        RecordStats,
        read_records_untrusted,
    )
    from udpkit._loops.reflect import Reflector
    from udpkit._loops.relay import Relay, RouteSpec
    from udpkit._loops.relay_control import ControlServer
    from udpkit._loops.server import DatagramServer, ServeStats, StreamServer, reply_handler
    from udpkit._net.addr import (
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
    from udpkit._net.binding import bind_server
    from udpkit._net.domains import (
        IPPROTO_UDPLITE,
        open_socket,
        parse_domain,
        parse_protocol,
        parse_type,
    )
    from udpkit._net.mcast import join_group, leave_group, set_multicast_send
    from udpkit._net.mmsg import fast_path_available
    from udpkit._net.sendmmsg import send_batch
    from udpkit._net.sockets import DatagramSocket, set_receive_buffer, udp_bind, udp_connect
    from udpkit._net.stream import StreamListener, StreamSocket, tcp_connect, tcp_listen
    from udpkit._net.unix import (
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
    "BenchResult",
    "ConnectionRefused",
    "ControlServer",
    "Datagram",
    "DatagramServer",
    "DatagramSocket",
    "Echo",
    "Engine",
    "EngineStats",
    "Fixed",
    "FlowResult",
    "Handler",
    "ImpairConfig",
    "MessageTooLarge",
    "NetworkError",
    "PermissionDenied",
    "Policy",
    "Record",
    "RecordError",
    "RecordStats",
    "Recorder",
    "Reflector",
    "Refusal",
    "RefusalNotices",
    "Relay",
    "RelayStats",
    "RouteSpec",
    "Scenario",
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
    "bind_server",
    "escape_bytes",
    "escape_text",
    "fast_path_available",
    "first_answering",
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
    "parse_scenario",
    "parse_type",
    "read_records_untrusted",
    "reply_handler",
    "request",
    "request_all",
    "request_first",
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
    "Policy": "_core.policy",
    "Verdict": "_core.policy",
    "Refusal": "_core.notices",
    "RefusalNotices": "_core.notices",
    "Recorder": "_loops.record",
    "RecordStats": "_loops.record",
    "Record": "_loops.record",
    "RecordError": "_loops.record",
    "read_records_untrusted": "_loops.record",
    "Relay": "_loops.relay",
    "RouteSpec": "_loops.relay",
    "ControlServer": "_loops.relay_control",
    "Scenario": "_core.scenario",
    "parse_scenario": "_core.scenario",
    "RelayStats": "_core.relaystats",
    "BenchConfig": "_loops.bench",
    "BenchResult": "_loops.bench",
    "FlowResult": "_loops.bench",
    "ImpairConfig": "_core.relay",
    "bind_server": "_net.binding",
    "run_bench": "_loops.bench",
    "Reflector": "_loops.reflect",
    "BROADCAST": "_net.addr",
    "MAX_UDP_PAYLOAD": "_net.addr",
    "Address": "_net.addr",
    "format_sockaddr": "_net.addr",
    "is_broadcast": "_net.addr",
    "is_multicast": "_net.addr",
    "join_group": "_net.mcast",
    "leave_group": "_net.mcast",
    "set_multicast_send": "_net.mcast",
    "parse_host": "_net.addr",
    "parse_port": "_net.addr",
    "resolve": "_net.addr",
    "resolve_one": "_net.addr",
    "split_hostport": "_net.addr",
    "request": "_loops.client",
    "request_all": "_loops.client",
    "request_first": "_loops.client",
    "first_answering": "_loops.client",
    "stream_request": "_loops.client",
    "AddressError": "_core.errors",
    "AddressInUse": "_core.errors",
    "ConnectionRefused": "_core.errors",
    "MessageTooLarge": "_core.errors",
    "NetworkError": "_core.errors",
    "PermissionDenied": "_core.errors",
    "Timeout": "_core.errors",
    "UdpkitError": "_core.errors",
    "Unsupported": "_core.errors",
    "UsageError": "_core.errors",
    "escape_bytes": "_core.escape",
    "escape_text": "_core.escape",
    "DatagramServer": "_loops.server",
    "ECHO": "_core.serving",
    "Echo": "_core.serving",
    "Fixed": "_core.serving",
    "ServeStep": "_core.serving",
    "StepStats": "_core.serving",
    "BatchAnswer": "_core.serving",
    "Handler": "_core.serving",
    "ServeStats": "_loops.server",
    "StreamServer": "_loops.server",
    "reply_handler": "_loops.server",
    "BatchObserver": "_core.serving",
    "Engine": "_loops.engine",
    "EngineStats": "_loops.engine",
    "fast_path_available": "_net.mmsg",
    "send_batch": "_net.sendmmsg",
    "set_receive_buffer": "_net.sockets",
    "IPPROTO_UDPLITE": "_net.domains",
    "Datagram": "_core.datagram",
    "DatagramSocket": "_net.sockets",
    "StreamListener": "_net.stream",
    "StreamSocket": "_net.stream",
    "open_socket": "_net.domains",
    "parse_domain": "_net.domains",
    "parse_protocol": "_net.domains",
    "parse_type": "_net.domains",
    "tcp_connect": "_net.stream",
    "tcp_listen": "_net.stream",
    "udp_bind": "_net.sockets",
    "udp_connect": "_net.sockets",
    "unix_datagram_bind": "_net.unix",
    "unix_datagram_connect": "_net.unix",
    "unix_stream_connect": "_net.unix",
    "unix_stream_listen": "_net.unix",
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
