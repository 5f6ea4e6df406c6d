"""The README's Python examples run as written (a newcomer copies them)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_asyncio_example_runs_and_prints_what_it_says() -> None:
    code = next(b for b in _python_blocks() if "udpkit.aio" in b)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:3] == ["b'HELLO'", "b'AGAIN'", "0 True"]


def test_socket_example_runs() -> None:
    code = next(b for b in _python_blocks() if "udp_connect" in b)
    res = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "b'Hello UDP Client'"
