"""GateCoordinator over real loopback sockets: barrier, baseline handshake, idempotency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchagent.transport import RequestClient, RequestServer, RequestTimeout
from benchagent.wire import (
    BaselineAck,
    BaselineRequest,
    Boundary,
    GateDenied,
    GateGranted,
    GateRequest,
    Message,
)
from benchop.core.gaterecords import GateOutcome
from benchop.gates import AgentEndpoint, GateCoordinator

pytestmark = pytest.mark.timeout(30)

RUN = "ns/run"


class FakeAgent:
    """A RequestServer answering BaselineRequests like a node agent (or never, when silent)."""

    def __init__(
        self,
        name: str,
        *,
        silent: bool = False,
        success: bool = True,
        delay_s: dict[str, float] | None = None,
    ) -> None:
        self.name = name
        self.silent = silent
        self.success = success
        self.delay_s = delay_s or {}  # by run: answer that much later
        self.received = asyncio.Event()
        self.requests: list[BaselineRequest] = []
        self.server = RequestServer()
        self.task = asyncio.create_task(self.server.serve(self.handle))

    @property
    def endpoint(self) -> AgentEndpoint:
        return AgentEndpoint(
            name=self.name, node=f"node-{self.name}", endpoint=self.server.endpoint
        )

    async def handle(self, msg: Message) -> Message | None:
        assert isinstance(msg, BaselineRequest)
        self.requests.append(msg)
        self.received.set()
        if self.silent:
            await asyncio.Event().wait()  # hangs until the server is closed
        if msg.run in self.delay_s:
            await asyncio.sleep(self.delay_s[msg.run])
        return BaselineAck(
            request_id=msg.request_id,
            run=msg.run,
            phase_id=msg.phase_id,
            boundary=msg.boundary,
            agent=self.name,
            node=f"node-{self.name}",
            success=self.success,
            error=None if self.success else "nvml gone",
        )

    async def close(self) -> None:
        self.server.close()
        await asyncio.gather(self.task, return_exceptions=True)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, GateOutcome]] = []

    async def __call__(self, run: str, outcome: GateOutcome) -> None:
        self.calls.append((run, outcome))


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def coordinator(recorder: Recorder) -> AsyncIterator[GateCoordinator]:
    coord = GateCoordinator(on_gate=recorder)
    await coord.start()
    yield coord
    await coord.close()


@pytest.fixture
async def agents() -> AsyncIterator[list[FakeAgent]]:
    made: list[FakeAgent] = []
    yield made
    for agent in made:
        await agent.close()


@pytest.fixture
async def clients() -> AsyncIterator[list[RequestClient]]:
    made: list[RequestClient] = []
    yield made
    for client in made:
        client.close()


async def ask(
    coord: GateCoordinator,
    clients: list[RequestClient],
    worker: int,
    *,
    workers: int = 2,
    boundary: Boundary = "START",
    run: str = RUN,
    attempt_s: float = 10.0,
) -> Message:
    client = RequestClient(coord.endpoint)
    clients.append(client)
    req = GateRequest(
        run=run, phase_id="profiling", boundary=boundary, worker=worker, workers=workers
    )
    return await client.request(req, timeout=attempt_s, retries=0)


async def not_done_within(task: asyncio.Task[Message], seconds: float) -> bool:
    """True when ``task`` is still pending after ``seconds`` (a bounded negative check)."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    return not done


