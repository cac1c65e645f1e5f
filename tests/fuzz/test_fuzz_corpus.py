"""Every committed fuzz input, replayed: a crash a fuzzer once found stays fixed."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzztargets import TARGETS, Harness, corpus_files

pytestmark = pytest.mark.timeout(120)

CASES = [(target, path) for target in TARGETS for path in corpus_files(target)]


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name[:20]}" for t, p in CASES])
def test_committed_input(fuzz: Harness, target: str, path: Path) -> None:
    fuzz.target(target)(path.read_bytes())


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_has_seeds(target: str) -> None:
    assert any(p.name.startswith("seed-") for p in corpus_files(target))
