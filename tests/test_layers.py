"""The package's layers, checked by reading every module's syntax tree.

    _core   I/O-free: no socket, no file, no clock read; imports no other layer
    _net    the OS layer: imports only _core
    _loops  own a socket and the clock: never import the CLI
    _aio    asyncio glue: never imports the CLI
    _cli    the command line; nothing in the library imports it

Imports inside functions count too (a lazy import is still a dependency), and
so does ``importlib.import_module("udpkit._cli...")``.  Every failure names the
module, the line and what to do instead.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "udpkit"
LAYERS = ("_core", "_net", "_loops", "_aio", "_cli")

# What each layer may import from udpkit's own layers (None: any).
ALLOWED: dict[str, frozenset[str] | None] = {
    "_core": frozenset({"_core"}),
    "_net": frozenset({"_core", "_net"}),
    "_loops": frozenset({"_core", "_net", "_loops", "_aio"}),
    "_aio": frozenset({"_core", "_net", "_loops", "_aio"}),
    "_cli": None,
    "": frozenset({"_core", "_net", "_loops", "_aio"}),  # udpkit/__init__.py, aio.py
}
# The console entry point is the command line itself.
ENTRY_POINTS = frozenset({"__main__.py"})

# Calls the I/O-free core must not make: the loops read the clock and pass `now`,
# and own every socket and file.
CLOCK_CALLS = frozenset(
    {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns"}
)
CORE_BANNED_CALLS: dict[str, str] = {
    "open": "opens a file",
    "io.open": "opens a file",
    "os.open": "opens a file",
    "socket.socket": "makes a socket",
    "socket.socketpair": "makes a socket",
    "socket.create_connection": "makes a socket",
    "socket.create_server": "makes a socket",
    "socket.getaddrinfo": "asks the resolver",
    "datetime.now": "reads the clock",
    "datetime.datetime.now": "reads the clock",
    **{f"time.{name}": "reads the clock" for name in CLOCK_CALLS},
}


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.what}"


def layer_of(rel: str) -> str:
    """``"_core/policy.py"`` -> ``"_core"``; a top-level module -> ``""``."""
    head = rel.split("/", 1)[0]
    return head if head in LAYERS else ""


def _imported_layers(node: ast.AST) -> list[tuple[int, str, str]]:
    """(line, layer, module name) for every udpkit layer the node imports."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module]
        if node.module == "udpkit":  # from udpkit import _cli
            names = [f"udpkit.{a.name}" for a in node.names]
    elif (
        isinstance(node, ast.Call)
        and _dotted(node.func) in ("importlib.import_module", "import_module")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        names = [node.args[0].value]
    out = []
    for name in names:
        parts = name.split(".")
        if parts[0] == "udpkit" and len(parts) > 1 and parts[1] in LAYERS:
            out.append((getattr(node, "lineno", 0), parts[1], name))
    return out


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _core_calls(tree: ast.AST, module: str) -> list[Violation]:
    # Names bound by `from time import monotonic` (or `as clock`) are clock reads too.
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("time", "socket", "os", "io"):
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        name = aliases.get(name, name)
        why = CORE_BANNED_CALLS.get(name)
        if why is not None:
            out.append(
                Violation(
                    module,
                    node.lineno,
                    f"the I/O-free core calls {name}() ({why}): take `now`, bytes or a "
                    "stream from the caller in _loops/_net instead",
                )
            )
    return out


def check_source(rel: str, source: str) -> list[Violation]:
    """Every layering violation in one module, ``rel`` relative to src/udpkit."""
    module = f"udpkit/{rel}"
    tree = ast.parse(source, filename=module)
    layer = layer_of(rel)
    allowed = ALLOWED[layer]
    out: list[Violation] = []
    for node in ast.walk(tree):
        for line, target, name in _imported_layers(node):
            if target == "_cli" and layer != "_cli" and rel not in ENTRY_POINTS:
                out.append(
                    Violation(
                        module,
                        line,
                        f"library module imports the CLI ({name}): move what it needs "
                        "into the library and let the CLI import that",
                    )
                )
            elif allowed is not None and target not in allowed and target != "_cli":
                out.append(
                    Violation(
                        module,
                        line,
                        f"{layer or 'udpkit'} imports {name} ({target}): "
                        f"{layer or 'udpkit'} may import only "
                        f"{', '.join(sorted(allowed))}",
                    )
                )
    if layer == "_core":
        out += _core_calls(tree, module)
    return out


def modules() -> list[Path]:
    found = sorted(SRC.rglob("*.py"))
    assert len(found) > 20, f"expected udpkit's modules under {SRC}"
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(SRC).as_posix())
def test_module_keeps_its_layer(path: Path) -> None:
    rel = path.relative_to(SRC).as_posix()
    problems = check_source(rel, path.read_text(encoding="utf-8"))
    assert not problems, "layering broken:\n" + "\n".join(map(str, problems))


def test_every_module_is_in_a_layer() -> None:
    """A new top-level folder would escape every rule above: name its layer first."""
    for path in modules():
        rel = path.relative_to(SRC)
        if len(rel.parts) > 1:
            assert rel.parts[0] in LAYERS, f"udpkit/{rel.as_posix()}: not in {LAYERS}"


# -- the checker itself catches what it must --------------------------------------------


@pytest.mark.parametrize(
    ("rel", "source", "fragment"),
    [
        ("_core/x.py", "from udpkit._net.addr import resolve\n", "_core imports udpkit._net.addr"),
        ("_core/x.py", "def f():\n    import udpkit._loops.engine\n", "udpkit/_core/x.py:2:"),
        ("_core/x.py", "from udpkit import _aio\n", "_core imports udpkit._aio"),
        ("_net/x.py", "from udpkit._loops.engine import Engine\n", "_net may import only"),
        ("_loops/x.py", "from udpkit._cli.main import run\n", "imports the CLI"),
        ("_aio/x.py", "import udpkit._cli.format as f\n", "imports the CLI"),
        ("aio.py", "from udpkit._cli import main\n", "imports the CLI"),
        (
            "_loops/x.py",
            "import importlib\nimportlib.import_module('udpkit._cli.serve')\n",
            "imports the CLI",
        ),
        ("_core/x.py", "def f(p):\n    return open(p, 'rb')\n", "calls open()"),
        ("_core/x.py", "import time\nnow = time.monotonic()\n", "calls time.monotonic()"),
        ("_core/x.py", "from time import perf_counter as c\nc()\n", "time.perf_counter()"),
        ("_core/x.py", "import socket\nsocket.socket()\n", "calls socket.socket()"),
    ],
)
def test_checker_names_the_offence(rel: str, source: str, fragment: str) -> None:
    problems = check_source(rel, source)
    assert problems, f"not caught: {source!r}"
    assert any(fragment in str(p) for p in problems), problems


@pytest.mark.parametrize(
    ("rel", "source"),
    [
        ("_core/x.py", "import socket\nsocket.inet_pton(socket.AF_INET, '1.2.3.4')\n"),
        ("_core/x.py", "from udpkit._core.errors import UdpkitError\n"),
        ("_net/x.py", "from udpkit._core.datagram import Datagram\n"),
        ("_loops/x.py", "import time\nfrom udpkit._net.sockets import udp_bind\ntime.time()\n"),
        ("_cli/x.py", "from udpkit._loops.engine import Engine\n"),
        ("__main__.py", "from udpkit._cli.main import run\n"),
    ],
)
def test_checker_allows_the_layers_own_imports(rel: str, source: str) -> None:
    assert check_source(rel, source) == []
