"""Names at the limits: a BenchmarkRun named with 63 characters, one with dots, and an
Experiment whose children reach index 10 and beyond with a long, dotted name. Each is refused
at admission naming the field, or runs; never a late `ChildCreateFailed` (the Indexed Job's pod
hostnames, `<job>-<index>`, must be DNS labels)."""

from __future__ import annotations

from typing import Any

import pytest
from realkube import E2E_NS, RealKube

pytestmark = pytest.mark.cluster

TINY: dict[str, Any] = {
    "target": {"model": "mock-llm", "podSelector": {"matchLabels": {"app": "mock-llm"}}},
    "workload": {"promptTokens": 16, "outputTokens": 4},
    "load": {"mode": "concurrency", "concurrency": 1, "workers": 2},
    "phases": {"profiling": {"requests": 4}},
    "gates": {"baseline": False},
    # not what these tests are about: 2 s (the default) to connect to the mock's Service was
    # too short once, with 3 test workers and 4 children at a time on the 2-core machine
    "preflight": {"timeout": "10s"},
}


def tiny(url: str) -> dict[str, Any]:
    return {**TINY, "target": {**TINY["target"], "url": url}}


@pytest.mark.parametrize(
    "name",
    [
        "r" * 63,
        "llama.8b.c32",
        "a." + "b" * 58 + ".c",  # 62 characters with dots
    ],
    ids=["63-characters", "dots", "62-with-dots"],
)
def test_run_name_at_the_limits_runs(mock_server: str, release: RealKube, name: str) -> None:
    release.apply(
        {
            "apiVersion": "benchop.io/v1alpha1",
            "kind": "BenchmarkRun",
            "metadata": {"name": name, "namespace": E2E_NS},
            "spec": tiny(mock_server),
        }
    )
    run = release.wait_ended("br", name, E2E_NS, timeout=120)
    assert release.condition(run, "Succeeded")["status"] == "True", run["status"]
    release.kubectl("-n", E2E_NS, "delete", "br", name, "--wait=false")


def test_experiment_children_past_index_ten_run(mock_server: str, release: RealKube) -> None:
    name = "sweep.with.a.long.name-" + "x" * 29  # 52 characters: child 10's Job is 62
    assert len(name) == 52
    release.apply(
        {
            "apiVersion": "benchop.io/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": name, "namespace": E2E_NS},
            "spec": {
                "template": {**tiny(mock_server), "load": {**TINY["load"], "workers": 1}},
                "sweep": [{"path": "workload.seed", "values": list(range(101))}],
                "maxParallel": 4,
            },
        }
    )
    assert release.condition(release.get("bexp", name, namespace=E2E_NS), "Accepted") != {
        "status": "False"
    }

    def first_eleven_done() -> list[dict[str, Any]] | None:
        kids = [
            k
            for k in release.get("br", namespace=E2E_NS)
            if k["metadata"].get("labels", {}).get("benchop.io/experiment") == name
        ]
        done = [
            k for k in kids if release.condition(k, "Succeeded").get("status") in ("True", "False")
        ]
        failed = [k for k in done if release.condition(k, "Succeeded")["status"] == "False"]
        assert not failed, [release.condition(k, "Succeeded") for k in failed]
        return done if len(done) >= 11 else None

    done = release.wait_for(first_eleven_done, timeout=300, what="11 children Succeeded")
    assert len(done) >= 11
    release.kubectl("-n", E2E_NS, "delete", "bexp", name, "--wait=false")
