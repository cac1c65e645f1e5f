"""Worker snapshots in the operator: one SUB port and the live view.

:class:`SnapshotCollector` binds the one :class:`~benchagent.transport.Subscriber` of the
operator (``--snapshot-port``); every worker of every run publishes to it. It keeps, per run and
worker, the latest snapshot and the COMPLETE one; :func:`live_status` (pure) makes the bounded
``status.live`` of a run from its latest snapshots (the run loop in ``handlers.runs`` patches
it at most once per ``--live-interval``). Final results are chosen and built by
:mod:`benchop.core.results`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import zmq

from benchagent.transport import CurveServer, Subscriber
from benchagent.wire import MetricsSnapshot
from benchop.metrics import names
from benchop.metrics.stats import merge, summarize
from benchop.operator.settings import SNAPSHOT_MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)


class SnapshotCollector:
    """The operator's SUB socket for worker snapshots (``--snapshot-port``).

    worker PUB ─┐
    worker PUB ─┼──▶ SUB (bound, tcp://<host>:<port>) ──▶ latest / complete per run
    worker PUB ─┘

    Only snapshots of the runs ``accept(run_key)`` admits are kept (the operator passes
    "the run is in progress here": ``run_key in services.runs``); the others — a stray or
    hostile publisher, a late snapshot of a run already released — are counted in
    :attr:`rejected` and dropped, so memory is bounded by the runs in progress. A message
    larger than ``max_message_bytes`` (``--snapshot-max-message-bytes``; a COMPLETE carries
    the raw latencies) is dropped by ZMQ with its sender's connection.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        accept: Callable[[str], bool] | None = None,
        max_message_bytes: int | None = MAX_MESSAGE_BYTES,
        curve: CurveServer | None = None,
    ) -> None:
        self._sub = Subscriber(
            f"tcp://{host}:{port}" if port else f"tcp://{host}:*",
            bind=True,
            accept=accept,
            max_message_bytes=max_message_bytes,
            curve=curve,
        )
        self.endpoint = self._sub.endpoint

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        accept: Callable[[str], bool] | None = None,
        max_message_bytes: int | None = MAX_MESSAGE_BYTES,
        wait_s: float = 5.0,
        curve: CurveServer | None = None,
    ) -> SnapshotCollector:
        """Bind, retrying while the port is still held (a previous operator closing it)."""

        async def bind() -> SnapshotCollector:
            return cls(host, port, accept=accept, max_message_bytes=max_message_bytes, curve=curve)

        return await retry_bind(bind, wait_s)

    def start(self) -> None:
        self._sub.start()

    def latest(self, run: str) -> dict[int, MetricsSnapshot]:
        return self._sub.latest(run)

    def complete(self, run: str) -> dict[int, MetricsSnapshot]:
        return self._sub.complete(run)

    def received_at(self, run: str) -> dict[int, float]:
        """``time.monotonic()`` when each worker's latest snapshot arrived."""
        return self._sub.received_at(run)

    @property
    def received(self) -> int:
        return self._sub.received

    @property
    def rejected(self) -> int:
        """Snapshots dropped because their run was not accepted."""
        return self._sub.rejected

    @property
    def malformed_frames(self) -> int:
        """Frames that were not a message, counted and dropped by the codec."""
        return self._sub.codec.decode_errors

    def forget(self, run: str) -> None:
        self._sub.forget(run)

    def close(self) -> None:
        self._sub.close()


T = TypeVar("T")


async def retry_bind(bind: Callable[[], Awaitable[T]], wait_s: float) -> T:
    """``await bind()``, retried every 0.1 s for up to ``wait_s`` on EADDRINUSE.

    ZMQ releases a closed socket's port asynchronously (in its I/O thread), so a new operator
    in the same process, or one started right after the old one exited, may briefly find the
    port taken.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        try:
            return await bind()
        except zmq.ZMQError as e:
            if e.errno != errno.EADDRINUSE or loop.time() >= deadline:
                raise
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- live


def _p50_ms(snaps: Sequence[MetricsSnapshot], name: str) -> float | None:
    parts = [s.series[name] for s in snaps if name in s.series and s.series[name].count]
    if not parts:
        return None
    return round(summarize(merge(parts)).p50 / 1e6, 3)


def live_status(
    snaps: Mapping[int, MetricsSnapshot], *, phase: str | None, workers_connected: int, now: str
) -> dict[str, Any]:
    """``status.live`` (camelCase, bounded) from each worker's latest snapshot."""
    items = list(snaps.values())
    counters: dict[str, int] = {}
    for s in items:
        for k, v in s.counters.items():
            counters[k] = counters.get(k, 0) + v
    elapsed = max((s.elapsed_s for s in items), default=0.0)
    ok = counters.get(names.REQUESTS_OK, 0)
    live: dict[str, Any] = {
        "updatedAt": now,
        "workersConnected": workers_connected,
        "requests": counters.get(names.REQUESTS, 0),
        "errors": counters.get(names.REQUESTS_FAILED, 0),
        "rps": round(ok / elapsed, 3) if elapsed > 0 else 0.0,
        "outputTokPerS": (
            round(counters.get(names.OUTPUT_TOKENS_TOTAL, 0) / elapsed, 3) if elapsed > 0 else 0.0
        ),
        "inFlight": sum(s.n_pending for s in items),
    }
    if phase:
        live["phase"] = phase
    for key, series in (("ttftP50Ms", names.TTFT), ("itlP50Ms", names.ITL)):
        p50 = _p50_ms(items, series)
        if p50 is not None:
            live[key] = p50
    return live
