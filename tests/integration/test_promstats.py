"""promstats against a real Prometheus scraping real local agents with simulated GPUs.

Fleet (started once for the module, on a thread of its own so tests can block):

- ``node-a``: 4 simulated GPUs sampled every 0.1 s; a fake kubelet gives GPUs 0
  and 1 to ``models/vllm-0`` and GPU 2 to ``other/x`` (GPU 3 unassigned);
- ``node-b``: 2 simulated GPUs sampled once (interval 60 s): its numbers are
  frozen, so Prometheus must show exactly what its ``/metrics`` says.

Prometheus scrapes both every second (``prometheus.py``).
"""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc.aio
import pytest
from prometheus import LoopThread, PrometheusServer, prometheus, wait_until
from prometheus_client.parser import text_string_to_metric_families

from benchagent.agent import Agent, AgentConfig
from benchagent.gpu import SimulatedReader
from benchagent.podresources_pb import api_pb2, api_pb2_grpc
from benchagent.wire import BaselineAck, GpuSample
from benchop import cli
from benchop.core.gpuwindow import gpu_results
from benchop.promstats import (
    GpuSelector,
    PromClient,
    PrometheusUnavailable,
    UnknownMetricKind,
    cross_check,
    fmt,
    kind_of,
    live_gpu,
    window_gpu,
)
from benchop.promstats.kinds import ALL_AGENT_METRICS, MetricClass
from benchop.promstats.live import LIVE_METRICS, RESULT_METRICS

__all__ = ["prometheus"]  # the session fixture, imported for pytest

ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
POWER = "DCGM_FI_DEV_POWER_USAGE"
AGENT_INTERVAL_S = 0.1
OWNERS = {0: ("models", "vllm-0"), 1: ("models", "vllm-0"), 2: ("other", "x")}
TARGET = GpuSelector(namespace="models", pods=("vllm-0",), nodes=("node-a", "node-b"))
LIVE_QUERIES = len(LIVE_METRICS) + 2  # + FB_FREE and POWER_MGMT_LIMIT (capacities)


class RecordingReader:
    """A SimulatedReader that remembers every read: (reader clock in ms, samples)."""

    simulated = True
    blocking = True  # takes a lock: read in a thread, as before readers declared it

    def __init__(self, gpus: int, seed: int) -> None:
        self._now_ms = 0
        self.inner = SimulatedReader(gpus, seed=seed, clock_ms=self._clock)
        self.reads: list[tuple[int, list[GpuSample]]] = []
        self._lock = threading.Lock()

    def _clock(self) -> int:
        self._now_ms = time.monotonic_ns() // 1_000_000
        return self._now_ms

    def read(self) -> list[GpuSample]:
        with self._lock:
            samples = self.inner.read()
            self.reads.append((self._now_ms, samples))
            return samples

    def read_at(self, uuid: str) -> dict[int, int]:
        """Energy counter value -> reader clock (ms) of the read that produced it."""
        with self._lock:
            return {s.energy_mj: t for t, samples in self.reads for s in samples if s.uuid == uuid}

    def wall_at(self, uuid: str) -> dict[int, float]:
        """Energy counter value -> wall time (unix s) the read was stamped with."""
        with self._lock:
            return {
                s.energy_mj: s.timestamp_ns / 1e9
                for _, samples in self.reads
                for s in samples
                if s.uuid == uuid
            }

    def close(self) -> None:
        pass


class Kubelet(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, owners: dict[str, tuple[str, str]]) -> None:
        self.owners = owners

    async def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        pods = []
        for uuid, (namespace, pod) in self.owners.items():
            devices = api_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=[uuid])
            container = api_pb2.ContainerResources(name="main", devices=[devices])
            pods.append(api_pb2.PodResources(name=pod, namespace=namespace, containers=[container]))
        return api_pb2.ListPodResourcesResponse(pod_resources=pods)


@dataclass
class Fleet:
    prometheus: PrometheusServer
    a: Agent
    b: Agent
    reader_a: RecordingReader
    reader_b: SimulatedReader


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def exported(agent: Agent) -> dict[str, dict[str, tuple[float, dict[str, str]]]]:
    """What the agent's /metrics says now: metric -> gpu index -> (value, labels)."""
    out: dict[str, dict[str, tuple[float, dict[str, str]]]] = {}
    for fam in text_string_to_metric_families(http_text(agent.metrics_url + "/metrics")):
        if not fam.name.startswith("DCGM_"):
            continue
        for s in fam.samples:  # by family name: the parser adds _total to counter samples
            out.setdefault(fam.name, {})[s.labels["gpu"]] = (s.value, s.labels)
    return out


