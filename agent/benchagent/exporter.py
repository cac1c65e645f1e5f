"""Prometheus exporter: dcgm-exporter's metric names and labels, plus probes.

``/metrics`` serves, for every GPU read without error, the dcgm-exporter
families existing Grafana dashboards query (``DCGM_FI_DEV_GPU_UTIL`` ...,
labels ``gpu``, ``UUID``, ``modelName``, ``Hostname`` and, when the kubelet
says who holds the GPU, ``container``, ``namespace``, ``pod``), then the
agent's own ``benchop_agent_*`` metrics from a prometheus-client registry.
``/healthz`` is 200 while the sampler runs; ``/readyz`` is 503 until the first
sample exists.

The DCGM families are rendered by :func:`render_dcgm`, a pure function,
rather than by prometheus-client: prometheus-client renames every counter
family to ``<name>_total`` in the ``# HELP``/``# TYPE`` lines, while
dcgm-exporter exposes ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` as a counter
without the suffix. Units are dcgm-exporter's: MiB for framebuffer memory, W,
mJ, MHz, C, %.

    server = ExporterServer("127.0.0.1", 0, render=lambda: b"...", ready=lambda: True)
    await server.start();  server.url  # http://127.0.0.1:PORT
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from benchagent.dcgm import DCGM_FIELDS
from benchagent.podresources import PodRef
from benchagent.wire import GpuSample

log = logging.getLogger(__name__)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))


def gpu_labels(sample: GpuSample, hostname: str, owner: PodRef | None) -> str:
    """The ``{...}`` label block dcgm-exporter puts on one GPU's samples."""
    pairs = [
        ("gpu", str(sample.index)),
        ("UUID", sample.uuid),
        ("modelName", sample.name),
        ("Hostname", hostname),
    ]
    if owner is not None:
        pairs += [("container", owner.container), ("namespace", owner.namespace)]
        pairs.append(("pod", owner.pod))
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def render_dcgm(
    samples: Iterable[GpuSample], *, hostname: str, owners: Mapping[str, PodRef]
) -> str:
    """dcgm-exporter's text exposition for ``samples``; GPUs with ``error`` are left out.

    >>> render_dcgm([], hostname="n1", owners={})
    ''
    """
    good = [s for s in samples if s.error is None]
    if not good:
        return ""
    labels = [gpu_labels(s, hostname, owners.get(s.uuid)) for s in good]
    lines: list[str] = []
    for f in DCGM_FIELDS:
        lines.append(f"# HELP {f.name} {f.help}")
        lines.append(f"# TYPE {f.name} {f.type}")
        for s, lab in zip(good, labels, strict=True):
            lines.append(f"{f.name}{lab} {_number(f.value(s))}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class AgentStats:
    """The agent's own counters at one instant (read by :class:`AgentCollector`)."""

    simulated: bool
    polls: int
    poll_failures: int
    gpu_read_errors: int  # per-GPU errors summed over polls
    baseline_requests: int
    baseline_failures: int
    malformed_frames: int
    gpus_up: Mapping[tuple[str, str], bool]  # (gpu index, UUID) -> read OK on the last poll
    last_poll_s: float  # unix time of the last poll, 0 before the first


class AgentCollector:
    """prometheus-client collector of the ``benchop_agent_*`` metrics."""

    def __init__(self, stats: Callable[[], AgentStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self._stats()
        yield GaugeMetricFamily(
            "benchop_agent_simulated",
            "1 when GPU numbers are simulated (no NVML), 0 when read from NVML.",
            value=1.0 if st.simulated else 0.0,
        )
        up = GaugeMetricFamily(
            "benchop_agent_gpu_up",
            "1 when the GPU was read without error on the last poll.",
            labels=["gpu", "UUID"],
        )
        for (gpu, uuid_), ok in sorted(st.gpus_up.items()):
            up.add_metric([gpu, uuid_], 1.0 if ok else 0.0)
        yield up
        for name, doc, value in (
            ("benchop_agent_polls", "GPU polls completed.", st.polls),
            ("benchop_agent_poll_failures", "GPU polls where the reader raised.", st.poll_failures),
            ("benchop_agent_gpu_read_errors", "Per-GPU read errors.", st.gpu_read_errors),
            (
                "benchop_agent_baseline_requests",
                "Baseline requests answered.",
                st.baseline_requests,
            ),
            (
                "benchop_agent_baseline_failures",
                "Baseline requests answered with success=false.",
                st.baseline_failures,
            ),
            (
                "benchop_agent_malformed_frames",
                "Malformed frames dropped by the baseline server.",
                st.malformed_frames,
            ),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "benchop_agent_last_poll_timestamp_seconds",
            "Unix time of the last GPU poll (0 before the first).",
            value=st.last_poll_s,
        )


def agent_registry(stats: Callable[[], AgentStats]) -> CollectorRegistry:
    """A registry holding only the agent's collector (no process/platform defaults)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(stats))
    return registry


def render_agent(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


class ExporterServer:
    """aiohttp server of ``/metrics``, ``/healthz`` and ``/readyz``.

    ``render`` produces the whole ``/metrics`` body; ``ready`` and
    ``healthy`` answer the probes. Bind port 0 to let the OS choose.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        render: Callable[[], str],
        ready: Callable[[], bool],
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self.host = host
        self.port = port
        self._render = render
        self._ready = ready
        self._healthy = healthy
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        log.info("exporter listening on %s", self.url)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self._render()
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="sampler stopped\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: no GPU sample yet\n")
