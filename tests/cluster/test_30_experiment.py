"""examples/experiment.yaml on the real control plane: every child run Succeeded, the
Experiment's rollup has a row per point, and `benchop get experiment` reads it through the
kubeconfig."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml
from realkube import E2E_NS, ROOT, RealKube

pytestmark = pytest.mark.cluster


def test_example_experiment_runs_every_point(mock_server: str, release: RealKube) -> None:
    exp: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "experiment.yaml").read_text())
    name = exp["metadata"]["name"]
    exp["metadata"]["namespace"] = E2E_NS
    exp["spec"]["template"]["target"]["url"] = mock_server
    exp["spec"]["template"]["target"]["podSelector"] = {"matchLabels": {"app": "mock-llm"}}
    points = len(exp["spec"]["sweep"][0]["values"])
    release.apply(exp)
    res = release.kubectl(
        "-n", E2E_NS, "wait", "--for=condition=Succeeded", f"bexp/{name}", "--timeout=400s",
        check=False, timeout=410,
    )  # fmt: skip
    status = (release.get("bexp", name, namespace=E2E_NS) or {}).get("status")
    assert res.returncode == 0, (res.stderr, status)

    children = release.get("br", namespace=E2E_NS)
    mine = [
        c for c in children if c["metadata"].get("labels", {}).get("benchop.io/experiment") == name
    ]
    assert len(mine) == points
    for child in mine:
        assert release.condition(child, "Succeeded")["status"] == "True", child["status"]
        [owner] = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("Experiment", name)

    def full_rollup() -> dict[str, Any] | None:
        metrics = release.get("bexp", name, namespace=E2E_NS)["status"].get("metrics") or {}
        return metrics if len(metrics.get("runs", [])) == points else None

    rollup = release.wait_for(full_rollup, timeout=60, what="a rollup row per point")
    assert {row["name"] for row in rollup["runs"]} == {c["metadata"]["name"] for c in mine}
    assert rollup["best"]

    out = subprocess.run(
        ["benchop", "get", "experiment", name, "-n", E2E_NS],
        env={**release.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    for child in mine:
        assert child["metadata"]["name"] in out.stdout
    assert f"total {points}" in out.stdout, out.stdout
