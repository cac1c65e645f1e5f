"""The debounced refresher of Experiment rollups (``status.metrics``).

INVARIANT — one writer per status field: the refresher owns ``status.metrics`` and writes
nothing else; the experiment reconciler (:mod:`benchop.operator.handlers.experiments`) owns the
rest of the Experiment's status and never writes ``metrics``. Both write through ``/status`` with
a resourceVersion precondition, so neither overwrites the other's field with a stale copy: a
write based on an old read is a 409, never a lost update.

How it works:

- ``mark_dirty(namespace, name)`` (from the child BenchmarkRun event handler) adds the pair to a
  coalescing set: a hundred child updates in one interval are one entry.
- A background task calls :meth:`Refresher.flush` every ``interval_s`` (``--refresh-interval``,
  > 0). A flush groups the set by namespace, lists the children of that namespace's dirty
  experiments in one request (label ``benchop.io/experiment in (...)``, chunked), and for each
  experiment reads it, computes :func:`~benchop.core.rollup.rollup` over the children it owns
  (by uid) and merge-patches only ``status.metrics``, conditional on the resourceVersion just
  read. An unchanged rollup (apart from ``refreshedAt``) is not written.
- A 409 or an API failure puts the experiment back into the set (the next flush retries). A
  deleted (404) or deleting experiment is dropped.
- Entries leave the set when their flush *starts* and are put back unless the write finished
  (``finally``): a ``mark_dirty`` during a write is kept for the next flush (that child change
  may be newer than our read), and cancellation mid-flush loses nothing.
- :meth:`Refresher.stop` cancels the loop and flushes once more (retrying conflicts twice).

    refresher = Refresher(api, interval_s=10.0)
    refresher.start()
    refresher.mark_dirty("default", "sweep")
    await refresher.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import kopf

from benchop.api.conditions import now_rfc3339
from benchop.api.models import to_wire
from benchop.core.children import owned_by, parse_created
from benchop.core.lifecycle import merge_diff
from benchop.core.names import EXPERIMENT_LABEL, experiment_label_value
from benchop.core.rollup import DEFAULT_CAP, cached_rollup, rollup, same_rollup
from benchop.core.selectors import experiments_selector
from benchop.operator.k8s import BENCHMARKRUN, EXPERIMENT, ApiError, Body, Conflict, KubeApi

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, experiment name)
LIST_CHUNK = 50
"""Experiments per children list request (bounds the label selector's length)."""
FINAL_FLUSHES = 3
"""Flushes :meth:`Refresher.stop` makes at most (the first plus two retries of conflicts)."""


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Refresher:
    """Coalescing dirty set + background flusher of ``status.metrics`` (see the module doc)."""

    def __init__(
        self,
        api: KubeApi,
        *,
        interval_s: float,
        cap: int = DEFAULT_CAP,
        now: Callable[[], str] = now_rfc3339,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"refresh interval must be > 0, got {interval_s}")
        self.api = api
        self.interval_s = interval_s
        self.cap = cap
        self._now = now
        self._dirty: set[Key] = set()
        self._lock = asyncio.Lock()  # one flush at a time (the loop's and stop()'s)
        self._task: asyncio.Task[None] | None = None
        self.patches = 0
        self.conflicts = 0
        self.failures = 0
        self.flushes = 0

    # ------------------------------------------------------------------ the set

    def mark_dirty(self, namespace: str, name: str) -> None:
        """Schedule a refresh of this experiment's rollup (cheap; coalesced)."""
        self._dirty.add((namespace, name))

    @property
    def pending(self) -> frozenset[Key]:
        """The experiments waiting for a refresh."""
        return frozenset(self._dirty)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the background task (in the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="benchop experiment refresher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the loop alive; the entries were put back by flush()
                log.exception("experiment rollup refresh failed; retrying next interval")

    async def stop(self) -> None:
        """Stop the loop, then flush what is queued (conflicts are retried twice)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _ in range(FINAL_FLUSHES):
            if not self._dirty:
                break
            await self.flush()
        if self._dirty:
            log.warning("experiment rollups not refreshed at shutdown: %s", sorted(self._dirty))

    # ------------------------------------------------------------------ flushing

    async def flush(self) -> None:
        """Refresh every experiment in the set once (see the module doc for the rules)."""
        async with self._lock:
            self.flushes += 1
            by_ns: dict[str, list[str]] = defaultdict(list)
            for namespace, name in sorted(self._dirty):
                by_ns[namespace].append(name)
            for namespace, names in by_ns.items():
                for chunk in _chunks(names, LIST_CHUNK):
                    await self._flush_chunk(namespace, chunk)

    async def _flush_chunk(self, namespace: str, names: Sequence[str]) -> None:
        claimed = {(namespace, name) for name in names}
        done: set[Key] = set()
        # Out of the set before reading: a mark_dirty from now on is a change we may not see.
        self._dirty -= claimed
        try:
            try:
                children = await self.api.list(
                    BENCHMARKRUN, namespace, labels=experiments_selector(names)
                )
            except (kopf.TemporaryError, ApiError) as e:
                self.failures += 1
                log.warning("listing runs of experiments in %s failed: %s", namespace, e)
                return
            by_label: dict[str, list[Body]] = defaultdict(list)
            for child in children:
                labels = (child.get("metadata") or {}).get("labels") or {}
                by_label[str(labels.get(EXPERIMENT_LABEL))].append(child)
            for name in names:
                kids = by_label.get(experiment_label_value(name), [])
                try:
                    finished = await self._refresh_one(namespace, name, kids)
                except (kopf.TemporaryError, ApiError) as e:
                    self.failures += 1
                    log.warning("refreshing experiment %s/%s failed: %s", namespace, name, e)
                    continue
                if finished:
                    done.add((namespace, name))
        finally:
            self._dirty |= claimed - done  # not written (conflict, failure, cancellation)

    async def _refresh_one(self, namespace: str, name: str, children: Sequence[Body]) -> bool:
        """Write one rollup. True when finished (written, unchanged or gone), False on 409."""
        exp = await self.api.get(EXPERIMENT, namespace, name)
        meta: Mapping[str, Any] = (exp or {}).get("metadata") or {}
        if exp is None or meta.get("deletionTimestamp"):
            return True
        uid = str(meta.get("uid") or "")
        spec = exp.get("spec") or {}
        owned = [c for c in children if owned_by(c, uid)]
        new = rollup(
            owned,
            cap=self.cap,
            now=self._now(),
            sweep=spec.get("sweep"),
            search=spec.get("search"),
            created=parse_created(exp),
        )
        old = cached_rollup(exp)
        if old is not None and same_rollup(old, new):
            return True
        blob = (exp.get("status") or {}).get("metrics")
        wire = to_wire(new)
        patch = merge_diff(blob, wire) if isinstance(blob, Mapping) else wire
        try:
            written = await self.api.patch_status(
                EXPERIMENT, namespace, name, {"metrics": patch}, str(meta.get("resourceVersion"))
            )
        except Conflict:
            self.conflicts += 1
            return False
        if written is not None:
            self.patches += 1
        return True
