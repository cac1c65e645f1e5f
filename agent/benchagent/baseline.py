"""The baseline server: answers a coordinator's BaselineRequest with a fresh reading.

A gate coordinator (operator or local mode) asks at each phase boundary for
the GPUs of the target's pods; the agent reads them *now* — not the
sampler's cached poll — so END - START of the energy counter is the energy
of exactly the profiling window.

    ┌──────────────────┐ BaselineRequest  ┌──────────────────────────┐
    │ coordinator(s)   │ ───────────────▶ │ BaselineServer           │──▶ reader.read()
    │ RequestClient    │ ◀─────────────── │ transport.RequestServer  │    (thread or inline)
    └──────────────────┘   BaselineAck    └──────────────────────────┘

Concurrent requests share reads, and each is answered with a read that
*started after the request arrived*, so 64 coordinators asking at once cost
one to three reads, not 64. Requests arrive in RequestServer batches, and
every request of a batch arrived before the batch is dispatched. A
non-blocking reader (``reader.blocking`` False:
:class:`~benchagent.gpu.SimulatedReader`) is read on the event loop once per
batch, while dispatching it, and the acks go out at once: no task, no thread
hop. A blocking reader (NVML) gets one task per batch (requests dispatched
before it runs join it) that reads in a thread through :class:`FreshReads`
and resolves each request's future with its ack. Malformed frames are
counted by the codec and dropped. ``success`` is True
exactly when ``error`` is None: a GPU that failed to read or a requested UUID
this node does not have makes the ack fail, with whatever samples could be
read still attached.

    server = BaselineServer(reader, agent="agent-x", node="node-1")
    task = asyncio.create_task(server.serve())
    server.endpoint   # tcp://127.0.0.1:PORT
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeGuard

import zmq.asyncio

from benchagent.gpu import GpuReader
from benchagent.sampler import UtilIntegrals
from benchagent.transport import ANY_LOCAL_PORT, CurveServer, RequestServer
from benchagent.wire import BaselineAck, BaselineRequest, GpuSample, Message

log = logging.getLogger(__name__)


def select(samples: list[GpuSample], gpus: list[str] | None) -> tuple[list[GpuSample], list[str]]:
    """The samples of the requested UUIDs (all for None), and the UUIDs not found."""
    if gpus is None:
        return samples, []
    wanted = set(gpus)
    chosen = [s for s in samples if s.uuid in wanted]
    found = {s.uuid for s in chosen}
    return chosen, [g for g in gpus if g not in found]


def ack_for(
    req: BaselineRequest,
    *,
    agent: str,
    node: str,
    simulated: bool,
    samples: list[GpuSample] | None,
    error: str | None = None,
) -> BaselineAck:
    """The ack for ``req``: filtered samples, and an error when anything is missing."""
    chosen: list[GpuSample] = []
    problems: list[str] = [] if error is None else [error]
    if samples is not None:
        chosen, missing = select(samples, req.gpus)
        if missing:
            problems.append(f"GPUs not on node {node}: {', '.join(missing)}")
        problems += [f"GPU {s.index} ({s.uuid or '?'}): {s.error}" for s in chosen if s.error]
    return BaselineAck(
        request_id=req.request_id,
        run=req.run,
        phase_id=req.phase_id,
        boundary=req.boundary,
        agent=agent,
        node=node,
        success=not problems,
        error="; ".join(problems) if problems else None,
        simulated=simulated,
        samples=chosen,
    )


class FreshReads:
    """Coalesces concurrent reads without ever serving a stale one.

    ``await read()`` returns the result of a read that started after the call:
    if no read is running one starts now; if one is running, the caller waits
    for the next one, which starts as soon as the current one ends and serves
    everyone who asked meanwhile. At most one read runs at a time (in a
    thread: NVML calls block). A read that takes longer than ``timeout_s``
    fails its callers with TimeoutError; its thread is left to finish alone
    and the next read does not wait for it.
    """

    def __init__(self, read: Callable[[], list[GpuSample]], *, timeout_s: float) -> None:
        self._read = read
        self.timeout_s = timeout_s
        self._waiting: list[asyncio.Future[list[GpuSample]]] = []  # for the next read
        self._busy = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.reads = 0

    async def read(self) -> list[GpuSample]:
        fut: asyncio.Future[list[GpuSample]] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        if not self._busy:
            self._start()
        return await fut

    def _start(self) -> None:
        waiters, self._waiting = self._waiting, []
        self._busy = True
        task = asyncio.get_running_loop().create_task(self._run(waiters))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, waiters: list[asyncio.Future[list[GpuSample]]]) -> None:
        self.reads += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                samples = await asyncio.to_thread(self._read)
        except Exception as e:  # TimeoutError or the reader's own failure
            for w in waiters:
                if not w.done():
                    w.set_exception(e)
        else:
            for w in waiters:
                if not w.done():
                    w.set_result(samples)
        finally:
            self._busy = False
            if self._waiting:
                self._start()


def reads_inline(reader: GpuReader) -> bool:
    """True when ``reader.read()`` never blocks (``reader.blocking`` is False).

    Such a reader (SimulatedReader) is read on the event loop; a blocking one
    (NVML) in a thread.
    """
    return not reader.blocking


class BaselineServer:
    """Baseline request handler on a :class:`~benchagent.transport.RequestServer`.

    ``read_timeout_s`` bounds one threaded read: a hung NVML call yields a
    failed ack instead of a coordinator waiting forever (the read thread is
    left to finish on its own). Inline reads (see :func:`reads_inline`)
    cannot hang and are not timed. With ``util_integrals`` (the agent's
    sampler's), every fresh sample carries the utilisation integral extended
    to its read time (``GpuSample.util_integral_pct_s``).
    """

    def __init__(
        self,
        reader: GpuReader,
        *,
        agent: str,
        node: str,
        endpoint: str = ANY_LOCAL_PORT,
        curve: CurveServer | None = None,
        read_timeout_s: float = 5.0,
        util_integrals: UtilIntegrals | None = None,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.reader = reader
        self.util_integrals = util_integrals
        self.agent = agent
        self.node = node
        self.read_timeout_s = read_timeout_s
        self.requests = 0
        self.failures = 0
        self.unexpected = 0
        self.inline = reads_inline(reader)
        self._reads = FreshReads(reader.read, timeout_s=read_timeout_s)
        self._batch_read: tuple[int, list[GpuSample]] | None = None  # (batch, samples)
        self._pending: list[tuple[BaselineRequest, asyncio.Future[Message | None]]] = []
        self._pending_task: asyncio.Task[None] | None = None  # not started yet
        self._tasks: set[asyncio.Task[None]] = set()
        self._server = RequestServer(endpoint, curve=curve, ctx=ctx)

    @property
    def endpoint(self) -> str:
        """The bound endpoint, with the OS-chosen port."""
        return self._server.endpoint

    @property
    def malformed_frames(self) -> int:
        return self._server.codec.decode_errors

    def _respond(self, msg: Message) -> Message | Awaitable[Message | None] | None:
        """The RequestServer handler: the ack now (inline reader) or a future of it (thread)."""
        if not self._accept(msg):
            return None
        if not self.inline:
            fut: asyncio.Future[Message | None] = asyncio.get_running_loop().create_future()
            self._pending.append((msg, fut))
            if self._pending_task is None:
                self._pending_task = asyncio.create_task(self._answer_pending())
                self._tasks.add(self._pending_task)
                self._pending_task.add_done_callback(self._tasks.discard)
            return fut
        batch = self._server.batches
        if self._batch_read is None or self._batch_read[0] != batch:
            try:
                self._batch_read = (batch, self._integrated(self.reader.read()))
            except Exception as e:  # a reader bug must still produce an answer
                log.exception("GPU read for baseline %s/%s failed", msg.run, msg.boundary)
                return self._ack(msg, None, f"GPU read failed: {e!r}")
        return self._ack(msg, self._batch_read[1], None)

    async def _answer_pending(self) -> None:
        """One threaded read for every request queued before this task ran; resolve their acks.

        Runs after the batch that created it was dispatched, so every pending
        request arrived before the read (FreshReads: one started after this call).
        """
        pending, self._pending = self._pending, []
        self._pending_task = None  # requests from now on wait for the next read
        samples: list[GpuSample] | None = None
        error: str | None = None
        try:
            samples = self._integrated(await self._reads.read())
        except TimeoutError:
            error = f"GPU read took longer than {self.read_timeout_s:g} s"
        except Exception as e:  # a reader bug must still produce an answer
            log.exception("GPU read for %d baseline requests failed", len(pending))
            error = f"GPU read failed: {e!r}"
        for msg, fut in pending:
            if not fut.done():
                fut.set_result(self._ack(msg, samples, error))

    def _integrated(self, samples: list[GpuSample]) -> list[GpuSample]:
        if self.util_integrals is None:
            return samples
        return self.util_integrals.extend(samples)

    def _accept(self, msg: Message) -> TypeGuard[BaselineRequest]:
        """Count a baseline request; count and refuse any other kind."""
        if not isinstance(msg, BaselineRequest):
            self.unexpected += 1
            log.debug("baseline server ignored a %s", type(msg).__name__)
            return False
        self.requests += 1
        return True

    def _ack(
        self, msg: BaselineRequest, samples: list[GpuSample] | None, error: str | None
    ) -> BaselineAck:
        ack = ack_for(
            msg,
            agent=self.agent,
            node=self.node,
            simulated=self.reader.simulated,
            samples=samples,
            error=error,
        )
        if not ack.success:
            self.failures += 1
            log.warning(
                "baseline %s %s/%s failed: %s", msg.boundary, msg.run, msg.phase_id, ack.error
            )
        return ack

    async def serve(self) -> None:
        """Answer requests until :meth:`close`."""
        await self._server.serve(self._respond)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._server.close()
