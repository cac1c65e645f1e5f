"""Live and final snapshots of one worker (seed 001's publisher).

A tick task publishes a ``MetricsSnapshot`` at a fixed rate (1 Hz by
default) over a :class:`~benchagent.transport.Publisher`: state ``LIVE``
while running, ``DRAINING`` once no more requests are admitted and the ones in
flight finish (``n_pending`` says how many). :meth:`Snapshots.finish` first
stops the tick task and waits for it, then publishes ``COMPLETE`` with the raw
values (exact percentiles across workers), so COMPLETE is always the last
snapshot on the wire. The final snapshot is also written atomically to
``final.msgpack`` (the wire codec's bytes) and, as a compact JSON summary
under 4 KB (counters, p50/p99 per series, state), to the termination-message
file that Kubernetes reports in the pod status. Publishing and writing are
independent: a failure of one never stops the other.

    snaps = Snapshots(registry, run="r", worker=0, publisher=pub, progress=progress)
    snaps.start()
    ...
    final = await snaps.finish(interrupted=False, results_dir=d, termination_log=p)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchagent.codec import MsgpackCodec
from benchagent.transport import Publisher
from benchagent.wire import MetricsSnapshot, SeriesSummary, SnapshotState, TimelineRow, WorkerAbort
from benchop.atomicio import write_atomic
from benchop.metrics import Registry
from benchop.metrics.stats import summarize

__all__ = ["FINAL", "TERMINATION_LIMIT", "Progress", "Snapshots", "summary"]

log = logging.getLogger(__name__)

FINAL = "final.msgpack"
TERMINATION_LIMIT = 4096  # Kubernetes keeps at most 4096 bytes of a termination message
_FOLD_S = 0.1  # fold buffered values this often between snapshots

Progress = Callable[[], tuple[str, float, int]]
"""Returns (phase, elapsed profiling seconds, requests in flight)."""


class Snapshots:
    """Builds and publishes the snapshots of one worker."""

    def __init__(
        self,
        registry: Registry,
        *,
        run: str,
        worker: int,
        publisher: Publisher | None,
        progress: Progress,
        interval_s: float = 1.0,
        before_snapshot: Callable[[], None] | None = None,
        attempt: int = 0,
        incarnation: str = "",
    ) -> None:
        self._reg = registry
        self._run = run
        self._worker = worker
        self._attempt = attempt
        self._incarnation = incarnation
        self._pub = publisher
        self._progress = progress
        self._interval = interval_s
        self._before = before_snapshot
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self.state: SnapshotState = "LIVE"
        self.published = 0
        #: Set by the worker when it ends the run early; in every snapshot from then on.
        self.abort: WorkerAbort | None = None
        #: Notes for the results (e.g. the preflight's); in every snapshot.
        self.warnings: list[str] = []

    def start(self) -> None:
        """Start the tick task (needs a running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._tick(), name="snapshots")

    async def stop(self) -> None:
        """Stop the tick task and wait until it has stopped."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def build(
        self, state: SnapshotState, *, include_values: bool, interrupted: bool = False
    ) -> MetricsSnapshot:
        """One snapshot of the registry as it is now (folds buffered values)."""
        if self._before is not None:
            self._before()
        self._reg.fold()
        counters, gauges, series = self._reg.snapshot(include_values=include_values)
        return self._assemble(state, counters, gauges, series, interrupted)

    async def _build_live(self) -> MetricsSnapshot:
        """:meth:`build` for the tick task: yields to the event loop between its steps
        (the gauges, each fold step, each series summary), so no step stalls sends and
        reads for long. Counters are read last: a live snapshot may count a few requests
        that its series do not hold yet; final snapshots are built in one go."""
        if self._before is not None:
            self._before()
            await asyncio.sleep(0)
        for _ in self._reg.fold_steps():
            await asyncio.sleep(0)
        series = {}
        for name, s in self._reg.series_items():
            series[name] = s.summary(include_values=False)
            await asyncio.sleep(0)
        counters, gauges = self._reg.scalars()
        return self._assemble(self.state, counters, gauges, series, False)

    def _assemble(
        self,
        state: SnapshotState,
        counters: dict[str, int],
        gauges: dict[str, float],
        series: dict[str, SeriesSummary],
        interrupted: bool,
    ) -> MetricsSnapshot:
        phase, elapsed_s, n_pending = self._progress()
        self._seq += 1
        return MetricsSnapshot(
            run=self._run,
            worker=self._worker,
            seq=self._seq,
            state=state,
            phase=phase,
            time_ns=time.time_ns(),
            elapsed_s=elapsed_s,
            n_pending=n_pending,
            counters=counters,
            gauges=gauges,
            series=series,
            interrupted=interrupted,
            abort=self.abort,
            warnings=list(self.warnings),
            attempt=self._attempt,
            incarnation=self._incarnation,
        )

    def _publish(self, snap: MetricsSnapshot) -> None:
        if self._pub is None:
            return
        try:
            if self._pub.publish(snap):
                self.published += 1
        except Exception:
            log.exception("publishing a %s snapshot failed", snap.state)

    async def _tick(self) -> None:
        """Publish every ``interval_s``; fold the registry every ``_FOLD_S`` in between so
        no single tick stalls the event loop for long (the fold cost grows with values)."""
        loop = asyncio.get_running_loop()
        next_publish = next_t = loop.time()
        while True:
            now = loop.time()
            try:  # one series per loop iteration: sends and reads run in between
                for _ in self._reg.fold_steps():
                    await asyncio.sleep(0)
            except Exception:  # a bad tick must not end the ticking
                log.exception("folding the registry failed")
            if now >= next_publish:
                try:
                    self._publish(await self._build_live())
                except Exception:
                    log.exception("building a live snapshot failed")
                next_publish += self._interval
            next_t = min(next_t + _FOLD_S, next_publish)
            await asyncio.sleep(max(next_t - loop.time(), 0.0))

    async def finish(
        self,
        *,
        interrupted: bool,
        results_dir: str | os.PathLike[str] | None,
        termination_log: str | os.PathLike[str] | None,
        timeline: list[TimelineRow] | None = None,
    ) -> MetricsSnapshot:
        """Stop ticking, then publish COMPLETE (with ``timeline``, the per-second rows of the
        worker's records) and write the final files; return it."""
        await self.stop()
        self.state = "COMPLETE"
        final = self.build("COMPLETE", include_values=True, interrupted=interrupted)
        final.timeline = timeline
        self._publish(final)
        if results_dir is not None:
            data = MsgpackCodec().encode(final)
            try:
                await asyncio.to_thread(write_atomic, Path(results_dir) / FINAL, data)
            except Exception:
                log.exception("writing %s failed", FINAL)
        if termination_log is not None:
            text = json.dumps(summary(final), separators=(",", ":")).encode()
            try:
                await asyncio.to_thread(Path(termination_log).write_bytes, text)
            except Exception:
                log.exception("writing the termination message to %s failed", termination_log)
        return final


def summary(snap: MetricsSnapshot, limit: int = TERMINATION_LIMIT) -> dict[str, Any]:
    """A compact summary of a snapshot whose JSON fits in ``limit`` bytes.

    Non-zero counters, gauges, and count/p50/p99 of each non-empty series (in
    the series' unit), the abort (if any, its message cut to 1000 characters) and up to three
    warnings; parts are dropped (warnings, gauges, series, counters) if too long — the abort
    never is.
    """
    series: dict[str, dict[str, float]] = {}
    for name, s in snap.series.items():
        if s.count:
            st = summarize(s)
            series[name] = {"n": st.count, "p50": round(st.p50, 1), "p99": round(st.p99, 1)}
    out: dict[str, Any] = {
        "run": snap.run,
        "worker": snap.worker,
        "state": snap.state,
        "interrupted": snap.interrupted,
        "phase": snap.phase,
        "elapsed_s": round(snap.elapsed_s, 3),
        "n_pending": snap.n_pending,
        "final": FINAL,
        "counters": {k: v for k, v in snap.counters.items() if v},
        "gauges": {k: round(v, 3) for k, v in snap.gauges.items()},
        "series": series,
    }
    if snap.abort is not None:
        out["abort"] = {"reason": snap.abort.reason, "message": snap.abort.message[:1000]}
    if snap.warnings:
        out["warnings"] = [w[:300] for w in snap.warnings[:3]]
    for key in ("warnings", "gauges", "series", "counters"):
        if len(json.dumps(out, separators=(",", ":"))) <= limit:
            break
        out.pop(key, None)
    return out
