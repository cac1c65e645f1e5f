"""Resuming a worker in a new pod: what the coordinator answers, and what a base means.

A worker index may run in several pods over a run (a deleted pod, a lost node: the Job
controller starts a replacement with an empty results directory). Every snapshot a worker
publishes is *cumulative*: it includes what the earlier pods of its index recorded. So the
last COMPLETE snapshot of an index is always the whole of what that index did, and the final
results take it as they always did — nothing is merged twice, nothing left out.

At start (before it publishes anything), a worker asks the coordinator for its *base*
(``ResumeRequest`` on the gate socket). :func:`decide` is the coordinator's rule:

- ``wait`` while an earlier pod of the index may still be running — its latest snapshot is
  not COMPLETE and arrived less than ``silence_s`` ago (a pod being deleted drains its
  requests in flight and then publishes an interrupted COMPLETE; a pod on a lost node may run
  its whole share) — and, after an operator restart, for ``silence_s`` while nothing of the
  index has arrived yet;
- else ``ready`` with the last COMPLETE snapshot of the index (None: nothing to resume).

:func:`point` is the worker's side: which phases the base passed and how far profiling got.
A pod killed without its final snapshot (SIGKILL of the whole pod, a node that never comes
back) leaves no COMPLETE: what it did since the last one is not in the results.

>>> decide("uid-b", latest=None, latest_age_s=None, complete=None, silence_s=10.0)
('ready', None)
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Literal

from benchagent.wire import MetricsSnapshot
from benchop.metrics import names

__all__ = ["SILENCE_S", "ResumePoint", "decide", "indices", "point"]

SILENCE_S = 10.0
"""An earlier pod of an index counts as gone when no snapshot of it arrived for this long
(workers publish every second, also while they drain)."""

_PROFILED = ("profiling", "done")


def decide(
    incarnation: str,
    *,
    latest: MetricsSnapshot | None,
    latest_age_s: float | None,
    complete: MetricsSnapshot | None,
    silence_s: float = SILENCE_S,
    listening_s: float | None = None,
) -> tuple[Literal["ready", "wait"], MetricsSnapshot | None]:
    """The coordinator's answer to a ``ResumeRequest`` of ``incarnation`` for one index.

    ``latest``/``latest_age_s``: the index's latest snapshot and how long ago it arrived;
    ``complete``: its last COMPLETE; ``listening_s``: how long the coordinator has been
    receiving snapshots of this run when it took the run over from an earlier operator
    (None: it has seen the run from its start).
    """
    if latest is None:
        if listening_s is not None and listening_s < silence_s:
            return "wait", None  # an earlier pod may still publish its COMPLETE
        return "ready", complete
    earlier = latest.incarnation != incarnation
    running = latest.state != "COMPLETE" and (latest_age_s or 0.0) < silence_s
    if earlier and running:
        return "wait", None
    return "ready", complete


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a worker whose index has a base goes on."""

    warmup_done: bool  # warmup need not run again
    start_passed: bool  # the START gate was passed: profiling goes on
    requests: int  # profiling requests the base recorded (the dataset position, the count)
    elapsed_s: float  # profiling time the base spent (counts against a duration)
    attempt: int  # the base's attempt: the next one is attempt + 1


NONE = ResumePoint(warmup_done=False, start_passed=False, requests=0, elapsed_s=0.0, attempt=0)


def point(base: MetricsSnapshot | None) -> ResumePoint:
    """The resume point of a base snapshot (None or one before profiling: start afresh,
    skipping only a warmup that was finished).

    >>> point(None).start_passed
    False
    """
    if base is None:
        return NONE
    started = base.phase in _PROFILED
    return ResumePoint(
        warmup_done=started or base.phase == "gate",
        start_passed=started,
        requests=base.counters.get(names.REQUESTS, 0) if started else 0,
        elapsed_s=base.elapsed_s if started else 0.0,
        attempt=base.attempt,
    )


def indices(done_below: int, done: Collection[int]) -> Iterator[int]:
    """The profiling request indices a worker sends, in order: every index from ``done_below``
    (the base's requests are ``0 .. done_below - 1``) that is not in ``done`` (the records of
    its checkpoint). A request that was in flight when an attempt died is sent again with the
    same index (and so the same ``x-benchop-request-id``); a fresh worker sends 0, 1, 2, ...

    >>> import itertools
    >>> list(itertools.islice(indices(2, {3, 5}), 4))
    [2, 4, 6, 7]
    """
    i = done_below
    while True:
        if i not in done:
            yield i
        i += 1
