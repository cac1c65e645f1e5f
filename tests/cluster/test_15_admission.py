"""Admission on the real kube-apiserver: the CRDs' schemas and CEL rules as the server
enforces them (structural schema, CEL cost budget, defaulting), proven with
``kubectl apply --dry-run=server`` on every example and on the invalid-spec corpus."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from realkube import ROOT, RealKube

pytestmark = pytest.mark.cluster

INVALID = sorted((ROOT / "tests" / "unit" / "invalid").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def crds(cluster: RealKube) -> RealKube:
    """The generated CRDs applied and Established (what `helm install` does first)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/benchmarkruns.benchop.io", "crd/experiments.benchop.io",
    )  # fmt: skip
    return cluster


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_admitted(crds: RealKube, path: Path) -> None:
    out = crds.kubectl("apply", "--dry-run=server", "-n", "default", "-f", str(path)).stdout
    assert "(server dry run)" in out


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_spec_is_refused_naming_the_field(crds: RealKube, path: Path) -> None:
    text = path.read_text()
    expect = re.search(r"^# expect: (.+)$", text, re.M)
    assert expect
    field = expect.group(1).strip()
    res = crds.kubectl("apply", "--dry-run=server", "-n", "default", "-f", str(path), check=False)
    if re.search(r"^# model-only: ", text, re.M):
        # a free-form field (request.extraBody) no schema or CEL rule can read: the apiserver
        # admits it and the operator refuses it (Accepted=False InvalidSpec naming the field)
        assert res.returncode == 0 and "(server dry run)" in res.stdout, res.stderr
        return
    assert res.returncode != 0, f"{path.name} was admitted:\n{res.stdout}"
    # kubectl's strict field validation refuses unknown fields before the schema is checked.
    assert "is invalid" in res.stderr or "strict decoding error" in res.stderr, res.stderr
    # The server names the field (`spec.load.concurrency: Invalid value ...`); for a CEL rule
    # on an object it names the object and gives the rule's message.
    assert field in res.stderr, res.stderr
    if re.search(r"^# cel: ", text, re.M):
        node_messages = [
            r["message"] for r in _rules(yaml.safe_load(text)["kind"]) if r["message"] in res.stderr
        ]
        assert node_messages, res.stderr


def _rules(kind: str) -> list[dict[str, str]]:
    plural = {"BenchmarkRun": "benchmarkruns", "Experiment": "experiments"}[kind]
    crd = yaml.safe_load((ROOT / "crds" / f"{plural}.benchop.io.yaml").read_text())
    found: list[dict[str, str]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            found.extend(node.get("x-kubernetes-validations", []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(crd["spec"]["versions"][0]["schema"])
    return found
