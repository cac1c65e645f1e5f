"""The node agent: GPU reader + sampler + exporter + pod attribution + baseline server.

One :class:`Agent` per node (the DaemonSet pod), or one in-process for local
mode and tests:

    agent = Agent(AgentConfig.local(gpu_backend="simulated"))
    await agent.start()
    await agent.wait_ready()          # first GPU sample taken
    agent.baseline_endpoint           # tcp://127.0.0.1:PORT (BaselineRequest -> BaselineAck)
    agent.metrics_url                 # http://127.0.0.1:PORT (/metrics, /healthz, /readyz)
    await agent.stop()

:func:`run_agent` runs one until SIGTERM/SIGINT (``benchop agent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchagent.baseline import BaselineServer
from benchagent.exporter import (
    AgentStats,
    ExporterServer,
    agent_registry,
    render_agent,
    render_dcgm,
)
from benchagent.gpu import Backend, GpuReader, open_reader
from benchagent.podresources import DEFAULT_SOCKET, PodAttribution
from benchagent.sampler import Sampler, Tick, check_interval
from benchagent.transport import CurveServer

log = logging.getLogger(__name__)


def default_node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``benchop agent`` can be told. Ports 0 let the OS choose."""

    gpu_backend: Backend = "auto"
    interval_s: float = 1.0
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9400
    baseline_host: str = "0.0.0.0"
    baseline_port: int = 5557
    node_name: str = ""  # "" -> $NODE_NAME or the hostname
    agent_name: str = ""  # "" -> $POD_NAME or "benchop-agent@<node>"
    pod_resources_socket: str | None = DEFAULT_SOCKET  # None disables attribution
    attribution_interval_s: float = 5.0
    curve_secret_key: Path | None = None
    curve_public_keys: Path | None = None  # dir of allowed client *.key files
    simulated_gpus: int = 8
    seed: int = 0
    history: int = 60
    read_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        check_interval(self.interval_s)
        if self.curve_public_keys is not None and self.curve_secret_key is None:
            raise ValueError("--curve-public-keys needs --curve-secret-key")

    @classmethod
    def local(cls, **overrides: Any) -> AgentConfig:
        """Loopback only, OS-chosen ports, no kubelet: for local mode and tests."""
        base = cls(
            metrics_host="127.0.0.1",
            metrics_port=0,
            baseline_host="127.0.0.1",
            baseline_port=0,
            pod_resources_socket=None,
        )
        return replace(base, **overrides)

    @property
    def node(self) -> str:
        return self.node_name or default_node_name()

    @property
    def agent(self) -> str:
        return self.agent_name or os.environ.get("POD_NAME") or f"benchop-agent@{self.node}"

    @property
    def baseline_bind(self) -> str:
        host = f"[{self.baseline_host}]" if ":" in self.baseline_host else self.baseline_host
        port = "*" if self.baseline_port == 0 else str(self.baseline_port)
        return f"tcp://{host}:{port}"


