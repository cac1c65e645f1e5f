"""Final results of a run: choose each worker's snapshot, merge them, build ``status.results``.

The operator and local mode call the same functions on what they collected:

- :func:`final_snapshots` picks, per worker, the strongest source that has a snapshot
  (the operator: pub/sub COMPLETE, else the pod's termination message — a compact summary,
  :func:`parse_termination_message` — else the latest live snapshot; local mode: pub/sub
  COMPLETE, else the worker's results file, else the latest live snapshot). The weakest
  source used names the results' source; a worker with no snapshot at all makes the results
  ``complete: false`` (source ``live``), so a missing worker is never hidden;
- :func:`build_final_results` merges them and builds the bounded ``status.results``;
- :func:`verdict`: Succeeded, or why not (``AllRequestsFailed``, ``TargetUnreachable``,
  ``NoRequests``, or the reason a worker ended the run early: :func:`first_abort`).

Underneath, two functions:

- ``merge_snapshots`` is exact: counters add up, series merge with
  ``benchop.metrics.stats.merge`` (percentiles equal numpy over every worker's
  values when every snapshot carries them), gauges take the maximum (every
  gauge is a worst-of measure: client CPU %, receive lag), the elapsed time is
  the longest worker's (workers start profiling together at the gate), and the
  merge is complete only when every worker is COMPLETE and none was interrupted.
- ``build_results`` turns merged metrics into the ``Results`` status model.
  Definitions:
  * requests: total, ok, failed from the counters; ``byReason`` holds the
    non-zero ``failed_<reason>`` counters by reason;
  * throughput: ok requests, output and input tokens per second of elapsed time;
  * latencies: ``Stats`` of each series with nanoseconds divided by 1e6 (ms): p50, p90,
    p95, p99 and, in ``percentiles``, the others ``spec.report.percentiles`` asks for;
  * tokens: where the token counts came from (``usage`` when every ok request's counts are
    the server's usage; ``tokenizer`` or ``estimate`` when none are: benchop counted the
    answer with the tokenizer, or its content chunks, and the prompt with the tokenizer or
    its words; ``mixed``), the tokenizer benchop used, if any, and ``tokensPerChunk``
    (streamed, all usage-counted): above 1 the server sends several tokens per chunk;
  * goodput (only when an SLO is given): ``ratio`` is the share of *all*
    profiling requests that succeeded and met every SLO (``requests_good /
    requests_total``), ``rps`` is ``requests_good`` per second;
  * client saturated: client CPU above 80 %, or receive- or send-lag p99 (the
    open loop's actual minus scheduled send time) above 10 % of the TTFT p50 —
    a saturated client under-reports the server;
  * request: how the requests were made (from the spec: :class:`RequestInfo`):
    streaming, endpoints, insecure TLS; ``finishReasons`` of the ok requests; the workers'
    warnings;
  * gpu: none when no request succeeded — a run that served nothing has no energy per token
    and no utilisation to show.

>>> final = final_snapshots(2, [("pubsub", complete), ("live", latest)])  # doctest: +SKIP
>>> results = build_final_results(final, slo=spec.slo, gpu=None)          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from benchagent.wire import MetricsSnapshot, SeriesSummary, WorkerAbort
from benchop.api.models import (
    BenchmarkRunSpec,
    ClientStats,
    Goodput,
    GpuResults,
    LatencyStats,
    RequestCounts,
    RequestResults,
    Results,
    SloSpec,
    Throughput,
    TokenCounting,
    to_wire,
)
from benchop.api.workload import ReportSpec, TokenizerSpec
from benchop.metrics import names
from benchop.metrics.stats import Stats, merge, summarize

log = logging.getLogger(__name__)

Source = Literal["pubsub", "terminationMessage", "local", "live"]
"""Where a worker's final snapshot came from: its COMPLETE over pub/sub, its pod's
termination message, its results file (local mode) or its latest live snapshot."""
REASONS: dict[Source, str] = {
    "pubsub": "PubSubComplete",
    "terminationMessage": "TerminationMessages",
    "local": "ResultsFiles",
    "live": "LatestLiveSnapshots",
}
"""``ResultsAvailable`` reason per source."""

TARGET_UNREACHABLE = "TargetUnreachable"
"""No connection to the target (preflight), or most requests failed to connect (verdict)."""
MODEL_NOT_FOUND = "ModelNotFound"
"""The target does not list ``spec.target.model`` (preflight)."""
TARGET_ERROR = "TargetError"
"""The target answered the preflight's checks with an error."""
SECRET_ERROR = "SecretError"
"""A Secret the spec references is missing or unusable (not PEM, a line break in a header)."""
FAILURE_RATIO_EXCEEDED = "FailureRatioExceeded"
"""More than ``load.maxFailureRatio`` of a worker's last ``load.failureWindow`` requests failed."""

