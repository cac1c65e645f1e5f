"""Pod attribution against a fake kubelet: a real gRPC server on a unix socket."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from benchagent.podresources import PodAttribution, PodRef
from benchagent.podresources_pb import api_pb2, api_pb2_grpc

UUID_A = "GPU-11111111-2222-3333-4444-555555555555"
UUID_B = "GPU-66666666-7777-8888-9999-000000000000"
UUID_C = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.response = api_pb2.ListPodResourcesResponse(
            pod_resources=[
                api_pb2.PodResources(
                    name="vllm-0",
                    namespace="models",
                    containers=[
                        api_pb2.ContainerResources(
                            name="vllm",
                            devices=[
                                api_pb2.ContainerDevices(
                                    resource_name="nvidia.com/gpu", device_ids=[UUID_A, UUID_B]
                                ),
                                api_pb2.ContainerDevices(
                                    resource_name="example.com/nic", device_ids=["eth1"]
                                ),
                            ],
                        ),
                        api_pb2.ContainerResources(name="sidecar"),
                    ],
                ),
                api_pb2.PodResources(
                    name="trainer",
                    namespace="ml",
                    containers=[
                        api_pb2.ContainerResources(
                            name="main",
                            devices=[
                                api_pb2.ContainerDevices(
                                    resource_name="nvidia.com/gpu", device_ids=[UUID_C]
                                )
                            ],
                        )
                    ],
                ),
                api_pb2.PodResources(name="web", namespace="default"),
            ]
        )

    async def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self.calls += 1
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet restarting")
        return self.response


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[tuple[FakeKubelet, Path]]:
    sock = tmp_path / "kubelet.sock"
    server = grpc.aio.server()
    servicer = FakeKubelet()
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix:{sock}")
    await server.start()
    yield servicer, sock
    await server.stop(None)


async def test_list_maps_gpu_uuids_to_containers(kubelet: tuple[FakeKubelet, Path]) -> None:
    servicer, sock = kubelet
    attribution = PodAttribution(sock)
    try:
        owners = await attribution.refresh()
    finally:
        await attribution.close()
    assert servicer.calls == 1
    assert owners == {
        UUID_A: PodRef("models", "vllm-0", "vllm"),
        UUID_B: PodRef("models", "vllm-0", "vllm"),
        UUID_C: PodRef("ml", "trainer", "main"),
    }
    assert "eth1" not in owners  # other resources are not GPUs


async def test_missing_socket_means_no_labels_and_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    attribution = PodAttribution(tmp_path / "absent.sock")
    with caplog.at_level(logging.DEBUG, logger="benchagent.podresources"):
        assert await attribution.refresh() == {}
    assert attribution.failures == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await attribution.close()


async def test_failing_kubelet_keeps_last_map_and_warns_once(
    kubelet: tuple[FakeKubelet, Path], caplog: pytest.LogCaptureFixture
) -> None:
    servicer, sock = kubelet
    attribution = PodAttribution(sock)
    try:
        good = await attribution.refresh()
        assert len(good) == 3
        servicer.fail = True
        with caplog.at_level(logging.WARNING, logger="benchagent.podresources"):
            assert await attribution.refresh() == good
            assert await attribution.refresh() == good
        assert attribution.failures == 2
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "UNAVAILABLE" in warnings[0]
        servicer.fail = False
        servicer.response = api_pb2.ListPodResourcesResponse()
        assert await attribution.refresh() == {}  # pods gone -> labels gone
    finally:
        await attribution.close()