class Agent:
    """The wired agent. ``reader`` may be injected (tests); else ``open_reader``.

    ``start`` returns once every socket is bound; readiness (``/readyz``,
    :meth:`wait_ready`) follows the first sample. A reader injected by the
    caller is not closed by :meth:`stop`.
    """

    def __init__(self, config: AgentConfig, *, reader: GpuReader | None = None) -> None:
        self.config = config
        self._reader = reader
        self._owns_reader = reader is None
        self._sampler: Sampler | None = None
        self._exporter: ExporterServer | None = None
        self._baseline: BaselineServer | None = None
        self._attribution: PodAttribution | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._gpu_read_errors = 0
        self._registry = agent_registry(self.stats)

    # -- public surface --------------------------------------------------------

    @property
    def reader(self) -> GpuReader:
        if self._reader is None:
            raise RuntimeError("Agent not started")
        return self._reader

    @property
    def simulated(self) -> bool:
        return self.reader.simulated

    @property
    def sampler(self) -> Sampler:
        if self._sampler is None:
            raise RuntimeError("Agent not started")
        return self._sampler

    @property
    def baseline_endpoint(self) -> str:
        if self._baseline is None:
            raise RuntimeError("Agent not started")
        return self._baseline.endpoint

    @property
    def metrics_url(self) -> str:
        if self._exporter is None:
            raise RuntimeError("Agent not started")
        return self._exporter.url

    @property
    def ready(self) -> bool:
        return self._sampler is not None and self._sampler.ready

    async def wait_ready(self) -> None:
        """Wait for the first GPU sample (wrap in ``asyncio.timeout``)."""
        await self.sampler.wait_ready()

    async def start(self) -> None:
        """Open the reader, bind the exporter and baseline server, start polling."""
        cfg = self.config
        try:
            if self._reader is None:
                # NVML init can block for a while on a busy node: not on the loop.
                self._reader = await asyncio.to_thread(
                    open_reader, cfg.gpu_backend, simulated_gpus=cfg.simulated_gpus, seed=cfg.seed
                )
            reader = self._reader
            self._sampler = Sampler(
                reader, interval_s=cfg.interval_s, history=cfg.history, on_tick=self._on_tick
            )
            self._exporter = ExporterServer(
                cfg.metrics_host,
                cfg.metrics_port,
                render=self.render_metrics,
                ready=lambda: self.ready,
                healthy=self._healthy,
            )
            await self._exporter.start()
            curve = (
                CurveServer(cfg.curve_secret_key, cfg.curve_public_keys)
                if cfg.curve_secret_key is not None
                else None
            )
            self._baseline = BaselineServer(
                reader,
                agent=cfg.agent,
                node=cfg.node,
                endpoint=cfg.baseline_bind,
                curve=curve,
                read_timeout_s=cfg.read_timeout_s,
                util_integrals=self._sampler.integrals,
            )
            self._spawn(self._sampler.run(), "agent-sampler")
            self._spawn(self._baseline.serve(), "agent-baseline")
            if cfg.pod_resources_socket:
                self._attribution = PodAttribution(cfg.pod_resources_socket)
                self._spawn(self._attribution.run(cfg.attribution_interval_s), "agent-pods")
        except BaseException:
            await self.stop()
            raise
        log.info(
            "agent %s on node %s: %s GPUs, metrics %s, baseline %s%s",
            cfg.agent,
            cfg.node,
            "SIMULATED" if reader.simulated else "NVML",
            self.metrics_url,
            self.baseline_endpoint,
            " (CurveZMQ)" if curve else "",
        )

    async def stop(self) -> None:
        """Stop every task and close every socket; idempotent."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._baseline is not None:
            self._baseline.close()
        if self._attribution is not None:
            await self._attribution.close()
        if self._exporter is not None:
            await self._exporter.stop()
        if self._owns_reader and self._reader is not None:
            await asyncio.to_thread(self._reader.close)

    # -- metrics ---------------------------------------------------------------

    def stats(self) -> AgentStats:
        """The agent's own counters right now."""
        latest = self._sampler.latest if self._sampler else None
        up = {(str(s.index), s.uuid): s.error is None for s in latest.samples} if latest else {}
        b = self._baseline
        return AgentStats(
            simulated=self._reader.simulated if self._reader else False,
            polls=self._sampler.count if self._sampler else 0,
            poll_failures=self._sampler.failures if self._sampler else 0,
            gpu_read_errors=self._gpu_read_errors,
            baseline_requests=b.requests if b else 0,
            baseline_failures=b.failures if b else 0,
            malformed_frames=b.malformed_frames if b else 0,
            gpus_up=up,
            last_poll_s=latest.time_ns / 1e9 if latest else 0.0,
        )

    def render_metrics(self) -> str:
        """The ``/metrics`` body: DCGM families of the last poll, then ``benchop_agent_*``."""
        latest = self._sampler.latest if self._sampler else None
        owners = self._attribution.owners if self._attribution else {}
        dcgm = (
            render_dcgm(latest.samples, hostname=self.config.node, owners=owners) if latest else ""
        )
        return dcgm + render_agent(self._registry)

    # -- internals -------------------------------------------------------------

    def _on_tick(self, tick: Tick) -> None:
        self._gpu_read_errors += tick.errors

    def _healthy(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._on_task_done)
        self._tasks.append(task)

    @staticmethod
    def _on_task_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("agent task %s died", task.get_name(), exc_info=task.exception())


async def run_agent(config: AgentConfig) -> None:
    """Run an agent until SIGTERM or SIGINT, then stop it cleanly.

    After start-up the heap is frozen (``gc.freeze``): the long-lived start-up
    objects are no longer scanned by every collection.
    """
    agent = Agent(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await agent.start()
    # Everything allocated so far (modules, sockets, the reader) lives as long as the
    # process: move it out of the GC's generations so collections only scan new objects.
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
        log.info("agent stopping")
    finally:
        await agent.stop()
