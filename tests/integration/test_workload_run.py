"""Workloads through the real worker and the mock server over HTTP: what was sent, checked.

A middleware records every request body the mock server receives, so each test compares
what the worker recorded with what actually went over the wire: dataset rows in order,
multi-turn conversations carrying the server's previous answers, prompts whose token count
by the tokenizer is what the records say.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from aiohttp import web

from benchop.api.models import BenchmarkRunSpec
from benchop.core.results import build_results, merge_snapshots
from benchop.loadgen import checkpoint
from benchop.loadgen.client import Ident, StreamClient, Target
from benchop.loadgen.records import RequestRecord
from benchop.loadgen.tokenizer import HfTokenizer
from benchop.loadgen.worker import WorkerConfig, run_worker
from benchop.mockserver import MockConfig, build_app

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer" / "tokenizer.json"


class Recorder:
    """A mock server whose request bodies are kept (decoded) in arrival order."""

    def __init__(self, url: str, bodies: list[dict[str, Any]]) -> None:
        self.url = url
        self.bodies = bodies


@pytest.fixture
async def recorder(request: pytest.FixtureRequest) -> AsyncIterator[Recorder]:
    config: MockConfig = getattr(request, "param", MockConfig(ttft=0.002, itl=0.0005))
    bodies: list[dict[str, Any]] = []

    @web.middleware
    async def keep(
        req: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if req.method == "POST":
            bodies.append(json.loads(await req.read()))  # aiohttp keeps the body for the handler
        return await handler(req)

    app = build_app(config)
    app.middlewares.append(keep)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Recorder(f"http://127.0.0.1:{port}/v1", bodies)
    finally:
        await runner.cleanup()


def spec_of(
    url: str, workload: dict[str, Any], *, requests: int = 12, **load: Any
) -> BenchmarkRunSpec:
    return BenchmarkRunSpec.model_validate(
        {
            "target": {"model": "m", "url": url},
            "workload": workload,
            "load": {"mode": "concurrency", "concurrency": 1, **load},
            "phases": {"profiling": {"requests": requests}},
            "gates": {"baseline": False},
            # the workload's requests only: the preflight's (tests/integration/test_preflight.py)
            # would be one more body on the wire, and its model check wants the mock's model
            "preflight": {"enabled": False},
        }
    )


async def run(spec: BenchmarkRunSpec, d: Path, worker: int = 0) -> list[RequestRecord]:
    out = await run_worker(
        WorkerConfig(spec=spec, run="r", worker_index=worker, results_dir=d / f"w{worker}")
    )
    assert out.snapshot.counters["requests_ok"] == out.snapshot.counters["requests_total"]
    return sorted(checkpoint.load(d / f"w{worker}").records, key=lambda r: r.index)


def user_texts(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_dataset_rows_are_sent_in_order_split_across_workers(
    recorder: Recorder, tmp_path: Path
) -> None:
    rows = [{"prompt": f"row number {i}", "outputTokens": 2 + i % 3} for i in range(7)]
    data = write_rows(tmp_path / "d.jsonl", rows)
    spec = spec_of(
        recorder.url, {"dataset": {"file": str(data)}}, workers=2, requests=14, concurrency=2
    )
    for w in (0, 1):  # one worker after the other: each one's bodies in its send order
        start = len(recorder.bodies)
        records = await run(spec, tmp_path, worker=w)
        want = [(w + 2 * k) % 7 for k in range(7)]  # entries w, w+2, ... of file order
        assert [r.row for r in records] == want
        sent = sorted(recorder.bodies[start:], key=lambda b: user_texts(b)[0])
        assert sorted(user_texts(b)[0] for b in sent) == sorted(f"row number {i}" for i in want)
        assert [r.max_tokens for r in records] == [2 + i % 3 for i in want]
        assert {r.output_tokens for r in records} == {2, 3, 4}  # the mock honours max_tokens
        assert all(r.input_tokens == r.prompt_tokens == 3 for r in records)


async def test_random_sampling_sends_the_same_sample_for_the_same_seed(
    recorder: Recorder, tmp_path: Path
) -> None:
    data = write_rows(tmp_path / "d.jsonl", [{"prompt": f"p {i}"} for i in range(40)])

    async def rows_sent(seed: int, d: Path) -> list[int | None]:
        ds = {"file": str(data), "sampling": "random", "limit": 30}
        spec = spec_of(recorder.url, {"dataset": ds, "seed": seed, "outputTokens": 2})
        return [r.row for r in await run(spec, d)]

    a, b, c = (
        await rows_sent(5, tmp_path / "a"),
        await rows_sent(5, tmp_path / "b"),
        await rows_sent(6, tmp_path / "c"),
    )
    assert a == b and a != c
    assert len(set(a)) == 12 and set(a) <= set(range(30))  # the limit: the first 30 rows


async def test_multi_turn_replay_sends_the_previous_answer(
    recorder: Recorder, tmp_path: Path
) -> None:
    convs = [
        {
            "messages": [
                {"role": "system", "content": f"conversation {c}"},
                *(
                    m
                    for t in range(3)
                    for m in (
                        {"role": "user", "content": f"c{c} question {t}"},
                        {"role": "assistant", "content": " ".join(["x"] * (2 + t + c))},
                    )
                ),
            ]
        }
        for c in range(8)
    ]
    data = write_rows(tmp_path / "conv.jsonl", convs)
    ds = {"file": str(data), "multiTurn": True}
    spec = spec_of(recorder.url, {"dataset": ds}, concurrency=3, requests=12)
    records = await run(spec, tmp_path)
    by_turn = {(r.row, r.turn): r for r in records}
    assert len(by_turn) == 12  # 12 requests, no conversation started twice (8 rows)
    assert len({r.row for r in records}) >= 4  # three slots, three turns each
    for r in records:  # each turn left after the previous one's answer came back
        assert r.turn is not None
        if r.turn:
            prev = by_turn[r.row, r.turn - 1]
            assert r.sent_ns >= prev.sent_ns + prev.e2e_ns
    assert len(recorder.bodies) == 12
    for body in recorder.bodies:
        msgs = body["messages"]
        c = int(msgs[0]["content"].split()[-1])
        users = user_texts(body)
        turn = len(users) - 1
        assert users == [f"c{c} question {t}" for t in range(turn + 1)]
        answers = [m["content"] for m in msgs if m["role"] == "assistant"]
        # the server's own replies (the mock answers " tok0 tok1 ..." up to max_tokens), whose
        # lengths were the dataset's reference answers (2 + t + c words)
        assert answers == ["".join(f" tok{i}" for i in range(2 + t + c)) for t in range(turn)]
        assert body["max_tokens"] == 2 + turn + c
        assert by_turn[c, turn].prompt_tokens == sum(len(m["content"].split()) for m in msgs)


@pytest.mark.parametrize(
    "recorder",
    [MockConfig(ttft=0.001, itl=0.0, tokenizer=str(TOKENIZER))],
    indirect=True,
)
async def test_tokenizer_exact_prompt_lengths(recorder: Recorder, tmp_path: Path) -> None:
    tok = HfTokenizer.from_file(TOKENIZER)
    workload = {
        "promptLength": {"distribution": "uniform", "min": 20, "max": 400},
        "outputTokens": 4,
        "sharedPrefix": {"prefixes": 2, "tokens": 50},
        "tokenizer": {"file": str(TOKENIZER)},
        "seed": 9,
    }
    spec = spec_of(recorder.url, workload, requests=30, concurrency=4)
    records = await run(spec, tmp_path)
    sent = [tok.count(b["messages"][0]["content"]) for b in recorder.bodies]
    # tokenize what was sent, compare: the records' counts, the mock's usage (same tokenizer)
    assert sorted(sent) == sorted(r.prompt_tokens or 0 for r in records)
    assert all(r.input_tokens == r.prompt_tokens for r in records)
    assert all(70 <= n <= 450 for n in sent) and len(set(sent)) > 20
    snap = merge_snapshots([_final(tmp_path / "w0")])
    res = build_results(snap, slo=None, source="local", tokenizer=spec.workload.tokenizer)
    assert res.tokens is not None
    assert (res.tokens.source, res.tokens.tokenizer, res.tokens.from_usage) == (
        "usage",
        "tokenizer.json",
        30,
    )


def _final(d: Path) -> Any:
    from benchagent.codec import MsgpackCodec

    return MsgpackCodec().decode((d / "final.msgpack").read_bytes())


async def test_without_usage_the_tokenizer_counts_the_answer() -> None:
    pieces = [" the", " wa", "ter", " un", "der"]  # 5 chunks, 3 tokens

    async def handler(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        for i, p in enumerate(pieces):  # a finish_reason at the end, as servers send it
            last = {"finish_reason": "length"} if i == len(pieces) - 1 else {}
            chunk = {"choices": [{"delta": {"content": p}, **last}]}
            await resp.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    tok = HfTokenizer.from_file(TOKENIZER)
    text = "".join(pieces)
    try:
        for count, want in ((None, len(pieces)), (tok.count, tok.count(text))):
            records: list[RequestRecord] = []
            async with StreamClient(Target(url, "m"), request_timeout=5, count_tokens=count) as c:
                answer = await c.send(
                    c.body("q", 8), ident=Ident(0, 1, 0), input_words=1, sink=records.append,
                    keep_text=True,
                )  # fmt: skip
            assert answer == text
            (rec,) = records
            assert (rec.outcome, rec.tokens_from_usage, rec.output_tokens) == ("ok", False, want)
        assert tok.count(text) == 3 != len(pieces)  # the two countings differ here
    finally:
        await runner.cleanup()


def test_dataset_example_runs_from_any_directory(tmp_path: Path) -> None:
    """`benchop run examples/dataset-run.yaml` as a user would, from another directory (the
    dataset path is relative to the YAML), within the minute the example promises."""
    out = tmp_path / "status.yaml"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "agent")]),
    }
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "benchop", "run", str(ROOT / "examples" / "dataset-run.yaml"),
         "--no-live", "--output-file", str(out), "--results-dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    status = yaml.safe_load_all(out.read_text()).__next__()["status"]
    results = status["results"]
    assert status["phase"] == "Succeeded" and results["requests"]["ok"] == 120
    assert set(results["ttftMs"]) >= {"p50", "p90", "p95", "p99", "percentiles"}
    assert set(results["ttftMs"]["percentiles"]) == {"p99.9"}
    assert results["tokens"]["source"] == "usage"
    lines = (tmp_path / "r" / "records.jsonl").read_text().splitlines()  # the bundle's
    turns = {(r.get("row"), r.get("turn")) for r in map(json.loads, lines)}
    assert any(t and t > 0 for _, t in turns)  # conversations were replayed past turn 0
    assert took < 60, took


async def test_a_worker_reads_a_mounted_dataset_and_names_a_bad_row(
    recorder: Recorder, tmp_path: Path
) -> None:
    """``benchop loadgen`` as a pod runs it: the ConfigMap's file under the mount root
    (``--workload-root``); a bad row ends the worker before any request, exit 2, the reason
    in the termination log (what the operator shows of a crash-looping pod)."""
    root = tmp_path / "mnt"
    (root / "dataset").mkdir(parents=True)
    data = root / "dataset" / "chat.jsonl"
    data.write_text('{"prompt": "fine row"}\n')
    doc = {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "metadata": {"name": "cm"},
        "spec": {
            "target": {"model": "m", "url": recorder.url},
            "workload": {"dataset": {"configMap": {"name": "chats", "key": "chat.jsonl"}}},
            "load": {"concurrency": 1},
            "phases": {"profiling": {"requests": 3}},
            "preflight": {"enabled": False},  # the dataset's bodies only
        },
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(doc))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "agent")]),
    }

    def loadgen(results: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "benchop", "loadgen", "--spec", str(tmp_path / "run.yaml"),
             "--workload-root", str(root), "--results-dir", str(tmp_path / results),
             "--termination-log", str(tmp_path / f"{results}.term")],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip

    ok = await asyncio.to_thread(loadgen, "ok")
    assert ok.returncode == 0, ok.stderr
    assert [user_texts(b) for b in recorder.bodies] == [["fine row"]] * 3
    data.write_text('{"prompt": "fine row"}\n{"prompt": 3}\n')
    bad = await asyncio.to_thread(loadgen, "bad")
    assert bad.returncode == 2
    reason = (tmp_path / "bad.term").read_text()
    assert reason.startswith(f"benchop loadgen: {data}:2: ") and reason in bad.stderr
    assert len(recorder.bodies) == 3  # nothing sent
