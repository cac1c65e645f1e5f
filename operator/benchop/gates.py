"""The gate coordinator: a barrier over a run's workers plus the GPU baseline handshake.

Used in-process by local mode and by the operator (``operator.gatebridge``).

    worker 0 DEALER ─┐  GateRequest                     BaselineRequest ┌─▶ agent a ROUTER
    worker 1 DEALER ─┼────────────▶ ROUTER  GateCoordinator ────────────┤
    worker N DEALER ─┘ ◀────────────                    ◀────────────── └─▶ agent b ROUTER
                        GateGranted{start_at_ns}          BaselineAck

A gate is ``(run, phase_id, boundary)``. It closes when every worker of the run
(``register_run(..., workers=N)``) has asked: then every agent is sent a
``BaselineRequest`` concurrently (each over a client of this handshake's own,
so runs whose gates close together never queue on a shared agent) and acks are
collected until the run's timeout (an agent that is down, slow or refuses never
holds the gate past it; it is listed in ``missing``), the :class:`GateOutcome`
is handed to the optional ``on_gate(run, outcome)`` callback (awaited: the
operator writes status there), then recorded, and every waiting worker gets
``GateGranted`` with one common ``start_at_ns`` a short lead ahead (counted
again from the callback's end when the callback ate it), so all workers pass
together however long the callback took.

Idempotent by ``(run, phase_id, boundary)``: once closed, any later or retried
request is answered from the recorded outcome and the handshake never runs
again; ``restore_gate`` seeds outcomes (from status, after an operator
restart). Requests for an unregistered run get ``GateDenied``.

A ``ResumeRequest`` (a worker starting, :mod:`benchop.core.resume`) of a registered run is
answered at once by ``on_resume`` (the operator: from the snapshots it holds), or ``ready``
with no base without one; an unregistered run's is ``denied``.

    coordinator = GateCoordinator(on_gate=record)
    await coordinator.start()              # binds tcp://127.0.0.1:* ; see .endpoint
    coordinator.register_run("ns/run", workers=2, agents=[AgentEndpoint("a", endpoint=ep)],
                             timeout_s=5.0, baseline=True)
    ...
    await coordinator.close()
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from benchagent.transport import (
    ANY_LOCAL_PORT,
    CurveClient,
    CurveServer,
    RequestClient,
    RequestServer,
)
from benchagent.wire import (
    BaselineAck,
    BaselineRequest,
    Boundary,
    GateDenied,
    GateGranted,
    GateRequest,
    Message,
    ResumeReply,
    ResumeRequest,
)
from benchop.core.gaterecords import GateKey, GateOutcome

log = logging.getLogger(__name__)

OnGate = Callable[[str, "GateOutcome"], Awaitable[None]]
"""``on_gate(run, outcome)``: awaited once per closed gate, before the workers are granted."""
OnResume = Callable[[ResumeRequest], ResumeReply]
"""``on_resume(request)``: the answer to a worker's ``ResumeRequest`` of a registered run
(:mod:`benchop.core.resume`); without it every worker starts afresh (local mode)."""


@dataclass(frozen=True)
class AgentEndpoint:
    """A node agent to ask for baselines: its name, node and baseline (ROUTER) endpoint."""

    name: str
    node: str = ""
    endpoint: str = ""
    gpus: list[str] | None = None  # GPU UUIDs to sample; None means every GPU of the node


@dataclass
class _Gate:
    """A gate some workers asked for that has not closed yet."""

    result: asyncio.Future[GateOutcome | None]  # None: the run was forgotten
    first_at: float  # loop time of the first request
    arrived: set[int] = field(default_factory=set)
    closing: asyncio.Task[None] | None = None


@dataclass
class _Run:
    name: str
    workers: int
    agents: list[AgentEndpoint]
    timeout_s: float
    baseline: bool
    pending: dict[GateKey, _Gate] = field(default_factory=dict)
    outcomes: dict[GateKey, GateOutcome] = field(default_factory=dict)


class GateCoordinator:
    """Serves GateRequests on a ROUTER; see the module docstring for the protocol.

    ``start_lead_s`` is how far ahead of the grant ``start_at_ns`` lies: the
    outcome ``on_gate`` gets plans it ``start_lead_s`` after the gate closed; if
    the callback left less than half of that lead, the outcome recorded and
    granted moves it to ``start_lead_s`` after the callback returned (a slow
    status write never leaves the common start in the past).
    ``callback_timeout_s`` bounds ``on_gate``: a callback that fails or hangs
    is logged and the workers are granted anyway (a caller that persists must
    pass a bound longer than its own retries).
    """

    def __init__(
        self,
        endpoint: str = ANY_LOCAL_PORT,
        *,
        on_gate: OnGate | None = None,
        on_resume: OnResume | None = None,
        curve: CurveServer | None = None,
        agent_curve: CurveClient | None = None,
        start_lead_s: float = 0.05,
        callback_timeout_s: float = 10.0,
    ) -> None:
        self._bind = endpoint
        self._on_gate = on_gate
        self.on_resume = on_resume  # may be set after construction (the operator's services)
        self._curve = curve
        self._agent_curve = agent_curve
        self._lead_ns = int(start_lead_s * 1e9)
        self.callback_timeout_s = callback_timeout_s
        self._runs: dict[str, _Run] = {}
        self._server: RequestServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.handshakes = 0  # baseline handshakes run (one per closed gate with agents)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the ROUTER and start serving."""
        if self._server is not None:
            return
        self._server = RequestServer(self._bind, curve=self._curve)
        self._serve_task = asyncio.create_task(self._server.serve(self.handle), name="gates")

    @property
    def endpoint(self) -> str:
        """The bound endpoint workers dial (real port), once started."""
        if self._server is None:
            raise RuntimeError("GateCoordinator.start() first")
        return self._server.endpoint

    async def close(self) -> None:
        """Stop serving; gates still closing are cancelled (their agent clients closed)."""
        tasks = [t for t in (self._serve_task, *self._closing) if t is not None]
        for task in tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._server = None
        self._serve_task = None

    @property
    def malformed_frames(self) -> int:
        """Frames that were not a message, counted and dropped (0 before ``start``)."""
        return self._server.codec.decode_errors if self._server is not None else 0

    # ------------------------------------------------------------------ runs

    def register_run(
        self,
        run: str,
        *,
        workers: int,
        agents: Sequence[AgentEndpoint],
        timeout_s: float,
        baseline: bool,
    ) -> None:
        """Register (or update) a run; recorded outcomes and waiting workers are kept."""
        if workers < 1:
            raise ValueError(f"run {run}: workers must be >= 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"run {run}: timeout_s must be > 0, got {timeout_s}")
        names = [a.name for a in agents]
        if len(set(names)) != len(names):
            raise ValueError(f"run {run}: agent names must be unique, got {names}")
        known = self._runs.get(run)
        self._runs[run] = _Run(
            name=run,
            workers=workers,
            agents=list(agents),
            timeout_s=timeout_s,
            baseline=baseline,
            pending=known.pending if known else {},
            outcomes=known.outcomes if known else {},
        )
        if known:  # fewer workers may complete a waiting barrier
            for key, gate in list(self._runs[run].pending.items()):
                self._maybe_close(self._runs[run], key, gate)

    def restore_gate(
        self,
        run: str,
        outcome: GateOutcome | None = None,
        *,
        phase_id: str = "",
        boundary: str = "START",
        start_at_ns: int = 0,
        baseline_captured: bool = False,
        missing: Sequence[str] = (),
    ) -> GateOutcome:
        """Record a gate as closed without running it: ``outcome``, or its persisted fields.

        Workers waiting on it are granted at once; later requests are answered from it.
        """
        state = self._runs.get(run)
        if state is None:
            raise ValueError(f"restore_gate: run {run} is not registered")
        if outcome is None:
            if boundary not in ("START", "END"):
                raise ValueError(f"restore_gate: boundary must be START or END, got {boundary!r}")
            outcome = GateOutcome(
                run=run,
                phase_id=phase_id,
                boundary="START" if boundary == "START" else "END",
                start_at_ns=start_at_ns,
                baseline=bool(state.agents) and state.baseline,
                baseline_captured=baseline_captured,
                agents=[a.name for a in state.agents],
                missing=list(missing),
                restored=True,
            )
        state.outcomes[outcome.key] = outcome
        gate = state.pending.get(outcome.key)
        if gate is not None and gate.closing is None:
            del state.pending[outcome.key]
            gate.result.set_result(outcome)
        return outcome

    def outcomes(self, run: str) -> dict[GateKey, GateOutcome]:
        """The closed (or restored) gates of ``run`` by ``(phase_id, boundary)``."""
        state = self._runs.get(run)
        return dict(state.outcomes) if state else {}

    def forget_run(self, run: str) -> None:
        """Drop a run; workers still waiting on its gates are denied."""
        state = self._runs.pop(run, None)
        if state is None:
            return
        for gate in state.pending.values():
            if gate.closing is not None:
                gate.closing.cancel()
            if not gate.result.done():
                gate.result.set_result(None)

    # ------------------------------------------------------------------ requests

    async def handle(self, msg: Message) -> Message | None:
        """Answer one request (the RequestServer handler); waits while the barrier is open."""
        if isinstance(msg, ResumeRequest):
            return self._resume(msg)
        if not isinstance(msg, GateRequest):
            log.debug("gates: ignored a %s", type(msg).__name__)
            return None
        state = self._runs.get(msg.run)
        if state is None:
            return _denied(msg, f"run {msg.run!r} is not registered (yet)")
        if not 0 <= msg.worker < state.workers:
            return _denied(msg, f"worker {msg.worker} out of range for {state.workers} workers")
        if msg.workers != state.workers:
            log.warning(
                "run %s: worker %d believes there are %d workers, registered %d",
                msg.run,
                msg.worker,
                msg.workers,
                state.workers,
            )
        key: GateKey = (msg.phase_id, msg.boundary)
        done = state.outcomes.get(key)
        if done is not None:
            return _granted(done, msg.worker)
        gate = state.pending.get(key)
        if gate is None:
            loop = asyncio.get_running_loop()
            gate = _Gate(result=loop.create_future(), first_at=loop.time())
            state.pending[key] = gate
        gate.arrived.add(msg.worker)
        self._maybe_close(state, key, gate)
        try:
            outcome = await asyncio.shield(gate.result)
        except Exception as exc:  # closing the gate failed (a bug): do not leave workers waiting
            return _denied(msg, f"gate failed: {exc!r}")
        if outcome is None:
            return _denied(msg, f"run {msg.run!r} was forgotten")
        return _granted(outcome, msg.worker)

    def _resume(self, msg: ResumeRequest) -> ResumeReply:
        state = self._runs.get(msg.run)
        if state is None or not 0 <= msg.worker < state.workers:
            reason = f"run {msg.run!r} worker {msg.worker} is not registered"
            return ResumeReply(run=msg.run, worker=msg.worker, status="denied", reason=reason)
        if self.on_resume is None:
            return ResumeReply(run=msg.run, worker=msg.worker, status="ready")
        return self.on_resume(msg)

    def _maybe_close(self, state: _Run, key: GateKey, gate: _Gate) -> None:
        if gate.closing is None and len(gate.arrived) >= state.workers:
            task = asyncio.create_task(self._close_gate(state, key, gate))
            gate.closing = task
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            task.add_done_callback(lambda t: _fail_waiters(t, gate))

    async def _close_gate(self, state: _Run, key: GateKey, gate: _Gate) -> None:
        loop = asyncio.get_running_loop()
        barrier_s = loop.time() - gate.first_at
        phase_id, boundary = key
        acks: list[BaselineAck] = []
        missing: list[str] = []
        handshake_s = 0.0
        if state.baseline and state.agents:
            started = loop.time()
            acks, missing = await self._handshake(state, phase_id, boundary)
            handshake_s = loop.time() - started
        now = time.time_ns()
        outcome = GateOutcome(
            run=state.name,
            phase_id=phase_id,
            boundary=boundary,
            start_at_ns=now + self._lead_ns,
            baseline=state.baseline and bool(state.agents),
            baseline_captured=(
                state.baseline
                and bool(state.agents)
                and not missing
                and all(a.success for a in acks)
            ),
            agents=[a.name for a in state.agents] if state.baseline else [],
            acks=acks,
            missing=missing,
            closed_at_ns=now,
            barrier_s=barrier_s,
            handshake_s=handshake_s,
        )
        log.info(
            "run %s gate %s/%s closed: %d worker(s), barrier %.3fs, %d/%d agent(s) acked "
            "in %.3fs%s",
            state.name,
            phase_id,
            boundary,
            len(gate.arrived),
            barrier_s,
            len(acks),
            len(outcome.agents),
            handshake_s,
            f", missing {', '.join(missing)}" if missing else "",
        )
        if self._on_gate is not None:
            try:
                async with asyncio.timeout(self.callback_timeout_s):
                    await self._on_gate(state.name, outcome)
            except Exception:  # a status write failing must not hold the workers
                log.exception("run %s gate %s/%s: on_gate failed", state.name, phase_id, boundary)
        # Recorded only now: a worker retrying during the callback waits on the pending gate
        # (granted after the write, like the others) instead of being answered unpersisted.
        now = time.time_ns()
        if outcome.start_at_ns < now + self._lead_ns // 2:  # the callback ate the lead
            outcome = dataclasses.replace(outcome, start_at_ns=now + self._lead_ns)
        state.outcomes[key] = outcome
        state.pending.pop(key, None)
        if not gate.result.done():
            gate.result.set_result(outcome)

    async def _handshake(
        self, state: _Run, phase_id: str, boundary: Boundary
    ) -> tuple[list[BaselineAck], list[str]]:
        """Ask every agent at once; return the acks in time and the agents missing."""
        asks = {
            agent.name: asyncio.create_task(
                self._ask(
                    agent,
                    BaselineRequest(
                        request_id=uuid.uuid4().hex,
                        run=state.name,
                        phase_id=phase_id,
                        boundary=boundary,
                        gpus=agent.gpus,
                    ),
                    state.timeout_s,
                )
            )
            for agent in state.agents
        }
        self.handshakes += 1
        _, late = await asyncio.wait(asks.values(), timeout=state.timeout_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        acks: list[BaselineAck] = []
        missing: list[str] = []
        for name, task in asks.items():
            if task in late:
                log.warning(
                    "run %s: agent %s did not ack within %.1fs", state.name, name, state.timeout_s
                )
                missing.append(name)
                continue
            exc = task.exception()
            if exc is not None:
                log.warning(
                    "run %s: baseline request to agent %s failed: %r", state.name, name, exc
                )
                missing.append(name)
                continue
            ack = task.result()
            if ack is None:
                missing.append(name)
            else:
                acks.append(ack)
        return acks, missing

    async def _ask(
        self, agent: AgentEndpoint, req: BaselineRequest, timeout_s: float
    ) -> BaselineAck | None:
        # A client of its own: RequestClient serialises its requests, so a client shared by
        # runs would queue one run's request behind another's attempts at the same agent.
        client = RequestClient(agent.endpoint, curve=self._agent_curve)
        try:
            # Three attempts fit in the timeout; the caller cancels what is left at the deadline.
            reply = await client.request(
                req, timeout=max(timeout_s / 3, 0.05), retries=2, backoff=0.02
            )
        finally:
            client.close()
        if (
            isinstance(reply, BaselineAck)
            and reply.request_id == req.request_id
            and reply.boundary == req.boundary
        ):
            return reply
        log.warning("agent %s answered %r to a BaselineRequest: not an ack", agent.name, reply)
        return None


def _fail_waiters(task: asyncio.Task[None], gate: _Gate) -> None:
    """If closing a gate crashed, log it and hand the error to the waiting workers."""
    if task.cancelled() or gate.result.done():
        return
    exc = task.exception()
    if exc is not None:
        log.error("closing a gate failed", exc_info=exc)
        gate.result.set_exception(exc)


def _granted(outcome: GateOutcome, worker: int) -> GateGranted:
    return GateGranted(
        run=outcome.run,
        phase_id=outcome.phase_id,
        boundary=outcome.boundary,
        worker=worker,
        start_at_ns=outcome.start_at_ns,
        baseline_captured=outcome.baseline_captured,
        missing=list(outcome.missing),
    )


def _denied(req: GateRequest, reason: str) -> GateDenied:
    return GateDenied(
        run=req.run, phase_id=req.phase_id, boundary=req.boundary, worker=req.worker, reason=reason
    )
