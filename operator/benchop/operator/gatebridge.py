"""The gate coordinator inside the operator, and the persistence of gate outcomes in status.

:class:`GateBridge` runs one :class:`benchop.gates.GateCoordinator` on ``--gate-port`` (the
ROUTER every worker of every run dials). For each run it resolves the agents to ask — the
target's ``podSelector`` -> its pods -> their node names -> the agent pods on those nodes (by
``--agent-selector``) -> ``tcp://<podIP>:<--agent-port>`` — and registers the run.

When a gate closes, the coordinator's ``on_gate`` callback gets the outcome; the bridge turns it
into a bounded record (:func:`gate_record`) and awaits ``record_gate`` (handlers.runs), which
writes it to ``status.gates.<START|END>`` together with the conditions (BaselineStartCaptured /
Profiling / BaselineEndCaptured / TelemetryDegraded) and the phase — *before* the workers are
granted. After an operator restart the bridge seeds the coordinator from ``status.gates``
(``restore_gate``), so a retrying worker is answered from status and a gate never runs twice
(no second barrier, no second baseline request to the agents).

:func:`gpu_from_status` turns the persisted START/END samples into ``results.gpu``;
:func:`profiling_window` gives the window between the two gates (for the Prometheus query).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import kopf

from benchagent.wire import BaselineAck, GpuSample
from benchop.api.conditions import now_rfc3339
from benchop.api.models import GpuResults, LabelSelector
from benchop.gates import AgentEndpoint, GateCoordinator, GateOutcome
from benchop.gpuresults import gpu_results
from benchop.operator.k8s import POD, ApiError, KubeApi
from benchop.operator.settings import OperatorSettings
from benchop.operator.snapshots import retry_bind

log = logging.getLogger(__name__)

OnGate = Callable[[str, str, Mapping[str, Any]], Awaitable[bool]]
"""``on_gate(run_key, boundary, record)``: persist the record; False when the run is gone."""

BIND_WAIT_S = 5.0
"""How long start() retries binding --gate-port while it is still held."""
PERSIST_ATTEMPTS = 6
"""Tries to write a closed gate to status before granting anyway."""
PERSIST_BACKOFF_S = (0.2, 0.4, 0.8, 1.6, 2.0)
"""Pauses between those tries."""
CALLBACK_MARGIN_S = 5.0
"""The coordinator's bound on ``on_gate`` exceeds the bridge's own persist budget by this, so
the bridge (which logs what it gave up on) always decides, never a cancellation mid-write."""
START_LEAD_S = 0.25
"""How far after the gate's status write the workers start: the grants reach pods on other
nodes first."""


def persist_timeout_s(settings: OperatorSettings) -> float:
    """How long the bridge tries to persist one closed gate: each attempt may last the API
    request timeout (``settings.request_timeout``), plus the pauses between attempts.

    >>> persist_timeout_s(OperatorSettings(request_timeout=30.0))
    185.0
    """
    return PERSIST_ATTEMPTS * settings.request_timeout + sum(PERSIST_BACKOFF_S)


MAX_SAMPLES = 64
"""GPU samples kept per gate in status (bounded status; beyond that GPUs are dropped)."""


# --------------------------------------------------------------------------- agents


def selector_string(selector: LabelSelector) -> str:
    """A LabelSelector as a ``labelSelector`` query string.

    >>> selector_string(LabelSelector(match_labels={"app": "vllm"}))
    'app=vllm'
    """
    parts = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for req in selector.match_expressions or []:
        values = ",".join(req.values or [])
        if req.operator == "In":
            parts.append(f"{req.key} in ({values})")
        elif req.operator == "NotIn":
            parts.append(f"{req.key} notin ({values})")
        elif req.operator == "Exists":
            parts.append(req.key)
        else:
            parts.append(f"!{req.key}")
    return ",".join(parts)


async def resolve_agents(
    api: KubeApi,
    *,
    namespace: str,
    pod_selector: LabelSelector | None,
    agent_selector: str,
    agent_namespace: str | None,
    agent_port: int,
) -> dict[str, tuple[str, str]]:
    """``{agent pod name: (node, tcp://podIP:port)}`` of the agents on the target's nodes."""
    if pod_selector is None:
        return {}
    targets = await api.list(POD, namespace, labels=selector_string(pod_selector))
    nodes = {p.get("spec", {}).get("nodeName") for p in targets} - {None, ""}
    if not nodes:
        return {}
    agents = await api.list(POD, agent_namespace, labels=agent_selector)
    out = {}
    for pod in agents:
        node = pod.get("spec", {}).get("nodeName")
        ip = (pod.get("status") or {}).get("podIP")
        if node in nodes and ip and (pod.get("status") or {}).get("phase") == "Running":
            out[pod["metadata"]["name"]] = (node, f"tcp://{ip}:{agent_port}")
    return out


# --------------------------------------------------------------------------- persistence


def _sample_record(s: GpuSample) -> dict[str, Any]:
    return {
        "uuid": s.uuid,
        "index": s.index,
        "timestampNs": s.timestamp_ns,
        "util": s.gpu_util_pct,
        "memUsed": s.mem_used_bytes,
        "powerW": s.power_w,
        "energyMj": s.energy_mj,
        **({} if s.util_integral_pct_s is None else {"utilIntegral": s.util_integral_pct_s}),
    }


def gate_record(
    *,
    phase_id: str,
    start_at_ns: int,
    baseline: bool,
    agents: Sequence[str],
    missing: Sequence[str],
    acks: Sequence[BaselineAck],
    baseline_captured: bool | None = None,
    closed_at: str | None = None,
    closed_at_ns: int = 0,
) -> dict[str, Any]:
    """The bounded ``status.gates.<boundary>`` record of a closed gate.

    ``closedAtNs`` (wall clock, when the last ack arrived or the timeout passed) is written when
    known (0: not known): :func:`gate_instant` falls back on it when no agent sampled.
    """
    kept = 0
    ack_records = []
    for ack in acks:
        gpus = []
        for s in ack.samples:
            if s.error is None and kept < MAX_SAMPLES:
                gpus.append(_sample_record(s))
                kept += 1
        rec: dict[str, Any] = {
            "agent": ack.agent,
            "node": ack.node,
            "success": ack.success,
            "simulated": ack.simulated,
            "gpus": gpus,
        }
        if ack.error:
            rec["error"] = ack.error[:200]
        ack_records.append(rec)
    record: dict[str, Any] = {
        "phaseId": phase_id,
        "startAtNs": start_at_ns,
        "baseline": baseline,
        "baselineCaptured": (
            baseline and not missing if baseline_captured is None else baseline_captured
        ),
        "agents": sorted(agents),
        "missing": sorted(missing),
        "simulated": any(a.simulated for a in acks),
        "closedAt": closed_at or now_rfc3339(),
        "acks": ack_records,
    }
    if closed_at_ns:
        record["closedAtNs"] = closed_at_ns
    return record


def acks_from_record(record: Mapping[str, Any], boundary: str) -> list[BaselineAck]:
    """The BaselineAcks of a persisted record (only the fields results need are kept)."""
    out = []
    for a in record.get("acks") or []:
        samples = [
            GpuSample(
                index=int(g.get("index", 0)),
                uuid=str(g["uuid"]),
                name="",
                timestamp_ns=int(g["timestampNs"]),
                gpu_util_pct=float(g["util"]),
                mem_copy_util_pct=0.0,
                mem_used_bytes=int(g["memUsed"]),
                mem_total_bytes=0,
                power_w=float(g.get("powerW", 0.0)),
                power_limit_w=0.0,
                energy_mj=int(g["energyMj"]),
                temperature_c=0.0,
                sm_clock_mhz=0,
                mem_clock_mhz=0,
                util_integral_pct_s=(
                    float(g["utilIntegral"]) if g.get("utilIntegral") is not None else None
                ),
            )
            for g in a.get("gpus") or []
        ]
        out.append(
            BaselineAck(
                request_id="",
                run="",
                phase_id=str(record.get("phaseId", "")),
                boundary="START" if boundary == "START" else "END",
                agent=str(a["agent"]),
                node=str(a.get("node", "")),
                success=bool(a.get("success")),
                error=a.get("error"),
                simulated=bool(a.get("simulated")),
                samples=samples,
            )
        )
    return out


def gpu_from_status(gates: Mapping[str, Any], *, output_tokens: int) -> GpuResults | None:
    """``results.gpu`` from ``status.gates`` (None without both gates or without agents)."""
    start, end = gates.get("START"), gates.get("END")
    if not start or not end:
        return None
    expected = set(start.get("agents") or []) | set(end.get("agents") or [])
    if not expected:
        return None
    return gpu_results(
        acks_from_record(start, "START"),
        acks_from_record(end, "END"),
        output_tokens=output_tokens,
        expected_agents=sorted(expected),
    )


def gate_instant(record: Mapping[str, Any]) -> float | None:
    """When a closed gate's baselines were read (unix s), or None if the record cannot say.

    The mean of its GPU samples' timestamps when agents sampled (so a Prometheus window between
    two gates covers exactly the acks' END - START window); else when the gate closed
    (``closedAtNs``); else the instant the workers were released (``startAtNs``).
    """
    stamps = [
        int(g["timestampNs"])
        for a in record.get("acks") or []
        for g in a.get("gpus") or []
        if g.get("timestampNs")
    ]
    if stamps:
        return sum(stamps) / len(stamps) / 1e9
    for key in ("closedAtNs", "startAtNs"):
        if record.get(key):
            return int(record[key]) / 1e9
    return None


def profiling_window(gates: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(start, end)`` in unix seconds between the START and END gates, None until both closed
    (or when the instants are unknown or not in order)."""
    start, end = gates.get("START"), gates.get("END")
    if not start or not end:
        return None
    t0, t1 = gate_instant(start), gate_instant(end)
    if t0 is None or t1 is None or t1 <= t0:
        return None
    return t0, t1


def gate_timeout_s(spec_s: float, cap_s: float | None) -> float:
    """A run's gate timeout: ``spec.gates.timeout``, at most ``--gate-timeout`` when set.

    An upper bound, not a default: the CRD defaults ``gates.timeout`` to 5s, so a real API
    server fills it in whenever ``gates`` is present and the operator cannot tell "unset".

    >>> gate_timeout_s(30.0, 10.0), gate_timeout_s(5.0, 10.0), gate_timeout_s(5.0, None)
    (10.0, 5.0, 5.0)
    """
    return min(spec_s, cap_s) if cap_s else spec_s


# --------------------------------------------------------------------------- the bridge


class GateBridge:
    """The operator's gate coordinator on ``--gate-port`` (see the module doc).

    worker DEALER ─┐                         ┌─▶ agent ROUTER (node a)  BaselineRequest
    worker DEALER ─┼─▶ ROUTER :gate-port ────┤
    worker DEALER ─┘   GateCoordinator       └─▶ agent ROUTER (node b)  ◀─ BaselineAck
    """

    def __init__(self, settings: OperatorSettings, api: KubeApi, *, on_gate: OnGate) -> None:
        self.settings = settings
        self.api = api
        self.on_gate = on_gate
        port = settings.gate_port
        self.coordinator = GateCoordinator(
            endpoint=f"tcp://{settings.bind_host}:{port if port else '*'}",
            on_gate=self._on_gate,
            start_lead_s=START_LEAD_S,
            callback_timeout_s=persist_timeout_s(settings) + CALLBACK_MARGIN_S,
        )
        self.endpoint = ""

    async def start(self) -> None:
        """Bind the ROUTER and serve. Register the runs in progress first (after a restart,
        a worker of an unregistered run would be denied and go on ungated)."""
        # the port may still be held by a previous operator closing it
        await retry_bind(self.coordinator.start, BIND_WAIT_S)
        self.endpoint = self.coordinator.endpoint

    async def close(self) -> None:
        await self.coordinator.close()

    async def _on_gate(self, run: str, outcome: GateOutcome) -> None:
        record = gate_record(
            phase_id=outcome.phase_id,
            start_at_ns=outcome.start_at_ns,
            baseline=outcome.baseline,
            baseline_captured=outcome.baseline_captured,
            agents=outcome.agents,
            missing=outcome.missing,
            acks=outcome.acks,
            closed_at_ns=outcome.closed_at_ns,
        )
        # Persist before the coordinator grants: a restarted operator answers from status.
        # Granting unpersisted (after every attempt, or the whole budget) beats blocking the
        # workers; only a restart before the next write could then run this gate again.
        try:
            async with asyncio.timeout(persist_timeout_s(self.settings)):
                for attempt in range(PERSIST_ATTEMPTS):
                    try:
                        await self.on_gate(run, outcome.boundary, record)
                        return
                    except (kopf.TemporaryError, ApiError) as e:
                        if attempt == PERSIST_ATTEMPTS - 1:
                            log.error("gate %s of %s not persisted: %s", outcome.boundary, run, e)
                            return
                        await asyncio.sleep(PERSIST_BACKOFF_S[attempt])
        except TimeoutError:
            log.error(
                "gate %s of %s not persisted within %.0fs",
                outcome.boundary,
                run,
                persist_timeout_s(self.settings),
            )

    async def register(self, ctx: Any, restored: Mapping[str, Any]) -> None:
        """Register a run: resolve its agents, seed the gates that already closed."""
        spec = ctx.spec
        timeout_s = gate_timeout_s(spec.gates.timeout.seconds, self.settings.gate_timeout_s)
        agents: dict[str, tuple[str, str]] = {}
        if spec.gates.baseline:
            agents = await resolve_agents(
                self.api,
                namespace=ctx.namespace,
                pod_selector=spec.target.pod_selector,
                agent_selector=self.settings.agent_selector,
                agent_namespace=self.settings.agent_namespace,
                agent_port=self.settings.agent_port,
            )
        self.coordinator.register_run(
            ctx.key,
            workers=ctx.workers,
            agents=[
                AgentEndpoint(name=n, node=node, endpoint=e)
                for n, (node, e) in sorted(agents.items())
            ],
            timeout_s=timeout_s,
            baseline=spec.gates.baseline,
        )
        for boundary, record in restored.items():
            self.coordinator.restore_gate(
                ctx.key,
                phase_id=str(record.get("phaseId", "")),
                boundary=boundary,
                start_at_ns=int(record.get("startAtNs", 0)),
                baseline_captured=bool(record.get("baselineCaptured")),
                missing=list(record.get("missing") or []),
            )

    def forget(self, key: str) -> None:
        self.coordinator.forget_run(key)
