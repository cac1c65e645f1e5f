"""The one status writer of BenchmarkRuns and Experiments: read, mutate, diff, conditional patch.

INVARIANT: the operator is the only writer of ``status``; within the operator, a
:class:`StatusWriter` is the only code that patches it, except ``status.metrics`` of an
Experiment, which the rollup refresher owns (its writer here is told to leave that field
alone: ``foreign=("metrics",)``). kopf keeps its bookkeeping in ``benchop.io/*``
annotations and every handler returns None, so kopf writes nothing to status.

A run has one writer for its lifetime; its lock serialises every update of that run, so two
coroutines (a gate callback, the live loop, a pod event) never interleave a read and a write.
An Experiment's reconciler holds the Experiment's lock and makes a writer per reconcile,
seeded with the body it just read. Across processes (an old operator still shutting down, a
user's ``kubectl edit --subresource``, the refresher) the resourceVersion precondition turns
a lost update into a 409, which re-reads and re-applies.

An update is a pure function ``mutate(status) -> new status | None`` (None or equal: nothing
to write, no request); the patch sent is the RFC 7386 difference
(:func:`~benchop.core.lifecycle.merge_diff`), so untouched fields are not sent.

    writer = StatusWriter(api, BENCHMARKRUN, "default", "r1")
    await writer.update(lambda st: {**st, "phase": "Initializing"})
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import kopf

from benchop.core.lifecycle import merge_diff
from benchop.operator.k8s import Body, Conflict, KubeApi, Resource

log = logging.getLogger(__name__)

Mutator = Callable[[dict[str, Any]], dict[str, Any] | None]
MAX_ATTEMPTS = 8
"""Conflicts in a row before an update gives up with ``kopf.TemporaryError``."""


class StatusWriter:
    """Serialised, optimistic-concurrency writer of one object's status (see the module doc).

    ``foreign``: top-level status fields another writer owns; they are written back as read,
    so a patch from here never touches them.
    """

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        namespace: str,
        name: str,
        *,
        foreign: Collection[str] = (),
    ) -> None:
        self.api = api
        self.resource = resource
        self.namespace = namespace
        self.name = name
        self.foreign = tuple(foreign)
        self.patches = 0
        self.conflicts = 0
        self.gone = False
        self._lock = asyncio.Lock()
        self._cached: Body | None = None  # resourceVersion and status of our last write/read

    def seed(self, body: Mapping[str, Any]) -> None:
        """Use ``body`` (e.g. kopf's) as the starting point; a stale one just costs a 409."""
        if self._cached is None:
            self._cached = _kept(body)
            self._cached["status"] = copy.deepcopy(self._cached["status"])

    @property
    def status(self) -> Mapping[str, Any] | None:
        """The last status this writer read or wrote, or None. Read-only: not a copy (the
        run loop reads it every pass; a deep copy there was a fifth of the operator's CPU with
        1,000 runs); :meth:`update` never mutates it in place either."""
        return None if self._cached is None else (self._cached.get("status") or {})

    async def update(self, mutate: Mutator) -> dict[str, Any] | None:
        """Apply ``mutate`` to the current status and write the difference.

        Returns the resulting status, or None if the object no longer exists. Retries on 409
        with a fresh read; gives up with ``kopf.TemporaryError`` after ``MAX_ATTEMPTS``
        conflicts.
        """
        async with self._lock:
            for _ in range(MAX_ATTEMPTS):
                obj = self._cached
                if obj is None or obj["metadata"].get("resourceVersion") is None:
                    obj = await self.api.get(self.resource, self.namespace, self.name)
                    if obj is None:
                        self.gone = True
                        return None
                    obj = self._cached = _kept(obj)
                old = dict(obj.get("status") or {})
                new = mutate(copy.deepcopy(old))
                if new is None:
                    return old
                for key in self.foreign:
                    new.pop(key, None)
                    if key in old:
                        new[key] = old[key]
                if new == old:
                    return old
                patch = merge_diff(old, new)
                rv = str(obj["metadata"]["resourceVersion"])
                try:
                    written = await self.api.patch_status(
                        self.resource, self.namespace, self.name, patch, rv
                    )
                except Conflict:
                    self.conflicts += 1
                    self._cached = None
                    continue
                if written is None:
                    self.gone = True
                    self._cached = None
                    return None
                self.patches += 1
                self._cached = _kept(written)
                return dict(written.get("status") or {})
            raise kopf.TemporaryError(
                f"status of {self.resource.plural} {self.namespace}/{self.name}: "
                f"{MAX_ATTEMPTS} conflicts in a row",
                delay=1.0,
            )


def _kept(obj: Mapping[str, Any]) -> Body:
    """What a writer keeps of an object between updates: its resourceVersion and status, not
    its spec and managedFields (a few KiB per run in progress, 10,000 of them in the bench)."""
    return {
        "metadata": {"resourceVersion": (obj.get("metadata") or {}).get("resourceVersion")},
        "status": dict(obj.get("status") or {}),
    }
