"""``benchop run`` against the real llama.cpp server, with today's request format.

The server serves one request at a time (llama-cpp-python holds one lock around the
model), streams one chunk per generated token and sends no ``usage`` in a stream, so the
load generator counts tokens from chunks; llama.cpp prints its own timings for every
request, which these tests hold the client's numbers against.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from llamaserver import MODEL_ALIAS, Perf, Server, perf_records

pytestmark = pytest.mark.realserver

ROOT = Path(__file__).resolve().parents[2]
PROFILING = 4
SWEEP_PROFILING = 8  # closed loop: the first requests of a run wait less than later ones
OUTPUT_TOKENS = 12


def run_spec(server: Server, api: str, requests: int = PROFILING) -> dict[str, Any]:
    return {
        "target": {"url": server.url, "model": MODEL_ALIAS, "api": api},
        "workload": {"promptTokens": 24, "outputTokens": OUTPUT_TOKENS, "seed": 7},
        "load": {"mode": "concurrency", "concurrency": 1, "workers": 1},
        "phases": {"profiling": {"requests": requests}},
        "gates": {"baseline": False},
    }


def benchop_run(tmp: Path, doc: dict[str, Any]) -> tuple[list[dict[str, Any]], Path]:
    """Run the manifest; the resources of the output file and the results dir."""
    (tmp / "in.yaml").write_text(yaml.safe_dump(doc))
    res = subprocess.run(
        [sys.executable, "-m", "benchop", "run", str(tmp / "in.yaml"), "--no-agent",
         "--no-live", "--output-file", str(tmp / "out.yaml"), "--results-dir", str(tmp / "r")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return list(yaml.safe_load_all((tmp / "out.yaml").read_text())), tmp / "r"


def records(results_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(results_dir.rglob("records.jsonl"))
        for line in path.read_text().splitlines()
    ]


def new_perf(server: Server, before: int) -> list[Perf]:
    return perf_records(server.log_text())[before:]


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_run_counts_and_times_agree_with_the_server(
    llama_server: Server, tmp_path: Path, api: str
) -> None:
    before = len(perf_records(llama_server.log_text()))
    doc = {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "metadata": {"name": f"llama-{api}"},
        "spec": run_spec(llama_server, api),
    }
    (res,), results_dir = benchop_run(tmp_path, doc)
    status = res["status"]
    assert status["phase"] == "Succeeded"
    assert status["results"]["requests"]["total"] == PROFILING
    assert status["results"]["requests"]["ok"] == PROFILING

    recs = records(results_dir)
    assert len(recs) == PROFILING and all(r["outcome"] == "ok" for r in recs)
    # No usage in the stream: counted from chunks, and the records say so.
    assert not any(r.get("tokens_from_usage") for r in recs)
    perf = new_perf(llama_server, before)
    assert len(perf) == PROFILING  # no warmup; one timing line per request, in order
    recs.sort(key=lambda r: r["sent_ns"])
    for rec, p in zip(recs, perf, strict=True):
        n = rec["output_tokens"]
        assert 0 < n <= OUTPUT_TOKENS
        # llama.cpp's own count: every generated token is fed back but the last one when
        # max_tokens ended the request; at the end-of-turn token, every one (see Perf)
        assert p.eval_runs == (n - 1 if n == OUTPUT_TOKENS else n), (rec, p)
        # causality: the first token comes after the server evaluated the prompt, and the
        # gaps between the tokens the client saw span the server's time decoding them
        # (n - 1 decodes; eval_ms covers eval_runs). Half, not all: a late read of the
        # first token on a busy machine shortens the client's span.
        assert rec["ttft_ns"] / 1e6 >= p.prompt_ms
        assert sum(rec["itl_ns"]) / 1e6 >= 0.5 * p.eval_ms * (n - 1) / max(p.eval_runs, 1)


def test_concurrency_sweep_queues_at_the_server(llama_server: Server, tmp_path: Path) -> None:
    """At concurrency 1, 2, 4 the server serves one request at a time, so requests wait:
    end-to-end latency rises with load while the server's own time per request does not.
    Both are measured in the same runs, so a busier machine scales both."""
    before = len(perf_records(llama_server.log_text()))
    spec = run_spec(llama_server, "chat", SWEEP_PROFILING)
    doc = {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "llama-sweep"},
        "spec": {
            "template": spec,
            "sweep": [{"path": "load.concurrency", "values": [1, 2, 4]}],
            "maxParallel": 1,
        },
    }
    resources, _ = benchop_run(tmp_path, doc)
    runs = [r for r in resources if r["kind"] == "BenchmarkRun"]
    assert len(runs) == 3 and all(r["status"]["phase"] == "Succeeded" for r in runs)
    perf = new_perf(llama_server, before)
    n = SWEEP_PROFILING
    assert len(perf) == 3 * n
    ratio = {}
    for run, chunk in zip(runs, (perf[i : i + n] for i in range(0, 3 * n, n)), strict=True):
        c = run["spec"]["load"]["concurrency"]
        e2e_ms = run["status"]["results"]["e2eMs"]["mean"]
        server_ms = sum(p.total_ms for p in chunk) / n
        ratio[c] = e2e_ms / server_ms  # ~1 alone; ~c when c requests share one server
    assert ratio[1] < ratio[2] < ratio[4], ratio
    assert ratio[4] > 2 * ratio[1], ratio


def test_multi_turn_dataset_replays_the_models_answers(
    llama_server: Server, tmp_path: Path
) -> None:
    """A dataset's conversations, turn by turn, against a real model: the second turn carries
    the model's own first answer (its words are in the second request's prompt count), and
    with no usage in llama.cpp's streams the results say the counts are benchop's estimate."""
    data = tmp_path / "conv.jsonl"
    turns = [["Name a colour.", "Name a fruit of that colour."], ["Say hello.", "Say goodbye."]]
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": t} for t in conv]}) + "\n"
            for conv in turns
        )
    )
    spec = run_spec(llama_server, "chat", requests=4)
    spec["workload"] = {"dataset": {"file": str(data), "multiTurn": True}, "outputTokens": 8}
    doc = {"apiVersion": "benchop.io/v1alpha1", "kind": "BenchmarkRun",
           "metadata": {"name": "llama-turns"}, "spec": spec}  # fmt: skip
    (res,), results_dir = benchop_run(tmp_path, doc)
    results = res["status"]["results"]
    assert results["requests"]["ok"] == 4
    assert results["tokens"] == {"source": "estimate", "fromUsage": 0}
    recs = {(r["row"], r["turn"]): r for r in records(results_dir)}
    assert set(recs) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for row, conv in enumerate(turns):
        first, second = recs[row, 0], recs[row, 1]
        assert first["prompt_tokens"] == len(conv[0].split())
        answer_words = second["prompt_tokens"] - first["prompt_tokens"] - len(conv[1].split())
        assert answer_words >= 1  # the model's answer to turn 0 went back in with turn 1
        assert second["sent_ns"] >= first["sent_ns"] + first["e2e_ns"]
