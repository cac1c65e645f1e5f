#!/usr/bin/env python
"""CPU per request of the load generator's pure hot-path pieces, without I/O: the SSE parser
on a 64-token mock stream (one read, and one read per token), ``record_into`` (a record into
the metrics registry) and the request body. Minimum of 7 repeats: robust on a shared machine.
Compare two trees by running it with each one's ``PYTHONPATH``:

    PYTHONPATH=$PWD/operator:$PWD/agent python hack/bench_parse.py
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from benchop.loadgen.client import StreamClient, Target
from benchop.loadgen.records import RequestRecord, new_registry, record_into
from benchop.loadgen.sse import StreamParser
from benchop.mockserver import ChunkEncoder


def main() -> None:
    enc = ChunkEncoder(chat=True, rid=1, created=1, model="m", usage=True, finish="length")
    tail = enc.usage(10, 64, b"1") + b"data: [DONE]\n\n"
    whole = b"".join(enc.tokens(0, 64, 64, b"1")) + tail
    reads = [b"".join(enc.tokens(i, i + 1, 64, b"1")) for i in range(64)] + [tail]

    def burst() -> None:
        StreamParser(0).feed(whole, 1)

    def paced() -> None:
        p = StreamParser(0)
        for t, data in enumerate(reads):
            p.feed(data, t)

    reg = new_registry()
    rec = RequestRecord(
        id="w0-a1-1", worker=0, attempt=1, index=1, sent_ns=1, outcome="ok", ttft_ns=5,
        itl_ns=[1] * 63, e2e_ns=100, input_tokens=10, output_tokens=64, tokens_from_usage=True,
        finish_reason="length", chunks=64,
    )  # fmt: skip
    client = StreamClient(Target("http://h/v1", "m"), request_timeout=1)
    prompt = "word " * 128
    cases: list[tuple[str, Callable[[], object], int]] = [
        ("parse, 64 tokens in one read", burst, 2000),
        ("parse, 64 tokens in 65 reads", paced, 500),
        ("record_into", lambda: record_into(reg, rec), 20000),
        ("request body", lambda: client.body(prompt, 64), 20000),
    ]
    for name, fn, number in cases:
        best = min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6
        print(f"{name:32s} {best:8.2f} us")


if __name__ == "__main__":
    main()
