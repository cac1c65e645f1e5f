"""Per-request records and how they become metrics (pure).

A :class:`RequestRecord` is what the client measured for one request; it is
both the line written to ``records.jsonl`` and the only input of
:func:`record_into`, so the final metrics are recomputable from the records
exactly: ``registry_from(records)`` yields the same counters and series as the
worker's registry (gauges such as client CPU are not per-request facts).

>>> rec = RequestRecord(id="w0-a1-0", worker=0, attempt=1, index=0, sent_ns=1,
...     outcome="ok", ttft_ns=50, itl_ns=[10, 10], e2e_ns=70, input_tokens=8,
...     output_tokens=3)
>>> tpot_ns(rec), is_good(rec, Slo(ttft_ms=1.0))
(10, True)
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from benchop.metrics import Registry, names
from benchop.metrics.timeline import Timeline, TimelineRow

__all__ = [
    "DELAYED",
    "OK",
    "RequestRecord",
    "Slo",
    "is_good",
    "new_registry",
    "record_into",
    "registry_from",
    "timeline_from",
    "tpot_ns",
]

OK = "ok"
DELAYED = "requests_delayed"
"""Counter (not in ``benchop.metrics.names``): open-loop sends held back by maxInFlight."""


class RequestRecord(msgspec.Struct, kw_only=True):
    """One request as measured by the client; one line of ``records.jsonl``.

    Times are integer nanoseconds. ``sent_ns`` is wall-clock (``time.time_ns``)
    just before the request was written; the latencies are monotonic
    differences. ``outcome`` is ``"ok"`` or a failure reason of
    ``benchop.metrics.names.FAILURE_REASONS``.
    """

    id: str  # "w<worker>-a<attempt>-<index>", unique within a run
    worker: int
    attempt: int  # 1 for the first start of the worker, +1 per resume
    index: int  # request number in its phase (0-based); a resumed attempt re-sends missing ones
    sent_ns: int
    outcome: str
    status: int = 0  # HTTP status; 0 when no response arrived
    error: str | None = None
    ttft_ns: int | None = None  # send -> first content chunk
    itl_ns: list[int] = []  # gaps between consecutive content chunks
    e2e_ns: int = 0  # send -> end of stream (or failure)
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_from_usage: bool = False  # counts from the server's usage, else counted by us
    send_lag_ns: int | None = None  # open loop only: actual - scheduled send time
    delayed: bool = False  # open loop: waited for a slot under maxInFlight
    good: bool = False  # ok and met every SLO given
    finish_reason: str | None = None  # of the last choice that had one
    chunks: int = 0  # streamed: chunks with content (several tokens each on some servers)
    stream: bool = True  # False: one JSON answer, TTFT = E2E, no ITL
    endpoint: int = 0  # index of the base URL (spec.target.urls) it went to
    # What the workload sent (benchop.loadgen.workload):
    prompt_tokens: int | None = None  # the prompt's tokens as benchop counts them
    max_tokens: int | None = None  # the output length asked for (max_tokens)
    row: int | None = None  # dataset: the row (conversation) in the file, 0-based
    turn: int | None = None  # dataset: the user turn within the row, 0-based
    prefix: int | None = None  # shared prefixes: which one


class Slo(msgspec.Struct, frozen=True, kw_only=True):
    """Service-level objectives in milliseconds; ``None`` means not set."""

    ttft_ms: float | None = None
    itl_ms: float | None = None  # mean inter-token latency of the request
    tpot_ms: float | None = None
    e2e_ms: float | None = None


def tpot_ns(rec: RequestRecord) -> int | None:
    """Time per output token after the first: ``(e2e - ttft) // (output_tokens - 1)``; None
    for a non-streamed answer (its tokens arrived together)."""
    if rec.ttft_ns is None or rec.output_tokens < 2 or not rec.stream:
        return None
    return (rec.e2e_ns - rec.ttft_ns) // (rec.output_tokens - 1)


def is_good(rec: RequestRecord, slo: Slo) -> bool:
    """True when the request succeeded and met every objective that is set."""
    if rec.outcome != OK:
        return False
    if slo.ttft_ms is not None and (rec.ttft_ns is None or rec.ttft_ns > slo.ttft_ms * 1e6):
        return False
    itl = rec.itl_ns
    if slo.itl_ms is not None and itl and sum(itl) > slo.itl_ms * 1e6 * len(itl):
        return False
    if slo.tpot_ms is not None:
        t = tpot_ns(rec)
        if t is not None and t > slo.tpot_ms * 1e6:
            return False
    return not (slo.e2e_ms is not None and rec.e2e_ns > slo.e2e_ms * 1e6)


def new_registry() -> Registry:
    """A registry with every counter and series of a worker created (zeros show up)."""
    reg = Registry()
    for c in (
        names.REQUESTS,
        names.REQUESTS_OK,
        names.REQUESTS_FAILED,
        names.GOOD,
        names.OUTPUT_TOKENS_TOTAL,
        names.INPUT_TOKENS_TOTAL,
        names.BENCHOP_COUNTED,
        names.NOT_STREAMED,
        names.CONTENT_CHUNKS,
        DELAYED,
    ):
        reg.counter(c)
    for reason in names.FAILURE_REASONS:
        reg.counter(names.failed(reason))
    for s in names.SERIES:
        reg.series(s)
    return reg


def record_into(reg: Registry, rec: RequestRecord) -> None:
    """Account one profiling-phase request in ``reg``.

    Latency and token series take successful requests only; send lag takes
    every request that had a schedule (open loop).
    """
    reg.counter(names.REQUESTS).inc()
    if rec.delayed:
        reg.counter(DELAYED).inc()
    if rec.send_lag_ns is not None:
        reg.series(names.SEND_LAG).record(rec.send_lag_ns)
    if rec.outcome != OK:
        reg.counter(names.REQUESTS_FAILED).inc()
        reason = rec.outcome if rec.outcome in names.FAILURE_REASONS else "other"
        reg.counter(names.failed(reason)).inc()
        return
    reg.counter(names.REQUESTS_OK).inc()
    if rec.good:
        reg.counter(names.GOOD).inc()
    reg.counter(names.OUTPUT_TOKENS_TOTAL).inc(rec.output_tokens)
    reg.counter(names.INPUT_TOKENS_TOTAL).inc(rec.input_tokens)
    if not rec.tokens_from_usage:  # the uncommon cases are counted, the common ones derived
        reg.counter(names.BENCHOP_COUNTED).inc()
    if rec.stream:
        reg.counter(names.CONTENT_CHUNKS).inc(rec.chunks)
    else:
        reg.counter(names.NOT_STREAMED).inc()
    if rec.finish_reason is not None:
        reg.counter(names.finished(rec.finish_reason)).inc()
    if rec.ttft_ns is not None:
        reg.series(names.TTFT).record(rec.ttft_ns)
    if rec.itl_ns:
        reg.series(names.ITL).record_many(rec.itl_ns)
    t = tpot_ns(rec)
    if t is not None:
        reg.series(names.TPOT).record(t)
    reg.series(names.E2E).record(rec.e2e_ns)
    reg.series(names.INPUT_TOKENS).record(rec.input_tokens)
    reg.series(names.OUTPUT_TOKENS).record(rec.output_tokens)


def registry_from(records: Iterable[RequestRecord]) -> Registry:
    """A fresh registry holding exactly ``records`` (the recomputation from records.jsonl)."""
    reg = new_registry()
    for rec in records:
        record_into(reg, rec)
    return reg


def timeline_from(records: Iterable[RequestRecord]) -> list[TimelineRow]:
    """Per-second rows of ``records`` (each in the second it ended), for ``timeseries.csv``."""
    tl = Timeline()
    for rec in records:
        ok = rec.outcome == OK
        tl.add(
            end_ns=rec.sent_ns + rec.e2e_ns,
            ok=ok,
            good=rec.good,
            input_tokens=rec.input_tokens,
            output_tokens=rec.output_tokens,
            ttft_ns=rec.ttft_ns,
            itl_ns=rec.itl_ns,
            e2e_ns=rec.e2e_ns if ok else None,
        )
    return tl.rows()
