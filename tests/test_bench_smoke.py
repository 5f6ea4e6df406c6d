"""Smoke run of the benchmark (``benchmarks/run.py --smoke``): it must run and report sane JSON.

No timed assertions: only that every case it ran produced a well-formed row with a
positive rate, so the benchmark cannot rot unnoticed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

pytestmark = pytest.mark.linux_only


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not sys.platform.startswith("linux"):
        pytest.skip("the benchmark's peers and /proc accounting need Linux")
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--json", str(out)],
        capture_output=True,
        timeout=120,
        cwd=str(ROOT),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def _rows(doc: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
    return [r for r in doc["results"] if all(r.get(k) == v for k, v in kw.items())]


def test_machine_and_settings(report: dict[str, Any]) -> None:
    assert report["machine"]["cpus"] >= 1
    assert report["settings"]["smoke"] is True
    assert isinstance(report["ratios"], list) and report["ratios"]


@pytest.mark.parametrize(
    ("case", "server", "key", "value"),
    [
        ("sink", "udpkit", "size", 64),
        ("sink", "udpkit", "size", 1400),
        ("sink", "textbook", "size", 64),
        ("sink", "textbook", "size", 1400),
        ("echo", "udpkit", "window", 1),
        ("echo", "udpkit", "window", 32),
        ("echo", "textbook", "window", 1),
        ("echo", "textbook", "window", 32),
    ],
)
def test_python_rows(report: dict[str, Any], case: str, server: str, key: str, value: int) -> None:
    extra = {"client": "busy"} if case == "echo" else {}
    rows = _rows(report, case=case, server=server, **{key: value}, **extra)
    assert len(rows) == 1, rows
    row = rows[0]
    if case == "echo" and "skipped" in row:
        assert shutil.which("cc") is None, row  # only without a compiler for the C client
        return
    assert "error" not in row and "skipped" not in row, row
    assert row["rate"] > 0
    if case == "sink":
        assert 0 < row["received"] <= row["sent"]
        assert 0.0 <= row["lost_pct"] <= 100.0
    else:
        assert row["replies"] > 0 and row["malformed"] == 0
        assert 0 < row["p50_us"] <= row["p99_us"]


def test_ping_pong_with_a_sleeping_client(report: dict[str, Any]) -> None:
    """The textbook way of running ping-pong (no side spins) is measured too."""
    rows = _rows(report, case="echo", server="textbook", window=1, client="sleeping")
    assert len(rows) == 1, rows
    if "skipped" not in rows[0]:
        assert rows[0]["replies"] > 0


def test_udpkit_accounts_for_every_datagram(report: dict[str, Any]) -> None:
    """sent == received + kernel drops, exactly, for the engine in every sink row."""
    for row in _rows(report, case="sink", server="udpkit"):
        assert row["unaccounted"] == 0, row


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_reference_rows(report: dict[str, Any]) -> None:
    for row in _rows(report, server="C-mmsg") + _rows(report, server="C-busy"):
        assert "error" not in row and "skipped" not in row, row
        assert row["rate"] > 0
    assert _rows(report, case="sink", server="C-mmsg")
    assert _rows(report, case="echo", server="C-busy", window=1)


def test_drain_capacity_rows(report: dict[str, Any]) -> None:
    """The capacity case: udpkit empties a full queue and counts every datagram in it."""
    rows = _rows(report, case="drain", server="udpkit", size=64)
    assert len(rows) == 1, rows
    row = rows[0]
    assert "error" not in row and "skipped" not in row, row
    assert row["received"] == row["queued"] > 0
    assert row["rate"] > 0 and not row["unfinished"]