async def test_two_workers_pass_together(
    coordinator: GateCoordinator, clients: list[RequestClient], recorder: Recorder
) -> None:
    coordinator.register_run(RUN, workers=2, agents=[], timeout_s=1.0, baseline=True)
    first = asyncio.create_task(ask(coordinator, clients, 0))
    assert await not_done_within(first, 0.3), "worker 0 passed before worker 1 asked"
    assert recorder.calls == []

    before = time.time_ns()
    second = await ask(coordinator, clients, 1)
    granted = [await first, second]
    assert all(isinstance(g, GateGranted) for g in granted)
    g0, g1 = (g for g in granted if isinstance(g, GateGranted))
    assert (g0.worker, g1.worker) == (0, 1)
    assert g0.start_at_ns == g1.start_at_ns > before  # one common start, in the future
    assert g0.missing == [] and g0.baseline_captured is False  # no agent: nothing captured

    [(run, outcome)] = recorder.calls
    assert run == RUN and outcome.key == ("profiling", "START")
    assert outcome.missing == [] and outcome.acks == [] and outcome.barrier_s >= 0.25
    assert coordinator.outcomes(RUN) == {("profiling", "START"): outcome}
    assert coordinator.handshakes == 0


async def test_baseline_acks_are_recorded(
    coordinator: GateCoordinator,
    clients: list[RequestClient],
    agents: list[FakeAgent],
    recorder: Recorder,
) -> None:
    agents += [FakeAgent("a"), FakeAgent("b")]
    coordinator.register_run(
        RUN, workers=1, agents=[a.endpoint for a in agents], timeout_s=2.0, baseline=True
    )
    for boundary in ("START", "END"):
        reply = await ask(coordinator, clients, 0, workers=1, boundary=boundary)
        assert isinstance(reply, GateGranted)
        assert reply.boundary == boundary and reply.baseline_captured and reply.missing == []

    outcomes = coordinator.outcomes(RUN)
    assert set(outcomes) == {("profiling", "START"), ("profiling", "END")}
    start = outcomes[("profiling", "START")]
    assert sorted(a.agent for a in start.acks) == ["a", "b"]
    assert start.agents == ["a", "b"] and start.baseline
    assert all(a.boundary == "START" and a.success for a in start.acks)
    for agent in agents:
        assert [r.boundary for r in agent.requests] == ["START", "END"]
    ids = [r.request_id for agent in agents for r in agent.requests]
    assert len(set(ids)) == 4  # a fresh request id per agent and gate
    assert [o.boundary for _, o in recorder.calls] == ["START", "END"]


async def test_failed_ack_counts_as_acked_but_not_captured(
    coordinator: GateCoordinator, clients: list[RequestClient], agents: list[FakeAgent]
) -> None:
    agents.append(FakeAgent("broken", success=False))
    coordinator.register_run(
        RUN, workers=1, agents=[agents[0].endpoint], timeout_s=2.0, baseline=True
    )
    reply = await ask(coordinator, clients, 0, workers=1)
    assert isinstance(reply, GateGranted)
    assert reply.missing == [] and reply.baseline_captured is False
    [ack] = coordinator.outcomes(RUN)[("profiling", "START")].acks
    assert ack.error == "nvml gone"


async def test_silent_and_lost_agents_never_hold_the_gate_past_the_timeout(
    coordinator: GateCoordinator,
    clients: list[RequestClient],
    agents: list[FakeAgent],
    tmp_path: Path,
) -> None:
    agents += [FakeAgent("ok"), FakeAgent("silent", silent=True)]
    lost = AgentEndpoint(name="lost", node="n", endpoint=f"ipc://{tmp_path}/nobody.sock")
    timeout_s = 0.6
    coordinator.register_run(
        RUN,
        workers=1,
        agents=[agents[0].endpoint, agents[1].endpoint, lost],
        timeout_s=timeout_s,
        baseline=True,
    )
    started = time.monotonic()
    reply = await ask(coordinator, clients, 0, workers=1)
    took = time.monotonic() - started
    assert isinstance(reply, GateGranted)
    assert sorted(reply.missing) == ["lost", "silent"]
    assert reply.baseline_captured is False
    assert timeout_s * 0.9 <= took < timeout_s + 2.0
    outcome = coordinator.outcomes(RUN)[("profiling", "START")]
    assert [a.agent for a in outcome.acks] == ["ok"]
    assert timeout_s * 0.9 <= outcome.handshake_s < timeout_s + 1.0
    assert len(agents[1].requests) >= 1  # it was asked, it just never answered


