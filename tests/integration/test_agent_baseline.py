"""Baseline server over real ZMQ sockets: fresh reads, exact energy deltas, robustness."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import msgspec
import pytest
import zmq
import zmq.asyncio
import zmq.auth
from agent_helpers import get, metric

from benchagent import agent as agent_module
from benchagent import command
from benchagent.agent import Agent, AgentConfig
from benchagent.baseline import BaselineServer, reads_inline
from benchagent.gpu import GpuBackendError, SimulatedReader
from benchagent.transport import CurveClient, RequestClient, RequestTimeout
from benchagent.wire import (
    BaselineAck,
    BaselineRequest,
    Boundary,
    GateRequest,
    GpuSample,
    Message,
)
from benchop.core.gpuwindow import gpu_results


class FakeClock:
    def __init__(self, t: int = 7_000_000) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def request(boundary: Boundary, gpus: list[str] | None = None, rid: str = "r") -> BaselineRequest:
    return BaselineRequest(
        request_id=f"{rid}-{boundary}", run="llama", phase_id="ph-1", boundary=boundary, gpus=gpus
    )


async def ask(endpoint: str, msg: Message, **kw: float) -> BaselineAck:
    client = RequestClient(endpoint)
    try:
        reply = await client.request(msg, timeout=kw.get("timeout", 2.0), retries=0)
    finally:
        client.close()
    assert isinstance(reply, BaselineAck)
    return reply


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def agent(clock: FakeClock) -> AsyncIterator[Agent]:
    reader = SimulatedReader(4, seed=5, step_ms=100, clock_ms=clock)
    a = Agent(AgentConfig.local(interval_s=60.0, node_name="node-b"), reader=reader)
    await a.start()
    async with asyncio.timeout(10):
        await a.wait_ready()
    yield a
    await a.stop()


async def test_end_minus_start_energy_is_the_simulated_integral(
    agent: Agent, clock: FakeClock
) -> None:
    reader = agent.reader
    assert isinstance(reader, SimulatedReader)
    gpus = [reader.uuids[2], reader.uuids[0]]
    t0 = clock.t
    start = await ask(agent.baseline_endpoint, request("START", gpus))
    clock.t += 12_345  # the profiling window: 12.345 s, 124 power steps
    t1 = clock.t
    end = await ask(agent.baseline_endpoint, request("END", gpus))
    for ack, boundary in ((start, "START"), (end, "END")):
        assert ack.success and ack.error is None
        assert (ack.request_id, ack.run, ack.phase_id, ack.boundary) == (
            f"r-{boundary}",
            "llama",
            "ph-1",
            boundary,
        )
        assert (ack.node, ack.agent) == ("node-b", "benchop-agent@node-b")
        assert ack.simulated is True
        assert [s.uuid for s in ack.samples] == [reader.uuids[0], reader.uuids[2]]
    for s0, s1 in zip(start.samples, end.samples, strict=True):
        delta = s1.energy_mj - s0.energy_mj
        assert delta == reader.integral_mj(s0.index, t0, t1)
        assert 12.345 * reader.IDLE_W * 1000 <= delta <= 12.345 * reader.POWER_LIMIT_W * 1000
        assert s1.power_w == reader.power_w(s0.index, t1 // reader.step_ms)


def step_integral(points: list[tuple[int, float]], t0: int, t1: int) -> float:
    """Integral (%·s) over [t0, t1] of the step function holding each (time_ns, util) point."""
    total = 0.0
    for (t, u), (t_next, _) in zip(points, [*points[1:], (t1, 0.0)], strict=True):
        lo, hi = max(t, t0), min(t_next, t1)
        if hi > lo:
            total += u * (hi - lo) / 1e9
    return total


async def test_util_mean_is_the_samplers_step_integral_over_the_window(
    agent: Agent, clock: FakeClock
) -> None:
    reader = agent.reader
    assert isinstance(reader, SimulatedReader)

    async def tick(advance_ms: int) -> None:
        await asyncio.sleep(0.01)  # distinct wall-clock timestamps, not a synchronisation
        clock.t += advance_ms  # the simulated load changes every 100 ms of this clock
        assert await agent.sampler.poll() is not None

    await tick(150)
    start = await ask(agent.baseline_endpoint, request("START"))
    for advance_ms in (100, 230, 100, 300):
        await tick(advance_ms)
    end = await ask(agent.baseline_endpoint, request("END"))
    assert all(s.util_integral_pct_s is not None for s in [*start.samples, *end.samples])

    ticks = list(agent.sampler.ticks)
    assert len(ticks) == 6  # the start-up tick + 5: all still in the ring buffer
    expected = []
    for s0, s1 in zip(start.samples, end.samples, strict=True):
        points = [
            (t.samples[s0.index].timestamp_ns, t.samples[s0.index].gpu_util_pct) for t in ticks
        ]
        window_s = (s1.timestamp_ns - s0.timestamp_ns) / 1e9
        expected.append(step_integral(points, s0.timestamp_ns, s1.timestamp_ns) / window_s)
        assert s1.util_integral_pct_s - s0.util_integral_pct_s == pytest.approx(
            step_integral(points, s0.timestamp_ns, s1.timestamp_ns), rel=1e-9
        )
    res = gpu_results([start], [end], output_tokens=1)
    assert res is not None and res.gpus == 4
    assert res.util_mean == round(sum(expected) / len(expected), 3)


async def test_samples_are_fresh_not_the_cached_poll(agent: Agent, clock: FakeClock) -> None:
    reader = agent.reader
    assert isinstance(reader, SimulatedReader)
    cached = agent.sampler.latest
    assert cached is not None and agent.sampler.count == 1
    t0 = clock.t  # the sampler's poll happened at this instant
    clock.t += 5_000
    ack = await ask(agent.baseline_endpoint, request("START"))
    assert len(ack.samples) == 4  # gpus=None: every GPU
    assert agent.sampler.count == 1  # the sampler did not poll; the server read itself
    for old, new in zip(cached.samples, ack.samples, strict=True):
        assert new.energy_mj - old.energy_mj == reader.integral_mj(old.index, t0, clock.t) > 0
        assert new.timestamp_ns > old.timestamp_ns


async def test_unknown_gpu_fails_the_ack_but_keeps_known_samples(agent: Agent) -> None:
    reader = agent.reader
    assert isinstance(reader, SimulatedReader)
    ack = await ask(agent.baseline_endpoint, request("START", [reader.uuids[1], "GPU-nope"]))
    assert ack.success is False
    assert ack.error == "GPUs not on node node-b: GPU-nope"
    assert [s.uuid for s in ack.samples] == [reader.uuids[1]]
    assert await metric(agent.metrics_url, "benchop_agent_baseline_failures") == 1.0


async def test_concurrent_requests_from_many_coordinators(agent: Agent) -> None:
    acks = await asyncio.gather(
        *(ask(agent.baseline_endpoint, request("START", rid=f"c{i}")) for i in range(16))
    )
    assert sorted(a.request_id for a in acks) == sorted(f"c{i}-START" for i in range(16))
    assert all(a.success and len(a.samples) == 4 for a in acks)
    assert await metric(agent.metrics_url, "benchop_agent_baseline_requests") == 16.0


async def test_malformed_frames_are_counted_and_dropped(agent: Agent) -> None:
    ctx = zmq.asyncio.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(agent.baseline_endpoint)
    try:
        await raw.send_multipart([b"id-1", b"\xc1 not msgpack"])
        await raw.send_multipart([b"id-2", msgspec.msgpack.encode({"kind": "Nope"})])
        await raw.send_multipart([b"id-3", msgspec.msgpack.encode({"kind": "BaselineRequest"})])
        await raw.send(b"")  # no payload frame at all
        # A message of another kind is valid but not ours: unanswered, not counted malformed.
        gate = GateRequest(run="x", phase_id="p", boundary="START", worker=0, workers=1)
        await raw.send_multipart([b"id-4", msgspec.msgpack.encode(gate)])
        # The server is still alive and answers a good request on the same socket.
        good = request("END", rid="after-garbage")
        await raw.send_multipart([b"id-5", msgspec.msgpack.encode(good)])
        async with asyncio.timeout(5):
            frames = await raw.recv_multipart()
    finally:
        raw.close()
    assert frames[0] == b"id-5"
    ack = msgspec.msgpack.decode(frames[1], type=BaselineAck)
    assert ack.request_id == "after-garbage-END" and ack.success
    assert await metric(agent.metrics_url, "benchop_agent_malformed_frames") == 4.0
    assert await metric(agent.metrics_url, "benchop_agent_baseline_requests") == 1.0
    assert (await get(agent.metrics_url + "/healthz"))[0] == 200


def failing_pynvml() -> ModuleType:
    """A pynvml whose nvmlInit fails as it does on a machine without a driver."""
    mod = ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def nvmlInit() -> None:
        raise NVMLError("NVML Shared Library Not Found")

    mod.NVMLError = NVMLError  # type: ignore[attr-defined]
    mod.nvmlInit = nvmlInit  # type: ignore[attr-defined]
    return mod


async def test_auto_without_nvml_falls_back_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", failing_pynvml())
    agent = Agent(AgentConfig.local(gpu_backend="auto", simulated_gpus=3, interval_s=60.0))
    with caplog.at_level(logging.WARNING):
        await agent.start()
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("FALLING BACK TO SIMULATED" in w for w in warnings), warnings
        assert agent.simulated
        async with asyncio.timeout(10):
            await agent.wait_ready()
        assert await metric(agent.metrics_url, "benchop_agent_simulated") == 1.0
        for boundary in ("START", "END"):
            ack = await ask(agent.baseline_endpoint, request(boundary))
            assert ack.simulated is True and ack.success and len(ack.samples) == 3
    finally:
        await agent.stop()


async def test_explicit_nvml_without_nvml_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", failing_pynvml())
    agent = Agent(AgentConfig.local(gpu_backend="nvml"))
    with pytest.raises(GpuBackendError, match="NVML Shared Library Not Found"):
        await agent.start()


def test_command_exits_1_when_nvml_is_required_but_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", failing_pynvml())
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(
        ["--gpu-backend", "nvml", "--metrics-port", "0", "--baseline-port", "0"]
    )
    assert command.run(args) == 1


@pytest.fixture
def curve_keys(tmp_path: Path) -> dict[str, Path]:
    """Key files: the agent's pair, an allowed operator's, a stranger's; the allow-list dir."""
    keys: dict[str, Path] = {}
    for name in ("agent", "operator", "stranger"):
        d = tmp_path / name
        d.mkdir()
        public, secret = zmq.auth.create_certificates(d, name)
        keys[name], keys[name + "_secret"] = Path(public), Path(secret)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "operator.key").write_bytes(keys["operator"].read_bytes())
    keys["allowed"] = allowed
    return keys


