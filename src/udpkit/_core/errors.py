"""The udpkit exception tree.

Every error udpkit raises derives from :class:`UdpkitError`; where a builtin
exception means the same thing, the udpkit error inherits it too, so callers
can catch either::

    UdpkitError (Exception)
    ├── AddressError (ValueError)         bad host, port, service name or address
    ├── UsageError (ValueError)           a bad argument that is not an address
    │   └── MessageTooLarge               payload over the largest datagram
    ├── Timeout (TimeoutError)            no answer before the deadline
    ├── ProbeError (ValueError)           a bench probe or report that does not parse
    │                                     (``_core/probe.py``: its untrusted parsers
    │                                     raise only this)
    ├── RecordError (ValueError)          a recording that cannot be read
    │                                     (``_core/records.py``: the same rule)
    └── NetworkError (OSError)            the OS refused a socket operation
        ├── AddressInUse                  EADDRINUSE on bind
        ├── ConnectionRefused (ConnectionRefusedError)
        │                                 nothing listening (ICMP port unreachable)
        ├── PermissionDenied (PermissionError)
        │                                 EACCES/EPERM, e.g. broadcast without SO_BROADCAST
        └── Unsupported                   family, type or protocol the OS lacks

Policy verdicts (denied, rate limited) are never exceptions: they are counted.
``OSError`` is turned into these in one place, :func:`map_oserror`.
"""

from __future__ import annotations

import errno

__all__ = [
    "AddressError",
    "AddressInUse",
    "ConnectionRefused",
    "MessageTooLarge",
    "NetworkError",
    "PermissionDenied",
    "Timeout",
    "UdpkitError",
    "Unsupported",
    "UsageError",
    "map_oserror",
]


class UdpkitError(Exception):
    """Root of every error udpkit raises."""


class AddressError(UdpkitError, ValueError):
    """A host, port, service name or address that cannot be used."""


class UsageError(UdpkitError, ValueError):
    """An argument that is out of range or malformed (not an address)."""


class MessageTooLarge(UsageError):
    """A payload larger than the largest datagram the family can carry."""


class Timeout(UdpkitError, TimeoutError):
    """No answer arrived before the deadline."""


class NetworkError(UdpkitError, OSError):
    """The operating system refused a socket operation.

    ``errno`` is the OS error number; ``str()`` is the one-line message alone
    (no ``[Errno N]`` prefix), ready to show a user.
    """

    def __str__(self) -> str:
        return self.strerror if self.strerror is not None else super().__str__()


class AddressInUse(NetworkError):
    """The local address is already bound by another socket (EADDRINUSE)."""


class ConnectionRefused(NetworkError, ConnectionRefusedError):
    """Nothing listens at the destination (ICMP port unreachable, or TCP RST)."""


class PermissionDenied(NetworkError, PermissionError):
    """The OS denied the operation (EACCES/EPERM)."""


class Unsupported(NetworkError):
    """The address family, socket type or protocol is not supported here."""


_UNSUPPORTED = {
    errno.EAFNOSUPPORT,
    errno.EPROTONOSUPPORT,
    errno.ESOCKTNOSUPPORT,
    errno.EPFNOSUPPORT,
    errno.EOPNOTSUPP,
    errno.EPROTOTYPE,
}


def _explain(exc: OSError) -> str:
    # "Address already in use" -> "address already in use": it follows a colon.
    reason = exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


def map_oserror(exc: OSError, what: str, hint: str = "") -> NetworkError:
    """Turn an ``OSError`` into the matching :class:`NetworkError`.

    Args:
        exc: the error the OS raised.
        what: what was being done, e.g. ``"cannot bind 127.0.0.1:5005"``; it
            leads the message.
        hint: what to do about it, appended after the OS's reason.

    Returns:
        The udpkit error (not raised: the caller raises it ``from exc``).
    """
    if isinstance(exc, NetworkError):
        return exc
    code = exc.errno
    reason = _explain(exc)
    msg = f"{what}: {reason}: {hint}" if hint else f"{what}: {reason}"
    err: NetworkError
    if code == errno.EADDRINUSE:
        err = AddressInUse(code, msg)
    elif isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        err = ConnectionRefused(errno.ECONNREFUSED, msg)
    elif code in (errno.EACCES, errno.EPERM):
        err = PermissionDenied(code, msg)
    elif code in _UNSUPPORTED:
        err = Unsupported(code, msg)
    else:
        err = NetworkError(code, msg)
    return err