RESULTS_MAX_BYTES = 16_384
"""``status.results`` larger than this (as JSON) is trimmed (GPU lists, then latencies)."""

CPU_SATURATED_PCT = 80.0
"""Client CPU % above which the load generator counts as saturated."""
RECV_LAG_SHARE = 0.10
"""Receive- or send-lag p99 above this share of the TTFT p50 means the client is saturated."""
NS_PER_MS = 1e6


@dataclass(frozen=True, slots=True)
class MergedMetrics:
    """The metrics of every worker of one run, merged exactly."""

    run: str
    workers: int
    counters: dict[str, int]
    gauges: dict[str, float]
    series: dict[str, SeriesSummary]
    elapsed_s: float
    complete: bool  # every worker COMPLETE and none interrupted
    interrupted: bool  # some worker was stopped by a signal
    n_pending: int  # requests still in flight, summed over workers
    abort: tuple[int, WorkerAbort] | None = None  # the lowest worker that ended the run early
    warnings: tuple[str, ...] = ()  # every worker's, each once


def merge_snapshots(snaps: Sequence[MetricsSnapshot]) -> MergedMetrics:
    """Merge one snapshot per worker (raises ValueError on none, duplicates or mixed runs)."""
    if not snaps:
        raise ValueError("no snapshots to merge")
    runs = {s.run for s in snaps}
    if len(runs) != 1:
        raise ValueError(f"snapshots of different runs: {sorted(runs)}")
    workers = [s.worker for s in snaps]
    if len(set(workers)) != len(workers):
        raise ValueError(f"more than one snapshot per worker: {sorted(workers)}")

    counters: dict[str, int] = {}
    gauges: dict[str, float] = {}
    parts: dict[str, list[SeriesSummary]] = {}
    for s in snaps:
        for name, n in s.counters.items():
            counters[name] = counters.get(name, 0) + n
        for name, x in s.gauges.items():
            gauges[name] = max(gauges.get(name, x), x)
        for name, summary in s.series.items():
            parts.setdefault(name, []).append(summary)
    interrupted = any(s.interrupted for s in snaps)
    warnings = tuple(
        dict.fromkeys(w for s in sorted(snaps, key=lambda s: s.worker) for w in s.warnings)
    )
    return MergedMetrics(
        run=snaps[0].run,
        workers=len(snaps),
        counters=counters,
        gauges=gauges,
        series={name: merge(p) for name, p in parts.items()},
        elapsed_s=max(s.elapsed_s for s in snaps),
        complete=all(s.state == "COMPLETE" for s in snaps) and not interrupted,
        interrupted=interrupted,
        n_pending=sum(s.n_pending for s in snaps),
        abort=first_abort([{s.worker: s for s in snaps}]),
        warnings=warnings,
    )