async def test_curve_authenticated_baseline(curve_keys: dict[str, Path]) -> None:
    server_secret, allowed = curve_keys["agent_secret"], curve_keys["allowed"]
    client_secret, stranger_secret = curve_keys["operator_secret"], curve_keys["stranger_secret"]
    agent = Agent(
        AgentConfig.local(
            gpu_backend="simulated",
            simulated_gpus=1,
            interval_s=60.0,
            curve_secret_key=server_secret,
            curve_public_keys=allowed,
        )
    )
    await agent.start()
    server_public = curve_keys["agent"]
    try:
        good = RequestClient(
            agent.baseline_endpoint,
            curve=CurveClient(client_secret, server_public),
        )
        stranger = RequestClient(
            agent.baseline_endpoint,
            curve=CurveClient(stranger_secret, server_public),
        )
        plain = RequestClient(agent.baseline_endpoint)
        try:
            ack = await good.request(request("START"), timeout=5.0, retries=0)
            assert isinstance(ack, BaselineAck) and ack.success
            for client in (stranger, plain):
                with pytest.raises(RequestTimeout):
                    await client.request(request("START"), timeout=0.3, retries=0)
        finally:
            for c in (good, stranger, plain):
                c.close()
    finally:
        await agent.stop()


async def test_concurrent_acks_are_read_after_each_request_was_sent(agent: Agent) -> None:
    async def timed(i: int) -> tuple[int, BaselineAck]:
        sent = time.time_ns()
        return sent, await ask(agent.baseline_endpoint, request("START", rid=f"t{i}"))

    for sent, ack in await asyncio.gather(*(timed(i) for i in range(12))):
        assert ack.success
        assert all(s.timestamp_ns >= sent for s in ack.samples)


