"""Worker snapshots in the operator: one SUB port, the live view, and final results.

:class:`SnapshotCollector` binds the one :class:`~benchagent.transport.Subscriber` of the
operator (``--snapshot-port``); every worker of every run publishes to it. It keeps, per run and
worker, the latest snapshot and the COMPLETE one. Everything else here is pure:

- :func:`live_status` — the bounded ``status.live`` of a run from its latest snapshots (the run
  loop in ``handlers.runs`` patches it at most once per ``--live-interval``);
- :func:`final_snapshots` — per worker the best source: pub/sub COMPLETE, else the pod's
  termination message (a compact JSON summary: counters and gauges, no raw values), else the
  latest live snapshot (then the results are ``complete: false``); the weakest source used names
  the results' source;
- :func:`verdict` — Succeeded, or the failure reason (``AllRequestsFailed``,
  ``TargetUnreachable``, ``NoRequests``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import zmq

from benchagent.transport import Subscriber
from benchagent.wire import MetricsSnapshot
from benchop.api.models import GpuResults, Results, SloSpec, to_wire
from benchop.metrics import names
from benchop.metrics.stats import merge, summarize
from benchop.operator.settings import SNAPSHOT_MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from benchop.results import build_results, merge_snapshots

log = logging.getLogger(__name__)

Source = Literal["pubsub", "terminationMessage", "live"]
_RANK: dict[Source, int] = {"pubsub": 0, "terminationMessage": 1, "live": 2}
REASONS: dict[Source, str] = {
    "pubsub": "PubSubComplete",
    "terminationMessage": "TerminationMessages",
    "live": "LatestLiveSnapshots",
}
"""``ResultsAvailable`` reason per source."""

RESULTS_MAX_BYTES = 16_384
"""``status.results`` larger than this (as JSON) is trimmed (GPU lists, then latencies)."""


class SnapshotCollector:
    """The operator's SUB socket for worker snapshots (``--snapshot-port``).

    worker PUB ─┐
    worker PUB ─┼──▶ SUB (bound, tcp://<host>:<port>) ──▶ latest / complete per run
    worker PUB ─┘

    Only snapshots of the runs ``accept(run_key)`` admits are kept (the operator passes
    "the run is in progress here": ``run_key in services.runs``); the others — a stray or
    hostile publisher, a late snapshot of a run already released — are counted in
    :attr:`rejected` and dropped, so memory is bounded by the runs in progress. A message
    larger than ``max_message_bytes`` (``--snapshot-max-message-bytes``; a COMPLETE carries
    the raw latencies) is dropped by ZMQ with its sender's connection.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        accept: Callable[[str], bool] | None = None,
        max_message_bytes: int | None = MAX_MESSAGE_BYTES,
    ) -> None:
        self._sub = Subscriber(
            f"tcp://{host}:{port}" if port else f"tcp://{host}:*",
            bind=True,
            accept=accept,
            max_message_bytes=max_message_bytes,
        )
        self.endpoint = self._sub.endpoint

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        accept: Callable[[str], bool] | None = None,
        max_message_bytes: int | None = MAX_MESSAGE_BYTES,
        wait_s: float = 5.0,
    ) -> SnapshotCollector:
        """Bind, retrying while the port is still held (a previous operator closing it)."""

        async def bind() -> SnapshotCollector:
            return cls(host, port, accept=accept, max_message_bytes=max_message_bytes)

        return await retry_bind(bind, wait_s)

    def start(self) -> None:
        self._sub.start()

    def latest(self, run: str) -> dict[int, MetricsSnapshot]:
        return self._sub.latest(run)

    def complete(self, run: str) -> dict[int, MetricsSnapshot]:
        return self._sub.complete(run)

    @property
    def received(self) -> int:
        return self._sub.received

    @property
    def rejected(self) -> int:
        """Snapshots dropped because their run was not accepted."""
        return self._sub.rejected

    def forget(self, run: str) -> None:
        self._sub.forget(run)

    def close(self) -> None:
        self._sub.close()


T = TypeVar("T")