def first_abort(
    sources: Sequence[Mapping[int, MetricsSnapshot]],
) -> tuple[int, WorkerAbort] | None:
    """The abort of the lowest worker index that reported one in any source (its snapshots
    by worker, e.g. pub/sub COMPLETE, termination messages, latest live), else None."""
    found: dict[int, WorkerAbort] = {}
    for snaps in sources:
        for w, snap in snaps.items():
            if snap.abort is not None:
                found.setdefault(w, snap.abort)
    if not found:
        return None
    w = min(found)
    return w, found[w]


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the results say of the requests that comes from the spec, not the workers."""

    stream: bool = True
    endpoints: int = 1
    insecure_skip_verify: bool = False

    @classmethod
    def of(cls, spec: BenchmarkRunSpec) -> RequestInfo:
        tls = spec.target.tls
        return cls(
            stream=spec.request.stream,
            endpoints=max(len(spec.target.endpoints), 1),
            insecure_skip_verify=bool(tls is not None and tls.insecure_skip_verify),
        )


def _request_results(merged: MergedMetrics, info: RequestInfo) -> RequestResults:
    c = merged.counters
    finish = {
        name.removeprefix(names.FINISH_PREFIX): n
        for name, n in sorted(c.items())
        if name.startswith(names.FINISH_PREFIX) and n > 0
    }
    return RequestResults(
        stream=info.stream,
        finish_reasons=finish,
        endpoints=info.endpoints,
        insecure_skip_verify=info.insecure_skip_verify,
        warnings=list(merged.warnings),
    )


def _latency_ms(
    merged: MergedMetrics, name: str, percentiles: Sequence[float] = ()
) -> LatencyStats | None:
    summary = merged.series.get(name)
    if summary is None or summary.count == 0:
        return None
    s: Stats = summarize(summary, percentiles)
    extra = {k: v / NS_PER_MS for k, v in s.percentiles().items()}
    for key in ("p50", "p90", "p95", "p99"):
        del extra[key]
    return LatencyStats(
        count=s.count,
        mean=s.mean / NS_PER_MS,
        std=s.std / NS_PER_MS,
        min=s.min / NS_PER_MS,
        max=s.max / NS_PER_MS,
        p50=s.p50 / NS_PER_MS,
        p90=s.p90 / NS_PER_MS,
        p95=s.p95 / NS_PER_MS,
        p99=s.p99 / NS_PER_MS,
        percentiles=extra or None,
    )


def _tokens(counters: Mapping[str, int], tokenizer: TokenizerSpec | None) -> TokenCounting | None:
    ok = counters.get(names.REQUESTS_OK, 0)
    if ok == 0:
        return None
    usage = max(ok - counters.get(names.BENCHOP_COUNTED, 0), 0)
    fallback: Literal["tokenizer", "estimate"] = "estimate" if tokenizer is None else "tokenizer"
    source: Literal["usage", "tokenizer", "estimate", "mixed"] = (
        "usage" if usage == ok else fallback if usage == 0 else "mixed"
    )
    chunks = counters.get(names.CONTENT_CHUNKS, 0)
    per_chunk = None
    if source == "usage" and chunks and not counters.get(names.NOT_STREAMED, 0):
        per_chunk = round(counters.get(names.OUTPUT_TOKENS_TOTAL, 0) / chunks, 3)
    return TokenCounting(
        source=source,
        tokenizer=None if tokenizer is None else tokenizer.display_name,
        from_usage=usage,
        tokens_per_chunk=per_chunk,
    )


def _client(
    counters: Mapping[str, int],
    gauges: dict[str, float],
    ttft: LatencyStats | None,
    send_lag: LatencyStats | None,
) -> ClientStats:
    cpu = gauges.get(names.CLIENT_CPU)
    lag = gauges.get(names.RECV_LAG_P99)
    send = send_lag.p99 if send_lag is not None else None
    reasons = []
    if cpu is not None and cpu > CPU_SATURATED_PCT:
        reasons.append(f"client CPU {cpu:.0f}% > {CPU_SATURATED_PCT:.0f}%")
    for what, value in (("receive", lag), ("send", send)):
        if value is not None and ttft is not None and value > RECV_LAG_SHARE * ttft.p50:
            reasons.append(
                f"{what} lag p99 {value:.3g} ms > {RECV_LAG_SHARE:.0%} of TTFT p50 "
                f"{ttft.p50:.3g} ms"
            )
    return ClientStats(
        cpu_pct=cpu,
        connect_attempts=counters.get(names.CONNECT_ATTEMPTS),
        connect_failures=counters.get(names.CONNECT_FAILURES),
        recv_lag_p99_ms=lag,
        send_lag_p99_ms=send,
        saturated=bool(reasons),
        reason="; ".join(reasons) or None,
    )


def build_results(
    merged: MergedMetrics,
    *,
    slo: SloSpec | None,
    source: Source,
    gpu: GpuResults | None = None,
    request: RequestInfo | None = None,
    report: ReportSpec | None = None,
    tokenizer: TokenizerSpec | None = None,
) -> Results:
    """The ``status.results`` of a run from its merged metrics (definitions: module doc).

    ``report.percentiles`` beyond p50/p90/p95/p99 go into each latency's ``percentiles``;
    ``tokenizer`` is the spec's (``results.tokens`` names it).
    """
    qs = report.percentiles if report is not None else ()
    c = merged.counters
    ok = c.get(names.REQUESTS_OK, 0)
    failed = c.get(names.REQUESTS_FAILED, 0)
    total = c.get(names.REQUESTS, ok + failed)
    good = c.get(names.GOOD, 0)
    elapsed = merged.elapsed_s

    def per_s(n: int) -> float:
        return n / elapsed if elapsed > 0 else 0.0

    by_reason = {
        name.removeprefix(names.FAILED_PREFIX): n
        for name, n in sorted(c.items())
        if name.startswith(names.FAILED_PREFIX) and n > 0
    }
    ttft = _latency_ms(merged, names.TTFT, qs)
    return Results(
        complete=merged.complete,
        source=source,
        duration_s=elapsed,
        workers=merged.workers,
        requests=RequestCounts(total=total, ok=ok, failed=failed, by_reason=by_reason),
        throughput=Throughput(
            rps=per_s(ok),
            output_tok_per_s=per_s(c.get(names.OUTPUT_TOKENS_TOTAL, 0)),
            input_tok_per_s=per_s(c.get(names.INPUT_TOKENS_TOTAL, 0)),
        ),
        ttft_ms=ttft,
        itl_ms=_latency_ms(merged, names.ITL, qs),
        tpot_ms=_latency_ms(merged, names.TPOT, qs),
        e2e_ms=_latency_ms(merged, names.E2E, qs),
        goodput=(
            None
            if slo is None
            else Goodput(ratio=good / total if total else 0.0, rps=per_s(good), slo=slo)
        ),
        gpu=gpu if ok > 0 else None,  # nothing served: no window numbers as if it had
        client=_client(c, merged.gauges, ttft, _latency_ms(merged, names.SEND_LAG)),
        request=_request_results(merged, request or RequestInfo()),
        tokens=_tokens(c, tokenizer),
    )


# --------------------------------------------------------------------------- final results


def parse_termination_message(text: str | None, run: str) -> MetricsSnapshot | None:
    """The worker's compact termination summary as a snapshot (counters, gauges; no series)."""
    if not text:
        return None
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("run") != run:
            return None
        return MetricsSnapshot(
            run=run,
            worker=int(doc["worker"]),
            seq=0,
            state=doc.get("state", "COMPLETE"),
            phase=str(doc.get("phase", "done")),
            time_ns=0,
            elapsed_s=float(doc.get("elapsed_s", 0.0)),
            n_pending=int(doc.get("n_pending", 0)),
            counters={str(k): int(v) for k, v in (doc.get("counters") or {}).items()},
            gauges={str(k): float(v) for k, v in (doc.get("gauges") or {}).items()},
            series={},
            interrupted=bool(doc.get("interrupted", False)),
            abort=(
                WorkerAbort(reason=str(abort["reason"]), message=str(abort["message"]))
                if isinstance(abort := doc.get("abort"), dict)
                else None
            ),
            warnings=[str(w) for w in doc.get("warnings") or []],
        )
    except (ValueError, TypeError, KeyError) as e:
        log.debug("unreadable termination message of %s: %s", run, e)
        return None


