"""Generated BenchmarkRun/Experiment specs on the real kube-apiserver: ``create`` with
``dryRun=All`` and strict field validation against the model's verdict on the same spec.

Specs come from the committed CRD schemas (tests/fuzz/specgen.py: hypothesis-jsonschema, then
broken one way or another); the budget is derandomized, so every run sends the same specs.
Model and API server must agree on valid/invalid, except for the documented disagreements in
``specgen.DOCUMENTED`` (the model refuses, the server admits, the operator answers
Accepted=False). A disagreement fails the test printing the manifest: pin it in
tests/fuzz/corpus/specs/ once it is fixed or documented. The pinned manifests are replayed too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from realkube import ROOT, RealKube

sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
from budget import budget
from specgen import (
    PLURALS,
    SPEC_CORPUS,
    documented,
    manifests,
    model_verdict,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def api(cluster: RealKube) -> client.CustomObjectsApi:
    """The CRDs applied and Established; a client on the admin kubeconfig."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/benchmarkruns.benchop.io", "crd/experiments.benchop.io",
    )  # fmt: skip
    return client.CustomObjectsApi(config.new_client_from_config(str(cluster.kubeconfig)))


def server_verdict(api: client.CustomObjectsApi, doc: dict[str, Any]) -> tuple[bool, str]:
    """(admitted, the server's message) for a dry-run create in ``default``."""
    try:
        api.create_namespaced_custom_object(
            "benchop.io", "v1alpha1", "default", PLURALS[doc["kind"]], doc,
            dry_run="All", field_validation="Strict",
        )  # fmt: skip
    except ApiException as e:
        assert e.status in (400, 422), f"unexpected answer {e.status}: {e.body}"
        return False, str(e.body)
    return True, ""


def agree(api: client.CustomObjectsApi, doc: dict[str, Any]) -> str:
    """Compare; return the documented disagreement's name, "" when both agree."""
    ok, message = model_verdict(doc)
    admitted, server = server_verdict(api, doc)
    if ok == admitted:
        return ""
    known = None if ok else documented(doc, message)
    assert known, (
        f"model {'accepts' if ok else 'refuses'}, API server {'admits' if admitted else 'refuses'}"
        f"\nmodel: {message}\nserver: {server}\n---\n{yaml.safe_dump(doc, sort_keys=False)}"
    )
    return known


@budget(60)
@given(manifests("BenchmarkRun"))
def test_benchmarkrun_specs_agree(api: client.CustomObjectsApi, doc: dict[str, Any]) -> None:
    agree(api, doc)


@budget(40)
@given(manifests("Experiment"))
def test_experiment_specs_agree(api: client.CustomObjectsApi, doc: dict[str, Any]) -> None:
    agree(api, doc)


@pytest.mark.parametrize("path", sorted(SPEC_CORPUS.glob("*.yaml")), ids=lambda p: p.stem)
def test_committed_spec_keeps_its_server_verdict(api: client.CustomObjectsApi, path: Path) -> None:
    text = path.read_text()
    doc = yaml.safe_load(text)
    admitted, server = server_verdict(api, doc)
    assert f"# apiserver: {'admitted' if admitted else 'refused'}" in text, server
    agree(api, doc)