async def test_runs_closing_together_do_not_queue_on_a_shared_agent(
    coordinator: GateCoordinator, clients: list[RequestClient], agents: list[FakeAgent]
) -> None:
    # One agent serves both runs' targets. It answers run A after 0.6 s (within A's 3 s
    # timeout) and run B at once. B's gate closes while A's request is in flight: B's
    # request must not wait behind A's (0.6 s > B's 0.5 s timeout would make it "missing").
    agent = FakeAgent("shared", delay_s={"ns/a": 0.6, "ns/b": 0.02})
    agents.append(agent)
    coordinator.register_run(
        "ns/a", workers=1, agents=[agent.endpoint], timeout_s=3.0, baseline=True
    )
    coordinator.register_run(
        "ns/b", workers=1, agents=[agent.endpoint], timeout_s=0.5, baseline=True
    )
    a = asyncio.create_task(ask(coordinator, clients, 0, workers=1, run="ns/a"))
    await asyncio.wait_for(agent.received.wait(), 5)  # A's request is in flight
    b = await ask(coordinator, clients, 0, workers=1, run="ns/b")
    assert isinstance(b, GateGranted) and b.missing == [] and b.baseline_captured
    granted_a = await a
    assert isinstance(granted_a, GateGranted) and granted_a.baseline_captured
    assert [r.run for r in agent.requests] == ["ns/a", "ns/b"]
    for run in ("ns/a", "ns/b"):
        [ack] = coordinator.outcomes(run)[("profiling", "START")].acks
        assert ack.run == run and ack.success


async def test_retries_are_answered_without_a_second_handshake(
    coordinator: GateCoordinator,
    clients: list[RequestClient],
    agents: list[FakeAgent],
    recorder: Recorder,
) -> None:
    agents.append(FakeAgent("a"))
    coordinator.register_run(
        RUN, workers=2, agents=[agents[0].endpoint], timeout_s=2.0, baseline=True
    )
    # Worker 0 gives up waiting once (its reply would go to a dead socket) and asks again,
    # the way the load generator's gate client does.
    with pytest.raises(RequestTimeout):
        await ask(coordinator, clients, 0, attempt_s=0.2)
    again = asyncio.create_task(ask(coordinator, clients, 0))
    assert await not_done_within(again, 0.1)
    g1 = await ask(coordinator, clients, 1)
    g0 = await again
    assert isinstance(g0, GateGranted) and isinstance(g1, GateGranted)
    assert g0.start_at_ns == g1.start_at_ns

    # After the gate closed: a worker restarted and asks again -> answered from the outcome.
    late = await ask(coordinator, clients, 1)
    assert isinstance(late, GateGranted) and late.start_at_ns == g1.start_at_ns
    assert len(agents[0].requests) == 1
    assert coordinator.handshakes == 1
    assert len(recorder.calls) == 1


async def test_unknown_run_and_bad_worker_are_denied(
    coordinator: GateCoordinator, clients: list[RequestClient]
) -> None:
    reply = await ask(coordinator, clients, 0, run="ns/nope")
    assert isinstance(reply, GateDenied) and "ns/nope" in reply.reason
    coordinator.register_run(RUN, workers=2, agents=[], timeout_s=1.0, baseline=False)
    reply = await ask(coordinator, clients, 2)
    assert isinstance(reply, GateDenied) and "out of range" in reply.reason


async def test_baseline_off_skips_the_agents(
    coordinator: GateCoordinator, clients: list[RequestClient], agents: list[FakeAgent]
) -> None:
    agents.append(FakeAgent("a"))
    coordinator.register_run(
        RUN, workers=1, agents=[agents[0].endpoint], timeout_s=2.0, baseline=False
    )
    reply = await ask(coordinator, clients, 0, workers=1)
    assert isinstance(reply, GateGranted) and reply.missing == [] and not reply.baseline_captured
    outcome = coordinator.outcomes(RUN)[("profiling", "START")]
    assert outcome.agents == [] and not outcome.baseline
    assert agents[0].requests == [] and coordinator.handshakes == 0