@dataclass(frozen=True, slots=True)
class Final:
    """The snapshots chosen for the final results and where they came from."""

    snapshots: list[MetricsSnapshot]
    source: Source
    missing: list[int]  # workers with no snapshot at all


def final_snapshots(
    workers: int, sources: Sequence[tuple[Source, Mapping[int, MetricsSnapshot]]]
) -> Final | None:
    """Per worker index below ``workers``, the snapshot of the first source (strongest first)
    that has one; None when no worker has any.

    The results' source is the weakest one used, and ``live`` when a worker has none.

    >>> final_snapshots(2, [("pubsub", {0: a}), ("live", {0: a0, 1: b})]).source  # doctest: +SKIP
    'live'
    """
    chosen: list[MetricsSnapshot] = []
    weakest = 0
    missing = []
    for w in range(workers):
        for rank, (_, snaps) in enumerate(sources):
            if w in snaps:
                chosen.append(snaps[w])
                weakest = max(weakest, rank)
                break
        else:
            missing.append(w)
    if not chosen:
        return None
    source: Source = "live" if missing else sources[weakest][0]
    return Final(chosen, source, missing)


def build_final_results(
    final: Final,
    *,
    slo: SloSpec | None,
    gpu: GpuResults | None,
    request: RequestInfo | None = None,
    report: ReportSpec | None = None,
    tokenizer: TokenizerSpec | None = None,
) -> dict[str, Any]:
    """``status.results`` (camelCase) from the chosen snapshots; bounded in size.

    Incomplete (``complete: false``) when a worker is missing or a snapshot is live.
    ``report`` and ``tokenizer`` are the spec's (``spec.report``, ``spec.workload.tokenizer``).
    """
    return build_final(
        final, slo=slo, gpu=gpu, request=request, report=report, tokenizer=tokenizer
    )[0]


