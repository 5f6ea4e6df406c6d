"""Replay every atheris seed corpus through its target's check, without atheris.

Each ``tests/fuzz/<name>_fuzz.py`` defines ``one_input(data)``, which raises
only when the parser under test breaks its contract (an exception other than
its one error type, or an unsafe result).  The files in
``tests/fuzz/corpus/<name>/`` (the fuzzer's seeds, plus any crash it found and
someone kept) run through it on every normal test run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).parent / "fuzz"
TARGETS = ["addr", "capture", "escape", "probe", "record"]


def load_module(name: str) -> ModuleType:
    """``tests/fuzz/<name>_fuzz.py`` as a module (the script imports atheris only in main)."""
    spec = importlib.util.spec_from_file_location(f"{name}_fuzz", FUZZ / f"{name}_fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_target(name: str) -> Callable[[bytes], None]:
    """``one_input`` of ``tests/fuzz/<name>_fuzz.py``."""
    one_input: Callable[[bytes], None] = load_module(name).one_input
    return one_input


def test_every_target_has_a_corpus_and_every_corpus_a_target() -> None:
    targets = {p.name.removesuffix("_fuzz.py") for p in FUZZ.glob("*_fuzz.py")}
    corpora = {p.name for p in (FUZZ / "corpus").iterdir() if p.is_dir()}
    assert targets == corpora == set(TARGETS)


@pytest.mark.parametrize(
    ("name", "seed"),
    [
        pytest.param(name, path, id=f"{name}/{path.name}")
        for name in TARGETS
        for path in sorted((FUZZ / "corpus" / name).iterdir())
    ],
)
def test_corpus_file_replays(name: str, seed: Path) -> None:
    load_target(name)(seed.read_bytes())


@pytest.mark.parametrize("name", TARGETS)
def test_corpus_has_a_few_small_seeds(name: str) -> None:
    seeds = list((FUZZ / "corpus" / name).iterdir())
    assert len(seeds) >= 3
    assert all(p.stat().st_size <= 16_384 for p in seeds)
