"""Cache-first rollup readers: a usable status.metrics is used; anything else is a miss."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from benchop.api.models import METRICS_VERSION, to_wire
from benchop.core.names import INDEX_ANNOTATION, PARAMS_ANNOTATION
from benchop.core.rollup import cached_rollup, read_rollup, rollup

NOW = "2024-05-01T12:00:00Z"


def run(index: int, uid: str = "exp-uid", rps: float = 10.0) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"e-{index}",
            "annotations": {
                INDEX_ANNOTATION: str(index),
                PARAMS_ANNOTATION: json.dumps({"load.concurrency": index}),
            },
            "ownerReferences": [{"kind": "Experiment", "uid": uid, "controller": True}],
        },
        "status": {
            "phase": "Succeeded",
            "results": {"throughput": {"rps": rps, "outputTokPerS": 1.0}},
        },
    }


CHILDREN = [run(0, rps=5.0), run(1, rps=7.0), run(2, uid="older-namesake", rps=1000.0)]


def experiment(metrics: Any = None, *, with_metrics: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running"}
    if with_metrics:
        status["metrics"] = metrics
    return {"metadata": {"name": "e", "namespace": "default", "uid": "exp-uid"}, "status": status}


class Lister:
    """Counts calls, returns the canned children."""

    def __init__(self, children: Sequence[Mapping[str, Any]]) -> None:
        self.children = children
        self.calls = 0

    async def __call__(self, exp: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        self.calls += 1
        return self.children


GOOD = to_wire(rollup(CHILDREN[:1], cap=10, now=NOW))


async def test_a_current_blob_is_used_without_listing_the_runs() -> None:
    lister = Lister(CHILDREN)
    metrics, source = await read_rollup(experiment(GOOD), lister)
    assert source == "cache" and lister.calls == 0
    assert [r.name for r in metrics.runs] == ["e-0"]  # the cache, not the (newer) runs


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param({**GOOD, "version": METRICS_VERSION + 1}, id="newer-version"),
        pytest.param({**GOOD, "version": 0}, id="older-version"),
        pytest.param({k: v for k, v in GOOD.items() if k != "version"}, id="no-version"),
        pytest.param({**GOOD, "runs": "not a list"}, id="runs-not-a-list"),
        pytest.param({**GOOD, "runs": [{"params": {}}]}, id="row-without-name"),
        pytest.param({**GOOD, "capped": "maybe"}, id="capped-not-bool"),
        pytest.param({**GOOD, "best": {"rps": ["a"]}}, id="best-not-a-name"),
        pytest.param("garbage", id="a-string"),
        pytest.param([1, 2], id="a-list"),
        pytest.param(None, id="null"),
    ],
)
async def test_old_version_or_malformed_blob_is_a_cache_miss(blob: Any) -> None:
    lister = Lister(CHILDREN)
    metrics, source = await read_rollup(experiment(blob), lister, now=NOW)
    assert source == "hydrated" and lister.calls == 1
    assert cached_rollup(experiment(blob)) is None
    # Hydrated with the same pure rollup, from the runs this experiment owns only.
    assert metrics == rollup(CHILDREN[:2], cap=200, now=NOW)
    assert metrics.best["rps"] == "e-1"


async def test_no_metrics_yet_hydrates() -> None:
    lister = Lister(CHILDREN)
    _, source = await read_rollup(experiment(with_metrics=False), lister)
    assert source == "hydrated"
    _, source = await read_rollup({"metadata": {"name": "e"}}, lister)  # no status at all
    assert source == "hydrated" and lister.calls == 2


async def test_a_listing_of_many_experiments_survives_one_bad_blob() -> None:
    lister = Lister(CHILDREN)
    exps = [experiment(GOOD), experiment({"version": 1, "runs": 7}), experiment(GOOD)]
    sources = [(await read_rollup(e, lister))[1] for e in exps]
    assert sources == ["cache", "hydrated", "cache"]


async def test_hydration_is_capped_like_the_refresher() -> None:
    many = [run(i) for i in range(5)]
    metrics, _ = await read_rollup(experiment(None), Lister(many), cap=2)
    assert metrics.capped and len(metrics.runs) == 2
