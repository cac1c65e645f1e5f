"""The gate coordinator inside the operator, and the persistence of gate outcomes in status.

:class:`GateBridge` runs one :class:`benchop.gates.GateCoordinator` on ``--gate-port`` (the
ROUTER every worker of every run dials). For each run it resolves the agents to ask — the
target's ``podSelector`` -> its pods -> their node names -> the agent pods on those nodes (by
``--agent-selector``) -> ``tcp://<podIP>:<--agent-port>`` — and registers the run.

When a gate closes, the coordinator hands the bridge the outcome; the bridge turns it into a
bounded record (:func:`~benchop.core.gaterecords.gate_record`) and awaits its ``on_gate``
(``handlers.runs.record_gate``), which writes it to ``status.gates.<START|END>`` together with
the conditions (BaselineStartCaptured / Profiling / BaselineEndCaptured / TelemetryDegraded)
and the phase — *before* the workers are granted. After an operator restart the bridge seeds
the coordinator from ``status.gates`` (``restore_gate``), so a retrying worker is answered from
status and a gate never runs twice (no second barrier, no second baseline request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import kopf

from benchagent.transport import CurveClient, CurveServer
from benchop.api.models import BenchmarkRunSpec, LabelSelector
from benchop.core.gaterecords import GateOutcome, gate_record
from benchop.core.selectors import label_selector
from benchop.gates import AgentEndpoint, GateCoordinator
from benchop.operator.curvekeys import KeyFiles
from benchop.operator.k8s import POD, ApiError, KubeApi
from benchop.operator.settings import OperatorSettings
from benchop.operator.snapshots import retry_bind

log = logging.getLogger(__name__)


class GatedRun(Protocol):
    """What the bridge needs of a run it registers."""

    @property
    def key(self) -> str: ...  # the run id its workers send

    @property
    def namespace(self) -> str: ...

    @property
    def spec(self) -> BenchmarkRunSpec: ...

    @property
    def workers(self) -> int: ...


R = TypeVar("R", bound=GatedRun)
OnGate = Callable[[R, str, Mapping[str, Any]], Awaitable[bool]]
"""``on_gate(run, boundary, record)``: persist the record; False when the run is gone."""

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
AGENTS_TTL_S = 5.0
"""How long a target's agents, once read, serve the runs being admitted."""
AGENTS_KEPT = 256
"""Targets whose agents are kept before the expired ones are dropped."""


def persist_timeout_s(settings: OperatorSettings) -> float:
    """How long the bridge tries to persist one closed gate: each attempt may last the API
    request timeout (``settings.request_timeout``), plus the pauses between attempts.

    >>> persist_timeout_s(OperatorSettings(request_timeout=30.0))
    185.0
    """
    return PERSIST_ATTEMPTS * settings.request_timeout + sum(PERSIST_BACKOFF_S)


# --------------------------------------------------------------------------- agents


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
    targets = await api.list(POD, namespace, labels=label_selector(pod_selector))
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


def gate_timeout_s(spec_s: float, cap_s: float | None) -> float:
    """A run's gate timeout: ``spec.gates.timeout``, at most ``--gate-timeout`` when set.

    An upper bound, not a default: the CRD defaults ``gates.timeout`` to 5s, so a real API
    server fills it in whenever ``gates`` is present and the operator cannot tell "unset".

    >>> gate_timeout_s(30.0, 10.0), gate_timeout_s(5.0, 10.0), gate_timeout_s(5.0, None)
    (10.0, 5.0, 5.0)
    """
    return min(spec_s, cap_s) if cap_s else spec_s


# --------------------------------------------------------------------------- the bridge


class GateBridge(Generic[R]):
    """The operator's gate coordinator on ``--gate-port`` (see the module doc).

    worker DEALER ─┐                         ┌─▶ agent ROUTER (node a)  BaselineRequest
    worker DEALER ─┼─▶ ROUTER :gate-port ────┤
    worker DEALER ─┘   GateCoordinator       └─▶ agent ROUTER (node b)  ◀─ BaselineAck
    """

    def __init__(
        self,
        settings: OperatorSettings,
        api: KubeApi,
        *,
        on_gate: OnGate[R],
        curve: KeyFiles | None = None,
    ) -> None:
        """With ``curve`` the ROUTER takes CurveZMQ from any worker key and the operator dials
        the agents with its own key, authenticating them by theirs."""
        self.settings = settings
        self.api = api
        self.on_gate = on_gate
        self._runs: dict[str, R] = {}  # registered, by key
        self._agents: dict[tuple[str, str], tuple[float, dict[str, tuple[str, str]]]] = {}
        port = settings.gate_port
        self.coordinator = GateCoordinator(
            endpoint=f"tcp://{settings.bind_host}:{port if port else '*'}",
            on_gate=self._on_gate,
            start_lead_s=START_LEAD_S,
            callback_timeout_s=persist_timeout_s(settings) + CALLBACK_MARGIN_S,
            curve=CurveServer(curve.operator_secret) if curve else None,
            agent_curve=CurveClient(curve.operator_secret, curve.agent_public) if curve else None,
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
        ctx = self._runs.get(run)
        if ctx is None:  # forgotten while its gate closed: nothing to persist
            return
        record = gate_record(outcome)
        # Persist before the coordinator grants: a restarted operator answers from status.
        # Granting unpersisted (after every attempt, or the whole budget) beats blocking the
        # workers; only a restart before the next write could then run this gate again.
        try:
            async with asyncio.timeout(persist_timeout_s(self.settings)):
                for attempt in range(PERSIST_ATTEMPTS):
                    try:
                        await self.on_gate(ctx, outcome.boundary, record)
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

    async def register(self, ctx: R, restored: Mapping[str, Any], *, fresh: bool = False) -> None:
        """Register a run: resolve its agents, seed the gates that already closed.

        The agents of a target are read at most every ``AGENTS_TTL_S`` for runs being admitted
        (40 runs a second on one server: one lookup, not 40); ``fresh`` reads them now (the
        workers are ready and the START gate comes next)."""
        spec = ctx.spec
        timeout_s = gate_timeout_s(spec.gates.timeout.seconds, self.settings.gate_timeout_s)
        agents: dict[str, tuple[str, str]] = {}
        if spec.gates.baseline:
            agents = await self._resolve(ctx.namespace, spec.target.pod_selector, fresh)
        self._runs[ctx.key] = ctx
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

    async def _resolve(
        self, namespace: str, pod_selector: LabelSelector | None, fresh: bool
    ) -> dict[str, tuple[str, str]]:
        key = (namespace, label_selector(pod_selector))
        now = time.monotonic()
        cached = self._agents.get(key)
        if cached is not None and not fresh and now < cached[0]:
            return cached[1]
        agents = await resolve_agents(
            self.api,
            namespace=namespace,
            pod_selector=pod_selector,
            agent_selector=self.settings.agent_selector,
            agent_namespace=self.settings.agent_namespace,
            agent_port=self.settings.agent_port,
        )
        if len(self._agents) >= AGENTS_KEPT:
            self._agents = {k: v for k, v in self._agents.items() if now < v[0]}
        self._agents[key] = (now + AGENTS_TTL_S, agents)
        return agents

    def forget(self, key: str) -> None:
        self._runs.pop(key, None)
        self.coordinator.forget_run(key)
