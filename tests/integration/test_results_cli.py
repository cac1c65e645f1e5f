"""``benchop results`` and ``benchop report`` on bundles: a local directory, and runs and an
Experiment in the cluster (the emulator, ``--server``) whose results ConfigMaps the operator
wrote."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kube.harness import BENCHMARKRUNS, CONFIGMAPS, EXPERIMENTS, Kube

from benchagent.wire import MetricsSnapshot
from benchop.api.models import ExperimentSpec
from benchop.cli import main
from benchop.core import bundle
from benchop.core.children import build_child_run
from benchop.core.results import merge_snapshots
from benchop.loadgen.records import RequestRecord, registry_from, timeline_from

TEMPLATE: dict[str, Any] = {
    "target": {"url": "http://vllm.default.svc:8000/v1", "model": "m"},
    "load": {"mode": "concurrency", "concurrency": 1},
    "phases": {"profiling": {"requests": 10}},
}
SPEC = {"template": TEMPLATE, "sweep": [{"path": "load.concurrency", "values": [1, 8]}]}


def records(n: int) -> list[RequestRecord]:
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        ttft, itl = (
            int(rng.integers(10**7, 9 * 10**7)),
            [int(x) for x in rng.integers(10**6, 9 * 10**6, 7)],
        )
        e2e = ttft + sum(itl)
        out.append(
            RequestRecord(
                id=f"w0-a1-{i}", worker=0, attempt=1, index=i,
                sent_ns=1_800_000_000 * 10**9 + int(i * 0.37e9), outcome="ok",
                ttft_ns=ttft, itl_ns=itl, e2e_ns=e2e, input_tokens=16, output_tokens=8, good=True,
            )
        )  # fmt: skip
    return out


def snapshot(recs: list[RequestRecord]) -> MetricsSnapshot:
    counters, gauges, series = registry_from(recs).snapshot(include_values=True)
    return MetricsSnapshot(
        run="r", worker=0, seq=1, state="COMPLETE", phase="done", time_ns=1,
        elapsed_s=len(recs) * 0.37, n_pending=0, counters=counters, gauges=gauges, series=series,
    )  # fmt: skip


def bundle_files(name: str, n: int, params: dict[str, Any] | None = None) -> dict[str, str]:
    """results.json and timeseries.csv of ``n`` synthetic requests (as the operator writes)."""
    recs = records(n)
    merged = merge_snapshots([snapshot(recs)])
    results = {
        "requests": {"total": n, "ok": merged.counters["requests_ok"]},
        "throughput": {"rps": n / 10, "outputTokPerS": 8 * n / 10},
        "goodput": {"ratio": 0.9, "rps": n / 11},
    }
    run = {"name": name, **({"params": params} if params else {})}
    doc = bundle.results_document(merged, results=results, run=run, spec=TEMPLATE)
    files, _ = bundle.configmap_files(doc, timeline_from(recs))
    return files


async def benchop(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI in a thread (the kubernetes client is sync; the emulator is in this loop)."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def sweep_with_bundles(kube: Kube) -> dict[str, dict[str, str]]:
    exp = await kube.client.create(EXPERIMENTS, {"metadata": {"name": "sw"}, "spec": SPEC})
    out = {}
    rows = []
    for i, (params, spec) in enumerate(ExperimentSpec.model_validate(SPEC).points()):
        run = build_child_run(exp, index=i, params=params, spec=spec)
        name = run["metadata"]["name"]
        await kube.client.create(BENCHMARKRUNS, run)
        files = out[name] = bundle_files(name, 40 + 20 * i, params)
        await kube.client.create(
            CONFIGMAPS, {"metadata": {"name": f"{name}-results"}, "data": files}
        )
        status = {
            "phase": "Succeeded",
            "results": json.loads(files["results.json"])["results"],
            "output": {"configMap": f"{name}-results", "timeseriesIntervalS": 1},
        }
        await kube.client.patch_status(BENCHMARKRUNS, name, status)
        rows.append({"name": name, "params": params, "phase": "Succeeded"})
    search = {  # as an SLO search's rollup has it (docs/experiments.md)
        "path": "load.concurrency",
        "minGoodput": 0.9,
        "outcome": "KneeFound",
        "knee": 8,
        "kneeRun": "sw-1",
        "message": "knee load.concurrency=8",
        "probes": [
            {"run": "sw-0", "value": 1, "goodput": 0.9, "passed": True},
            {"run": "sw-1", "value": 8, "goodput": 0.9, "passed": True},
        ],
    }
    metrics = {"version": 1, "runs": rows, "best": {"rps": "sw-1"}, "search": search}
    await kube.client.patch_status(EXPERIMENTS, "sw", {"phase": "Succeeded", "metrics": metrics})
    return out


async def test_results_of_cluster_runs_and_experiments(
    kube: Kube, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    files = await sweep_with_bundles(kube)
    server = ("--server", kube.url)
    code, out, err = await benchop(capsys, "results", "sw-0", *server)
    assert code == 0, err
    assert json.loads(out) == json.loads(files["sw-0"]["results.json"])
    code, out, _ = await benchop(capsys, "results", "sw-1", "-o", "csv", *server)
    assert code == 0 and out == files["sw-1"]["timeseries.csv"]
    code, out, _ = await benchop(capsys, "results", "sw", "-o", "yaml", *server)
    doc = yaml.safe_load(out)
    assert doc["experiment"]["metadata"]["name"] == "sw"
    assert [r["run"]["name"] for r in doc["runs"]] == ["sw-0", "sw-1"]
    code, out, _ = await benchop(capsys, "results", "sw", "-o", "csv", *server)
    table = list(csv.DictReader(io.StringIO(out)))
    assert {r["run"] for r in table} == {"sw-0", "sw-1"}
    assert sum(int(r["requests"]) for r in table) == 40 + 60
    # written to a file; a missing directory is refused before anything is read
    target = tmp_path / "sw.json"
    code, _, _ = await benchop(capsys, "results", "sw", "--output-file", str(target), *server)
    assert code == 0 and json.loads(target.read_text())["runs"][1]["run"]["name"] == "sw-1"
    code, _, err = await benchop(
        capsys, "results", "sw", "--output-file", str(tmp_path / "no" / "x.json"), *server
    )
    assert code == 2 and "does not exist" in err
    # the report of the Experiment, from the cluster
    html = tmp_path / "sw.html"
    code, _, err = await benchop(capsys, "report", "sw", "--output-file", str(html), *server)
    assert code == 0, err
    text = html.read_text()
    assert "Pareto frontier" in text and "best run per objective" in text
    assert "SLO search on load.concurrency" in text and "knee 8" in text
    assert text.count("Plotly.newPlot") == 4  # CDFs, curve, goodput, Pareto: no GPU energy here
    # not found, and found without a bundle
    code, _, err = await benchop(capsys, "results", "nope", *server)
    assert code == 1 and "no BenchmarkRun or Experiment nope" in err
    await kube.client.create(
        BENCHMARKRUNS,
        {"metadata": {"name": "bare"}, "spec": TEMPLATE},
    )
    code, _, err = await benchop(capsys, "results", "bare", *server)
    assert code == 1 and "no results bundle" in err


def test_results_of_a_local_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "r1"
    d.mkdir()
    for name, text in bundle_files("r1", 30).items():
        (d / name).write_text(text)
    assert main(["results", str(d), "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["run"]["name"] == "r1"
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    assert main(["results", str(other)]) == 1
    assert "holds no benchop results" in capsys.readouterr().err
