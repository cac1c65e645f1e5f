"""Pod attribution: which container holds which GPU, from the kubelet.

Like dcgm-exporter, the agent asks the kubelet's pod-resources gRPC API
(``List`` on ``/var/lib/kubelet/pod-resources/kubelet.sock``) and maps every
device ID of resource ``nvidia.com/gpu`` — a GPU UUID with the NVIDIA device
plugin — to ``(namespace, pod, container)``. Without the socket (a laptop,
local mode) there is simply no attribution and no error.

    attribution = PodAttribution("/var/lib/kubelet/pod-resources/kubelet.sock")
    await attribution.refresh()
    attribution.owners.get("GPU-8a1...")   # PodRef(namespace, pod, container) or None
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

import grpc
import grpc.aio

from benchagent.podresources_pb import api_pb2

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
GPU_RESOURCE = "nvidia.com/gpu"
LIST_METHOD = "/v1.PodResourcesLister/List"


@dataclass(frozen=True, slots=True)
class PodRef:
    """The container a GPU is assigned to."""

    namespace: str
    pod: str
    container: str


def gpu_owners(
    response: api_pb2.ListPodResourcesResponse, resource: str = GPU_RESOURCE
) -> dict[str, PodRef]:
    """Device ID -> owning container, for devices of ``resource`` only."""
    owners: dict[str, PodRef] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                if devices.resource_name != resource:
                    continue
                ref = PodRef(pod.namespace, pod.name, container.name)
                for device_id in devices.device_ids:
                    owners[device_id] = ref
    return owners


class PodAttribution:
    """The latest GPU -> container map, refreshed from the kubelet socket.

    A missing socket gives an empty map silently. A failing call keeps the
    last good map (so labels do not flap) and logs once per failure streak.
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout_s: float = 2.0) -> None:
        self.socket_path = os.fspath(socket_path)
        self.timeout_s = timeout_s
        self.owners: dict[str, PodRef] = {}
        self.failures = 0
        self._channel: grpc.aio.Channel | None = None
        self._list: grpc.aio.UnaryUnaryMultiCallable | None = None
        self._failing = False

    async def refresh(self) -> dict[str, PodRef]:
        """Ask the kubelet once; returns (and keeps) the current map."""
        if not await asyncio.to_thread(os.path.exists, self.socket_path):
            if self._channel is not None:  # the kubelet went away
                await self.close()
            self.owners = {}
            return self.owners
        if self._list is None:
            self._channel = grpc.aio.insecure_channel(f"unix://{self.socket_path}")
            # The one call we make, as api_pb2_grpc.PodResourcesListerStub would build it.
            self._list = self._channel.unary_unary(
                LIST_METHOD,
                request_serializer=api_pb2.ListPodResourcesRequest.SerializeToString,
                response_deserializer=api_pb2.ListPodResourcesResponse.FromString,
            )
        try:
            response = await self._list(api_pb2.ListPodResourcesRequest(), timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            self.failures += 1
            if not self._failing:
                log.warning(
                    "pod-resources List on %s failed (%s: %s); keeping the last GPU->pod map",
                    self.socket_path,
                    e.code().name,
                    e.details(),
                )
            self._failing = True
            return self.owners
        if self._failing:
            log.info("pod-resources List on %s works again", self.socket_path)
        self._failing = False
        self.owners = gpu_owners(response)
        return self.owners

    async def run(self, interval_s: float) -> None:
        """Refresh every ``interval_s`` until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._list = None
