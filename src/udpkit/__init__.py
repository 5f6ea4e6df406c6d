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
from ._client import request, stream_request
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
from ._server import DatagramServer, Handler, ServeStats, StreamServer, reply_handler
from ._sockets import (
    IPPROTO_UDPLITE,
    Datagram,
    DatagramSocket,
    StreamListener,
    StreamSocket,
    open_socket,
    parse_domain,
    parse_protocol,
    parse_type,
    tcp_connect,
    tcp_listen,
    udp_bind,
    udp_connect,
    unix_datagram_bind,
    unix_datagram_connect,
    unix_stream_connect,
    unix_stream_listen,
)

__version__ = "0.1.0"

__all__ = [
    "BROADCAST",
    "IPPROTO_UDPLITE",
    "MAX_UDP_PAYLOAD",
    "Address",
    "AddressError",
    "AddressInUse",
    "ConnectionRefused",
    "Datagram",
    "DatagramServer",
    "DatagramSocket",
    "Handler",
    "MessageTooLarge",
    "NetworkError",
    "PermissionDenied",
    "ServeStats",
    "StreamListener",
    "StreamServer",
    "StreamSocket",
    "Timeout",
    "UdpkitError",
    "Unsupported",
    "UsageError",
    "__version__",
    "escape_bytes",
    "escape_text",
    "format_sockaddr",
    "is_broadcast",
    "is_multicast",
    "open_socket",
    "parse_domain",
    "parse_host",
    "parse_port",
    "parse_protocol",
    "parse_type",
    "reply_handler",
    "request",
    "resolve",
    "resolve_one",
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
