"""The one writer of a BenchmarkRun's ``.status``: serialised read-modify-write via /status.

INVARIANT: the operator is the only writer of ``status``; within the operator,
:class:`StatusWriter` is the only code that patches it (kopf is told to keep its bookkeeping in
``benchop.io/*`` annotations, and every handler returns None so kopf writes nothing to status).
There is one StatusWriter per run, and its lock serialises every update of that run, so two
coroutines (a gate callback, the live loop, a pod event) never interleave a read and a write.
Across processes (an old operator still shutting down, a user's ``kubectl edit --subresource``)
the resourceVersion precondition turns a lost update into a 409, which re-reads and re-applies.

An update is a pure function ``mutate(status) -> new status | None`` (None or equal: nothing to
write, no request); the patch sent is the RFC 7386 difference, so untouched fields are not sent.

    writer = StatusWriter(api, "default", "r1")
    await writer.update(lambda st: {**st, "phase": "Initializing"})
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kopf

from benchop.api.conditions import set_condition
from benchop.operator.k8s import BENCHMARKRUN, Body, Conflict, KubeApi

log = logging.getLogger(__name__)

Mutator = Callable[[dict[str, Any]], dict[str, Any] | None]
MAX_ATTEMPTS = 8


def merge_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new`` (removed keys -> None).

    >>> merge_diff({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 2}, "e": 4})
    {'a': None, 'b': {'d': None}, 'e': 4}
    """
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_diff(before, value)
            if sub:
                patch[key] = sub
        elif key not in old or before != value:
            patch[key] = copy.deepcopy(value)
    return dict(sorted(patch.items()))


def with_conditions(
    status: Mapping[str, Any],
    updates: Sequence[tuple[str, str, str, str]],  # (type, status, reason, message)
    generation: int | None,
) -> dict[str, Any]:
    """``status`` with each ``(type, status, reason, message)`` applied via ``set_condition``."""
    conds = list(status.get("conditions") or [])
    for type_, cstatus, reason, message in updates:
        conds = set_condition(
            conds,
            type=type_,
            status=cstatus,  # type: ignore[arg-type]
            reason=reason,
            message=message,
            observed_generation=generation,
        )
    return {**status, "conditions": conds}


class StatusWriter:
    """Serialised, optimistic-concurrency writer of one run's status (see the module doc)."""

    def __init__(self, api: KubeApi, namespace: str, name: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.patches = 0
        self.conflicts = 0
        self.gone = False
        self._lock = asyncio.Lock()
        self._cached: Body | None = None  # the object as our last write/read returned it

    def seed(self, body: Mapping[str, Any]) -> None:
        """Use ``body`` (e.g. kopf's) as the starting point; a stale one just costs a 409."""
        if self._cached is None:
            self._cached = {
                "metadata": {"resourceVersion": body["metadata"].get("resourceVersion")},
                "status": copy.deepcopy(dict(body.get("status") or {})),
            }

    @property
    def status(self) -> dict[str, Any] | None:
        """The last status this writer read or wrote (a copy), or None."""
        return None if self._cached is None else copy.deepcopy(self._cached.get("status") or {})

    async def update(self, mutate: Mutator) -> dict[str, Any] | None:
        """Apply ``mutate`` to the current status and write the difference.

        Returns the resulting status, or None if the run no longer exists. Retries on 409 with
        a fresh read; gives up with ``kopf.TemporaryError`` after ``MAX_ATTEMPTS`` conflicts.
        """
        async with self._lock:
            for _ in range(MAX_ATTEMPTS):
                obj = self._cached
                if obj is None or obj["metadata"].get("resourceVersion") is None:
                    obj = await self.api.get(BENCHMARKRUN, self.namespace, self.name)
                    if obj is None:
                        self.gone = True
                        return None
                    self._cached = obj
                old = dict(obj.get("status") or {})
                new = mutate(copy.deepcopy(old))
                if new is None or new == old:
                    return old
                patch = merge_diff(old, new)
                rv = str(obj["metadata"]["resourceVersion"])
                try:
                    written = await self.api.patch_status(
                        BENCHMARKRUN, self.namespace, self.name, patch, rv
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
                self._cached = written
                return dict(written.get("status") or {})
            raise kopf.TemporaryError(
                f"status of {self.namespace}/{self.name}: {MAX_ATTEMPTS} conflicts in a row",
                delay=1.0,
            )