class HangingReader:
    """Blocks on a gate while ``hang`` is set: a GPU whose NVML call hangs."""

    simulated = True
    blocking = True

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.release = threading.Event()
        self.inner = SimulatedReader(2, seed=9)

    def read(self) -> list[GpuSample]:
        if self.hang.is_set():
            self.release.wait(timeout=30)
        return self.inner.read()

    def close(self) -> None:
        self.release.set()


async def test_a_hung_read_fails_the_ack_and_does_not_wedge_the_server() -> None:
    reader = HangingReader()
    agent = Agent(AgentConfig.local(interval_s=60.0, read_timeout_s=0.2), reader=reader)
    await agent.start()
    try:
        async with asyncio.timeout(10):
            await agent.wait_ready()
        reader.hang.set()
        ack = await ask(agent.baseline_endpoint, request("START"))
        assert ack.success is False
        assert ack.error == "GPU read took longer than 0.2 s"
        assert ack.samples == []
        reader.hang.clear()  # the GPU answers again; the hung thread is still blocked
        ack = await ask(agent.baseline_endpoint, request("END"))
        assert ack.success and len(ack.samples) == 2
    finally:
        reader.release.set()
        await agent.stop()


class CountingReader(SimulatedReader):
    """A reader that counts its reads; non-blocking (read on the event loop) unless told."""

    def __init__(self, clock: FakeClock, *, fail: bool = False, blocking: bool = False) -> None:
        super().__init__(2, seed=3, clock_ms=clock)
        self.reads = 0
        self.fail = fail
        self.blocking = blocking

    def read(self) -> list[GpuSample]:
        self.reads += 1
        if self.fail:
            raise RuntimeError("reader bug")
        return super().read()


