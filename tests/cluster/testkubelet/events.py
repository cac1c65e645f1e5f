"""core/v1 Events about pods, as the kubelet records them (source component ``kubelet``).

A repeat of the same (object, reason, message) PATCHes the count of the Event already written,
as client-go's event correlator does, instead of creating another one. Failures to record are
logged and otherwise ignored: events are best effort in the kubelet too.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from .api import Api, ApiError
from .status import now_iso

log = logging.getLogger(__name__)


def container_field_path(pod: dict[str, Any], container: str) -> str:
    """``spec.containers{name}`` or ``spec.initContainers{name}``."""
    for c in pod["spec"].get("initContainers") or []:
        if c["name"] == container:
            return f"spec.initContainers{{{container}}}"
    return f"spec.containers{{{container}}}"


class EventRecorder:
    """``recorder.emit(pod, "Normal", "Started", "Started container app", container="app")``."""

    def __init__(self, api: Api, node: str) -> None:
        self.api = api
        self.node = node
        self._seen: dict[tuple[str, str, str, str], tuple[str, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def emit(
        self,
        pod: dict[str, Any],
        type_: str,
        reason: str,
        message: str,
        *,
        container: str | None = None,
    ) -> None:
        task = asyncio.create_task(self._emit(pod, type_, reason, message, container))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _emit(
        self, pod: dict[str, Any], type_: str, reason: str, message: str, container: str | None
    ) -> None:
        meta = pod["metadata"]
        ns = meta["namespace"]
        key = (meta["uid"], container or "", reason, message)
        now = now_iso()
        try:
            if key in self._seen:
                name, count = self._seen[key]
                self._seen[key] = (name, count + 1)
                await self.api.patch(
                    f"/api/v1/namespaces/{ns}/events/{name}",
                    {"count": count + 1, "lastTimestamp": now},
                )
                return
            involved: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": ns,
                "name": meta["name"],
                "uid": meta["uid"],
            }
            if container:
                involved["fieldPath"] = container_field_path(pod, container)
            name = f"{meta['name']}.{secrets.token_hex(8)}"
            await self.api.post(
                f"/api/v1/namespaces/{ns}/events",
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": name, "namespace": ns},
                    "involvedObject": involved,
                    "reason": reason,
                    "message": message,
                    "type": type_,
                    "source": {"component": "kubelet", "host": self.node},
                    "reportingComponent": "kubelet",
                    "reportingInstance": self.node,
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                },
            )
            self._seen[key] = (name, 1)
        except ApiError as e:
            log.debug("event %s/%s %s not recorded: %s", ns, meta["name"], reason, e)
        except Exception as e:
            log.debug("event %s/%s %s not recorded: %r", ns, meta["name"], reason, e)

    def forget(self, uid: str) -> None:
        for key in [k for k in self._seen if k[0] == uid]:
            del self._seen[key]
