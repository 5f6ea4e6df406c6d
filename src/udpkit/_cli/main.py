"""The ``udpkit`` command line: a thin layer over the library.

This module is the dispatcher: it asks each command module to declare its own
arguments (``add_parser``), maps errors to exit codes, and imports a command's
``run`` function only when that command runs.  Command modules never import it:
what they share lives in :mod:`udpkit._cli.common` and :mod:`udpkit._cli.options`.

Exit codes (also in ``udpkit --help`` and the README):
  0  success (and ``serve``, ``relay``, ``reflect`` stopped by SIGINT/SIGTERM)
  1  network or runtime error: port in use, nothing listening, permission denied
  2  bad arguments or input
  3  no reply before the timeout
  130, 143  ``bench``, ``connect`` and ``listen`` ended by SIGINT/SIGTERM
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from udpkit._cli.common import EXIT_CODES_HELP, EXIT_NETWORK, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE
from udpkit._cli.common import Out as _Out
from udpkit._cli.common import Parser as _Parser
from udpkit._cli.common import line as _line
from udpkit._cli.common import quiet_stdout as _quiet_stdout
from udpkit._core.errors import AddressError, NetworkError, Timeout, UdpkitError, UsageError

__all__ = ["build_parser", "main", "run"]

# The modules that declare the commands, in the order --help lists them.  Each
# imports only light modules at the top, so registering them all costs no start-up.
_COMMAND_MODULES = ("serve", "send", "relay", "bench", "ping", "session", "read")


class _Stopped(Exception):
    """Raised in the main thread by the SIGTERM handler."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each command, by name (aliases included)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; plain ``udpkit`` prints the help, and an unknown option is the
    command's error, pointing at the command's own help (``udpkit send --help``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        # As git does: the help instead of "COMMAND is required"; on stderr with exit 2,
        # since no command ran (`udpkit --help` prints it on stdout and exits 0).
        parser.print_help(sys.stderr)
        parser.exit(EXIT_USAGE)
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = _subparsers(parser).get(getattr(args, "command", None) or "", parser)
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for ``udpkit`` (exposed for docs and tests)."""
    parser = _Parser(
        prog="udpkit",
        description="Listen for, send, echo and measure UDP datagrams.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from udpkit import __version__

    parser.add_argument("--version", action="version", version=f"udpkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(f"udpkit._cli.{name}").add_parser(sub)
    return parser


# ---------------------------------------------------------------- main


def _lazy_command(module: str, func: str) -> Callable[[argparse.Namespace, _Out, _Out], int]:
    def command(args: argparse.Namespace, out: _Out, err: _Out) -> int:
        run: Callable[[argparse.Namespace, _Out, _Out], int] = getattr(
            importlib.import_module(f"udpkit.{module}"), func
        )
        return run(args, out, err)

    return command


def _on_sigterm(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``udpkit`` command line and return its exit code."""
    parser = build_parser()
    args = _parse(parser, argv)
    out, err = _Out(sys.stdout), _Out(sys.stderr)
    commands: dict[str, Callable[[argparse.Namespace, _Out, _Out], int]] = {
        "serve": _lazy_command("_cli.serve", "run_serve"),
        "send": _lazy_command("_cli.send", "run_send"),
        "demo": _lazy_command("_cli.send", "run_demo"),
        "relay": _lazy_command("_cli.relay", "run"),
        "bench": _lazy_command("_cli.bench", "bench_command"),
        "reflect": _lazy_command("_cli.bench", "run_reflect"),
        "ping": _lazy_command("_cli.ping", "run_ping"),
        "connect": _lazy_command("_cli.session", "run_connect"),
        "listen": _lazy_command("_cli.session", "run_listen"),
        "read": _lazy_command("_cli.read", "run_read"),
    }
    # Not possible outside the main thread (main() called from a library
    # user's thread): then SIGTERM keeps its default meaning.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, _on_sigterm)
    prog = f"udpkit {args.command}"
    try:
        return commands[args.command](args, out, err)
    except BrokenPipeError:  # stdout is gone (`udpkit serve | head`): end without a word
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except _Stopped as stop:
        return 128 + stop.signum
    except (Timeout, TimeoutError) as exc:
        hint = ""
        if args.command == "send":
            # The textbook's own server never answers: say the send itself worked.
            hint = "; the message was sent (use --no-wait to send without waiting for a reply)"
        sys.stderr.write(_line(f"{prog}: {exc}{hint}"))
        return EXIT_TIMEOUT
    except (UsageError, AddressError) as exc:
        sys.stderr.write(_line(f"{prog}: error: {exc}"))
        return EXIT_USAGE
    except (NetworkError, UdpkitError) as exc:
        sys.stderr.write(_line(f"{prog}: error: {exc}"))
        return EXIT_NETWORK
    except OSError as exc:  # an OS error a layer below did not map: still one line
        sys.stderr.write(_line(f"{prog}: error: {exc.strerror or exc}"))
        return EXIT_NETWORK


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