async def retry_bind(bind: Callable[[], Awaitable[T]], wait_s: float) -> T:
    """``await bind()``, retried every 0.1 s for up to ``wait_s`` on EADDRINUSE.

    ZMQ releases a closed socket's port asynchronously (in its I/O thread), so a new operator
    in the same process, or one started right after the old one exited, may briefly find the
    port taken.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        try:
            return await bind()
        except zmq.ZMQError as e:
            if e.errno != errno.EADDRINUSE or loop.time() >= deadline:
                raise
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- live


def _p50_ms(snaps: Sequence[MetricsSnapshot], name: str) -> float | None:
    parts = [s.series[name] for s in snaps if name in s.series and s.series[name].count]
    if not parts:
        return None
    return round(summarize(merge(parts)).p50 / 1e6, 3)


def live_status(
    snaps: Mapping[int, MetricsSnapshot], *, phase: str | None, workers_connected: int, now: str
) -> dict[str, Any]:
    """``status.live`` (camelCase, bounded) from each worker's latest snapshot."""
    items = list(snaps.values())
    counters: dict[str, int] = {}
    for s in items:
        for k, v in s.counters.items():
            counters[k] = counters.get(k, 0) + v
    elapsed = max((s.elapsed_s for s in items), default=0.0)
    ok = counters.get(names.REQUESTS_OK, 0)
    live: dict[str, Any] = {
        "updatedAt": now,
        "workersConnected": workers_connected,
        "requests": counters.get(names.REQUESTS, 0),
        "errors": counters.get(names.REQUESTS_FAILED, 0),
        "rps": round(ok / elapsed, 3) if elapsed > 0 else 0.0,
        "outputTokPerS": (
            round(counters.get(names.OUTPUT_TOKENS_TOTAL, 0) / elapsed, 3) if elapsed > 0 else 0.0
        ),
        "inFlight": sum(s.n_pending for s in items),
    }
    if phase:
        live["phase"] = phase
    for key, series in (("ttftP50Ms", names.TTFT), ("itlP50Ms", names.ITL)):
        p50 = _p50_ms(items, series)
        if p50 is not None:
            live[key] = p50
    return live


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
    workers: int,
    complete: Mapping[int, MetricsSnapshot],
    termination: Mapping[int, MetricsSnapshot],
    latest: Mapping[int, MetricsSnapshot],
) -> Final | None:
    """Per worker: pub/sub COMPLETE, else termination message, else latest live; None if none."""
    chosen: list[MetricsSnapshot] = []
    worst: Source = "pubsub"
    missing = []
    for w in range(workers):
        snap: MetricsSnapshot | None
        src: Source
        if w in complete:
            snap, src = complete[w], "pubsub"
        elif w in termination:
            snap, src = termination[w], "terminationMessage"
        elif w in latest:
            snap, src = latest[w], "live"
        else:
            missing.append(w)
            continue
        chosen.append(snap)
        if _RANK[src] > _RANK[worst]:
            worst = src
    if not chosen:
        return None
    if missing:
        worst = "live"
    return Final(chosen, worst, missing)


def build_final_results(
    final: Final, *, slo: SloSpec | None, gpu: GpuResults | None
) -> dict[str, Any]:
    """``status.results`` (camelCase) from the chosen snapshots; bounded in size."""
    merged = merge_snapshots(final.snapshots)
    results: Results = build_results(merged, slo=slo, source=final.source, gpu=gpu)
    if final.source == "live" or final.missing:
        results = results.model_copy(update={"complete": False})
    doc = to_wire(results)
    return bound_results(doc)


def bound_results(doc: dict[str, Any], limit: int = RESULTS_MAX_BYTES) -> dict[str, Any]:
    """Trim a results dict until its JSON is at most ``limit`` bytes (agent lists, reasons)."""

    def size() -> int:
        return len(json.dumps(doc, separators=(",", ":")))

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
    if size() > limit:
        by_reason = doc.get("requests", {}).get("byReason")
        if by_reason:
            doc["requests"]["byReason"] = dict(sorted(by_reason.items(), key=lambda kv: -kv[1])[:8])
    return doc


def verdict(results: Mapping[str, Any]) -> tuple[bool, str, str]:
    """(succeeded, reason, message) of final results.

    No successful request: ``TargetUnreachable`` when connection errors and timeouts make up
    most failures, else ``AllRequestsFailed``; no request at all: ``NoRequests``.
    """
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


def output_tokens(final: Final) -> int:
    """Output tokens of the profiling phase over the chosen snapshots (for J per token)."""
    return sum(s.counters.get(names.OUTPUT_TOKENS_TOTAL, 0) for s in final.snapshots)
