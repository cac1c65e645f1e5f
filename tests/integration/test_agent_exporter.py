"""Exporter: dcgm-exporter names and labels, parsed back; probes over real HTTP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest
from agent_helpers import eventually, families, get

from benchagent.agent import Agent, AgentConfig
from benchagent.dcgm import DCGM_FIELDS
from benchagent.exporter import render_dcgm
from benchagent.gpu import SimulatedReader
from benchagent.podresources import PodRef
from benchagent.podresources_pb import api_pb2, api_pb2_grpc
from benchagent.wire import GpuSample

DCGM_NAMES = {f.name for f in DCGM_FIELDS}  # the one table (promstats derives from it too)
BASE_LABELS = {"gpu", "UUID", "modelName", "Hostname"}


def sample(
    index: int, uuid: str, *, error: str | None = None, name: str = "NVIDIA H100"
) -> GpuSample:
    return GpuSample(
        index=index,
        uuid=uuid,
        name=name,
        timestamp_ns=1,
        gpu_util_pct=97.0,
        mem_copy_util_pct=12.5,
        mem_used_bytes=3 * 1024 * 1024 * 1024,
        mem_total_bytes=80 * 1024 * 1024 * 1024,
        power_w=512.25,
        power_limit_w=700.0,
        energy_mj=987_654_321_012,
        temperature_c=66.0,
        sm_clock_mhz=1980,
        mem_clock_mhz=2619,
        error=error,
    )


def test_render_dcgm_names_labels_units() -> None:
    samples = [
        sample(0, "GPU-a", name='H100 "SXM"'),
        sample(1, "GPU-b"),
        sample(2, "GPU-c", error="nvmlDeviceGetPowerUsage: GPU is lost"),
    ]
    owners = {"GPU-b": PodRef("models", "vllm-0", "vllm")}
    text = render_dcgm(samples, hostname="gpu-node-1", owners=owners)
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n" in text  # no _total
    assert "\nDCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{" in text
    fams = families(text)
    assert set(fams) == DCGM_NAMES
    for name, (type_, rows) in fams.items():
        want = "counter" if name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" else "gauge"
        assert type_ == want, name
        assert [r.labels["gpu"] for r in rows] == ["0", "1"]  # the failed GPU is left out
        a, b = rows
        assert set(a.labels) == BASE_LABELS
        assert a.labels["modelName"] == 'H100 "SXM"'  # escaped and parsed back
        assert a.labels["Hostname"] == "gpu-node-1"
        assert b.labels == {
            "gpu": "1",
            "UUID": "GPU-b",
            "modelName": "NVIDIA H100",
            "Hostname": "gpu-node-1",
            "container": "vllm",
            "namespace": "models",
            "pod": "vllm-0",
        }
    value = {name: rows[1].value for name, (_, rows) in fams.items()}
    assert value == {
        "DCGM_FI_DEV_GPU_UTIL": 97,
        "DCGM_FI_DEV_MEM_COPY_UTIL": 12.5,
        "DCGM_FI_DEV_FB_USED": 3 * 1024,  # MiB
        "DCGM_FI_DEV_FB_FREE": 77 * 1024,
        "DCGM_FI_DEV_POWER_USAGE": 512.25,
        "DCGM_FI_DEV_POWER_MGMT_LIMIT": 700,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 987_654_321_012,  # mJ, exact
        "DCGM_FI_DEV_GPU_TEMP": 66,
        "DCGM_FI_DEV_SM_CLOCK": 1980,
        "DCGM_FI_DEV_MEM_CLOCK": 2619,
    }
    assert render_dcgm([samples[2]], hostname="h", owners={}) == ""


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    reader = SimulatedReader(8, seed=11)
    a = Agent(AgentConfig.local(interval_s=60.0, node_name="node-a"), reader=reader)
    await a.start()
    async with asyncio.timeout(10):
        await a.wait_ready()
    yield a
    await a.stop()


async def test_metrics_over_http_match_the_last_poll(agent: Agent) -> None:
    status, text = await get(agent.metrics_url + "/metrics")
    assert status == 200
    fams = families(text)
    assert set(fams) >= DCGM_NAMES
    latest = agent.sampler.latest
    assert latest is not None and agent.sampler.count == 1  # interval 60 s: one poll only
    by_gpu = {s.index: s for s in latest.samples}
    power = fams["DCGM_FI_DEV_POWER_USAGE"][1]
    assert len(power) == 8
    for row in power:
        s = by_gpu[int(row.labels["gpu"])]
        assert row.labels["UUID"] == s.uuid
        assert row.labels["Hostname"] == "node-a"
        assert row.labels["modelName"].endswith("(simulated)")
        assert row.value == s.power_w
    energy = {r.labels["UUID"]: r.value for r in fams["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"][1]}
    assert energy == {s.uuid: s.energy_mj for s in latest.samples}
    assert fams["benchop_agent_simulated"][1][0].value == 1.0
    assert fams["benchop_agent_polls"][1][0].value == 1.0
    up = fams["benchop_agent_gpu_up"][1]
    assert len(up) == 8 and all(r.value == 1.0 for r in up)
    assert await get(agent.metrics_url + "/healthz") == (200, "ok\n")
    assert (await get(agent.metrics_url + "/readyz"))[0] == 200


class GatedReader:
    """A simulated reader whose reads block until the test opens the gate."""

    simulated = True
    blocking = True

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.inner = SimulatedReader(2, seed=1)

    def read(self) -> list[GpuSample]:
        if not self.gate.wait(timeout=30):
            raise TimeoutError("test never opened the gate")
        return self.inner.read()

    def close(self) -> None:
        self.gate.set()


async def test_not_ready_before_the_first_sample() -> None:
    reader = GatedReader()
    agent = Agent(AgentConfig.local(interval_s=60.0), reader=reader)
    await agent.start()
    try:
        status, body = await get(agent.metrics_url + "/readyz")
        assert (status, body) == (503, "not ready: no GPU sample yet\n")
        assert (await get(agent.metrics_url + "/healthz"))[0] == 200
        _, text = await get(agent.metrics_url + "/metrics")
        assert not DCGM_NAMES & set(families(text))  # nothing to show yet
        assert not agent.ready
        reader.gate.set()

        async def ready() -> bool:
            return (await get(agent.metrics_url + "/readyz"))[0] == 200

        await eventually(ready, "readyz turns 200 after the first sample")
        _, text = await get(agent.metrics_url + "/metrics")
        assert set(families(text)) >= DCGM_NAMES
    finally:
        reader.gate.set()
        await agent.stop()


class OneGpuKubelet(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, uuid: str) -> None:
        self.uuid = uuid

    async def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        devices = api_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=[self.uuid])
        return api_pb2.ListPodResourcesResponse(
            pod_resources=[
                api_pb2.PodResources(
                    name="vllm-0",
                    namespace="models",
                    containers=[api_pb2.ContainerResources(name="vllm", devices=[devices])],
                )
            ]
        )


async def test_pod_labels_from_the_kubelet_socket(tmp_path: Path) -> None:
    reader = SimulatedReader(2, seed=4)
    sock = tmp_path / "kubelet.sock"
    server = grpc.aio.server()
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(OneGpuKubelet(reader.uuids[1]), server)
    server.add_insecure_port(f"unix:{sock}")
    await server.start()
    agent = Agent(AgentConfig.local(interval_s=60.0, pod_resources_socket=str(sock)), reader=reader)
    await agent.start()
    try:

        async def labelled() -> bool:
            _, text = await get(agent.metrics_url + "/metrics")
            rows = families(text).get("DCGM_FI_DEV_GPU_UTIL", ("", []))[1]
            return any("pod" in r.labels for r in rows)

        await eventually(labelled, "pod labels appear")
        _, text = await get(agent.metrics_url + "/metrics")
        rows = {r.labels["gpu"]: r.labels for r in families(text)["DCGM_FI_DEV_GPU_UTIL"][1]}
        assert set(rows["0"]) == BASE_LABELS  # not assigned to a pod
        assert (rows["1"]["pod"], rows["1"]["namespace"], rows["1"]["container"]) == (
            "vllm-0",
            "models",
            "vllm",
        )
    finally:
        await agent.stop()
        await server.stop(None)
