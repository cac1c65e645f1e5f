#!/usr/bin/env python3
"""What preparing one request costs per workload: CPU microseconds per request body.

The worker prepares each request (``Workload.next`` + ``StreamClient.body``) before its send
time, in the event loop that also reads every stream: this is that cost, per request, for
each kind of workload, next to today's (``make_prompt`` + ``body``, fixed lengths). Nothing
is sent.

    python hack/bench_workload.py                 # 20,000 requests per row
    python hack/bench_workload.py -n 5000 --prompt-tokens 2048
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchop.api.workload import WorkloadSpec
from benchop.loadgen.client import StreamClient, Target
from benchop.loadgen.prompts import make_prompt
from benchop.loadgen.tokenizer import HfTokenizer, WordCounter
from benchop.loadgen.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer" / "tokenizer.json"


def _spanning_tokenizer(d: Path) -> Path:
    """A SentencePiece-style BPE trained without a pre-tokenizer: tokens span words (the
    slow path: each prompt is encoded and cut)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    from benchop.loadgen.prompts import WORDS

    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=2000, show_progress=False, initial_alphabet=list("abcdefghijklmnopqrstuvwxyz▁")
    )
    words = list(WORDS)
    t.train_from_iterator([" ".join(words[i:] + words[:i]) for i in range(40)], trainer=trainer)
    path = d / "spanning.json"
    t.save(str(path))
    return path


def _dataset(d: Path, rows: int, words: int) -> Path:
    from benchop.loadgen.prompts import words_of

    path = d / "data.jsonl"
    with path.open("w") as f:
        for i in range(rows):
            msgs = [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": words_of(b"u%d" % i, words)},
                {"role": "assistant", "content": words_of(b"a%d" % i, 64)},
                {"role": "user", "content": words_of(b"v%d" % i, words // 4)},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def _time(n: int, fn: Callable[[int], bytes]) -> float:
    for i in range(min(n, 200)):  # warm caches (prefix texts, first blocks)
        fn(i)
    t0 = time.process_time()
    for i in range(n):
        fn(i)
    return (time.process_time() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", type=int, default=20_000, help="requests per row")
    p.add_argument("--prompt-tokens", type=int, default=512)
    args = p.parse_args(argv)
    n, pt = args.n, args.prompt_tokens
    client = StreamClient(Target("http://127.0.0.1:1/v1", "m"), request_timeout=1)
    tok = HfTokenizer.from_file(TOKENIZER)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        spanning = HfTokenizer.from_file(_spanning_tokenizer(d))
        data = _dataset(d, 2000, pt)
        lognormal = {"distribution": "lognormal", "mean": pt, "std": pt // 2}

        def workload(counter: Any, **spec: Any) -> Workload:
            ws = WorkloadSpec.model_validate({"seed": 1, **spec})
            if ws.dataset is not None:
                return Workload.for_worker(ws, api="chat", worker=0, workers=1)
            return Workload(ws, api="chat", worker=0, workers=1, counter=counter)

        def prepared(w: Workload) -> Callable[[int], bytes]:
            def one(i: int) -> bytes:
                q = w.next(1, i)
                if q.messages is None:
                    return client.body(q.text or "", q.max_tokens)
                return client.body_messages(q.messages, q.max_tokens)

            return one

        def replay(w: Workload) -> Callable[[int], bytes]:
            def one(i: int) -> bytes:
                q = w.next(1, i)
                w.on_reply(q, "an answer of a few words")
                assert q.messages is not None
                return client.body_messages(q.messages, q.max_tokens)

            return one

        def before(i: int) -> bytes:
            return client.body(make_prompt(1, worker=0, attempt=1, index=i, n_tokens=pt), 128)

        prefixes = {"prefixes": 16, "tokens": 1024}
        rows: list[tuple[str, Callable[[int], bytes]]] = [
            ("before: make_prompt + body, fixed", before),
            ("fixed (promptTokens)", prepared(workload(WordCounter(), promptTokens=pt))),
            (
                "lognormal in and out",
                prepared(workload(WordCounter(), promptLength=lognormal, outputLength=lognormal)),
            ),
            (
                "lognormal + 16 shared prefixes of 1024",
                prepared(workload(WordCounter(), promptLength=lognormal, sharedPrefix=prefixes)),
            ),
            (
                "tokenizer, splits words (exact, fast)",
                prepared(workload(tok, promptLength=lognormal)),
            ),
            (
                "tokenizer, spans words (exact, slow)",
                prepared(workload(spanning, promptLength=lognormal)),
            ),
            (
                "dataset, 2000 rows, single turn",
                prepared(workload(None, dataset={"file": str(data)})),
            ),
            (
                "dataset, multi-turn replay",
                replay(workload(None, dataset={"file": str(data), "multiTurn": True})),
            ),
        ]
        print(f"{'workload (' + str(pt) + ' prompt tokens)':<44}{'us/request':>12}")
        for name, fn in rows:
            reps = n if "slow" not in name else max(n // 20, 50)
            print(f"{name:<44}{_time(reps, fn):>12.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
