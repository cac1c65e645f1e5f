"""The load generator's fixed-concurrency path as a benchmark harness (not shipped).

``measure_fixed_concurrency`` drives an OpenAI-compatible URL the way a worker's closed loop
does (one StreamClient, ``run_closed``, every record folded into a metrics registry) and
measures the client's own cost. Used by ``hack/bench_loadgen.py`` and
``hack/profile_client.py`` (run them from the repository root; this folder is on their path).

    stats = asyncio.run(measure_fixed_concurrency(server.url, "m", 32, 5.0, 64))
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from benchop.loadgen.client import Ident, StreamClient, Target
from benchop.loadgen.load import Budget, run_closed
from benchop.loadgen.prompts import make_prompt
from benchop.loadgen.records import OK, RequestRecord, new_registry, record_into
from benchop.loadgen.trigger import SendTrigger


async def measure_fixed_concurrency(
    url: str,
    model: str,
    concurrency: int,
    seconds: float,
    output_tokens: int,
    *,
    warmup_s: float = 0.5,
    prompt_words: int = 16,
) -> dict[str, float]:
    """Drive ``url`` (an OpenAI base URL, chat API) at fixed concurrency; measure the client.

    The worker's real path: one StreamClient, ``run_closed``, each record
    folded into a metrics registry. After ``warmup_s`` (connections opened,
    not measured), counts the requests and tokens that complete within the next
    ``seconds`` and the process CPU time spent meanwhile. Returns ``requests``
    (ok), ``errors``, ``rps``, ``tokens`` (output tokens of ok requests),
    ``cpu_s``, ``window_s``, ``cpu_us_per_token``, ``cpu_pct``,
    ``recv_lag_p99_ms`` (0 when the server sends no ``benchop_sent_ns``) and
    ``start_wall`` (``time.time()`` at the start of the window). As in the
    worker, the registry is folded every 0.1 s while requests run.

        stats = await measure_fixed_concurrency(server.url, "m", 32, 5.0, 64)
    """
    reg = new_registry()
    window = {"on": False}
    counts = {"requests": 0, "errors": 0, "tokens": 0}
    marks: dict[str, float] = {}

    def sink(rec: RequestRecord) -> None:
        record_into(reg, rec)
        if window["on"]:
            if rec.outcome == OK:
                counts["requests"] += 1
                counts["tokens"] += rec.output_tokens
            else:
                counts["errors"] += 1

    def mark(name: str, on: bool) -> None:
        marks[name + "_t"] = time.perf_counter()
        marks[name + "_cpu"] = time.process_time()
        marks[name + "_wall"] = time.time()
        window["on"] = on

    async def fold() -> None:
        while True:
            await asyncio.sleep(0.1)
            reg.fold()

    loop = asyncio.get_running_loop()
    async with StreamClient(Target(url, model), request_timeout=60) as client:
        body = client.body(
            make_prompt(0, worker=0, attempt=1, index=0, n_tokens=prompt_words), output_tokens
        )
        ident = Ident(0, 1, 0)

        async def send(_: None, trigger: SendTrigger | None) -> None:
            await client.send(body, ident=ident, input_words=prompt_words, sink=sink)

        deadline = time.perf_counter_ns() + int((warmup_s + seconds) * 1e9)
        loop.call_later(warmup_s, mark, "start", True)
        loop.call_later(warmup_s + seconds, mark, "end", False)
        loop.call_later(warmup_s, client.take_recv_lags)
        folder = asyncio.create_task(fold())
        try:
            await run_closed(concurrency, Budget(deadline_ns=deadline), lambda: None, send)
        finally:
            folder.cancel()
        lags = client.take_recv_lags()
    reg.fold()
    wall = marks["end_t"] - marks["start_t"]
    cpu = marks["end_cpu"] - marks["start_cpu"]
    tokens = counts["tokens"]
    p99 = float(np.percentile(lags, 99)) / 1e6 if lags.size else 0.0
    return {
        "requests": counts["requests"],
        "errors": counts["errors"],
        "rps": counts["requests"] / wall,
        "tokens": tokens,
        "cpu_s": cpu,
        "window_s": wall,
        "cpu_us_per_token": cpu / tokens * 1e6 if tokens else 0.0,
        "cpu_pct": 100.0 * cpu / wall,
        "recv_lag_p99_ms": p99,
        "start_wall": marks["start_wall"],
    }