def build_final(
    final: Final,
    *,
    slo: SloSpec | None,
    gpu: GpuResults | None,
    request: RequestInfo | None = None,
    report: ReportSpec | None = None,
    tokenizer: TokenizerSpec | None = None,
) -> tuple[dict[str, Any], MergedMetrics]:
    """:func:`build_final_results` and the merged metrics it came from (for the bundle)."""
    merged = merge_snapshots(final.snapshots)
    results: Results = build_results(
        merged,
        slo=slo,
        source=final.source,
        gpu=gpu,
        request=request,
        report=report,
        tokenizer=tokenizer,
    )
    if final.source == "live" or final.missing:
        results = results.model_copy(update={"complete": False})
    doc = to_wire(results)
    return bound_results(doc), merged


def bound_results(doc: dict[str, Any], limit: int = RESULTS_MAX_BYTES) -> dict[str, Any]:
    """Trim a results dict until its JSON is at most ``limit`` bytes (extra percentiles, agent
    lists, reasons)."""

    def size() -> int:
        return len(json.dumps(doc, separators=(",", ":")))

    if size() > limit:  # the full results keep them; p50/p90/p95/p99 stay
        for key in ("ttftMs", "itlMs", "tpotMs", "e2eMs"):
            if isinstance(doc.get(key), dict):
                doc[key].pop("percentiles", None)

    gpu = doc.get("gpu") or {}
    prom = gpu.get("prometheus")
    if size() > limit and isinstance(prom, dict) and prom.get("gpus"):
        # per-GPU MetricValues first: the summary and the cross-check are what results need
        shown = len(prom["gpus"])
        prom["gpus"] = {}
        prom["truncated"] = f"per-GPU values of {shown} GPUs left out (results size bound)"
    for key in ("agents", "missingAgents", "prometheus"):
        if size() <= limit:
            break
        gpu.pop(key, None)
    warnings = (doc.get("request") or {}).get("warnings")
    if size() > limit and warnings:
        doc["request"]["warnings"] = [w[:200] for w in warnings[:3]]
    if size() > limit:
        by_reason = doc.get("requests", {}).get("byReason")
        if by_reason:
            doc["requests"]["byReason"] = dict(sorted(by_reason.items(), key=lambda kv: -kv[1])[:8])
    return doc


def verdict(
    results: Mapping[str, Any], abort: tuple[int, WorkerAbort] | None = None
) -> tuple[bool, str, str]:
    """(succeeded, reason, message) of final results.

    A worker that ended the run early (``abort``, :func:`first_abort`) gives its reason and
    message. No successful request: ``TargetUnreachable`` when connection errors and timeouts
    make up most failures, else ``AllRequestsFailed``; no request at all: ``NoRequests``.
    """
    if abort is not None:
        return False, abort[1].reason, abort_message(*abort)
    req = results.get("requests") or {}
    total, ok, failed = req.get("total", 0), req.get("ok", 0), req.get("failed", 0)
    if ok > 0:
        return True, "Completed", f"{ok} of {total} requests succeeded"
    if total == 0:
        return False, "NoRequests", "no request was made in the profiling phase"
    by_reason: dict[str, int] = req.get("byReason") or {}
    unreachable = by_reason.get("connection", 0) + by_reason.get("timeout", 0)
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items())) or "no reasons"
    if unreachable * 2 > failed:
        return False, "TargetUnreachable", f"all {total} requests failed ({detail})"
    return False, "AllRequestsFailed", f"all {total} requests failed ({detail})"


def abort_message(worker: int, abort: WorkerAbort) -> str:
    """The Succeeded condition's message for a run a worker ended early."""
    return f"worker {worker}: {abort.message}"


def output_tokens(final: Final) -> int:
    """Output tokens of the profiling phase over the chosen snapshots (for J per token)."""
    return sum(s.counters.get(names.OUTPUT_TOKENS_TOTAL, 0) for s in final.snapshots)
