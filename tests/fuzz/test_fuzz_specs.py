"""BenchmarkRun and Experiment specs generated from the CRD schemas (hypothesis-jsonschema),
through the models and the operator's checks at Accepted time: nothing but a
``ValidationError`` (or the operator's own refusal) comes out, and an accepted spec survives
its round trip. The real API server's verdict on the same specs is compared in
tests/cluster/test_16_fuzz_specs.py; the pinned verdicts of corpus/specs are replayed here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from budget import budget
from hypothesis import given
from specgen import SPEC_CORPUS, manifests, model_verdict, operator_verdict

from benchop.api.models import load_manifest, to_wire

pytestmark = pytest.mark.timeout(240)


def check(doc: dict[str, Any]) -> None:
    ok, _ = model_verdict(doc)
    op_ok, _ = operator_verdict(doc)
    assert ok or not op_ok  # the operator never accepts what the model refuses
    if ok:
        model = load_manifest(doc)
        assert load_manifest(to_wire(model)) == model


@budget(12)
@given(manifests("BenchmarkRun"))
def test_benchmarkrun_specs(doc: dict[str, Any]) -> None:
    check(doc)


@budget(8)
@given(manifests("Experiment"))
def test_experiment_specs(doc: dict[str, Any]) -> None:
    check(doc)


SPECS = sorted(SPEC_CORPUS.glob("*.yaml"))


def pinned(path: Path) -> dict[str, str]:
    """The ``# key: value`` lines at the top of a corpus spec (model, apiserver, why)."""
    return dict(re.findall(r"^# (\w+): (.+)$", path.read_text(), re.M))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_committed_spec_keeps_its_model_verdict(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    ok, message = model_verdict(doc)
    assert ("accepted" if ok else "refused") == pinned(path)["model"], message
    check(doc)
