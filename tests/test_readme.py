"""The README's Python examples run as written (a newcomer copies them).

Every ```python block runs in a fresh interpreter, on loopback, with a time
limit.  A block that cannot run here (it needs a network namespace, or serves
forever) says so in an HTML comment on the line before it, which the rendered
README does not show, and is skipped with that reason::

    <!-- readme-test: skip (serves until Ctrl-C) -->
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(
    r"(?:<!-- readme-test: skip \((?P<why>[^)]*)\) -->\n)?```python\n(?P<code>.*?)```", re.S
)
_LIMIT = 60.0  # seconds per block: the longest (Engine.run(duration=10)) takes ~10


def _python_blocks() -> list[tuple[str, str | None]]:
    return [(m.group("code"), m.group("why")) for m in _BLOCK.finditer(README.read_text())]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=_LIMIT,
        check=False,
    )


def _first_line(code: str) -> str:
    return next(
        line for line in code.splitlines() if line and not line.startswith(("import", "from"))
    )


# What a block prints, where the README says it in a comment: (a text the block
# holds, the lines its output starts with).
_PRINTS = {
    "udp_connect(*server": ["b'Hello UDP Client'"],
    "udpkit.ServeStep(": ["[0, 1] [b'ping', b'ping'] 1"],
    "udpkit.request_first(": ["b'Hello UDP Server' 1"],
    "udpkit.aio.serve(": ["b'HELLO'", "b'AGAIN'", "0 True"],
    "join_group(": ["b'hello, group'"],
}


@pytest.mark.parametrize(
    ("code", "why"), _python_blocks(), ids=[_first_line(c)[:40] for c, _ in _python_blocks()]
)
def test_every_python_block_runs_as_written(code: str, why: str | None) -> None:
    if why is not None:
        pytest.skip(why)
    res = _run(code)
    if res.returncode != 0 and "AddressInUse" in res.stderr:
        pytest.skip(f"a fixed port in the example is busy here: {res.stderr.strip()[-200:]}")
    assert res.returncode == 0, res.stderr
    for needle, lines in _PRINTS.items():
        if needle in code:
            got = res.stdout.splitlines()[: len(lines)]
            assert len(got) == len(lines), res.stdout
            assert all(g.startswith(x) for g, x in zip(got, lines, strict=True)), res.stdout


def test_the_blocks_are_found() -> None:
    """A change of fence or marker must not make the test above pass on nothing."""
    blocks = _python_blocks()
    assert len(blocks) >= 6
    assert sum(why is not None for _, why in blocks) <= 1  # as few skipped as possible
