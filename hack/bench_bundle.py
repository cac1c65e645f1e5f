"""What the results bundle costs on a big run: the worker's timeline (read back from its
records.jsonl after profiling), the records merge, timeseries.csv, and peak memory.

    python hack/bench_bundle.py                          # 2 workers x 100k requests, 128 tokens
    python hack/bench_bundle.py --requests 20000 --tokens 64

Writes synthetic checkpoints (the format workers write) to a temp dir, then times each step in
a fresh child process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import numpy as np

from benchop.loadgen import checkpoint as ckpt
from benchop.loadgen.records import RequestRecord


def write_worker(d: Path, worker: int, n: int, tokens: int) -> None:
    d.mkdir(parents=True)
    rng = np.random.default_rng(worker)
    enc = msgspec.json.Encoder()
    t0 = 1_800_000_000 * 10**9
    with open(d / ckpt.RECORDS, "wb", buffering=1 << 20) as f:
        for i in range(n):
            itl = rng.integers(3_000_000, 8_000_000, size=tokens - 1).tolist()
            ttft = int(rng.integers(20_000_000, 90_000_000))
            rec = RequestRecord(
                id=f"w{worker}-a1-{i}", worker=worker, attempt=1, index=i,
                sent_ns=t0 + i * 10_000_000, outcome="ok", status=200, ttft_ns=ttft,
                itl_ns=itl, e2e_ns=ttft + sum(itl), input_tokens=512, output_tokens=tokens,
                good=True,
            )  # fmt: skip
            f.write(enc.encode(rec) + b"\n")
    state = ckpt.CheckpointState(
        run="r", worker=worker, workers=2, spec_hash="x", attempt=1, attempt_started_ns=t0
    )
    ckpt.save_state(d, state)


STEP = """
import sys, time, resource, json
from pathlib import Path
step, root, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
if step == "timeline":
    from benchop.loadgen.checkpoint import iter_records
    from benchop.loadgen.records import timeline_from
    rows = timeline_from(iter_records(root / "worker-0"))
    what = f"{len(rows)} rows"
elif step == "merge":
    from benchop.bundle import merge_records
    n = merge_records([root / f"worker-{w}" for w in range(workers)], root / "records.jsonl")
    what = f"{n} records"
took = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"step": step, "s": round(took, 2), "peak_rss_mb": round(rss), "what": what}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=100_000, help="per worker")
    p.add_argument("--tokens", type=int, default=128)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for w in range(2):
            write_worker(root / f"worker-{w}", w, args.requests, args.tokens)
        size = sum(f.stat().st_size for f in root.rglob("records.jsonl")) / 1e6
        print(f"2 workers x {args.requests} requests x {args.tokens} tokens: {size:.0f} MB")
        for step in ("timeline", "merge"):
            out = subprocess.run(
                [sys.executable, "-c", STEP, step, str(root), "2"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            print(out.stdout.strip())
        base = subprocess.run(
            [sys.executable, "-c", "import benchop.bundle, resource; "
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        print(json.dumps({"step": "imports only", "peak_rss_mb": int(base.stdout)}))


if __name__ == "__main__":
    main()
