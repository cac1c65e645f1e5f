"""Warning events on a BenchmarkRun (``kubectl describe br`` lists them), posted with the
operator's own client: a run's passes run in the scheduler, outside kopf's handlers, where
``kopf.warn`` has no event queue."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import kopf

from benchop.core.names import API_VERSION, BENCHMARKRUN_KIND
from benchop.operator.k8s import ApiError, Body, KubeApi, Resource

log = logging.getLogger(__name__)

EVENT = Resource("", "v1", "events")
COMPONENT = "benchop-operator"
MAX_MESSAGE = 1024
"""The longest message posted (longer ones keep their start and end)."""


def warning_event(
    namespace: str, name: str, uid: str, reason: str, message: str, *, now: datetime
) -> Body:
    """A core/v1 Warning Event about the BenchmarkRun ``namespace/name`` (uid ``uid``)."""
    if len(message) > MAX_MESSAGE:
        half = (MAX_MESSAGE - 3) // 2
        message = f"{message[:half]}...{message[-half:]}"
    stamp = now.isoformat()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": namespace, "generateName": f"{name[:200]}."},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": BENCHMARKRUN_KIND,
            "namespace": namespace,
            "name": name,
            "uid": uid,
        },
        "type": "Warning",
        "reason": reason,
        "message": message,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "action": "Reconcile",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def warn_run(
    api: KubeApi, namespace: str, name: str, uid: str, reason: str, message: str
) -> None:
    """Post the Warning; an API error is logged, never raised (the status says it too)."""
    body = warning_event(namespace, name, uid, reason, message, now=datetime.now(UTC))
    try:
        await api.create_only(EVENT, namespace, body)
    except (ApiError, kopf.TemporaryError) as e:
        log.warning("run %s/%s: could not post the %s event: %s", namespace, name, reason, e)
