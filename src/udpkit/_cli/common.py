"""What every command module shares: exit codes, defaults, the parser class, output.

Command modules import from here (and :mod:`udpkit._cli.options`), never from
:mod:`udpkit._cli.main`, the dispatcher.  Only light modules are imported, so a
command's start-up does not pay for another's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
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
    "OUTPUT_BLOCKED",
    "OUTPUT_CLOSED",
    "GuardedOutput",
    "Out",
    "OutputBlocked",
    "Parser",
    "SubParsers",
    "Writer",
    "add_command",
    "check_unix_args",
    "destination",
    "family",
    "format_name",
    "line",
    "lone_port",
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
  130, 143  bench, connect and listen ended by SIGINT or SIGTERM (summary printed)
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


# A number with an optional unit (`50`, `2.5ms`), unlike an address (`127.0.0.1`, `::1`).
_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)[^\d.:]*")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2, and an
    option whose value may be left out does not swallow a positional argument."""

    _mixing = False  # inside parse_known_intermixed_args, which calls back here

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = self._bare_options_last(sys.argv[1:] if args is None else list(args))
        if self._mixing or self._subparsers is not None:
            return super().parse_known_args(argv, namespace)
        # A command's options may stand between its positionals, as nc's and
        # iperf3's do (`udpkit bench HOST -t 1 PORT`): options first, then the rest.
        self._mixing = True
        try:
            return super().parse_known_intermixed_args(argv, namespace)
        except TypeError:  # a parser argparse cannot read intermixed: read it in order
            return super().parse_known_args(argv, namespace)
        finally:
            self._mixing = False

    def _bare_options_last(self, argv: list[str]) -> list[str]:
        """Move an option with an optional value (``--busy-poll [US]``) after the
        positionals when the word after it is no value of its own.

        argparse gives such an option the next word whatever it is, so ``serve
        --busy-poll 127.0.0.1 5005`` would read 127.0.0.1 as microseconds. A word
        its type refuses is a positional: the option goes last, where it is bare.
        """
        end = argv.index("--") if "--" in argv else len(argv)
        for i in range(end - 1):
            action = self._option_string_actions.get(argv[i])
            if action is None or action.nargs != "?" or action.const is None:
                continue
            word = argv[i + 1]
            if word.startswith("-") or _NUMBER.fullmatch(word) or not callable(action.type):
                continue  # a number (`2s` too, which its type refuses as too long) is a value
            try:
                action.type(word)
            except (argparse.ArgumentTypeError, TypeError, ValueError):
                return self._bare_options_last(
                    [*argv[:i], *argv[i + 1 : end], argv[i], *argv[end:]]
                )
        return argv

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


def lone_port(host: str | None, port: object, command: str) -> None:
    """Refuse a lone number where HOST goes: ``udpkit send 40050`` means port 40050, as
    ``nc`` reads it, never the integer address 0.0.156.114 (which may route off the host).

    A number with a port after it stays an integer address, as the textbook has it
    (``udpkit send 2130706433 5005`` is 127.0.0.1); numbers above 65535 are no port.

    Raises:
        UsageError: ``host`` is a number 0-65535 and ``port`` is None (not given).
    """
    lone = port is None and host is not None and host.isascii() and host.isdigit()
    if lone and host is not None and int(host) <= 65535:
        raise UsageError(
            f"invalid host '{host}': did you mean port {host}? give the host first: "
            f"udpkit {command} {DEFAULT_HOST} {host}"
        )


def destination(host: str, port: str | None, command: str) -> tuple[str, str]:
    """HOST and PORT of a command that sends to them (bench, ping, connect).

    A lone number is refused (:func:`lone_port`), ``HOST:PORT`` or ``[IPV6]:PORT``
    in one word is split, and a missing PORT is said.

    Raises:
        UsageError: a lone number, or no PORT.
        AddressError: a one-word address that does not split.
    """
    lone_port(host, port, command)
    if port is not None:
        return host, port
    if ":" in host and (host.startswith("[") or host.count(":") == 1):
        from udpkit._net.addr import split_hostport  # only on this path

        split_host, split_port = split_hostport(host, default_host="")
        if split_host:
            return split_host, split_port
    raise UsageError(f"missing PORT: write udpkit {command} {host or 'HOST'} PORT")


OUTPUT_CLOSED = "output closed"  # GuardedOutput.closed: the reader has gone
OUTPUT_BLOCKED = "output blocked"  # GuardedOutput.closed: a write hung past a stop


class OutputBlocked(Exception):
    """A write still hung when the time a stop allows it ran out (a full pipe nobody reads)."""


class GuardedOutput:
    """Output (stdout) that neither a closed nor a stuck reader holds past a stop.

    A closed pipe (``udpkit serve | head -2``) or a write broken off after a stop
    (``udpkit bench ... | sleep 60``) makes :meth:`write` return False: ``closed``
    says why (:data:`OUTPUT_CLOSED`, :data:`OUTPUT_BLOCKED`), ``on_closed(why)`` is
    called (it may raise), and nothing more is written.

    The break is SIGALRM (within :meth:`breaking_off`): the stop handler calls
    :meth:`stopped`, which gives a write hanging then ``unblock_after`` seconds
    before :class:`OutputBlocked` is raised out of it.  ``write(bounded=True)``
    gives one write the same (a stopped run's last words).  With ``shared``, the
    seconds after the first stop are shared by every write from then on, not only
    the one hanging when it came (serve: the drain of what is queued prints too).
    """

    def __init__(
        self,
        out: Writer,
        unblock_after: float,
        *,
        shared: bool = False,
        on_closed: Callable[[str], None] | None = None,
    ) -> None:
        self._out = out
        self._unblock_after = unblock_after
        self._shared = shared
        self._on_closed = on_closed
        self.closed: str | None = None  # why nothing more is written
        self._writing = False
        self._deadline: float | None = None  # shared: monotonic end of the writes' time

    def write(self, text: str, *, bounded: bool = False) -> bool:
        """Write ``text``; False (and ``closed``) when the pipe is closed or hung."""
        if self.closed is not None:
            return False
        if self._deadline is not None:  # stopping: what is left of the shared time
            left = self._deadline - time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))
        elif bounded:
            signal.setitimer(signal.ITIMER_REAL, self._unblock_after)
        self._writing = True
        try:
            self._out.write(text)
        except BrokenPipeError:
            why = OUTPUT_CLOSED
        except OutputBlocked:
            why = OUTPUT_BLOCKED
        else:
            return True
        finally:
            self._writing = False
            if bounded:
                signal.setitimer(signal.ITIMER_REAL, 0)
        self.closed = why
        if self._on_closed is not None:
            self._on_closed(why)
        return False

    def stopped(self) -> None:
        """Called by the stop handler: a write that hangs now is broken off soon."""
        if self._shared:
            if self._deadline is not None:
                return
            self._deadline = time.monotonic() + self._unblock_after
        if self._writing:
            signal.setitimer(signal.ITIMER_REAL, self._unblock_after)

    def _on_alarm(self, _signum: int, _frame: object) -> None:
        if self._writing:
            raise OutputBlocked

    @contextlib.contextmanager
    def breaking_off(self) -> Iterator[None]:
        """While the block runs, the alarm breaks off a hung write."""
        old = signal.signal(signal.SIGALRM, self._on_alarm)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


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
