"""ruff and mypy --strict over the whole project, as part of the one test command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_check() -> None:
    res = _run("ruff", "check", "src", "tests", "benchmarks")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_format() -> None:
    res = _run("ruff", "format", "--check", "src", "tests", "benchmarks")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict() -> None:
    pytest.importorskip("mypy")
    res = _run(sys.executable, "-m", "mypy", "--strict")
    assert res.returncode == 0, res.stdout + res.stderr


def test_py_typed_shipped() -> None:
    import udpkit

    assert (Path(udpkit.__file__).parent / "py.typed").exists()
