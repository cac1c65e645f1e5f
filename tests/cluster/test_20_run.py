"""A BenchmarkRun applied with kubectl runs to Succeeded against the mock server Deployment,
and `kubectl get br` shows its numbers (the apiserver's own Table rendering)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from realkube import E2E_NS, ROOT, RealKube, namespace

pytestmark = pytest.mark.cluster


def example_run(name: str, url: str, **spec: Any) -> dict[str, Any]:
    """examples/run.yaml pointed at ``url`` (observing the mock server's pods), renamed, with
    ``spec`` merged in at the top level."""
    run: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "run.yaml").read_text())
    run["metadata"] = {"name": name, "namespace": E2E_NS}
    run["spec"]["target"]["url"] = url
    run["spec"]["target"]["podSelector"] = {"matchLabels": {"app": "mock-llm"}}
    for key, value in spec.items():
        run["spec"][key] = copy.deepcopy(value)
    return run


def wait_succeeded(cluster: RealKube, name: str, timeout: int = 180) -> dict[str, Any]:
    run = cluster.wait_ended("br", name, E2E_NS, timeout)
    assert cluster.condition(run, "Succeeded")["status"] == "True", run["status"]
    # What a user runs returns at once now.
    cluster.kubectl("-n", E2E_NS, "wait", "--for=condition=Succeeded", f"br/{name}", "--timeout=5s")
    return run


def test_example_run_succeeds_and_prints_its_numbers(mock_server: str, release: RealKube) -> None:
    release.apply(example_run("example", mock_server))
    run = wait_succeeded(release, "example")
    results = run["status"]["results"]
    assert results["requests"]["failed"] == 0
    assert results["requests"]["ok"] == results["requests"]["total"] > 0

    for wide in (False, True):
        args = ["-n", E2E_NS, "get", "br", "example", *(["-o", "wide"] if wide else [])]
        header, row = release.kubectl(*args).stdout.splitlines()
        columns = dict(zip(header.split(), row.split(), strict=True))
        assert columns["PHASE"] == "Succeeded"
        for name, value in columns.items():
            if name in ("NAME", "PHASE", "AGE"):
                continue
            assert float(value) >= 0, (name, value)  # a number in every column, no <none>
        if wide:
            assert {"GPU-UTIL", "J/TOK"} <= columns.keys()


def test_example_applied_as_is_runs_against_the_charts_mock_server(release: RealKube) -> None:
    """examples/run.yaml has no target.url: the operator of hack/local-cluster-values.yaml
    (mockServer.enabled) sends it to the chart's mock server, as a developer tries it by hand."""
    namespace(release, E2E_NS)
    release.kubectl("-n", E2E_NS, "apply", "-f", str(ROOT / "examples" / "run.yaml"))
    run = wait_succeeded(release, "mock-c8")
    requests = run["status"]["results"]["requests"]
    assert requests["failed"] == 0 and requests["ok"] == requests["total"] > 0
    release.kubectl("-n", E2E_NS, "delete", "br", "mock-c8", "--wait=true")