async def test_restored_gate_is_answered_without_running(
    coordinator: GateCoordinator,
    clients: list[RequestClient],
    agents: list[FakeAgent],
    recorder: Recorder,
) -> None:
    agents.append(FakeAgent("a"))
    coordinator.register_run(
        RUN, workers=2, agents=[agents[0].endpoint], timeout_s=2.0, baseline=True
    )
    coordinator.restore_gate(
        RUN,
        phase_id="profiling",
        boundary="START",
        start_at_ns=12345,
        baseline_captured=True,
        missing=[],
    )
    # A worker waiting on END when the END outcome is restored is released at once.
    waiting = asyncio.create_task(ask(coordinator, clients, 0, boundary="END"))
    assert await not_done_within(waiting, 0.1)
    end = GateOutcome(
        run=RUN,
        phase_id="profiling",
        boundary="END",
        start_at_ns=67890,
        baseline=True,
        baseline_captured=False,
        missing=["a"],
        restored=True,
    )
    coordinator.restore_gate(RUN, end)

    start = await ask(coordinator, clients, 1)
    assert isinstance(start, GateGranted) and start.start_at_ns == 12345 and start.baseline_captured
    released = await waiting
    assert isinstance(released, GateGranted) and released.start_at_ns == 67890
    assert released.missing == ["a"]
    assert agents[0].requests == [] and recorder.calls == [] and coordinator.handshakes == 0


async def test_forgotten_run_denies_waiting_workers(
    coordinator: GateCoordinator, clients: list[RequestClient]
) -> None:
    coordinator.register_run(RUN, workers=2, agents=[], timeout_s=1.0, baseline=True)
    waiting = asyncio.create_task(ask(coordinator, clients, 0))
    assert await not_done_within(waiting, 0.1)
    coordinator.forget_run(RUN)
    reply = await waiting
    assert isinstance(reply, GateDenied) and "forgotten" in reply.reason
    assert coordinator.outcomes(RUN) == {}


async def test_failing_callback_still_grants(clients: list[RequestClient]) -> None:
    async def broken(run: str, outcome: GateOutcome) -> None:
        raise RuntimeError("apiserver down")

    coord = GateCoordinator(on_gate=broken)
    await coord.start()
    try:
        coord.register_run(RUN, workers=1, agents=[], timeout_s=1.0, baseline=True)
        reply = await ask(coord, clients, 0, workers=1)
        assert isinstance(reply, GateGranted)
        assert ("profiling", "START") in coord.outcomes(RUN)
    finally:
        await coord.close()


async def test_callback_runs_before_workers_are_granted(clients: list[RequestClient]) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(run: str, outcome: GateOutcome) -> None:
        entered.set()
        await release.wait()

    coord = GateCoordinator(on_gate=slow)
    await coord.start()
    try:
        coord.register_run(RUN, workers=1, agents=[], timeout_s=1.0, baseline=True)
        worker = asyncio.create_task(ask(coord, clients, 0, workers=1))
        await asyncio.wait_for(entered.wait(), 5)
        assert await not_done_within(worker, 0.1)
        release.set()
        assert isinstance(await worker, GateGranted)
    finally:
        await coord.close()


def test_register_run_validates() -> None:
    coord = GateCoordinator()
    with pytest.raises(ValueError, match="workers"):
        coord.register_run(RUN, workers=0, agents=[], timeout_s=1.0, baseline=True)
    with pytest.raises(ValueError, match="unique"):
        coord.register_run(
            RUN,
            workers=1,
            agents=[AgentEndpoint("a"), AgentEndpoint("a")],
            timeout_s=1,
            baseline=True,
        )
    with pytest.raises(ValueError, match="not registered"):
        coord.restore_gate("ns/other", phase_id="p", boundary="START")


