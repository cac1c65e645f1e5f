#!/usr/bin/env python
"""Client-side cost and timing fidelity of the load generator, against the mock server.

Prints one row per scenario: requests/s, output tokens, client CPU seconds and
CPU microseconds per token (``time.process_time`` of this process: the mock
server runs in its own process), client CPU %, receive-lag p99 (from the mock's
``benchop_sent_ns``) and, for the open loop, send-lag p50/p99.

    python hack/profile_client.py                 # every scenario, 4 s each
    python hack/profile_client.py --seconds 10 --only burst-64

Scenarios:
  burst-64 / burst-512  ttft=itl=0 (whole response in one write), C=32: the
                        client's ceiling, per-token parse cost amortised per read
  paced-64              itl=2 ms, C=32: one read per token (a real server's shape)
  paced-128             the same at C=128 (~1,000 req/s, 60 % of a core): receive lag under load
  worker-burst          the whole worker (run_worker: registry, records.jsonl,
                        snapshots) for a 4 s profiling phase, ttft=itl=0, C=32
  open-200 / open-600    rate mode, 200 or 600 req/s Poisson, itl=2 ms: send lag, recv lag

The mock server runs pinned to core 0 and this process to core 1 (``--no-pin`` to let
the scheduler place them): on a 2-core machine, sharing a core adds the server's
bursts to every lag.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fixed_concurrency import measure_fixed_concurrency

from benchop.api.models import BenchmarkRunSpec
from benchop.loadgen import checkpoint
from benchop.loadgen.worker import WorkerConfig, run_worker
from benchop.metrics import names
from benchop.mockserver import MockConfig, spawn_mock_server_process


def _spec(url: str, load: dict[str, Any], seconds: float, output_tokens: int) -> BenchmarkRunSpec:
    return BenchmarkRunSpec.model_validate(
        {
            "target": {"model": "benchop-mock", "url": url},
            "workload": {"promptTokens": 16, "outputTokens": output_tokens, "seed": 1},
            "load": load,
            "phases": {"profiling": {"duration": f"{seconds}s"}},
        }
    )


async def _worker_row(
    url: str, load: dict[str, Any], seconds: float, tokens: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        cpu0, t0 = time.process_time(), time.perf_counter()
        out = await run_worker(
            WorkerConfig(spec=_spec(url, load, seconds, tokens), run="p", results_dir=Path(d))
        )
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        records = checkpoint.load(d).records
    c, g = out.snapshot.counters, out.snapshot.gauges
    toks = c[names.OUTPUT_TOKENS_TOTAL]
    row: dict[str, Any] = {
        "rps": c[names.REQUESTS_OK] / out.snapshot.elapsed_s,
        "tokens": toks,
        "cpu_s": cpu,
        "cpu_us_per_token": cpu / toks * 1e6 if toks else 0.0,
        "cpu_pct": 100 * cpu / wall,
        "recv_lag_p99_ms": g.get(names.RECV_LAG_P99, 0.0),
        "errors": c[names.REQUESTS_FAILED],
    }
    lags = [r.send_lag_ns for r in records if r.send_lag_ns is not None]
    if lags:
        import numpy as np  # after benchop.loadgen: it limits BLAS threads before numpy loads

        a = np.array(lags) / 1e6
        row["send_lag_p50_ms"] = float(np.percentile(a, 50))
        row["send_lag_p99_ms"] = float(np.percentile(np.abs(a), 99))
    return row


def _scenarios(
    seconds: float,
) -> dict[str, tuple[MockConfig, Callable[[str], Coroutine[Any, Any, dict[str, Any]]]]]:
    burst = MockConfig(ttft=0.0, itl=0.0)
    paced = MockConfig(ttft=0.005, itl=0.002)
    return {
        "burst-64": (burst, lambda u: measure_fixed_concurrency(u, "m", 32, seconds, 64)),
        "burst-512": (burst, lambda u: measure_fixed_concurrency(u, "m", 32, seconds, 512)),
        "paced-64": (paced, lambda u: measure_fixed_concurrency(u, "m", 32, seconds, 64)),
        "paced-128": (paced, lambda u: measure_fixed_concurrency(u, "m", 128, seconds, 64)),
        "worker-burst": (
            burst,
            lambda u: _worker_row(u, {"mode": "concurrency", "concurrency": 32}, seconds, 64),
        ),
        "open-200": (
            paced,
            lambda u: _worker_row(
                u, {"mode": "rate", "rate": 200.0, "arrival": "poisson"}, seconds, 64
            ),
        ),
        "open-600": (
            paced,
            lambda u: _worker_row(
                u, {"mode": "rate", "rate": 600.0, "arrival": "poisson"}, seconds, 64
            ),
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--only", action="append", help="run only this scenario (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and client to cores")
    args = p.parse_args(argv)
    pin = not args.no_pin and {0, 1} <= os.sched_getaffinity(0)
    if pin:
        os.sched_setaffinity(0, {1})
    try:
        import uvloop

        run: Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]] = uvloop.run
    except ImportError:
        run = asyncio.run
    scenarios = _scenarios(args.seconds)
    cols = ("rps", "tokens", "cpu_s", "cpu_us_per_token", "cpu_pct", "recv_lag_p99_ms",
            "send_lag_p50_ms", "send_lag_p99_ms")  # fmt: skip
    if not args.json:
        print(f"{'scenario':<13}" + "".join(f"{c:>17}" for c in cols))
    for name, (config, fn) in scenarios.items():
        if args.only and name not in args.only:
            continue
        proc, url = spawn_mock_server_process(config)
        try:
            if pin:
                os.sched_setaffinity(proc.pid, {0})
            row = run(fn(url))
        finally:
            proc.terminate()
            proc.wait()
        if args.json:
            print(json.dumps({"scenario": name, **row}))
        else:
            cells = "".join(
                f"{row[c]:>17.3f}" if isinstance(row.get(c), float) else f"{row.get(c, '-'):>17}"
                for c in cols
            )
            print(f"{name:<13}{cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
