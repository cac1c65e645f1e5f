"""``benchop run`` against the real llama.cpp server.

The server serves one request at a time (llama-cpp-python holds one lock around the
model), streams one chunk per generated token and sends no ``usage`` in a stream (it drops
``stream_options``), so the load generator counts tokens from chunks and says so; without
streaming its answers carry ``usage``. llama.cpp prints its own timings for every request,
which these tests hold the client's numbers against. Its fixed-output-length knob is
``min_tokens`` (``ignore_eos`` is not in its request model and is dropped).
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


def benchop_run(
    tmp: Path, doc: dict[str, Any], *, code: int | None = 0
) -> tuple[list[dict[str, Any]], Path]:
    """Run the manifest (exit code ``code``; None: any); the resources of the output file
    and the results dir."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "in.yaml").write_text(yaml.safe_dump(doc))
    res = subprocess.run(
        [sys.executable, "-m", "benchop", "run", str(tmp / "in.yaml"), "--no-agent",
         "--no-live", "--output-file", str(tmp / "out.yaml"), "--results-dir", str(tmp / "r")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert code is None or res.returncode == code, res.stdout[-3000:] + res.stderr[-3000:]
    return list(yaml.safe_load_all((tmp / "out.yaml").read_text())), tmp / "r"


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "metadata": {"name": name},
        "spec": spec,
    }


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
    # No usage in the stream: counted from chunks, and the records and results say so.
    assert not any(r.get("tokens_from_usage") for r in recs)
    assert status["results"]["tokens"] == {"source": "estimate", "fromUsage": 0}
    assert sum(status["results"]["request"]["finishReasons"].values()) == PROFILING
    perf = new_perf(llama_server, before)
    # the preflight's 1-token request, then (no warmup) one timing line per request, in order
    assert len(perf) == 1 + PROFILING and perf[0].eval_runs <= 1
    perf = perf[1:]
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
    n = SWEEP_PROFILING + 1  # each run's preflight request, then its requests
    assert len(perf) == 3 * n
    ratio = {}
    chunks = (perf[i + 1 : i + n] for i in range(0, 3 * n, n))
    for run, chunk in zip(runs, chunks, strict=True):
        c = run["spec"]["load"]["concurrency"]
        e2e_ms = run["status"]["results"]["e2eMs"]["mean"]
        server_ms = sum(p.total_ms for p in chunk) / len(chunk)
        ratio[c] = e2e_ms / server_ms  # ~1 alone; ~c when c requests share one server
    assert ratio[1] < ratio[2] < ratio[4], ratio
    assert ratio[4] > 2 * ratio[1], ratio


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_not_streaming_counts_equal_the_servers_usage(
    llama_server: Server, tmp_path: Path, api: str
) -> None:
    """``request.stream: false``: one JSON answer with usage; TTFT is its whole time, no ITL.
    The usage equals llama.cpp's own count of the tokens it generated."""
    before = len(perf_records(llama_server.log_text()))
    spec = run_spec(llama_server, api)
    spec["request"] = {"stream": False}
    (res,), results_dir = benchop_run(tmp_path, manifest(f"llama-{api}-json", spec))
    results = res["status"]["results"]
    assert res["status"]["phase"] == "Succeeded" and results["requests"]["ok"] == PROFILING
    assert results["tokens"] == {"source": "usage", "fromUsage": PROFILING}
    assert results["request"] == {
        "stream": False,
        "finishReasons": results["request"]["finishReasons"],
        "endpoints": 1,
        "insecureSkipVerify": False,
        "warnings": [],
    }
    assert "itlMs" not in results and "tpotMs" not in results
    recs = sorted(records(results_dir), key=lambda r: r["sent_ns"])
    perf = new_perf(llama_server, before)[-PROFILING:]  # the preflight's request came first
    for rec, p in zip(recs, perf, strict=True):
        assert rec["outcome"] == "ok" and rec["tokens_from_usage"] and not rec["stream"]
        assert rec["ttft_ns"] == rec["e2e_ns"] and rec["itl_ns"] == []
        n = rec["output_tokens"]
        assert 0 < n <= OUTPUT_TOKENS
        assert p.eval_runs == (n - 1 if rec["finish_reason"] == "length" else n), (rec, p)
        assert rec["input_tokens"] >= p.prompt_tokens > 0  # all of it; evaluated: past a cache


FORCE_EOS = {"logit_bias": {"1": 100}}  # Gemma's end-of-sequence token: the model ends at once


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_min_tokens_gives_fixed_output_lengths_and_ignore_eos_does_not(
    llama_server: Server, tmp_path: Path, api: str
) -> None:
    """The model is pushed to end its answer at once (a logit bias on the end-of-sequence
    token). With min_tokens = max_tokens = outputTokens (``outputTokensFields``) every answer
    has exactly outputTokens tokens; with ``ignore_eos`` (vLLM's, SGLang's and TRT-LLM's
    knob; this server drops it) every answer is empty, and the run says why."""
    fixed = run_spec(llama_server, api)
    fixed["request"] = {"outputTokensFields": ["max_tokens", "min_tokens"], "extraBody": FORCE_EOS}
    (res,), results_dir = benchop_run(tmp_path / "min", manifest(f"min-{api}", fixed))
    results = res["status"]["results"]
    assert res["status"]["phase"] == "Succeeded" and results["requests"]["ok"] == PROFILING
    recs = records(results_dir)
    assert [r["output_tokens"] for r in recs] == [OUTPUT_TOKENS] * PROFILING
    assert results["request"]["finishReasons"] == {"length": PROFILING}

    ignored = run_spec(llama_server, api)
    ignored["request"] = {"extraBody": {"ignore_eos": True, **FORCE_EOS}}
    # the preflight's one-token request passes (an answer that ended properly is a live
    # server); every request of the run is empty: a counted failure, not an ok with 0 tokens
    (res,), results_dir = benchop_run(tmp_path / "eos", manifest(f"eos-{api}", ignored), code=1)
    succeeded = next(c for c in res["status"]["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "AllRequestsFailed", succeeded
    assert res["status"]["results"]["requests"]["byReason"] == {"malformed_stream": PROFILING}
    assert {r["error"] for r in records(results_dir)} == {"stream had no content"}
    assert {r["finish_reason"] for r in records(results_dir)} == {"stop"}


def test_a_model_the_server_does_not_list_ends_with_model_not_found(
    llama_server: Server, tmp_path: Path
) -> None:
    """llama-cpp-python answers any model name with its one model; the preflight's model
    list check is what tells the run it asked for another."""
    spec = run_spec(llama_server, "chat")
    spec["target"]["model"] = "llama-3.1-8b-instruct"
    (res,), _ = benchop_run(tmp_path, manifest("wrong-model", spec), code=1)
    succeeded = next(c for c in res["status"]["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "ModelNotFound"
    assert succeeded["message"] == (
        f"worker 0: GET {llama_server.url}/models does not list model 'llama-3.1-8b-instruct' "
        f"(spec.target.model); it lists '{MODEL_ALIAS}'"
    )
    assert res["status"]["results"]["requests"]["total"] == 0


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
