"""The real llama.cpp server's speed on this machine (docs/testing.md, "Real model server").

Starts the ``realserver`` tests' server (tests/realserver/llamaserver.py), sends completions
requests with a prompt of ``--prompt-words`` words and ``--max-tokens`` generated tokens
(greedy), first one at a time, then ``--concurrency`` at once, and prints the model load
time, llama.cpp's own prompt and generation speed (tokens/s from its per-request timings),
and the client's requests/s and output tokens/s. The server runs one request at a time.

    python hack/bench_llama.py                     # after: bash hack/install-llama.sh
    python hack/bench_llama.py --threads 1 --concurrency 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "realserver"))

from llamaserver import MODEL_ALIAS, Perf, Server, model_file, perf_records, start_server  # noqa: E402


def complete(server: Server, prompt: str, max_tokens: int) -> int:
    body = {"model": MODEL_ALIAS, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    req = urllib.request.Request(
        server.url + "/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as resp:
        return int(json.load(resp)["usage"]["completion_tokens"])


def speeds(perf: list[Perf]) -> str:
    pp = sum(p.prompt_tokens for p in perf) / sum(p.prompt_ms for p in perf) * 1e3
    tg = sum(p.eval_runs for p in perf) / sum(p.eval_ms for p in perf) * 1e3
    return f"server: prompt {pp:.0f} tok/s, generation {tg:.1f} tok/s"


def p50(perf: list[Perf]) -> float:
    return statistics.median(p.total_ms for p in perf)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--prompt-words", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument(
        "--server-arg", action="append", default=[], help="extra server flag (repeat for each)"
    )
    args = ap.parse_args()
    words = [
        "red",
        "green",
        "blue",
        "yellow",
        "house",
        "river",
        "garden",
        "window",
        "stone",
        "bread",
    ]
    prompts = [
        " ".join(words[(i + j) % len(words)] for j in range(args.prompt_words)) + f" {i}"
        for i in range(args.requests * 2 + 1)
    ]
    log = Path(tempfile.mkdtemp()) / "server.log"
    extra = tuple(args.server_arg)
    with start_server(model_file(), log_path=log, threads=args.threads, extra_args=extra) as s:
        print(f"threads {args.threads} {' '.join(extra)}: ready {s.load_s:.1f} s after the start")
        complete(s, prompts[-1], 4)  # warm-up: the first request after loading is slower
        n0 = len(perf_records(s.log_text()))
        t0 = time.perf_counter()
        toks = [complete(s, p, args.max_tokens) for p in prompts[: args.requests]]
        dt = time.perf_counter() - t0
        perf = perf_records(s.log_text())[n0:]
        print(
            f"concurrency 1: {args.requests / dt:.2f} req/s, {sum(toks) / dt:.1f} output tok/s"
            f" (client); {speeds(perf)}; request p50 {p50(perf):.0f} ms"
        )
        n0 = len(perf_records(s.log_text()))
        batch = prompts[args.requests : 2 * args.requests]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            toks = list(pool.map(lambda p: complete(s, p, args.max_tokens), batch))
        dt = time.perf_counter() - t0
        perf = perf_records(s.log_text())[n0:]
        print(
            f"concurrency {args.concurrency}: {args.requests / dt:.2f} req/s, "
            f"{sum(toks) / dt:.1f} output tok/s (client); {speeds(perf)}"
        )
    print(f"server log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
