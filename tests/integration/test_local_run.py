"""`benchop run` end to end: real processes, real HTTP to the mock server, real ZMQ."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def benchop(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchop", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def small_run(tmp_path: Path, **load: object) -> Path:
    doc = yaml.safe_load((ROOT / "examples/run.yaml").read_text())
    doc["metadata"]["name"] = "t-local"
    doc["spec"]["phases"] = {"warmup": {"requests": 4}, "profiling": {"requests": 60}}
    doc["spec"]["load"].update(load)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def test_local_run_end_to_end_matches_the_records_exactly(tmp_path: Path) -> None:
    out = tmp_path / "status.yaml"
    res = benchop(
        "run", str(small_run(tmp_path)), "--output", str(out), "--results-dir", str(tmp_path / "r")
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "kubectl get benchmarkruns" in res.stdout and "TTFT" in res.stdout
    doc = yaml.safe_load(out.read_text())
    status = doc["status"]
    assert status["phase"] == "Succeeded"
    conds = conditions(status)
    for t in ("Accepted", "WorkersReady", "BaselineStartCaptured", "BaselineEndCaptured",
              "ResultsAvailable", "Succeeded"):  # fmt: skip
        assert conds[t]["status"] == "True", (t, conds[t])
    assert conds["Profiling"]["status"] == "False"  # profiling ended
    assert conds["TelemetryDegraded"]["reason"] == "Simulated"  # the operator's reason too
    results = status["results"]
    assert results["requests"]["total"] == 60 and results["requests"]["ok"] == 60
    assert results["complete"] is True and results["workers"] == 2
    gpu = results["gpu"]
    assert gpu["simulated"] is True and gpu["gpus"] == 1 and gpu["energyJ"] > 0
    assert gpu["joulesPerOutputToken"] == pytest.approx(gpu["energyJ"] / (60 * 64), rel=1e-3)

    # Recompute TTFT and ITL percentiles from every worker's records.jsonl: exact equality.

    ttft, itl = [], []
    for w in (0, 1):
        for line in (tmp_path / "r" / f"worker-{w}" / "records.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "ttft_ns" not in rec:
                continue
            ttft.append(rec["ttft_ns"])
            itl.extend(rec["itl_ns"])
    assert len(ttft) == 60
    assert results["ttftMs"]["p50"] == pytest.approx(np.percentile(ttft, 50) / 1e6, rel=1e-12)
    assert results["ttftMs"]["p99"] == pytest.approx(np.percentile(ttft, 99) / 1e6, rel=1e-12)
    assert results["itlMs"]["p90"] == pytest.approx(np.percentile(itl, 90) / 1e6, rel=1e-12)
    assert results["itlMs"]["count"] == len(itl)


def test_bad_run_yaml_fails_with_a_message_naming_the_field(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "examples/run.yaml").read_text())
    doc["spec"]["load"]["concurrency"] = -3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    res = benchop("run", str(path))
    assert res.returncode == 2
    assert "spec.load.concurrency" in res.stderr and "-3" in res.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    res = benchop("run", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "cannot read" in res.stderr


def test_a_dead_target_ends_the_run_at_its_preflight(tmp_path: Path) -> None:
    """examples/run.yaml (2 workers, warmup, 10 s of profiling, GPU baselines) against a port
    nothing listens on. Each worker's preflight retries connecting for spec.preflight.timeout
    (2 s, the pool's backoff spacing the attempts), the first to give up ends the run and the
    other is stopped: TargetUnreachable with host, port and errno, no request made, no GPU
    numbers, and a few counted connect attempts (the load generator before preflight and
    backoff made 229,153 here in 10 s). The time it took is printed, not asserted."""
    doc = yaml.safe_load((ROOT / "examples/run.yaml").read_text())
    doc["spec"]["target"]["url"] = "http://127.0.0.1:9/v1"  # discard port: connection refused
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "status.yaml"
    t0 = time.monotonic()
    res = benchop("run", str(path), "--output", str(out), "--results-dir", str(tmp_path / "r"))
    took = time.monotonic() - t0
    assert res.returncode == 1, res.stdout + res.stderr
    status = yaml.safe_load(out.read_text())["status"]
    succeeded = conditions(status)["Succeeded"]
    assert succeeded["status"] == "False" and succeeded["reason"] == "TargetUnreachable"
    message = succeeded["message"]
    assert "http://127.0.0.1:9/v1: cannot connect to 127.0.0.1:9: ECONNREFUSED" in message
    assert "[Errno 111]" in message and "spec.preflight.timeout is 2s" in message
    assert f"TargetUnreachable: {message}" in " ".join(res.stdout.split())
    results = status["results"]
    assert results["requests"]["total"] == 0 and "gpu" not in results
    attempts = results["client"]["connectAttempts"]
    # attempts at 0, .05, .15, .35, .75, 1.55 s of each worker's 2 s: at most 7 each
    assert 1 <= attempts <= 2 * 7, attempts
    assert results["client"]["connectFailures"] == attempts
    print(f"dead target: run ended in {took:.1f}s (benchop run, process start to exit), "
          f"{attempts} connect attempts")  # fmt: skip


def test_local_experiment_runs_the_sweep_in_order_and_rolls_it_up(tmp_path: Path) -> None:
    exp = {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "tiny"},
        "spec": {
            "template": {
                "target": {"model": "mock-llm"},
                "workload": {"promptTokens": 16, "outputTokens": 8},
                "load": {"mode": "concurrency", "concurrency": 1},
                "phases": {"profiling": {"requests": 12}},
                "gates": {"baseline": False},
            },
            "sweep": [{"path": "load.concurrency", "values": [1, 4]}],
        },
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / "out.yaml"
    res = benchop("run", str(path), "--output", str(out), "--no-agent")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tiny: comparison" in res.stdout
    exp_doc, *runs = yaml.safe_load_all(out.read_text())
    assert [r["metadata"]["name"] for r in runs] == ["tiny-0", "tiny-1"]
    assert [r["spec"]["load"]["concurrency"] for r in runs] == [1, 4]
    status = exp_doc["status"]
    assert status["phase"] == "Succeeded" and status["counts"]["succeeded"] == 2
    rows = status["metrics"]["runs"]
    assert [row["params"] for row in rows] == [{"load.concurrency": 1}, {"load.concurrency": 4}]
    for row, run in zip(rows, runs, strict=True):
        assert row["rps"] == run["status"]["results"]["throughput"]["rps"]
        assert row["ttftP50"] == run["status"]["results"]["ttftMs"]["p50"]
    assert status["metrics"]["best"]["rps"] == "tiny-1"


@dataclass
class Killed:
    """``benchop run`` with worker 1 killed as soon as it started, before it reported."""

    returncode: int
    output: str
    status: dict[str, Any]


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Killed:
    tmp_path = tmp_path_factory.mktemp("killed")
    doc = yaml.safe_load((ROOT / "examples/run.yaml").read_text())
    doc["metadata"]["name"] = f"t-dies-{tmp_path.name[-12:]}"  # unique in the process table
    doc["spec"]["load"]["workers"] = 2
    # warmup takes ~2 s at concurrency 1 per worker: worker 1 is killed before the START gate
    doc["spec"]["load"]["concurrency"] = 2
    doc["spec"]["phases"] = {"warmup": {"requests": 12}, "profiling": {"requests": 20}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "status.yaml"
    cmd = [sys.executable, "-m", "benchop", "run", str(path), "--output", str(out), "--no-live"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        pattern = f"--run {doc['metadata']['name']} --worker-index 1"
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline:
            found = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True)
            pid = int(found.stdout.split()[0]) if found.stdout.strip() else None
        assert pid is not None, "worker 1 never started"
        os.kill(pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=90)  # the gate would hold worker 0 for 900 s
    finally:
        proc.kill()
    status = yaml.safe_load(out.read_text())["status"] if out.exists() else {}
    return Killed(proc.returncode, output.decode(errors="replace"), status)


def test_a_worker_that_dies_releases_the_others_from_the_gate(killed: Killed) -> None:
    assert killed.returncode == 1, killed.output
    succeeded = conditions(killed.status)["Succeeded"]
    assert succeeded["status"] == "False" and succeeded["reason"] == "WorkerFailed"
    assert "worker 1 exited -9" in succeeded["message"]


def test_results_without_a_worker_that_never_reported_are_incomplete(killed: Killed) -> None:
    """As in the operator: worker 0's results are kept, but they are not the whole run's."""
    results = killed.status["results"]
    assert results["complete"] is False and results["source"] == "live"
    assert results["requests"]["total"] > 0  # worker 0, released from the gate, reported
    available = conditions(killed.status)["ResultsAvailable"]
    assert available["status"] == "True" and available["reason"] == "LatestLiveSnapshots"
    assert available["message"] == "partial results"