@pytest.fixture(scope="module")
def fleet(
    prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    loop = LoopThread()
    sock = tmp_path_factory.mktemp("kubelet") / "kubelet.sock"
    reader_a, reader_b = RecordingReader(4, seed=1), SimulatedReader(2, seed=2)
    owners = {reader_a.inner.uuids[i]: ref for i, ref in OWNERS.items()}
    a = Agent(
        AgentConfig.local(
            interval_s=AGENT_INTERVAL_S,
            node_name="node-a",
            pod_resources_socket=str(sock),
            attribution_interval_s=0.2,
        ),
        reader=reader_a,
    )
    b = Agent(AgentConfig.local(interval_s=60.0, node_name="node-b"), reader=reader_b)

    async def start() -> grpc.aio.Server:
        server = grpc.aio.server()
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(Kubelet(owners), server)
        server.add_insecure_port(f"unix:{sock}")
        await server.start()
        for agent in (a, b):
            await agent.start()
            await agent.wait_ready()
        return server

    kubelet = loop.run(start())

    async def stop() -> None:
        for agent in (a, b):
            await agent.stop()
        await kubelet.stop(None)

    try:
        wait_until(
            lambda: 'pod="vllm-0"' in http_text(a.metrics_url + "/metrics"),
            "node-a exports pod labels",
            10,
        )
        prometheus.set_targets({agent.metrics_url.removeprefix("http://"): {} for agent in (a, b)})
        # the scrape manager applies new targets within ~5 s; then two scrapes of everything
        prometheus.wait_for_series("DCGM_FI_DEV_GPU_UTIL", 6, deadline_s=20)
        prometheus.wait_for_series("count_over_time(DCGM_FI_DEV_GPU_UTIL[10s]) >= 2", 6)
        yield Fleet(prometheus, a, b, reader_a, reader_b)
    finally:
        loop.run(stop())
        loop.close()


# --------------------------------------------------------------------------- values


def test_live_values_match_what_the_agent_exported(fleet: Fleet) -> None:
    """node-b read its GPUs once: every MetricValue must equal its /metrics exactly."""
    assert fleet.b.sampler.count == 1
    want = exported(fleet.b)
    client = PromClient(fleet.prometheus.url)
    latest = client.instant("DCGM_FI_DEV_GPU_UTIL", GpuSelector(nodes=("node-b",)))
    assert client.queries == 1
    assert {s.labels["gpu"]: s.points[0][1] for s in latest} == {
        gpu: value for gpu, (value, _) in want["DCGM_FI_DEV_GPU_UTIL"].items()
    }
    out = live_gpu(fleet.prometheus.url, GpuSelector(nodes=("node-b",)), metrics=ALL_AGENT_METRICS)
    assert "error" not in out, out
    assert out["queries"] == len(ALL_AGENT_METRICS)  # 10 metrics, 2 GPUs: 10 queries
    assert out["attribution"] == {"node-b": "node"}
    assert set(out["gpus"]) == {"node-b/0", "node-b/1"}
    for gpu in ("0", "1"):
        entry = out["gpus"][f"node-b/{gpu}"]
        labels = want["DCGM_FI_DEV_GPU_UTIL"][gpu][1]
        assert (entry["uuid"], entry["model"]) == (labels["UUID"], labels["modelName"])
        assert "pod" not in entry
        for name in ALL_AGENT_METRICS:
            kind = kind_of(name)
            mv = entry["metrics"][kind.key]
            raw = want[name][gpu][0]
            assert mv["current"] == fmt(raw * kind.scale), name
            assert mv["unit_hint"] == kind.unit_hint
            st = mv["stats"]
            if kind.cls is MetricClass.GAUGE:  # several scrapes of one frozen value
                assert st["min"] == st["max"] == st["avg"] == mv["current"], name
                assert (st["diff"], st["rate"]) == ("0", "0"), name
            else:
                assert (st["diff"], st["rate"]) == ("0", "0"), name  # the counter did not move
        fb = entry["metrics"]["fb_used"]
        used, free = (want[m][gpu][0] for m in ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"))
        assert fb["capacity"] == fmt(used + free) and fb["pct"] == fmt(100 * used / (used + free))
        power = entry["metrics"]["power"]
        limit = want["DCGM_FI_DEV_POWER_MGMT_LIMIT"][gpu][0]
        assert power["capacity"] == fmt(limit) == "700"
        assert power["pct"] == fmt(100 * want[POWER][gpu][0] / limit)
        util = entry["metrics"]["gpu_util"]
        assert util["capacity"] == "100" and util["pct"] == util["current"]
        assert "capacity" not in entry["metrics"]["temp"]  # no known capacity: absent


def test_window_energy_is_the_integral_of_simulated_power(fleet: Fleet) -> None:
    """diff = joules between two scrapes, exactly the integral of the simulated power
    between the agent reads that produced them; rate = mean power, up to scrape timing."""
    prom, reader = fleet.prometheus, fleet.reader_a
    start_samples, start = reader.read(), time.time()
    newest = 'max(timestamp(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{Hostname="node-a"}))'
    wait_until(lambda: float(prom.query(newest)[0]["value"][1]) > start + 4, "4 s of data", 10)
    end_samples, end = reader.read(), time.time()
    wait_until(lambda: float(prom.query(newest)[0]["value"][1]) > end, "a scrape after end", 5)

    client = PromClient(prom.url)
    selector = GpuSelector(namespace="models", pods=("vllm-0",), nodes=("node-a",))
    out = window_gpu(client, selector, start, end)
    assert "error" not in out, out
    assert out["queries"] == client.queries == len(RESULT_METRICS) + 2
    assert set(out["gpus"]) == {"node-a/0", "node-a/1"}
    assert out["gpus"]["node-a/0"]["pod"] == "models/vllm-0"
    raw = client.window([ENERGY, POWER], selector, start, end)
    assert {s.labels["gpu"] for s in raw[ENERGY]} == {"0", "1"}
    for s in raw[ENERGY]:
        index, uuid = int(s.labels["gpu"]), s.labels["UUID"]
        values = [int(v) for _, v in s.points]
        assert len(values) >= 4 and all(start <= t <= end for t, _ in s.points)
        read_at = reader.read_at(uuid)
        assert all(v in read_at for v in values), "Prometheus shows values the agent never had"
        t0, t1 = read_at[values[0]], read_at[values[-1]]
        integral_mj = reader.inner.integral_mj(index, t0, t1)
        assert values[-1] - values[0] == integral_mj  # exact: same reads, same integral
        mv = out["gpus"][f"node-a/{index}"]["metrics"]["energy"]
        assert mv["unit_hint"] == "joules"
        assert mv["current"] == fmt(values[-1] / 1000)
        assert mv["stats"]["diff"] == mv["stats"]["sum"] == fmt(integral_mj / 1000)
        # rate = that exact energy over the span between the two scrapes ...
        span_s = s.points[-1][0] - s.points[0][0]
        assert float(mv["stats"]["rate"]) == pytest.approx(integral_mj / 1000 / span_s, abs=6e-4)
        # ... which is not quite the span between the reads behind them: each scraped value
        # was read before its scrape (lag >= 0), by up to an agent interval (+ scheduling)
        wall = reader.wall_at(uuid)
        lags = [t - wall[int(v)] for t, v in s.points]
        assert all(-0.005 <= lag < 1.0 for lag in lags), lags
        true_mean_w = integral_mj / (t1 - t0)
        skew = (max(lags) - min(lags)) / span_s
        assert float(mv["stats"]["rate"]) == pytest.approx(true_mean_w, rel=skew + 0.01)
        assert 70 <= float(mv["stats"]["min"]) <= float(mv["stats"]["max"]) <= 700

    for s in raw[POWER]:  # gauge: stats over what was scraped, which the agent exported
        uuid = s.labels["UUID"]
        had = {x.power_w for _, samples in reader.reads for x in samples if x.uuid == uuid}
        values = [v for _, v in s.points]
        assert set(values) <= had
        mv = out["gpus"][f"node-a/{s.labels['gpu']}"]["metrics"]["power"]
        assert (mv["stats"]["min"], mv["stats"]["max"]) == (fmt(min(values)), fmt(max(values)))
        assert mv["stats"]["avg"] == fmt(sum(values) / len(values))
        assert mv["capacity"] == "700"

    # cross-check against baseline acks taken by the same reader at start and end
    def ack(boundary: str, samples: list[GpuSample]) -> BaselineAck:
        mine = [x for x in samples if x.uuid in {s.labels["UUID"] for s in raw[ENERGY]}]
        return BaselineAck(
            request_id=boundary,
            run="r",
            phase_id="p",
            boundary=boundary,  # type: ignore[arg-type]
            agent="a",
            node="node-a",
            success=True,
            simulated=True,
            samples=mine,
        )

    baseline = gpu_results(
        [ack("START", start_samples)], [ack("END", end_samples)], output_tokens=1
    )
    assert baseline is not None and baseline.energy_j is not None
    check = cross_check(baseline, out)
    summ = out["summary"]
    e = check["energyJ"]
    assert (e["baseline"], e["prometheus"]) == (baseline.energy_j, summ["energyWindowJ"])
    assert e["diff"] == round(summ["energyWindowJ"] - baseline.energy_j, 3)
    # Prometheus' samples cover [first scrape, last scrape] inside the window: the raw
    # energy is at most the exact one, short by at most the uncovered time x 700 W per GPU
    uncovered_s = out["windowS"] - summ["coveredS"] + AGENT_INTERVAL_S
    assert summ["energyJ"] <= baseline.energy_j
    assert summ["energyJ"] >= baseline.energy_j - uncovered_s * 700 * 2
    # extrapolated to the window, each uncovered second is off by < 630 W (70..700 W)
    assert abs(e["diff"]) <= uncovered_s * 630 * 2
    assert check["powerMeanW"]["prometheus"] == summ["powerMeanW"]
    assert check["utilMean"]["baseline"] == baseline.util_mean


# --------------------------------------------------------------------------- batching


def query_requests(prom: PrometheusServer) -> float:
    text = http_text(prom.url + "/metrics")
    m = re.search(
        r'^prometheus_http_requests_total\{code="200",handler="/api/v1/query"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize(
    ("selector", "keys", "modes"),
    [
        (
            GpuSelector(namespace="models", pods=("vllm-0",)),
            {"node-a/0", "node-a/1"},
            {"node-a": "pod"},
        ),
        (
            TARGET,
            {"node-a/0", "node-a/1", "node-b/0", "node-b/1"},
            {"node-a": "pod", "node-b": "node"},
        ),
        (
            GpuSelector(nodes=("node-a", "node-b")),
            {"node-a/0", "node-a/1", "node-a/2", "node-a/3", "node-b/0", "node-b/1"},
            {"node-a": "pod", "node-b": "node"},
        ),
    ],
    ids=["pods-2gpus", "pods+nodes-4gpus", "nodes-6gpus"],
)
def test_one_query_per_metric_whatever_the_gpu_count(
    fleet: Fleet, selector: GpuSelector, keys: set[str], modes: dict[str, str]
) -> None:
    client = PromClient(fleet.prometheus.url)
    server_before = query_requests(fleet.prometheus)
    out = live_gpu(client, selector)
    assert "error" not in out, out
    assert set(out["gpus"]) == keys
    assert out["attribution"] == modes
    assert out["summary"]["gpus"] == len(keys)
    assert client.queries == out["queries"] == LIVE_QUERIES
    # Prometheus itself counted the same number of query requests
    assert query_requests(fleet.prometheus) - server_before == LIVE_QUERIES
    for entry in out["gpus"].values():
        assert set(entry["metrics"]) == {"gpu_util", "fb_used", "power", "temp", "energy"}
        assert float(entry["metrics"]["energy"]["stats"]["rate"]) >= 0


def test_node_names_are_matched_literally(fleet: Fleet) -> None:
    client = PromClient(fleet.prometheus.url)
    odd = GpuSelector(nodes=("node-a", "node.b", "node-(a|b)", "x\\y"))  # "." is no wildcard
    assert {s.labels["Hostname"] for s in client.instant("DCGM_FI_DEV_GPU_UTIL", odd)} == {"node-a"}


# --------------------------------------------------------------------------- failures


def test_unknown_metric_kind_raises_before_any_query(fleet: Fleet) -> None:
    client = PromClient(fleet.prometheus.url)
    with pytest.raises(UnknownMetricKind, match="DCGM_FI_DEV_NOPE"):
        live_gpu(client, TARGET, metrics=("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_NOPE"))
    with pytest.raises(UnknownMetricKind):
        window_gpu(client, TARGET, time.time() - 5, time.time(), metrics=("DCGM_FI_DEV_NOPE",))
    with pytest.raises(UnknownMetricKind):
        client.window(["DCGM_FI_DEV_NOPE"], TARGET, time.time() - 5)
    assert client.queries == 0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prometheus_down_gives_a_message_not_an_exception(fleet: Fleet) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    client = PromClient(url)
    with pytest.raises(PrometheusUnavailable, match=f"cannot connect to Prometheus at {url}"):
        client.window(["DCGM_FI_DEV_GPU_UTIL"], TARGET, time.time() - 5)
    t0 = time.monotonic()
    out = live_gpu(url, TARGET)
    assert time.monotonic() - t0 < 2  # no retries with backoff
    assert out["error"] == f"cannot connect to Prometheus at {url}: connection refused"
    assert out["queries"] == 1 and "gpus" not in out
    win = window_gpu(url, TARGET, time.time() - 10, time.time())
    assert "connection refused" in win["error"]
    check = cross_check(None, win)
    assert check["energyJ"]["prometheus"] is None and "connection refused" in check["note"]
    # a URL that is not Prometheus (the agent's exporter): 404 on the query API
    wrong = live_gpu(fleet.a.metrics_url, TARGET)
    assert wrong["error"].startswith(f"Prometheus at {fleet.a.metrics_url} refused the query")
    assert "404" in wrong["error"]
    # nothing selected yet (pods not scheduled): a message, no query
    assert "no target pods or nodes" in live_gpu(fleet.prometheus.url, GpuSelector())["error"]


def test_prometheus_that_hangs_times_out_with_a_message() -> None:
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        t0 = time.monotonic()
        out = live_gpu(url, TARGET, timeout_s=0.3)
        assert time.monotonic() - t0 < 2
    assert out["error"] == f"Prometheus at {url} did not answer within 0.3 s"


# --------------------------------------------------------------------------- benchop top


def test_top_once_shows_every_gpu_of_the_node(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    want = exported(fleet.b)
    code = cli.main(["top", "--once", "--prometheus", fleet.prometheus.url, "--hostname", "node-b"])
    out = capsys.readouterr().out
    print(out)  # shown with -s
    assert code == 0
    assert "benchop top node-b - 2 GPUs" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "node-b/" in line}
    assert set(rows) == {"node-b/0", "node-b/1"}
    for gpu, line in rows.items():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        idx = gpu.split("/")[1]
        assert cells[1] == "-"  # no pod on node-b
        assert cells[2] == f"{want['DCGM_FI_DEV_GPU_UTIL'][idx][0]:.0f}"
        used = want["DCGM_FI_DEV_FB_USED"][idx][0]
        total = used + want["DCGM_FI_DEV_FB_FREE"][idx][0]
        assert cells[3] == f"{used / 1024:.1f} / {total / 1024:.1f}"
        assert cells[4] == f"{want[POWER][idx][0]:.0f} / 700"
        assert cells[5] == f"{want['DCGM_FI_DEV_GPU_TEMP'][idx][0]:.0f}"
        assert cells[6] == f"{want['DCGM_FI_DEV_SM_CLOCK'][idx][0]:.0f}"
        assert cells[7] == "0.0"  # node-b's energy counter is frozen
    assert "(simulated)" in out

    # node-a: pods from the kubelet, energy counted since 3 s ago
    args = ["top", "--once", "--prometheus", fleet.prometheus.url, "--hostname", "node-a"]
    assert cli.main([*args, "--since", "3s"]) == 0
    out = capsys.readouterr().out
    print(out)
    cells = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[1:-1]]
        for line in out.splitlines()
        if "node-a/" in line
    }
    assert {k: v[1] for k, v in cells.items()} == {
        "node-a/0": "models/vllm-0",
        "node-a/1": "models/vllm-0",
        "node-a/2": "other/x",
        "node-a/3": "-",
    }
    for row in cells.values():  # ~3 s at 70..700 W, give or take a scrape
        assert 70 * 1 <= float(row[7]) <= 700 * 5


def test_top_once_prometheus_down(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    assert cli.main(["top", "--once", "--prometheus", url, "--hostname", "n"]) == 1
    assert "connection refused" in capsys.readouterr().err
