"""``benchop get`` against the emulator (``--server``): runs, experiments, and one experiment's
comparison from the cached rollup or, when the cache is unusable, from the runs."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
import yaml
from kube.harness import BENCHMARKRUNS, EXPERIMENTS, Kube

from benchop.api.models import ExperimentSpec, to_wire
from benchop.cli import main
from benchop.core.children import build_child_run
from benchop.core.rollup import rollup

TEMPLATE: dict[str, Any] = {
    "target": {"url": "http://vllm.default.svc:8000/v1", "model": "m"},
    "load": {"mode": "concurrency", "concurrency": 1},
    "phases": {"profiling": {"requests": 10}},
}
SPEC = {"template": TEMPLATE, "sweep": [{"path": "load.concurrency", "values": [1, 8]}]}


async def benchop(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in a thread (the kubernetes client is sync; the emulator is in this loop)."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def sweep(
    kube: Kube, name: str = "sw", spec_doc: dict[str, Any] = SPEC
) -> list[dict[str, Any]]:
    exp = await kube.client.create(EXPERIMENTS, {"metadata": {"name": name}, "spec": spec_doc})
    runs = []
    for i, (params, spec) in enumerate(ExperimentSpec.model_validate(spec_doc).points()):
        run = build_child_run(exp, index=i, params=params, spec=spec)
        await kube.client.create(BENCHMARKRUNS, run)
        c = params["load.concurrency"]
        results = {"throughput": {"rps": 10.0 * c, "outputTokPerS": 100.0 * c}}
        runs.append(
            await kube.client.patch_status(
                BENCHMARKRUNS, run["metadata"]["name"], {"phase": "Succeeded", "results": results}
            )
        )
    await kube.client.patch_status(
        EXPERIMENTS, name, {"phase": "Succeeded", "counts": {"total": 2, "succeeded": 2}}
    )
    return runs


@pytest.fixture(autouse=True)
def no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """stdout is captured (not a terminal) and COLUMNS unset: what a pipe or a file sees."""
    monkeypatch.delenv("COLUMNS", raising=False)


async def test_experiment_hydrates_from_runs_without_a_cache(
    kube: Kube, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = await sweep(kube)
    code, out, _ = await benchop(capsys, "get", "experiment", "sw", "--server", kube.url)
    assert code == 0
    assert "computed from the runs" in out
    assert "sw-0" in out and "sw-1" in out and "LOAD.CONCURRENCY" in out
    assert "80*" in out  # sw-1's rps, best
    code, out, _ = await benchop(
        capsys, "get", "experiment", "sw", "--server", kube.url, "-o", "yaml"
    )
    doc = yaml.safe_load(out)
    expected = to_wire(rollup(runs, cap=200, now=doc["status"]["metrics"]["refreshedAt"]))
    assert doc["status"]["metrics"] == expected
    assert doc["status"]["phase"] == "Succeeded"


async def test_experiment_uses_a_current_cache_and_survives_a_bad_one(
    kube: Kube, capsys: pytest.CaptureFixture[str]
) -> None:
    await sweep(kube)
    cached = {
        "version": 1,
        "refreshedAt": "2024-05-01T12:00:00Z",
        "runs": [{"name": "from-cache", "params": {"load.concurrency": 3}, "rps": 1.5}],
        "best": {},
    }
    await kube.client.patch_status(EXPERIMENTS, "sw", {"metrics": cached})
    code, out, _ = await benchop(capsys, "get", "experiment", "sw", "--server", kube.url)
    assert code == 0 and "from-cache" in out and "cached rollup" in out and "sw-0" not in out
    await kube.client.patch_status(EXPERIMENTS, "sw", {"metrics": {"version": 99, "runs": 7}})
    code, out, _ = await benchop(capsys, "get", "experiment", "sw", "--server", kube.url)
    assert code == 0 and "computed from the runs" in out and "sw-1" in out


async def test_runs_and_experiments_lists(kube: Kube, capsys: pytest.CaptureFixture[str]) -> None:
    await sweep(kube)
    code, out, _ = await benchop(capsys, "get", "runs", "--server", kube.url)
    assert code == 0 and "sw-0" in out and "sw-1" in out and "Succeeded" in out
    code, out, _ = await benchop(
        capsys, "get", "runs", "--experiment", "other", "--server", kube.url
    )
    assert code == 0 and "sw-0" not in out
    code, out, _ = await benchop(capsys, "get", "bexp", "--server", kube.url)
    assert code == 0 and "sw" in out and "Succeeded" in out


async def test_not_found_and_errors(kube: Kube, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await benchop(capsys, "get", "experiment", "nope", "--server", kube.url)
    assert code == 1 and "not found" in err
    code, _, err = await benchop(capsys, "get", "experiment", "--server", kube.url)
    assert code == 2 and "NAME is required" in err
    code, _, err = await benchop(capsys, "get", "runs", "--server", "http://127.0.0.1:9")
    assert code == 2 and "benchop get:" in err


async def test_long_names_and_params_are_printed_whole_when_piped(
    kube: Kube, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "mock-experiment-with-a-rather-long-name"
    models = ["meta-llama/Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3"]
    axes = [
        {"path": "load.concurrency", "values": [1, 8]},
        {"path": "target.model", "values": models},
    ]
    await sweep(kube, name, {"template": TEMPLATE, "sweep": axes})
    for argv in (["experiment", name], ["runs"], ["bexp"]):
        code, out, _ = await benchop(capsys, "get", *argv, "--server", kube.url)
        assert code == 0 and "…" not in out, out
        assert name in out
    code, out, _ = await benchop(capsys, "get", "experiment", name, "--server", kube.url)
    assert all(m in out for m in models) and f"{name}-3" in out and "Succeeded" in out


def test_tables_fold_rather_than_cut_in_a_narrow_terminal() -> None:
    from rich.console import Console

    from benchop.report import BENCHMARKRUN_COLUMNS, experiment_table, printer_table

    runs = [{"metadata": {"name": "mock-experiment-long-name-0"}, "status": {"phase": "Succeeded"}}]
    metrics = rollup(runs, cap=10, now="2024-05-01T12:00:00Z")
    for table in (experiment_table(metrics), printer_table(runs, BENCHMARKRUN_COLUMNS)):
        console = Console(width=60, record=True, file=io.StringIO())
        console.print(table)
        text = console.export_text()
        assert "…" not in text, text


async def test_search_experiment_shows_the_knee_and_each_probe(
    kube: Kube, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_doc = {
        "template": {**TEMPLATE, "slo": {"itlMs": 10}},
        "search": {"concurrency": {"min": 2, "max": 64}, "minGoodput": 0.9},
    }
    exp = await kube.client.create(EXPERIMENTS, {"metadata": {"name": "kn"}, "spec": spec_doc})
    spec = ExperimentSpec.model_validate(spec_doc)
    for i, (c, ratio) in enumerate([(2, 1.0), (4, 0.95), (8, 0.5), (6, 0.7), (5, 0.92)]):
        params, run_spec = spec.probe(c)
        run = build_child_run(exp, index=i, params=params, spec=run_spec)
        await kube.client.create(BENCHMARKRUNS, run)
        results = {"goodput": {"ratio": ratio}, "throughput": {"rps": 10.0 * c}}
        await kube.client.patch_status(
            BENCHMARKRUNS, run["metadata"]["name"], {"phase": "Succeeded", "results": results}
        )
    code, out, _ = await benchop(capsys, "get", "experiment", "kn", "--server", kube.url)
    assert code == 0, out
    assert "SLO search: knee load.concurrency=5 (KneeFound)" in out
    assert "KneeFound: knee load.concurrency=5: goodput >= 0.9 there, not at 6" in out
    knee_row = next(line for line in out.splitlines() if "kn-4" in line and "knee" in line)
    assert "0.92" in knee_row and "met" in knee_row
    code, out, err = await benchop(
        capsys, "get", "experiment", "kn", "--server", kube.url, "-o", "json"
    )
    assert code == 0 and "computed from the runs" in err
    search = json.loads(out)["status"]["metrics"]["search"]
    assert (search["knee"], search["kneeRun"], search["limit"], search["limitRun"]) == (
        5,
        "kn-4",
        6,
        "kn-3",
    )
    assert [p["value"] for p in search["probes"]] == [2, 4, 8, 6, 5]