async def test_start_is_after_a_slow_callback_and_common(clients: list[RequestClient]) -> None:
    """The status write may take long: the common start must still lie ahead of the grant."""
    seen: list[GateOutcome] = []
    ended_ns = 0

    async def slow(run: str, outcome: GateOutcome) -> None:
        nonlocal ended_ns
        seen.append(outcome)
        await asyncio.sleep(0.3)  # a slow API server (longer than the start lead)
        ended_ns = time.time_ns()

    coord = GateCoordinator(on_gate=slow, start_lead_s=0.05)
    await coord.start()
    try:
        coord.register_run(RUN, workers=2, agents=[], timeout_s=1.0, baseline=False)
        g0, g1 = await asyncio.gather(ask(coord, clients, 0), ask(coord, clients, 1))
        received_ns = time.time_ns()
        assert isinstance(g0, GateGranted) and isinstance(g1, GateGranted)
        assert g0.start_at_ns == g1.start_at_ns
        assert g0.start_at_ns >= ended_ns + 50_000_000  # the lead counts from the write's end
        assert g0.start_at_ns > received_ns  # still ahead when the grant arrived
        assert seen[0].start_at_ns < g0.start_at_ns  # the callback saw the planned start
        # a late request is answered with the same, recorded start
        assert coord.outcomes(RUN)[("profiling", "START")].start_at_ns == g0.start_at_ns
        late = await ask(coord, clients, 0)
        assert isinstance(late, GateGranted) and late.start_at_ns == g0.start_at_ns
    finally:
        await coord.close()


async def test_a_retry_during_the_callback_waits_for_it(clients: list[RequestClient]) -> None:
    """A worker asking again while the gate is being persisted is not granted unpersisted."""
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(run: str, outcome: GateOutcome) -> None:
        entered.set()
        await release.wait()

    coord = GateCoordinator(on_gate=slow)
    await coord.start()
    try:
        coord.register_run(RUN, workers=1, agents=[], timeout_s=1.0, baseline=False)
        first = asyncio.create_task(ask(coord, clients, 0, workers=1))
        await asyncio.wait_for(entered.wait(), 5)
        retry = asyncio.create_task(ask(coord, clients, 0, workers=1))
        assert await not_done_within(retry, 0.2)
        assert coord.outcomes(RUN) == {}
        release.set()
        g_first, g_retry = await asyncio.gather(first, retry)
        assert isinstance(g_first, GateGranted) and isinstance(g_retry, GateGranted)
        assert g_first.start_at_ns == g_retry.start_at_ns
    finally:
        await coord.close()


def test_bridge_bounds_the_callback_by_its_persist_budget() -> None:
    """One API call may take the request timeout; the coordinator must not cancel the bridge's
    persist retries (the gate would be granted unsaved)."""
    from benchop.operator.gatebridge import (
        PERSIST_BACKOFF_S,
        GateBridge,
        persist_timeout_s,
    )
    from benchop.operator.settings import OperatorSettings

    async def never(run: object, boundary: str, record: object) -> bool:
        raise AssertionError("not called")

    for request_timeout in (30.0, 60.0):
        settings = OperatorSettings(request_timeout=request_timeout, gate_port=0)
        bridge = GateBridge(settings, None, on_gate=never)  # type: ignore[arg-type]
        budget = persist_timeout_s(settings)
        assert budget >= request_timeout + sum(PERSIST_BACKOFF_S)
        assert bridge.coordinator.callback_timeout_s > budget


