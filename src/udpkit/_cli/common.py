"""What every command module shares: exit codes, defaults, the parser class, output.

Command modules import from here (and :mod:`udpkit._cli.options`), never from
:mod:`udpkit._cli.main`, the dispatcher.  Only light modules are imported, so a
command's start-up does not pay for another's.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from collections.abc import Sequence
from typing import NoReturn, Protocol, TextIO, TypeAlias

from udpkit._core.errors import UsageError
from udpkit._core.escape import escape_controls

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MESSAGE",
    "DEFAULT_REPLY",
    "DEFAULT_TCP_PORT",
    "DEFAULT_UDP_PORT",
    "EXIT_CODES_HELP",
    "EXIT_NETWORK",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "FORMATS",
    "FORMAT_ALIASES",
    "Out",
    "Parser",
    "SubParsers",
    "Writer",
    "add_command",
    "check_unix_args",
    "family",
    "format_name",
    "line",
    "quiet_stdout",
    "rcvbuf_note",
    "transport",
]

# What ``Parser.add_subparsers(parser_class=Parser)`` returns: each command
# module's ``add_parser(sub)`` registers its commands on it, every one a Parser.
SubParsers: TypeAlias = "argparse._SubParsersAction[Parser]"

EXIT_OK = 0
EXIT_NETWORK = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3

EXIT_CODES_HELP = """\
exit codes:
  0  success (serve, relay and reflect stopped by SIGINT or SIGTERM also exit 0)
  1  network or runtime error: port in use, nothing listening, permission denied
  2  bad arguments or input
  3  no reply before the timeout
"""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_UDP_PORT = "5005"
DEFAULT_TCP_PORT = "12345"  # the textbook's simple TCP client connects to 12345
DEFAULT_MESSAGE = "Hello UDP Server"
DEFAULT_REPLY = "Hello UDP Client"

# The output formats of serve and read (udpkit._cli.format renders them; naming
# them here keeps json and datetime off every command's start-up).  "seed" is
# the old name of "textbook" and still accepted.
FORMATS = ("textbook", "line", "hex", "json")
FORMAT_ALIASES = {"seed": "textbook"}


def format_name(text: str) -> str:
    """An output format's name, an alias turned into the name it stands for."""
    return FORMAT_ALIASES.get(text, text)


def line(text: str) -> str:
    """``text`` as one terminal-safe line (control characters escaped), newline added."""
    # Error messages quote what the user typed (a port, a path, argv itself),
    # which may hold ESC sequences or newlines: escape them here, once, so
    # every error is one terminal-safe line whatever the layer below wrote.
    return escape_controls(text) + "\n"


# argparse's "argument -t/--duration: invalid --duration 'x': ..." says the
# option twice when the validator's message already names it.
_NAMED_TWICE = re.compile(r"argument (\S+): (invalid (\S+) .*)", re.DOTALL)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        m = _NAMED_TWICE.fullmatch(message)
        if m is not None and m.group(3) in m.group(1).split("/"):
            message = m.group(2)
        self.exit(EXIT_USAGE, line(f"{self.prog}: error: {message} (see '{self.prog} --help')"))


class _Help(argparse.HelpFormatter):
    """Wraps a one-paragraph description to the terminal; keeps a text of
    several lines (an epilog: exit codes, examples) as it is written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + row for row in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_command(
    sub: SubParsers,
    name: str,
    *,
    help: str,
    description: str,
    epilog: str = EXIT_CODES_HELP,
    usage: str | None = None,
) -> Parser:
    """Register command ``name``: its help page ends in its exit codes (``epilog``)."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        usage=usage,
        formatter_class=_Help,
    )


class Writer(Protocol):
    """Where a command writes its text: :class:`Out`, or a test's ``StringIO``."""

    def write(self, text: str, /) -> object: ...


class Out:
    """Writes whole lines and flushes at once, so pipes and files see each
    message as it arrives; a closed stdout ends the program quietly."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def family(args: argparse.Namespace) -> int:
    """The address family ``-4``/``-6`` ask for (``AF_UNSPEC``: either)."""
    if getattr(args, "ipv4", False):
        return socket.AF_INET
    if getattr(args, "ipv6", False):
        return socket.AF_INET6
    return socket.AF_UNSPEC


def transport(args: argparse.Namespace) -> str:
    """``"UDP"``, ``"TCP"``, ``"Unix datagram"`` or ``"Unix stream"`` from the transport flags."""
    if args.unix is not None:
        return "Unix stream" if args.stream or args.tcp else "Unix datagram"
    if args.stream:
        raise UsageError("--stream goes with --unix PATH; for TCP use --tcp")
    return "TCP" if args.tcp else "UDP"


def check_unix_args(args: argparse.Namespace, extra: Sequence[object]) -> None:
    """Refuse HOST/PORT (``extra``) and ``-4``/``-6`` together with ``--unix PATH``."""
    if args.unix is not None and any(x is not None for x in extra):
        raise UsageError("with --unix PATH give no HOST or PORT (the path is the address)")
    if args.unix is not None and (args.ipv4 or args.ipv6):
        raise UsageError("--ipv4/--ipv6 do not apply to --unix sockets")


def quiet_stdout() -> None:
    """Point stdout at ``/dev/null``: its reader has gone (``udpkit serve | head``), and
    the interpreter's last flush must not complain about it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's StringIO)
        pass


def rcvbuf_note(asked: int, got: int) -> str:
    """What ``--rcvbuf`` got: the size, and why when the kernel gave less."""
    if got >= asked:
        return f"udpkit: receive buffer {got} bytes (asked {asked})\n"
    return (
        f"udpkit: receive buffer {got} bytes, less than the {asked} asked: the kernel caps it at "
        "net.core.rmem_max (raise it with sysctl, or run as root for SO_RCVBUFFORCE)\n"
    )