async def send_all(
    server: BaselineServer, ctx: zmq.asyncio.Context, reqs: list[BaselineRequest]
) -> list[BaselineAck]:
    """Queue every request (inproc: queued when send returns), then serve them; the acks."""
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(server.endpoint)
    try:
        for i, req in enumerate(reqs):
            await raw.send_multipart([b"%d" % i, msgspec.msgpack.encode(req)])
        task = asyncio.create_task(server.serve())
        acks: dict[bytes, BaselineAck] = {}
        try:
            async with asyncio.timeout(5):
                while len(acks) < len(reqs):
                    rid, payload = await raw.recv_multipart()
                    acks[rid] = msgspec.msgpack.decode(payload, type=BaselineAck)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        raw.close()
    return [acks[b"%d" % i] for i in range(len(reqs))]


def test_which_readers_are_read_inline(clock: FakeClock) -> None:
    assert reads_inline(SimulatedReader(1)) and reads_inline(CountingReader(clock))
    assert not reads_inline(CountingReader(clock, blocking=True))
    assert not reads_inline(HangingReader())  # declared blocking: read in a thread


@pytest.mark.parametrize("blocking", [False, True], ids=["inline", "thread"])
async def test_queued_requests_share_one_fresh_read(clock: FakeClock, blocking: bool) -> None:
    ctx = zmq.asyncio.Context.instance()
    reader = CountingReader(clock, blocking=blocking)
    endpoint = f"inproc://bl-batch-{blocking}"
    server = BaselineServer(reader, agent="a", node="n", endpoint=endpoint, ctx=ctx)
    assert server.inline is not blocking
    try:
        t0 = clock.t
        clock.t += 1_000  # requests arrive after the reader's creation
        first = await send_all(server, ctx, [request("START", rid=f"q{i}") for i in range(5)])
        assert reader.reads == 1  # five queued requests, one batch, one read
        assert [a.request_id for a in first] == [f"q{i}-START" for i in range(5)]
        assert all(a.success and a.samples == first[0].samples for a in first)
        clock.t += 2_500
        t1 = clock.t
        later = await send_all(server, ctx, [request("END", rid="z")])
        assert reader.reads == 2  # a later batch never reuses an older read
        for s0, s1 in zip(first[0].samples, later[0].samples, strict=True):
            assert s1.energy_mj - s0.energy_mj == reader.integral_mj(s0.index, t0 + 1_000, t1)
        assert (server.requests, server.failures) == (6, 0)
    finally:
        server.close()


@pytest.mark.parametrize("blocking", [False, True], ids=["inline", "thread"])
async def test_reader_failure_fails_the_ack(clock: FakeClock, blocking: bool) -> None:
    ctx = zmq.asyncio.Context.instance()
    reader = CountingReader(clock, fail=True, blocking=blocking)
    endpoint = f"inproc://bl-fail-{blocking}"
    server = BaselineServer(reader, agent="a", node="n", endpoint=endpoint, ctx=ctx)
    try:
        (ack,) = await send_all(server, ctx, [request("START")])
    finally:
        server.close()
    assert ack.success is False and ack.samples == []
    assert ack.error == "GPU read failed: RuntimeError('reader bug')"
    assert server.failures == 1


async def test_run_agent_freezes_the_heap_after_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """``benchop agent`` serves until SIGTERM; gc.freeze runs once start-up is done."""
    seen: list[int] = []  # agents started when gc.freeze ran
    started: list[Agent] = []

    def freeze() -> None:  # record instead of freezing the test process's heap
        seen.append(len(started))
        os.kill(os.getpid(), signal.SIGTERM)  # handled by run_agent's loop handler: stop

    monkeypatch.setattr(agent_module.gc, "freeze", freeze)
    real_start = Agent.start

    async def start(self: Agent) -> None:
        await real_start(self)
        started.append(self)

    monkeypatch.setattr(Agent, "start", start)
    config = AgentConfig.local(gpu_backend="simulated", simulated_gpus=1, interval_s=60.0)
    async with asyncio.timeout(10):
        await agent_module.run_agent(config)
    assert seen == [1] and len(started) == 1  # frozen once, after start() returned
