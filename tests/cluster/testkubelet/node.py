"""A Node: registration, its Lease in ``kube-node-lease`` (renewed every 10 s) and its status.

Everything goes through the node's own credentials (``node-<name>.kubeconfig``): the Node
authorizer and NodeRestriction let a kubelet create and update its own Node and Lease only.
A file ``<state>/kubelet/nodes/<name>/stop-heartbeat`` stops the Lease renewals and status
updates of that node while it exists (the node controller then marks it NotReady/Unknown, its
pods not Ready, and later evicts them): the "node lost" fault. The node's pod workers act as
partitioned too (pods.py): containers keep running, nothing is written until the file is gone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import platform
from pathlib import Path
from typing import Any

from .api import Api, ApiError
from .status import now_iso

log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABEL = "nvidia.com/gpu.present"
CONDITIONS = (
    (
        "MemoryPressure",
        "False",
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    ),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
)


def micro_time() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def resources(*, cpu: str, memory: str, pods: int, gpus: int) -> dict[str, str]:
    out = {
        "cpu": cpu,
        "memory": memory,
        "pods": str(pods),
        "ephemeral-storage": "100Gi",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    }
    if gpus:
        out[GPU_RESOURCE] = str(gpus)
    return out


def node_labels(name: str, gpus: int) -> dict[str, str]:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": arch,
    }
    if gpus:
        labels[GPU_LABEL] = "true"
    return labels


def node_status(
    name: str,
    *,
    host_ip: str,
    capacity: dict[str, str],
    kubelet_version: str,
    port: int,
    old_conditions: list[dict[str, Any]],
    now: str,
) -> dict[str, Any]:
    """The status a kubelet posts: conditions (transition times kept), capacity = allocatable,
    addresses, daemon endpoint, nodeInfo."""
    old = {c["type"]: c for c in old_conditions}
    conditions = []
    for type_, status, reason, message in CONDITIONS:
        prev = old.get(type_)
        since = prev["lastTransitionTime"] if prev and prev.get("status") == status else now
        conditions.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": since,
            }
        )
    machine_id = _read("/etc/machine-id", "0" * 32)
    return {
        "conditions": conditions,
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": host_ip},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": {
            "machineID": machine_id,
            "systemUUID": hashlib.md5(f"{machine_id}/{name}".encode()).hexdigest(),
            "bootID": _read("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": os.uname().release,
            "osImage": _os_image(),
            "containerRuntimeVersion": "testkubelet://0.1.0",
            "kubeletVersion": kubelet_version,
            "operatingSystem": "linux",
            "architecture": node_labels(name, 0)["kubernetes.io/arch"],
        },
    }


class NodeAgent:
    """Registers node ``name`` and keeps it alive: ``await agent.register(); await agent.run()``."""

    def __init__(
        self,
        api: Api,
        name: str,
        *,
        host_ip: str,
        capacity: dict[str, str],
        gpus: int,
        kubelet_version: str,
        port: int,
        control_dir: Path,
        heartbeat: float = 10.0,
        status_every: float = 60.0,
        lease_seconds: int = 40,
    ) -> None:
        self.api = api
        self.name = name
        self.host_ip = host_ip
        self.capacity = capacity
        self.gpus = gpus
        self.kubelet_version = kubelet_version
        self.port = port
        self.control_dir = control_dir
        self.heartbeat = heartbeat
        self.status_every = status_every
        self.lease_seconds = lease_seconds
        self.uid = ""
        self._lease: dict[str, Any] | None = None
        self._conditions: list[dict[str, Any]] = []

    @property
    def paused(self) -> bool:
        return (self.control_dir / "stop-heartbeat").exists()

    def _status(self) -> dict[str, Any]:
        return node_status(
            self.name,
            host_ip=self.host_ip,
            capacity=self.capacity,
            kubelet_version=self.kubelet_version,
            port=self.port,
            old_conditions=self._conditions,
            now=now_iso(),
        )

    async def register(self) -> None:
        self.control_dir.mkdir(parents=True, exist_ok=True)
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": node_labels(self.name, self.gpus)},
            "status": self._status(),
        }
        try:
            node = await self.api.post("/api/v1/nodes", body)
            log.info("registered node %s", self.name)
        except ApiError as e:
            if e.status != 409:
                raise
            node = await self.api.patch(
                f"/api/v1/nodes/{self.name}", {"metadata": {"labels": body["metadata"]["labels"]}}
            )
            log.info("node %s already registered", self.name)
        self.uid = node["metadata"]["uid"]
        self._conditions = (node.get("status") or {}).get("conditions") or []
        await self.update_status()

    async def _reregister(self) -> None:
        try:
            await self.register()
        except Exception as e:
            log.warning("node %s: registering again failed: %s", self.name, e)

    async def update_status(self) -> None:
        # the node controller may have set conditions to Unknown meanwhile: transitions are
        # computed against what the API holds now
        node = await self.api.get(f"/api/v1/nodes/{self.name}")
        self._conditions = (node.get("status") or {}).get("conditions") or []
        status = self._status()
        node = await self.api.patch(f"/api/v1/nodes/{self.name}/status", {"status": status})
        self._conditions = node["status"].get("conditions") or []

    async def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        if self._lease is None:
            try:
                self._lease = await self.api.get(path)
            except ApiError as e:
                if e.status != 404:
                    raise
                self._lease = await self.api.post(
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {
                            "name": self.name,
                            "namespace": "kube-node-lease",
                            "ownerReferences": [
                                {
                                    "apiVersion": "v1",
                                    "kind": "Node",
                                    "name": self.name,
                                    "uid": self.uid,
                                }
                            ],
                        },
                        "spec": {
                            "holderIdentity": self.name,
                            "leaseDurationSeconds": self.lease_seconds,
                            "renewTime": micro_time(),
                        },
                    },
                )
                return
        lease = dict(self._lease)
        lease["spec"] = {
            **lease["spec"],
            "holderIdentity": self.name,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": micro_time(),
        }
        try:
            self._lease = await self.api.put(path, lease)
        except ApiError as e:
            self._lease = None  # refetch on the next beat (409 conflict, 404 deleted)
            if e.status not in (404, 409):
                raise

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_status = loop.time()
        was_paused = False
        while True:
            try:
                if self.paused:
                    if not was_paused:
                        log.warning("node %s: heartbeats stopped (stop-heartbeat file)", self.name)
                    was_paused = True
                else:
                    if was_paused:
                        log.warning("node %s: heartbeats resumed", self.name)
                        was_paused = False
                        last_status = 0.0
                    await self.renew_lease()
                    if loop.time() - last_status >= self.status_every:
                        await self.update_status()
                        last_status = loop.time()
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                log.warning("node %s heartbeat: %s", self.name, e)
                if e.status == 404:  # the Node was deleted: register again, as a kubelet does
                    self._lease = None
                    await self._reregister()
            except Exception as e:
                log.warning("node %s heartbeat: %s", self.name, e)
            await asyncio.sleep(self.heartbeat)
