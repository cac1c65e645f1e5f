"""The worker's side of the phase gates: ask the coordinator for START/END and wait.

A worker sends ``GateRequest(run, phase_id, boundary, worker, workers)`` over a
:class:`~benchagent.transport.RequestClient` (DEALER, lazy-pirate retries; the
request is idempotent by ``phase_id``) and waits for ``GateGranted``; it then
sleeps until the grant's ``start_at_ns`` (wall clock) so every worker passes
the boundary together. The coordinator may hold the reply for as long as the
slowest worker needs to finish warmup, so each attempt waits ``attempt_s`` and
the request is repeated until ``wait_s`` is spent; then, like after a
``GateDenied``, the worker goes on ungated and says so (``GateResult``).
Without an endpoint the gates are skipped (``status="ungated"``).

Before anything else a worker asks for its *base* (:meth:`GateClient.resume`,
:mod:`benchop.core.resume`): the last COMPLETE snapshot of its index, which the coordinator
gives once no earlier pod of the index is still running (``wait``: asked again every
``RESUME_POLL_S``). No reply within ``wait_s``, or a ``denied``: no base.

    gate = GateClient("tcp://127.0.0.1:5555", run="r", worker=0, workers=2)
    result = await gate.pass_gate("START")
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from benchagent.transport import CurveEphemeral, RequestClient, RequestTimeout
from benchagent.wire import (
    Boundary,
    GateDenied,
    GateGranted,
    GateRequest,
    MetricsSnapshot,
    ResumeReply,
    ResumeRequest,
)

__all__ = ["PROFILING", "GateClient", "GateResult"]

log = logging.getLogger(__name__)

PROFILING = "profiling"  # the phase id of the gated phase
_MAX_START_DELAY_S = 60.0  # a start_at further ahead than this is a clock problem
RESUME_POLL_S = 0.5  # a ``wait`` answer is asked again after this


@dataclass(frozen=True, slots=True)
class GateResult:
    """How a boundary was passed."""

    boundary: Boundary
    status: Literal["granted", "denied", "timeout", "ungated"]
    start_at_ns: int = 0
    baseline_captured: bool = False
    missing: list[str] = field(default_factory=list)
    reason: str = ""


class GateClient:
    """Asks for gates on behalf of one worker; ``endpoint=None`` passes every gate at once."""

    def __init__(
        self,
        endpoint: str | None,
        *,
        run: str,
        worker: int,
        workers: int,
        attempt_s: float = 5.0,
        wait_s: float = 900.0,
        curve: CurveEphemeral | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._run = run
        self._worker = worker
        self._workers = workers
        self._attempt_s = attempt_s
        self._wait_s = wait_s
        self._client: RequestClient | None = (
            RequestClient(endpoint, curve=curve) if endpoint else None
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def resume(self, incarnation: str) -> MetricsSnapshot | None:
        """The base of this worker's index (None: nothing to resume, or no coordinator)."""
        client = self._client
        if client is None:
            return None
        req = ResumeRequest(
            run=self._run, worker=self._worker, workers=self._workers, incarnation=incarnation
        )
        deadline = time.monotonic() + self._wait_s
        waited = False
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                reply = await client.request(
                    req, timeout=min(self._attempt_s, remaining), retries=0
                )
            except RequestTimeout:
                log.info("resume: no answer from %s yet", self.endpoint)
                continue
            if isinstance(reply, ResumeReply) and reply.status == "ready":
                return reply.base
            if isinstance(reply, ResumeReply) and reply.status == "denied":
                log.warning("resume denied: %s; starting afresh", reply.reason)
                return None
            if not waited:
                log.info(
                    "resume: an earlier pod of worker %d is still running; waiting", self._worker
                )
                waited = True
            await asyncio.sleep(min(RESUME_POLL_S, max(remaining, 0)))
        log.warning("resume: no answer within %.0fs; starting afresh", self._wait_s)
        return None

    async def pass_gate(self, boundary: Boundary, phase_id: str = PROFILING) -> GateResult:
        """Ask for ``boundary`` and return once it may be passed (never raises on the wire)."""
        client = self._client
        if client is None:
            return GateResult(boundary, "ungated")
        req = GateRequest(
            run=self._run,
            phase_id=phase_id,
            boundary=boundary,
            worker=self._worker,
            workers=self._workers,
        )
        deadline = time.monotonic() + self._wait_s
        started = time.monotonic()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "gate %s: no grant from %s within %.0fs; going on ungated",
                    boundary,
                    self.endpoint,
                    self._wait_s,
                )
                return GateResult(boundary, "timeout", reason="no grant before the deadline")
            try:
                reply = await client.request(
                    req, timeout=min(self._attempt_s, remaining), retries=0
                )
            except RequestTimeout:
                waited = time.monotonic() - started
                log.info("gate %s: still waiting for the coordinator (%.0fs)", boundary, waited)
                continue
            if isinstance(reply, GateGranted) and reply.boundary == boundary:
                delay = (reply.start_at_ns - time.time_ns()) / 1e9
                if delay > _MAX_START_DELAY_S:
                    log.warning("gate %s: start_at is %.0fs ahead; not waiting", boundary, delay)
                elif delay > 0:
                    await asyncio.sleep(delay)
                return GateResult(
                    boundary,
                    "granted",
                    start_at_ns=reply.start_at_ns,
                    baseline_captured=reply.baseline_captured,
                    missing=list(reply.missing),
                )
            if isinstance(reply, GateDenied):
                log.warning("gate %s denied: %s; going on ungated", boundary, reply.reason)
                return GateResult(boundary, "denied", reason=reply.reason)
            log.warning(
                "gate %s: unexpected reply %s; asking again", boundary, type(reply).__name__
            )
            await asyncio.sleep(min(1.0, max(remaining, 0)))