async def test_bridge_retries_a_failed_persist_before_granting(
    clients: list[RequestClient],
) -> None:
    import kopf

    from benchop.api.models import BenchmarkRunSpec
    from benchop.operator.gatebridge import START_LEAD_S, GateBridge
    from benchop.operator.k8s import ApiError
    from benchop.operator.settings import OperatorSettings

    @dataclass
    class Run:  # what the bridge needs of a run
        key: str
        namespace: str
        spec: BenchmarkRunSpec
        workers: int

    calls: list[str] = []
    persisted_ns: list[int] = []

    async def flaky(run: Run, boundary: str, record: object) -> bool:
        calls.append(boundary)
        if len(calls) == 1:
            raise kopf.TemporaryError("apiserver slow", delay=1)
        if len(calls) == 2:
            raise ApiError(500, "etcd timeout")
        persisted_ns.append(time.time_ns())
        return True

    settings = OperatorSettings(request_timeout=1.0, gate_port=0, bind_host="127.0.0.1")
    bridge = GateBridge(settings, None, on_gate=flaky)  # type: ignore[arg-type]
    await bridge.start()
    try:
        spec = BenchmarkRunSpec.model_validate(
            {
                "target": {"model": "m"},
                "load": {"mode": "concurrency", "concurrency": 1},
                "phases": {"profiling": {"requests": 1}},
                "gates": {"baseline": False, "timeout": "1s"},
            }
        )
        await bridge.register(Run(RUN, "ns", spec, workers=1), {})
        reply = await ask(bridge.coordinator, clients, 0, workers=1)
        assert isinstance(reply, GateGranted)
        assert calls == ["START", "START", "START"]  # persisted on the third try, then granted
        # the start lead counts from the write that succeeded, not from when the gate closed
        assert reply.start_at_ns >= persisted_ns[0] + START_LEAD_S * 1e9 / 2
    finally:
        await bridge.close()


async def test_bridge_reads_a_targets_agents_once_for_runs_admitted_together() -> None:
    """40 runs a second on one server: one lookup of its agents, not 40; when the workers are
    ready (``fresh``) the agents are read again."""
    from benchop.api.models import BenchmarkRunSpec
    from benchop.operator.gatebridge import GateBridge
    from benchop.operator.settings import OperatorSettings

    @dataclass
    class Run:
        key: str
        namespace: str
        spec: BenchmarkRunSpec
        workers: int

    target = {"metadata": {"name": "vllm-0"}, "spec": {"nodeName": "gpu-a"}}
    agent = {
        "metadata": {"name": "agent-a"},
        "spec": {"nodeName": "gpu-a"},
        "status": {"phase": "Running", "podIP": "10.0.0.7"},
    }

    class Api:
        def __init__(self) -> None:
            self.lists: list[str | None] = []

        async def list(self, res: object, namespace: str | None, **_: object) -> list[object]:
            self.lists.append(namespace)
            return [target] if namespace == "ns" else [agent]

    async def never(run: object, boundary: str, record: object) -> bool:
        raise AssertionError("not called")

    api = Api()
    settings = OperatorSettings(gate_port=0, agent_namespace="benchop-system")
    bridge = GateBridge(settings, api, on_gate=never)  # type: ignore[arg-type]
    spec = BenchmarkRunSpec.model_validate(
        {
            "target": {"model": "m", "podSelector": {"matchLabels": {"app": "vllm"}}},
            "load": {"mode": "concurrency", "concurrency": 1},
            "phases": {"profiling": {"requests": 1}},
        }
    )
    for i in range(40):
        await bridge.register(Run(f"ns.r{i}.u", "ns", spec, workers=1), {})
    assert api.lists == ["ns", "benchop-system"]  # the target's pods, then the agents: once
    await bridge.register(Run("ns.r0.u", "ns", spec, workers=1), {}, fresh=True)
    assert api.lists == ["ns", "benchop-system"] * 2
    endpoints = bridge.coordinator._runs["ns.r0.u"].agents  # type: ignore[attr-defined]
    assert [(a.name, a.endpoint) for a in endpoints] == [
        ("agent-a", f"tcp://10.0.0.7:{settings.agent_port}")
    ]
