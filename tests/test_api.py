"""The public API: what ``udpkit`` exports, and that it stays importable cheaply."""

from __future__ import annotations

import inspect
import subprocess
import sys

import udpkit


def test_all_names_exist_and_are_documented() -> None:
    for name in udpkit.__all__:
        obj = getattr(udpkit, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert obj.__doc__, f"udpkit.{name} has no docstring"


def test_all_is_complete_without_repeats() -> None:
    public = {n for n in dir(udpkit) if not n.startswith("_")} - {
        "annotations",
        "TYPE_CHECKING",
        "Any",
    }
    # every public attribute (other than submodules) is listed in __all__
    modules = {n for n in public if type(getattr(udpkit, n)).__name__ == "module"} - {"aio"}
    assert public - modules <= set(udpkit.__all__)
    assert len(set(udpkit.__all__)) == len(udpkit.__all__)


def test_errors_are_builtin_too() -> None:
    assert issubclass(udpkit.AddressError, ValueError)
    assert issubclass(udpkit.Timeout, TimeoutError)
    assert issubclass(udpkit.NetworkError, OSError)
    assert issubclass(udpkit.ConnectionRefused, ConnectionRefusedError)
    assert issubclass(udpkit.PermissionDenied, PermissionError)
    for name in ("AddressError", "Timeout", "NetworkError", "UsageError", "MessageTooLarge"):
        assert issubclass(getattr(udpkit, name), udpkit.UdpkitError)


def test_cli_start_path_stays_light() -> None:
    """`udpkit send` must start fast: no heavy imports on the send/serve path."""
    code = (
        "import sys, udpkit._cli.main; udpkit._cli.main.build_parser();"
        "heavy = {'asyncio', 'rich', 'matplotlib', 'hdrh', 'prometheus_client', 'json', 'base64'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]"


def test_lazy_table_matches_all() -> None:
    """Every exported name loads lazily from the module that defines it."""
    assert set(udpkit._LAZY) | {"__version__", "aio"} == set(udpkit.__all__)
    for name, module in udpkit._LAZY.items():
        assert getattr(udpkit, name) is getattr(
            __import__(f"udpkit.{module}", fromlist=[name]), name
        )


def test_every_cli_capability_has_a_public_name() -> None:
    """The CLI is a thin layer: binding for workers and groups, the first answering
    address, bench's results and the relay's impairments are all public."""
    for name in (
        "bind_server",
        "first_answering",
        "request_first",
        "BenchConfig",
        "BenchResult",
        "FlowResult",
        "run_bench",
        "ImpairConfig",
        "Relay",
        "Reflector",
        "Recorder",
        "Policy",
        "DatagramServer",
    ):
        assert name in udpkit.__all__, name
    assert udpkit.DatagramServer.start_metrics.__doc__
    assert udpkit.run_bench.__module__ == "udpkit._loops.bench"  # the library's, not the CLI's
