"""On the real control plane: `kubectl wait --for=condition=Failed` returns for a failed run
(and for an Experiment whose CEL rules the apiserver enforces), and examples/slo-search.yaml
runs its probes as child runs to an answer that `kubectl get bexp` and `benchop get
experiment` show."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml
from realkube import E2E_NS, ROOT, RealKube
from test_20_run import example_run

pytestmark = pytest.mark.cluster


def test_kubectl_wait_for_failed_returns_for_a_failed_run(
    mock_server: str, release: RealKube
) -> None:
    """(``mock_server`` creates the namespace.)"""
    # nothing listens on the pod's own port 9: every request is refused, the run fails
    run = example_run(
        "refused",
        "http://127.0.0.1:9/v1",
        phases={"profiling": {"requests": 5}},
        gates={"baseline": False},
    )
    release.apply(run)
    res = release.kubectl(
        "-n", E2E_NS, "wait", "--for=condition=Failed", "br/refused", "--timeout=180s",
        check=False, timeout=190,
    )  # fmt: skip
    body = release.get("br", "refused", namespace=E2E_NS) or {}
    assert res.returncode == 0, (res.stderr, body.get("status"))
    failed, succeeded = release.condition(body, "Failed"), release.condition(body, "Succeeded")
    assert failed["status"] == "True" and succeeded["status"] == "False"
    assert failed["reason"] == succeeded["reason"] == "TargetUnreachable"
    # the other wait does not hang to its timeout either way: it fails fast on this run
    res = release.kubectl(
        "-n", E2E_NS, "wait", "--for=condition=Succeeded", "br/refused", "--timeout=5s",
        check=False,
    )  # fmt: skip
    assert res.returncode != 0


def test_the_apiserver_refuses_a_search_with_a_sweep(mock_server: str, release: RealKube) -> None:
    """The CEL rule on an Experiment's spec, enforced by the apiserver (within its cost budget)."""
    exp: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "slo-search.yaml").read_text())
    exp["metadata"] = {"name": "both", "namespace": E2E_NS}
    exp["spec"]["template"]["target"]["url"] = mock_server
    exp["spec"]["sweep"] = [{"path": "workload.seed", "values": [1, 2]}]
    res = release.kubectl("apply", "-f", "-", input=yaml.safe_dump(exp), check=False)
    assert res.returncode != 0, res.stdout
    assert "set exactly one of sweep or search" in res.stderr, res.stderr


def test_slo_search_example_runs_to_an_answer(mock_server: str, release: RealKube) -> None:
    """The mock Deployment has no capacity limit and a generous SLO: every probe passes, the
    search doubles the concurrency up to max and ends AtMax there."""
    exp: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "slo-search.yaml").read_text())
    name = exp["metadata"]["name"]
    exp["metadata"]["namespace"] = E2E_NS
    exp["spec"]["template"]["target"]["url"] = mock_server
    exp["spec"]["template"]["target"]["podSelector"] = {"matchLabels": {"app": "mock-llm"}}
    exp["spec"]["template"]["slo"] = {"itlMs": 50}
    exp["spec"]["search"]["concurrency"] = {"min": 4, "max": 16, "resolution": 1}
    release.apply(exp)
    res = release.kubectl(
        "-n", E2E_NS, "wait", "--for=condition=Succeeded", f"bexp/{name}", "--timeout=400s",
        check=False, timeout=410,
    )  # fmt: skip
    body = release.get("bexp", name, namespace=E2E_NS) or {}
    assert res.returncode == 0, (res.stderr, body.get("status"))
    assert release.condition(body, "Succeeded")["reason"] == "AtMax"
    assert release.condition(body, "Failed")["status"] == "False"

    def searched() -> dict[str, Any] | None:
        metrics = release.get("bexp", name, namespace=E2E_NS)["status"].get("metrics") or {}
        search = metrics.get("search") or {}
        return search if search.get("outcome") == "AtMax" else None

    search = release.wait_for(searched, timeout=60, what="status.metrics.search")
    assert search["knee"] == 16 and [p["value"] for p in search["probes"]] == [4, 8, 16]
    children = {
        c["metadata"]["name"]: c
        for c in release.get("br", namespace=E2E_NS)
        if c["metadata"].get("labels", {}).get("benchop.io/experiment") == name
    }
    assert sorted(children) == sorted(p["run"] for p in search["probes"])
    for probe in search["probes"]:
        assert children[probe["run"]]["spec"]["load"]["concurrency"] == probe["value"]

    header, row = release.kubectl("-n", E2E_NS, "get", "bexp", name).stdout.splitlines()
    columns = dict(zip(header.split(), row.split(), strict=True))
    assert columns["KNEE"] == "16" and columns["PHASE"] == "Succeeded"

    out = subprocess.run(
        ["benchop", "get", "experiment", name, "-n", E2E_NS],
        env={**release.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "SLO search: knee load.concurrency=16 (AtMax)" in out.stdout, out.stdout
