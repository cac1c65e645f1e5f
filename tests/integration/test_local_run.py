"""`benchop run` end to end: real processes, real HTTP to the mock server, real ZMQ."""

from __future__ import annotations

import csv
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
from secretscan import describe, files, scan

from benchop.mockserver import MockConfig, run_in_thread

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
        "run",
        str(small_run(tmp_path)),
        "--output-file",
        str(out),
        "--results-dir",
        str(tmp_path / "r"),
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

    # The bundle: records.jsonl merged from both workers in the order the requests ended;
    # percentiles recomputed from it equal status.results and results.json exactly.
    bundle_dir = tmp_path / "r"
    assert sorted(p.name for p in bundle_dir.iterdir()) == [
        "records.jsonl", "results.json", "timeseries.csv"
    ]  # fmt: skip
    recs = [json.loads(line) for line in (bundle_dir / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 60 and {r["worker"] for r in recs} == {0, 1}
    ends = [r["sent_ns"] + r["e2e_ns"] for r in recs]
    assert ends == sorted(ends)
    ttft = [r["ttft_ns"] for r in recs]
    itl = [x for r in recs for x in r["itl_ns"]]
    assert results["ttftMs"]["p50"] == pytest.approx(np.percentile(ttft, 50) / 1e6, rel=1e-12)
    assert results["ttftMs"]["p99"] == pytest.approx(np.percentile(ttft, 99) / 1e6, rel=1e-12)
    assert results["itlMs"]["p90"] == pytest.approx(np.percentile(itl, 90) / 1e6, rel=1e-12)
    assert results["itlMs"]["count"] == len(itl)
    assert status["output"] == {"path": str(bundle_dir)}

    doc = json.loads((bundle_dir / "results.json").read_text())
    assert doc["kind"] == "BenchmarkRunResults" and doc["run"]["name"] == "t-local"
    assert doc["results"] == results and doc["status"]["phase"] == "Succeeded"
    assert doc["spec"]["phases"]["profiling"] == {"requests": 60}
    assert doc["percentiles"] == ["p50", "p90", "p95", "p99", "p99.9"]
    for key, values in (("ttft_ms", ttft), ("itl_ms", itl)):
        m = doc["metrics"][key]
        assert m["exact"] is True and m["count"] == len(values)
        for p in (50, 90, 95, 99, 99.9):
            assert m["percentiles"][f"p{p:g}"] == pytest.approx(
                np.percentile(values, p) / 1e6, rel=1e-12
            )
        assert sum(b[2] for b in doc["histograms"][key]["buckets"]) == len(values)
    assert doc["files"]["records.jsonl"] == {"count": 60}

    # timeseries.csv: one row per second from the first request's end to the last's; the
    # rows add up to the run's counts; GPU columns from the simulated agent
    rows = list(csv.DictReader((bundle_dir / "timeseries.csv").open()))
    assert [int(r["epoch_s"]) for r in rows] == list(
        range(min(ends) // 10**9, max(ends) // 10**9 + 1)
    )
    assert sum(int(r["ok"]) for r in rows) == 60
    assert sum(float(r["output_tok_per_s"]) for r in rows) == 60 * 64
    assert doc["files"]["timeseries.csv"]["rows"] == len(rows)
    assert any(r["gpu_power_w"] for r in rows) and doc["files"]["timeseries.csv"]["gpu"] == "agent"
    busy = [r for r in rows if int(r["ok"])]
    for r in busy:  # within the run's range, up to the histogram's 0.78 %
        assert min(ttft) / 1e6 * 0.99 <= float(r["ttft_p50_ms"]) <= max(ttft) / 1e6 * 1.01


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


def tiny_run(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples/run.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["workload"] = {"promptTokens": 16, "outputTokens": 4}
    doc["spec"]["load"] = {"mode": "concurrency", "concurrency": 2}
    doc["spec"]["phases"] = {"profiling": {"requests": 6}}
    doc["spec"]["gates"] = {"baseline": False}
    return doc


def test_an_output_file_in_a_missing_directory_is_refused_before_the_run(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_run("never")))
    out = tmp_path / "no-such-dir" / "status.yaml"
    res = benchop("run", str(path), "--output-file", str(out), "--results-dir", str(tmp_path / "r"))
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"--output-file {out}: directory {out.parent} does not exist" in res.stderr
    assert not (tmp_path / "r").exists()  # nothing ran
    # and a YAML syntax error names the file and the line, also before anything runs
    path.write_text("kind: BenchmarkRun\nspec:\n  load: [1,\n")
    res = benchop("run", str(path))
    assert res.returncode == 2 and f"{path}:4:1: YAML syntax error" in res.stderr, res.stderr


def test_a_multi_document_file_runs_each_resource_in_order(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([tiny_run("first"), tiny_run("second")]))
    out = tmp_path / "out.yaml"
    res = benchop(
        "run",
        str(path),
        "--no-agent",
        "--output-file",
        str(out),
        "--results-dir",
        str(tmp_path / "r"),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    # each reported: its results table and its printer row, in file order
    assert 0 <= res.stdout.index("first: results") < res.stdout.index("second: results")
    assert "1/2: BenchmarkRun first" in res.stderr and "2/2: BenchmarkRun second" in res.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["metadata"]["name"] for d in docs] == ["first", "second"]
    assert all(d["status"]["phase"] == "Succeeded" for d in docs)
    assert all(d["status"]["results"]["requests"]["ok"] == 6 for d in docs)
    # each in its own results directory
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"first", "second"}


def test_dash_o_yaml_prints_the_resource_with_its_status(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_run("printed")))
    res = benchop(
        "run", str(path), "--no-agent", "-o", "yaml", "--results-dir", str(tmp_path / "r")
    )
    assert res.returncode == 0, res.stdout + res.stderr
    [doc] = yaml.safe_load_all(res.stdout)  # only the resource: no tables on stdout
    assert doc["kind"] == "BenchmarkRun" and doc["metadata"]["name"] == "printed"
    assert doc["status"]["phase"] == "Succeeded" and doc["status"]["results"]["requests"]["ok"] == 6


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
    t0 = time.monotonic()  # with the local agent: its GPU window must not show up
    res = benchop("run", str(path), "--output-file", str(out), "--results-dir", str(tmp_path / "r"))
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


BENCHOP_RUN = [sys.executable, "-m", "benchop", "run", "--no-agent", "--no-live"]


@pytest.mark.parametrize("case", ["right-key", "wrong-key"])
def test_the_api_key_is_used_and_appears_in_no_output_status_or_file(
    tmp_path: Path, case: str
) -> None:
    """Local mode: the workers get the key from BENCHOP_API_KEY (the mock server refuses
    requests without the key it expects); neither the key nor the one the server expects is in
    the console output, the status YAML or any file of the results dir (worker logs, records,
    snapshots, termination messages), also when the key is refused (the preflight's request
    gets the 401 and ends the run TargetError with the server's answer in its message)."""
    key = "sk-local-" + os.urandom(12).hex()
    expected = key if case == "right-key" else "sk-other-" + os.urandom(12).hex()
    doc = yaml.safe_load((ROOT / "examples/run.yaml").read_text())
    doc["spec"]["phases"] = {"profiling": {"requests": 8}}
    doc["spec"]["target"]["apiKeySecretRef"] = {"name": "llm-key", "key": "token"}
    path, out, results = tmp_path / "run.yaml", tmp_path / "status.yaml", tmp_path / "r"
    model = doc["spec"]["target"]["model"]  # the preflight checks the model list
    work = tmp_path / "work"  # the workers' own files, kept: their logs are scanned too
    with run_in_thread(MockConfig(ttft=0.002, itl=0.001, model=model, api_key=expected)) as server:
        doc["spec"]["target"]["url"] = server.url
        path.write_text(yaml.safe_dump(doc))
        res = subprocess.run(
            [
                *BENCHOP_RUN,
                str(path),
                "--output-file",
                str(out),
                "--results-dir",
                str(results),
                "--work-dir",
                str(work),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, "BENCHOP_API_KEY": key},
        )
    status = yaml.safe_load(out.read_text())["status"]
    if case == "right-key":
        assert res.returncode == 0, res.stdout + res.stderr
        assert status["results"]["requests"]["ok"] == 8
        assert server.stats["unauthorized"] == 0
    else:
        assert res.returncode == 1, res.stdout + res.stderr
        succeeded = conditions(status)["Succeeded"]
        assert succeeded["reason"] == "TargetError" and "HTTP 401" in succeeded["message"]
        assert status["results"]["requests"]["total"] == 0
        assert server.stats["unauthorized"] >= 1
    sources = {"stdout": res.stdout, "stderr": res.stderr, "status": out.read_text()}
    sources.update(files(results))  # the bundle: results.json, timeseries.csv, records.jsonl
    sources.update(files(work))
    assert "records.jsonl" in sources, sorted(sources)
    assert any(name.endswith("worker.log") for name in sources), sorted(sources)
    for secret in {key, expected}:
        assert scan(secret, sources) == [], describe(scan(secret, sources))


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
    res = benchop(
        "run",
        str(path),
        "--output-file",
        str(out),
        "--no-agent",
        "--results-dir",
        str(tmp_path / "r"),
    )
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
    # unique in the process table, which other pytest sessions and xdist workers share (the
    # tmp dir's name, killed0, is the same in every one of them)
    doc["metadata"]["name"] = f"t-dies-{os.getpid()}"
    doc["spec"]["load"]["workers"] = 2
    # warmup takes ~2 s at concurrency 1 per worker: worker 1 is killed before the START gate
    doc["spec"]["load"]["concurrency"] = 2
    doc["spec"]["phases"] = {"warmup": {"requests": 12}, "profiling": {"requests": 20}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "status.yaml"
    cmd = [sys.executable, "-m", "benchop", "run", str(path), "--output-file", str(out),
           "--no-live", "--results-dir", str(tmp_path / "r")]  # fmt: skip
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


def test_local_slo_search_finds_the_knee_of_a_known_capacity(tmp_path: Path) -> None:
    """The mock server serves 4 streams at full speed (ITL 10 ms); a 5th stretches every
    stream's ITL to 12.5 ms. With slo.itlMs 12 (near the top of that gap: a busy machine only
    adds delay) the knee is concurrency 4: found within one step, by probes that are child
    runs, in the search's order."""
    exp = {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "knee"},
        "spec": {
            "template": {
                "target": {"model": "mock-llm"},
                "workload": {"promptTokens": 16, "outputTokens": 24},
                "load": {"mode": "concurrency", "concurrency": 1},
                "phases": {"warmup": {"requests": 4}, "profiling": {"requests": 16}},
                "gates": {"baseline": False},
                "slo": {"itlMs": 12},
            },
            "search": {"concurrency": {"min": 2, "max": 32}, "minGoodput": 0.9, "maxProbes": 8},
        },
    }
    path = tmp_path / "knee.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / "out.yaml"
    res = benchop(
        "run", str(path), "--no-agent", "--output-file", str(out),
        "--results-dir", str(tmp_path / "r"),
        "--mock-capacity", "4", "--mock-itl", "0.01", "--mock-ttft", "0.01",
        timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    exp_doc, *runs = yaml.safe_load_all(out.read_text())
    status = exp_doc["status"]
    search = status["metrics"]["search"]
    assert abs(search["knee"] - 4) <= 1, search  # within one step of the capacity
    assert search["outcome"] == "KneeFound" and search["limit"] == search["knee"] + 1
    assert status["phase"] == "Succeeded"
    assert (conditions(status)["Succeeded"]["reason"], conditions(status)["Failed"]["status"]) == (
        "KneeFound",
        "False",
    )
    # each probe is a child run at its load, named in probe order, and no load twice
    probes = search["probes"]
    assert [p["run"] for p in probes] == [r["metadata"]["name"] for r in runs]
    assert [p["run"] for p in probes] == [f"knee-{i}" for i in range(len(probes))]
    assert [r["spec"]["load"]["concurrency"] for r in runs] == [p["value"] for p in probes]
    assert [p["value"] for p in probes][:3] == [2, 4, 8]  # bracketing from min, x2
    assert len({p["value"] for p in probes}) == len(probes) <= 8
    for p, run in zip(probes, runs, strict=True):
        ratio = run["status"]["results"]["goodput"]["ratio"]
        assert p["goodput"] == ratio and p["passed"] == (ratio >= 0.9)
    # the rows are in load order; the tables name the knee
    rows = status["metrics"]["runs"]
    assert [r["params"]["load.concurrency"] for r in rows] == sorted(p["value"] for p in probes)
    assert f"SLO search: knee load.concurrency={search['knee']} (KneeFound)" in res.stdout
