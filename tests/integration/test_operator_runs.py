"""The operator end to end: real kopf against the kube emulator, real ZMQ, real mock model server.

The test plays the kubelet (operator_kubelet.Kubelet): it starts the Job's workers as local
``python -m benchop loadgen`` processes, mirrors them as pods, and registers in-process agents
(simulated GPUs) as pods on the target's node. Each test waits on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import dataclasses
import io
import itertools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kmock
import kopf
import numpy as np
import pytest
from kube.harness import (
    BENCHMARKRUNS,
    CONFIGMAPS,
    EVENTS,
    EXPERIMENTS,
    FINALIZER,
    JOBS,
    SECRETS,
    Kube,
    free_port,
    stop_operator,
    wait_for,
)
from operator_kubelet import AGENT_LABELS, Kubelet, add_pod
from secretscan import as_yaml, describe, files, scan

import benchop.operator.main  # noqa: F401 - registers the handlers in kopf's default registry
from benchagent.agent import Agent, AgentConfig
from benchagent.transport import Publisher, RequestClient, RequestTimeout
from benchagent.wire import GateRequest, MetricsSnapshot
from benchop.api import conditions as c
from benchop.api.models import BenchmarkRun
from benchop.collect import collect as collect_bundle
from benchop.mockserver import MockConfig, MockServer, start_mock_server
from benchop.operator import curvekeys
from benchop.operator.handlers import runs
from benchop.operator.settings import OperatorSettings

pytestmark = pytest.mark.timeout(60)

TARGET_NODE = "gpu-node"
ORDER = [
    c.ACCEPTED,
    c.WORKERS_READY,
    c.BASELINE_START_CAPTURED,
    c.PROFILING,
    c.BASELINE_END_CAPTURED,
    c.RESULTS_AVAILABLE,
    c.SUCCEEDED,
]


@pytest.fixture
async def mock() -> AsyncIterator[MockServer]:
    server = await start_mock_server(MockConfig(ttft=0.004, itl=0.001, output_tokens=8))
    yield server
    await server.close()


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    cfg = AgentConfig.local(
        gpu_backend="simulated",
        simulated_gpus=2,
        node_name=TARGET_NODE,
        agent_name="agent-a",
        metrics_port=0,
    )
    a = Agent(cfg)
    await a.start()
    yield a
    await a.stop()


@pytest.fixture
async def kubelet(kube: Kube, tmp_path: Path) -> AsyncIterator[Kubelet]:
    k = Kubelet(kube, tmp_path)
    yield k
    await k.stop()


def agent_port(agent: Agent) -> int:
    return int(agent.baseline_endpoint.rsplit(":", 1)[1])


def settings_for(agent: Agent | None = None, **overrides: Any) -> OperatorSettings:
    base: dict[str, Any] = dict(
        namespaces=("default",),
        gate_port=free_port(),
        snapshot_port=free_port(),
        bind_host="127.0.0.1",
        operator_service="127.0.0.1",
        live_interval_s=0.5,
        agent_port=agent_port(agent) if agent else 1,
        agent_namespace="default",
        stuck_after_s=0.0,
        complete_wait_s=3.0,
        watch_server_timeout=5,
        watch_client_timeout=10,
        request_timeout=10,
        connect_timeout=2,
    )
    base.update(overrides)
    return OperatorSettings(**base)


def start(operator_task: Callable[..., Any], kube: Kube, settings: OperatorSettings) -> Any:
    memo = kopf.Memo(settings=settings, connection=kopf.ConnectionInfo(server=kube.url))
    return operator_task(memo=memo)


def run_manifest(name: str, url: str, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "target": {
            "url": url,
            "model": "benchop-mock",
            "podSelector": {"matchLabels": {"app": "mock"}},
        },
        "workload": {"promptTokens": 16, "outputTokens": 8, "seed": 1},
        "load": {"mode": "concurrency", "concurrency": 4, "workers": 2},
        "phases": {"warmup": {"requests": 4}, "profiling": {"requests": 40}},
        "gates": {"baseline": True, "timeout": "2s"},
    }
    doc.update(spec)
    return {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "metadata": {"name": name},
        "spec": doc,
    }


async def add_target_and_agent(kube: Kube) -> None:
    await add_pod(kube, "vllm-0", labels={"app": "mock"}, node=TARGET_NODE, ip="127.0.0.9")
    await add_pod(kube, "agent-a", labels=AGENT_LABELS, node=TARGET_NODE, ip="127.0.0.1")


def status_of(kube: Kube, name: str) -> dict[str, Any]:
    body = kube.emulator.read(BENCHMARKRUNS, name)
    return dict((body or {}).get("status") or {})


def condition(kube: Kube, name: str, type_: str) -> dict[str, Any] | None:
    return c.get_condition(status_of(kube, name).get("conditions"), type_)


async def wait_condition(
    kube: Kube,
    name: str,
    type_: str,
    status: str,
    timeout: float = 40,  # noqa: ASYNC109
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        cond = condition(kube, name, type_)
        return cond if cond is not None and cond["status"] == status else None

    return await wait_for(check, timeout, message=f"{name}: {type_}={status}")


def parse_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def history(kube: Kube, name: str) -> list[dict[str, Any]]:
    """Every stored version of the run, oldest first (the emulator keeps them all)."""
    wanted = kmock.resource(BENCHMARKRUNS)
    for (res, _ns, n), obj in kube.emulator.objects.items():
        if res == wanted and n == name:
            return [dict(v) for v in obj.history]
    return []


def first_true(versions: list[dict[str, Any]]) -> dict[str, int]:
    seen: dict[str, int] = {}
    for i, body in enumerate(versions):
        for cond in (body.get("status") or {}).get("conditions") or []:
            if cond["status"] == "True":
                seen.setdefault(cond["type"], i)
    return seen


def status_patches(kube: Kube, name: str) -> int:
    return kube.emulator.count("PATCH", f"/benchmarkruns/{name}/status", status=200)


def worker_records(kubelet: Kubelet) -> list[list[dict[str, Any]]]:
    out = []
    for w in kubelet.workers:
        path = w.results / "records.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        out.append([json.loads(line) for line in lines if line.strip()])
    return out


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --------------------------------------------------------------------------- tests


async def test_apply_to_succeeded_with_results_and_conditions_in_order(
    kube: Kube, operator_task: Any, mock: MockServer, agent: Agent, kubelet: Kubelet
) -> None:
    """Two workers pass both gates together; results are exact; conditions come in order."""
    await add_target_and_agent(kube)
    start(operator_task, kube, settings_for(agent))
    await kube.client.create(BENCHMARKRUNS, run_manifest("r1", mock.url))
    await wait_condition(kube, "r1", c.ACCEPTED, "True", 15)
    await wait_for(lambda: kube.emulator.read(CONFIGMAPS, "r1-spec"), 10)
    await kubelet.start("r1")
    await wait_condition(kube, "r1", c.WORKERS_READY, "True", 15)
    assert await kubelet.wait_all() == [0, 0]
    await kubelet.job_condition("Complete")
    done = await wait_condition(kube, "r1", c.SUCCEEDED, "True")
    assert done["reason"] == "Completed"

    st = status_of(kube, "r1")
    assert st["phase"] == "Succeeded" and st["completionTime"] and st["startTime"]
    res = st["results"]
    assert res["complete"] is True and res["source"] == "pubsub" and res["workers"] == 2
    records = worker_records(kubelet)
    assert res["requests"]["total"] == 40 == sum(len(r) for r in records)
    assert res["requests"]["ok"] == 40 and res["ttftMs"]["count"] == 40
    assert condition(kube, "r1", c.RESULTS_AVAILABLE)["reason"] == "PubSubComplete"  # type: ignore[index]
    # GPU numbers from the START/END baselines of the one agent (simulated: degraded, said so)
    gpu = res["gpu"]
    assert gpu["gpus"] == 2 and gpu["energyJ"] > 0 and gpu["joulesPerOutputToken"] > 0
    assert gpu["simulated"] is True and gpu["agents"] == ["agent-a"]
    assert condition(kube, "r1", c.TELEMETRY_DEGRADED)["reason"] == "Simulated"  # type: ignore[index]
    assert agent.stats().baseline_requests == 2  # one START, one END: not one per worker
    # both workers passed START together: nobody profiled before the grant's start time
    start_at = st["gates"]["START"]["startAtNs"]
    firsts = [min(r["sent_ns"] for r in recs) for recs in records]
    assert all(f >= start_at for f in firsts)
    assert abs(firsts[0] - firsts[1]) < 0.5e9
    # every condition carries observedGeneration, and they became True in order
    assert all(x["observedGeneration"] == 1 for x in st["conditions"])
    seen = first_true(history(kube, "r1"))
    order = [seen[t] for t in ORDER]
    assert order == sorted(order), dict(zip(ORDER, order, strict=True))
    assert condition(kube, "r1", c.PROFILING)["status"] == "False"  # type: ignore[index]
    # the results bundle: results.json and timeseries.csv in the results ConfigMap, built from
    # the same final snapshots (exact percentiles, the workers' per-second timelines)
    assert st["output"] == {"configMap": "r1-results", "timeseriesIntervalS": 1}
    data = (kube.emulator.read(CONFIGMAPS, "r1-results") or {})["data"]
    doc = json.loads(data["results.json"])
    assert doc["results"] == res and doc["run"]["name"] == "r1"
    ttft = sorted(r["ttft_ns"] for recs in records for r in recs)
    assert doc["metrics"]["ttft_ms"]["percentiles"]["p95"] == pytest.approx(
        float(np.percentile(ttft, 95)) / 1e6, rel=1e-12
    )
    assert "omitted" in doc["files"]["records.jsonl"]
    rows = list(csv.DictReader(io.StringIO(data["timeseries.csv"])))
    assert sum(int(r["ok"]) for r in rows) == 40 and doc["files"]["timeseries.csv"]["rows"] == len(
        rows
    )
    # deletion: the finalizer is released; owned children go by the (emulated) GC
    await kube.client.delete(BENCHMARKRUNS, "r1")
    await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "r1") is None, 10)
    await kube.emulator.collect_garbage()
    assert kube.emulator.read(JOBS, "r1-loadgen") is None
    assert kube.emulator.read(CONFIGMAPS, "r1-results") is None


async def test_an_output_pvc_gets_a_collect_job_that_writes_the_bundle(
    kube: Kube, operator_task: Any, mock: MockServer, agent: Agent, kubelet: Kubelet,
    tmp_path: Path,
) -> None:  # fmt: skip
    """With spec.output.pvc the workers' directories are on the claim and the operator
    creates the collect Job; run here on the workers' directories (laid out as on the
    claim), `benchop collect` writes the whole bundle there."""
    await add_target_and_agent(kube)
    start(operator_task, kube, settings_for(agent))
    output = {"pvc": {"claimName": "results-claim", "subPath": "bench"}}
    await kube.client.create(BENCHMARKRUNS, run_manifest("r2", mock.url, output=output))
    await wait_condition(kube, "r2", c.ACCEPTED, "True", 15)
    job = await wait_for(lambda: kube.emulator.read(JOBS, "r2-loadgen"), 10)
    uid = (kube.emulator.read(BENCHMARKRUNS, "r2") or {})["metadata"]["uid"]
    key = f"default.r2.{uid[:8]}"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--results-dir") + 1] == f"/output/{key}/worker-$(JOB_COMPLETION_INDEX)"
    await kubelet.start("r2")
    assert await kubelet.wait_all() == [0, 0]
    await kubelet.job_condition("Complete")
    await wait_condition(kube, "r2", c.SUCCEEDED, "True")
    st = status_of(kube, "r2")
    assert st["output"] == {
        "configMap": "r2-results",
        "timeseriesIntervalS": 1,
        "claimName": "results-claim",
        "path": f"bench/{key}",
        "collectJob": "r2-collect",
    }
    collect = kube.emulator.read(JOBS, "r2-collect")
    assert collect is not None
    pod = collect["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "results-claim"}
    assert pod["volumes"][1]["configMap"] == {"name": "r2-results"}
    # the collect pod, by hand: the claim's directory and the ConfigMap as files
    claim = tmp_path / "claim" / key
    claim.mkdir(parents=True)
    for w in kubelet.workers:
        (claim / f"worker-{w.index}").symlink_to(w.results)
    cm = tmp_path / "cm"
    cm.mkdir()
    for name, text in (kube.emulator.read(CONFIGMAPS, "r2-results") or {})["data"].items():
        (cm / name).write_text(text)
    cargs = pod["containers"][0]["args"]
    assert cargs[:2] == ["collect", "--dir"] and cargs[2] == f"/output/{key}"
    doc = collect_bundle(claim, 2, cm)
    assert doc["files"]["records.jsonl"] == {"count": 40}
    assert doc["results"] == st["results"]
    lines = (claim / "records.jsonl").read_text().splitlines()
    assert len(lines) == 40 and len({json.loads(x)["id"] for x in lines}) == 40
    rows = list(csv.DictReader((claim / "timeseries.csv").open()))
    assert sum(int(r["ok"]) for r in rows) == 40


async def test_silent_agent_released_at_timeout_and_telemetry_degraded(
    kube: Kube, operator_task: Any, mock: MockServer, agent: Agent, kubelet: Kubelet
) -> None:
    await add_target_and_agent(kube)
    # an agent pod whose address answers nothing (nothing listens on 127.0.0.2:<port>)
    await add_pod(kube, "agent-b", labels=AGENT_LABELS, node=TARGET_NODE, ip="127.0.0.2")
    start(operator_task, kube, settings_for(agent))
    manifest = run_manifest(
        "r2",
        mock.url,
        load={"mode": "concurrency", "concurrency": 2, "workers": 1},
        phases={"profiling": {"requests": 10}},
        gates={"baseline": True, "timeout": "1s"},
    )
    await kube.client.create(BENCHMARKRUNS, manifest)
    await kubelet.start("r2")
    assert await kubelet.wait_all() == [0]
    await kubelet.job_condition("Complete")
    await wait_condition(kube, "r2", c.SUCCEEDED, "True")
    started = condition(kube, "r2", c.BASELINE_START_CAPTURED)
    assert (
        started is not None and started["reason"] == "TimedOut" and "agent-b" in started["message"]
    )
    degraded = condition(kube, "r2", c.TELEMETRY_DEGRADED)
    assert degraded is not None and degraded["status"] == "True"
    assert degraded["reason"] == "AgentMissing" and "agent-b" in degraded["message"]
    gpu = status_of(kube, "r2")["results"]["gpu"]
    assert gpu["missingAgents"] == ["agent-b"] and gpu["agents"] == ["agent-a"]
    assert status_of(kube, "r2")["results"]["requests"]["total"] == 10


async def test_operator_restart_between_gates_completes_once(
    kube: Kube, operator_task: Any, mock: MockServer, agent: Agent, kubelet: Kubelet
) -> None:
    await add_target_and_agent(kube)
    settings = settings_for(agent)
    first = start(operator_task, kube, settings)
    manifest = run_manifest(
        "r3",
        mock.url,
        load={"mode": "concurrency", "concurrency": 2, "workers": 2},
        phases={"profiling": {"duration": "3s"}},
    )
    await kube.client.create(BENCHMARKRUNS, manifest)
    await kubelet.start("r3")
    await wait_condition(kube, "r3", c.BASELINE_START_CAPTURED, "True", 20)
    await stop_operator(first)
    assert agent.stats().baseline_requests == 1
    start(operator_task, kube, settings)  # same ports: the workers' endpoints are in the Job
    assert await kubelet.wait_all() == [0, 0]
    await kubelet.job_condition("Complete")
    await wait_condition(kube, "r3", c.SUCCEEDED, "True")
    assert (
        agent.stats().baseline_requests == 2
    )  # START once (not again after the restart), END once
    st = status_of(kube, "r3")
    records = worker_records(kubelet)
    assert st["results"]["requests"]["total"] == sum(len(r) for r in records) > 0
    # the END gate ran under the new operator, the START samples came from status: exact energy
    end = condition(kube, "r3", c.BASELINE_END_CAPTURED)
    assert end is not None and end["reason"] == "Captured"
    assert st["results"]["gpu"]["energyJ"] > 0 and st["results"]["gpu"]["gpus"] == 2
    logs = "".join(p.read_text() for p in kubelet.tmp.glob("*.log"))
    assert "denied" not in logs.lower()  # no worker was turned away during the restart
    phases = [(v.get("status") or {}).get("phase") for v in history(kube, "r3")]
    assert phases.count("Succeeded") >= 1
    first_done = phases.index("Succeeded")
    assert all(p == "Succeeded" for p in phases[first_done:])  # finished once, never reopened


async def test_killed_worker_resumes_with_exact_counts(
    kube: Kube, operator_task: Any, agent: Agent, kubelet: Kubelet
) -> None:
    # ~70 ms per request at concurrency 2: 120 requests take ~4 s, the kill lands at ~10
    slow = await start_mock_server(MockConfig(ttft=0.05, itl=0.002, output_tokens=8))
    try:
        await add_target_and_agent(kube)
        start(operator_task, kube, settings_for(agent))
        manifest = run_manifest(
            "r4",
            slow.url,
            load={"mode": "concurrency", "concurrency": 2, "workers": 1},
            phases={"profiling": {"requests": 120}},
        )
        await kube.client.create(BENCHMARKRUNS, manifest)
        await kubelet.start("r4")
        await wait_for(lambda: len(worker_records(kubelet)[0]) >= 10, 30, message="10 records")
        await kubelet.kill(0)
        assert len(worker_records(kubelet)[0]) < 120  # killed mid-profiling, not after
        await kubelet.launch(kubelet.workers[0])  # the kubelet restarts it in the same pod
        assert await kubelet.wait_all() == [0]
        await kubelet.job_condition("Complete")
        await wait_condition(kube, "r4", c.SUCCEEDED, "True")
        res = status_of(kube, "r4")["results"]
        records = worker_records(kubelet)[0]
        assert res["requests"]["total"] == 120 == len(records)
        assert len({r["id"] for r in records}) == 120  # none counted twice
        assert {r["attempt"] for r in records} == {1, 2}  # some from each attempt
        assert res["complete"] is True
    finally:
        await slow.close()


@pytest.mark.parametrize(
    ("deletions", "profiling"),
    [(1, {"requests": 120}), (3, {"requests": 160}), (1, {"duration": "4s"})],
    ids=["once-requests", "3x-requests", "once-duration"],
)
async def test_a_deleted_worker_pod_is_replaced_and_resumes_exactly(
    kube: Kube,
    operator_task: Any,
    agent: Agent,
    kubelet: Kubelet,
    deletions: int,
    profiling: dict[str, Any],
) -> None:
    """A worker pod deleted mid-profiling (SIGTERM, then a new pod with an empty results
    dir): the replacement resumes from the operator's copy of the old pod's last snapshot;
    what the server completed equals what the results count, none lost, none twice."""
    slow = await start_mock_server(MockConfig(ttft=0.05, itl=0.002, output_tokens=8))
    try:
        await add_target_and_agent(kube)
        start(operator_task, kube, settings_for(agent))
        manifest = run_manifest(
            "rp",
            slow.url,
            load={"mode": "concurrency", "concurrency": 4, "workers": 2},
            phases={"warmup": {"requests": 4}, "profiling": profiling},
        )
        await kube.client.create(BENCHMARKRUNS, manifest)
        await kubelet.start("rp")
        replaced = []
        for _ in range(deletions):
            w = kubelet.workers[1]  # the pod to delete, once it profiled a few requests
            await wait_for(lambda w=w: len(lines(w.results / "records.jsonl")) >= 3, 30)
            old = await kubelet.replace(1)
            assert await kubelet.reap(old) != 0  # stopped by the deletion, not finished
            replaced.append(old)
        assert await kubelet.wait_all() == [0, 0]
        await kubelet.job_condition("Complete")
        await wait_condition(kube, "rp", c.SUCCEEDED, "True")
        res = status_of(kube, "rp")["results"]
        # not results: the warmup's requests and each pod's preflight request (2 + the
        # replacements: a new pod checks the target again)
        served = slow.stats["ok"] - 4 - (2 + deletions)
        assert res["requests"]["ok"] == served  # none lost, none counted twice
        assert res["requests"]["failed"] == 0 and res["complete"] is True
        if "requests" in profiling:
            assert res["requests"]["total"] == profiling["requests"]
        assert res["ttftMs"]["count"] == served  # the latencies of every pod, once
        last = kubelet.workers[1]
        records = [json.loads(x) for x in lines(last.results / "records.jsonl")]
        assert {r["attempt"] for r in records} == {deletions + 1}  # attempts go on across pods
        assert all((o.results / "records.jsonl").exists() for o in replaced)  # each profiled
    finally:
        await slow.close()


async def test_job_failure_and_stuck_pod_fail_the_run_with_reasons(
    kube: Kube, operator_task: Any, mock: MockServer, kubelet: Kubelet
) -> None:
    start(operator_task, kube, settings_for())
    await kube.client.create(BENCHMARKRUNS, run_manifest("r5", mock.url))
    await kubelet.read_job("r5")
    kubelet.job_name = "r5-loadgen"
    await kubelet.job_condition("Failed", "BackoffLimitExceeded", "Job has reached the limit")
    failed = await wait_condition(kube, "r5", c.SUCCEEDED, "False")
    assert failed["reason"] == "BackoffLimitExceeded" and "r5-loadgen" in failed["message"]
    assert status_of(kube, "r5")["phase"] == "Failed"
    # what `kubectl wait --for=condition=Failed` waits for, in the same patch
    mirror = condition(kube, "r5", c.FAILED)
    assert mirror is not None and mirror["status"] == "True"
    assert (mirror["reason"], mirror["message"]) == (failed["reason"], failed["message"])

    await kube.client.create(BENCHMARKRUNS, run_manifest("r6", mock.url))
    job = await kubelet.read_job("r6")
    meta = job["spec"]["template"]["metadata"]
    await kube.client.create(
        "v1/pods",
        {
            "metadata": {
                "name": "r6-loadgen-0",
                "labels": meta["labels"],
                "annotations": meta["annotations"],
            },
            "spec": job["spec"]["template"]["spec"],
        },
    )
    await kube.client.patch_status(
        "v1/pods",
        "r6-loadgen-0",
        {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "loadgen",
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}},
                }
            ],
        },
    )
    stuck = await wait_condition(kube, "r6", c.SUCCEEDED, "False")
    assert stuck["reason"] == "ImagePullFailed" and "r6-loadgen-0" in stuck["message"]

    # and says so where `kubectl describe br` looks: a Warning event on the run
    async def warning_event() -> list[dict[str, Any]]:
        events = await kube.client.list(EVENTS, fields="involvedObject.name=r6")
        return [e for e in events if (e["type"], e["reason"]) == ("Warning", "ImagePullFailed")]

    await wait_for(warning_event, 5, message="a Warning event on r6")
    # the other workers stop sending load: the failed run's Job is suspended (kept, no pods)
    await wait_for(lambda: job_suspended(kube, "r6-loadgen"), 5, message="r6 Job suspended")


async def test_a_job_that_cannot_create_its_pods_fails_the_run_after_the_grace(
    kube: Kube, operator_task: Any, mock: MockServer, kubelet: Kubelet
) -> None:
    # A ResourceQuota (or LimitRange, Pod Security admission, a missing ServiceAccount) refuses
    # the worker pods: the Job controller only posts FailedCreate events on the Job.
    start(operator_task, kube, settings_for(stuck_after_s=1.0))
    await kube.client.create(BENCHMARKRUNS, run_manifest("r7", mock.url))
    job = await kubelet.read_job("r7")
    refused = 'pods "r7-loadgen-0-abcde" is forbidden: exceeded quota: q, requested: pods=1'
    await kube.client.create(
        EVENTS,
        {
            "metadata": {"name": "r7-loadgen.1"},
            "involvedObject": {
                "kind": "Job",
                "name": "r7-loadgen",
                "namespace": "default",
                "uid": job["metadata"]["uid"],
            },
            "reason": "FailedCreate",
            "type": "Warning",
            "message": f"Error creating: {refused}",
            "lastTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    failed = await wait_condition(kube, "r7", c.SUCCEEDED, "False")
    assert failed["reason"] == "PodCreateFailed"
    assert refused in failed["message"] and "r7-loadgen" in failed["message"]
    await wait_for(lambda: job_suspended(kube, "r7-loadgen"), 5, message="r7 Job suspended")


async def test_a_missing_workload_configmap_fails_the_run_after_the_grace(
    kube: Kube, operator_task: Any, mock: MockServer, kubelet: Kubelet
) -> None:
    # The kubelet cannot mount a ConfigMap that does not exist, or a key it does not have: it
    # keeps the pods in ContainerCreating and says so only in FailedMount events on the pod.
    start(operator_task, kube, settings_for(stuck_after_s=1.0))
    await kube.client.create(CONFIGMAPS, {"metadata": {"name": "rows"}, "data": {"a.jsonl": ""}})
    workload = {
        "dataset": {"configMap": {"name": "rows", "key": "rows.jsonl"}},
        "tokenizer": {"configMap": {"name": "tok", "key": "tokenizer.json"}},
    }
    await kube.client.create(BENCHMARKRUNS, run_manifest("r-cm", mock.url, workload=workload))
    await kubelet.read_job("r-cm")
    failed = await wait_condition(kube, "r-cm", c.SUCCEEDED, "False")
    assert failed["reason"] == "WorkloadFileMissing", failed
    assert failed["message"] == (
        "spec.workload.dataset.configMap: ConfigMap rows has no key 'rows.jsonl' (its keys: "
        "a.jsonl); spec.workload.tokenizer.configMap: ConfigMap tok not found in namespace "
        "default: the worker pods cannot mount it"
    )
    await wait_for(lambda: job_suspended(kube, "r-cm-loadgen"), 5, message="r-cm Job suspended")


def job_suspended(kube: Kube, name: str) -> bool:
    job = kube.emulator.read(JOBS, name)
    return job is not None and job["spec"].get("suspend") is True


async def test_a_refused_child_fails_the_run_with_child_create_failed(
    kube: Kube, operator_task: Any, mock: MockServer
) -> None:
    """A 422 on the Job (say, a bad nodeSelector) ends the run instead of retrying forever."""
    kube.emulator.fail_next(
        "POST", "/jobs", 422, message='Job.batch "r13-loadgen" is invalid: nodeSelector'
    )
    start(operator_task, kube, settings_for())
    await kube.client.create(BENCHMARKRUNS, run_manifest("r13", mock.url))
    failed = await wait_condition(kube, "r13", c.SUCCEEDED, "False", 10)
    assert failed["reason"] == "ChildCreateFailed" and "nodeSelector" in failed["message"]
    assert status_of(kube, "r13")["phase"] == "Failed"
    assert kube.emulator.read(JOBS, "r13-loadgen") is None
    assert kube.emulator.count("POST", "/jobs") == 1  # not retried


async def test_invalid_spec_fails_once_without_retries(
    kube: Kube, operator_task: Any, mock: MockServer
) -> None:
    start(operator_task, kube, settings_for())
    no_url = run_manifest("bad1", mock.url)
    del no_url["spec"]["target"]["url"]
    await kube.client.create(BENCHMARKRUNS, no_url)
    bad_load = run_manifest("bad2", mock.url, load={"mode": "concurrency", "workers": 2})
    await kube.client.create(BENCHMARKRUNS, bad_load)
    for name, field in (("bad1", "spec.target.url"), ("bad2", "spec.load")):
        acc = await wait_condition(kube, name, c.ACCEPTED, "False", 15)
        assert acc["reason"] == "InvalidSpec" and field in acc["message"]
        suc = condition(kube, name, c.SUCCEEDED)
        assert suc is not None and suc["status"] == "False" and suc["reason"] == "InvalidSpec"
        mirror = condition(kube, name, c.FAILED)
        assert mirror is not None and mirror["status"] == "True"
        assert mirror["reason"] == "InvalidSpec"
        assert status_of(kube, name)["phase"] == "Failed"
        assert kube.emulator.read(JOBS, f"{name}-loadgen") is None
        events = await wait_for(
            lambda n=name: kube.client.list(EVENTS, fields=f"involvedObject.name={n}"),
            5,
            message=f"an event on {name}",
        )
        assert [(e["type"], e["reason"]) for e in events] == [("Warning", "InvalidSpec")]
        assert field in events[0]["message"]
    # kopf records the permanent failure; nothing retries: a later valid run completes its
    # accept, and the invalid ones got exactly one status patch each
    await kube.client.create(BENCHMARKRUNS, run_manifest("ok", mock.url))
    await wait_condition(kube, "ok", c.ACCEPTED, "True", 15)
    assert status_patches(kube, "bad1") == 1 and status_patches(kube, "bad2") == 1


async def test_status_patches_stay_within_the_live_interval_budget(
    kube: Kube, operator_task: Any, mock: MockServer, agent: Agent, kubelet: Kubelet
) -> None:
    await add_target_and_agent(kube)
    live_interval = 1.0
    start(operator_task, kube, settings_for(agent, live_interval_s=live_interval))
    manifest = run_manifest(
        "r7",
        mock.url,
        load={"mode": "concurrency", "concurrency": 2, "workers": 2},
        phases={"profiling": {"duration": "4s"}},
    )
    await kube.client.create(BENCHMARKRUNS, manifest)
    await kubelet.start("r7")
    assert await kubelet.wait_all() == [0, 0]
    await kubelet.job_condition("Complete")
    await wait_condition(kube, "r7", c.SUCCEEDED, "True")
    versions = history(kube, "r7")
    live_writes = sum(
        1
        for a, b in itertools.pairwise(versions)
        if (a.get("status") or {}).get("live") != (b.get("status") or {}).get("live")
    )
    assert live_writes >= 2
    # consecutive live writes are at least one live interval apart, except the final patch
    # (the finished transition may refresh live with the last snapshots at once)
    stamps = [
        parse_rfc3339(b["status"]["live"]["updatedAt"])
        for a, b in itertools.pairwise(versions)
        if (b.get("status") or {}).get("live")
        and (a.get("status") or {}).get("live") != b["status"]["live"]
    ]
    # updatedAt has whole seconds: two writes >= 1 s apart never share a truncated second
    # (a gap of 0 means two writes within one live interval)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(g >= live_interval for g in gaps[:-1]), gaps
    # fixed transitions: accepted, workers pending/ready, START, END, finished (+ live)
    assert status_patches(kube, "r7") <= 6 + live_writes


async def test_results_from_termination_messages_when_pubsub_is_lost(
    kube: Kube, operator_task: Any, mock: MockServer, agent: Agent, kubelet: Kubelet
) -> None:
    """No snapshot reaches the operator: results come from the pods' termination messages."""
    await add_target_and_agent(kube)
    start(operator_task, kube, settings_for(agent))
    manifest = run_manifest("r8", mock.url, phases={"profiling": {"requests": 20}})
    await kube.client.create(BENCHMARKRUNS, manifest)
    dead = f"tcp://127.0.0.1:{free_port()}"
    await kubelet.start("r8", env={"BENCHOP_SNAPSHOT_ENDPOINT": dead})
    assert await kubelet.wait_all() == [0, 0]
    await kubelet.job_condition("Complete")
    await wait_condition(kube, "r8", c.SUCCEEDED, "True")
    avail = condition(kube, "r8", c.RESULTS_AVAILABLE)
    assert avail is not None and avail["reason"] == "TerminationMessages"
    res = status_of(kube, "r8")["results"]
    assert res["source"] == "terminationMessage" and res["requests"]["total"] == 20
    assert res["complete"] is True  # every worker's summary says COMPLETE, not interrupted
    assert "live" not in status_of(kube, "r8")  # nothing live ever arrived


async def test_unreachable_target_fails_with_target_unreachable(
    kube: Kube, operator_task: Any, kubelet: Kubelet
) -> None:
    """The worker's preflight finds nothing listening: it ends with an abort in its final
    snapshot and termination message (exit 0, no restart) and the operator fails the run with
    the worker's reason and message (host, port, errno); no request was made, and the
    connect attempts are few and counted."""
    start(operator_task, kube, settings_for())
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"  # nothing listens there
    manifest = run_manifest(
        "r9",
        url,
        load={"mode": "concurrency", "concurrency": 4, "workers": 1},
        phases={"profiling": {"duration": "60s"}},
        gates={"baseline": False, "timeout": "1s"},
    )
    await kube.client.create(BENCHMARKRUNS, manifest)
    await kubelet.start("r9")
    assert await kubelet.wait_all() == [0]
    failed = await wait_condition(kube, "r9", c.SUCCEEDED, "False")
    assert failed["reason"] == "TargetUnreachable", failed
    msg = failed["message"]
    assert msg.startswith(f"worker 0: {url}: cannot connect to 127.0.0.1:{port}: ECONNREFUSED")
    assert "[Errno 111]" in msg and "spec.preflight.timeout is 2s" in msg
    st = status_of(kube, "r9")
    assert st["phase"] == "Failed" and st["results"]["requests"]["total"] == 0
    assert "gpu" not in st["results"]
    assert 1 <= st["results"]["client"]["connectAttempts"] <= 8  # 2 s of backoff: 6 or 7


async def test_a_header_from_a_secret_reaches_the_target_through_the_job(
    kube: Kube, operator_task: Any, kubelet: Kubelet, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator never reads the Secret: the Job carries a secretKeyRef env var, the kubelet
    (the test) resolves it, the worker sends the header to a gateway that wants it. The value
    is in no status, event or operator log."""
    secret = "gw-token-9c41e0"
    kube.emulator.register("v1/secrets", kind="Secret")  # the kubelet's; the operator's: none
    await kube.client.create(
        "v1/secrets",
        {
            "metadata": {"name": "gateway"},
            "data": {"api-key": base64.b64encode(secret.encode()).decode()},
        },
    )
    gateway = await start_mock_server(
        MockConfig(ttft=0.002, itl=0.001, output_tokens=8, required_header=f"x-api-key: {secret}")
    )
    caplog.set_level(logging.DEBUG)
    try:
        start(operator_task, kube, settings_for())
        manifest = run_manifest(
            "r11",
            gateway.url,
            load={"mode": "concurrency", "concurrency": 2, "workers": 2},
            phases={"profiling": {"requests": 10}},
            gates={"baseline": False, "timeout": "1s"},
        )
        manifest["spec"]["target"]["headers"] = [
            {
                "name": "x-api-key",
                "valueFrom": {"secretKeyRef": {"name": "gateway", "key": "api-key"}},
            }
        ]
        await kube.client.create(BENCHMARKRUNS, manifest)
        job = await kubelet.read_job("r11")
        env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {
            "name": "BENCHOP_HEADER_0",
            "valueFrom": {"secretKeyRef": {"name": "gateway", "key": "api-key"}},
        } in env
        await kubelet.start("r11")
        assert await kubelet.wait_all() == [0, 0]
        await wait_condition(kube, "r11", c.SUCCEEDED, "True")
        assert gateway.stats["unauthorized"] == 0 and gateway.stats["requests"] == 10 + 2
    finally:
        await gateway.close()
    secrets = kmock.resource("v1/secrets")
    seen = json.dumps(
        [
            [dict(v) for v in obj.history]
            for k, obj in kube.emulator.objects.items()
            if k[0] != secrets
        ],
        default=str,
    )
    assert "BENCHOP_HEADER_0" in seen  # the Job is in there (events, runs, pods too)
    assert secret not in seen and secret not in caplog.text
    assert secret not in json.dumps(status_of(kube, "r11"))


async def test_watchdog_fails_a_run_that_never_finishes(
    kube: Kube, operator_task: Any, mock: MockServer
) -> None:
    start(operator_task, kube, settings_for(deadline_grace_s=0.5))
    manifest = run_manifest("r10", mock.url, activeDeadlineSeconds=1)
    await kube.client.create(BENCHMARKRUNS, manifest)
    job = await wait_for(lambda: kube.emulator.read(JOBS, "r10-loadgen"), 10)
    assert job["spec"]["activeDeadlineSeconds"] == 1
    failed = await wait_condition(kube, "r10", c.SUCCEEDED, "False", 10)  # no worker ever ran
    assert failed["reason"] == "DeadlineExceeded"
    assert condition(kube, "r10", c.RESULTS_AVAILABLE)["reason"] == "NoResults"  # type: ignore[index]


async def test_experiment_children_are_reconciled_by_the_same_operator(
    kube: Kube, operator_task: Any, mock: MockServer
) -> None:
    """main.py wires the Experiment handlers too: a sweep's first child run gets Accepted."""
    start(operator_task, kube, settings_for())
    template = run_manifest("unused", mock.url)["spec"]
    experiment = {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "sweep"},
        "spec": {
            "template": template,
            "sweep": [{"path": "load.concurrency", "values": [2, 4]}],
            "maxParallel": 1,
        },
    }
    await kube.client.create(EXPERIMENTS, experiment)
    await wait_condition(kube, "sweep-0", c.ACCEPTED, "True", 15)
    await wait_for(lambda: kube.emulator.read(JOBS, "sweep-0-loadgen"), 10)
    assert kube.emulator.read(BENCHMARKRUNS, "sweep-1") is None  # maxParallel 1


async def test_agents_are_resolved_again_when_the_workers_are_ready(
    kube: Kube, operator_task: Any, mock: MockServer, agent: Agent, kubelet: Kubelet
) -> None:
    """The model server's pod (and its node's agent) appear after the run was accepted."""
    start(operator_task, kube, settings_for(agent))
    manifest = run_manifest(
        "r11",
        mock.url,
        load={"mode": "concurrency", "concurrency": 2, "workers": 1},
        phases={"warmup": {"requests": 20}, "profiling": {"requests": 10}},
    )
    await kube.client.create(BENCHMARKRUNS, manifest)
    await wait_condition(kube, "r11", c.ACCEPTED, "True", 15)
    await add_target_and_agent(kube)
    await kubelet.start("r11")
    assert await kubelet.wait_all() == [0]
    await kubelet.job_condition("Complete")
    await wait_condition(kube, "r11", c.SUCCEEDED, "True")
    gpu = status_of(kube, "r11")["results"]["gpu"]
    assert gpu["agents"] == ["agent-a"] and gpu["energyJ"] > 0


async def test_unschedulable_worker_fails_the_run_after_the_grace(
    kube: Kube, operator_task: Any, mock: MockServer, kubelet: Kubelet
) -> None:
    start(operator_task, kube, settings_for(stuck_after_s=1.0))
    await kube.client.create(BENCHMARKRUNS, run_manifest("r12", mock.url))
    job = await kubelet.read_job("r12")
    meta = job["spec"]["template"]["metadata"]
    pod = {
        "metadata": {"name": "r12-loadgen-0", **{k: meta[k] for k in ("labels", "annotations")}},
        "spec": job["spec"]["template"]["spec"],
    }
    await kube.client.create("v1/pods", pod)
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient cpu.",
    }
    await kube.client.patch_status(
        "v1/pods", "r12-loadgen-0", {"phase": "Pending", "conditions": [unschedulable]}
    )
    loop = asyncio.get_running_loop()
    seen = loop.time()
    failed = await wait_condition(kube, "r12", c.SUCCEEDED, "False", 10)
    assert loop.time() - seen >= 0.9  # not before the grace: an autoscaler may still add a node
    assert failed["reason"] == "Unschedulable" and "Insufficient cpu" in failed["message"]


def job_env(kube: Kube, job_name: str) -> dict[str, str]:
    job = kube.emulator.read(JOBS, job_name)
    assert job is not None
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", "") for e in env}


def snapshot(run: str, state: str, seq: int, *, interrupted: bool = False) -> MetricsSnapshot:
    return MetricsSnapshot(
        run=run,
        worker=0,
        seq=seq,
        state=state,  # type: ignore[arg-type]
        phase="done" if state == "COMPLETE" else "profiling",
        time_ns=time.time_ns(),
        elapsed_s=1.0,
        n_pending=0,
        counters={"requests_total": 3, "requests_ok": 3},
        interrupted=interrupted,
    )


async def test_old_incarnation_complete_does_not_finish_a_recreated_run(
    kube: Kube, operator_task: Any, mock: MockServer
) -> None:
    """Delete a run and re-create its name: the old workers' COMPLETE is not the new run's."""
    settings = settings_for()
    start(operator_task, kube, settings)
    manifest = run_manifest(
        "rk",
        mock.url,
        load={"mode": "concurrency", "concurrency": 1, "workers": 1},
        gates={"baseline": False, "timeout": "1s"},
    )
    await kube.client.create(BENCHMARKRUNS, manifest)
    await wait_for(lambda: kube.emulator.read(JOBS, "rk-loadgen"), 10)
    old_key = job_env(kube, "rk-loadgen")["BENCHOP_RUN"]
    await kube.client.delete(BENCHMARKRUNS, "rk")
    await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "rk") is None, 10)
    await kube.emulator.collect_garbage()
    await kube.client.create(BENCHMARKRUNS, manifest)
    await wait_condition(kube, "rk", c.ACCEPTED, "True", 15)
    await wait_for(lambda: kube.emulator.read(JOBS, "rk-loadgen"), 10)
    new_key = job_env(kube, "rk-loadgen")["BENCHOP_RUN"]
    assert new_key != old_key
    pub = Publisher(f"tcp://127.0.0.1:{settings.snapshot_port}")
    try:
        seq = 0

        def publish_then_check() -> bool:
            # the old worker's last word (interrupted by the deletion), then a live one of the
            # new run on the same socket (ordered): once live shows, the old one was seen first
            nonlocal seq
            seq += 1
            pub.publish(snapshot(old_key, "COMPLETE", seq, interrupted=True))
            pub.publish(snapshot(new_key, "LIVE", seq))
            return "live" in status_of(kube, "rk")

        await wait_for(publish_then_check, 15, message="live status of the new run")
    finally:
        pub.close()
    assert condition(kube, "rk", c.SUCCEEDED)["status"] == "Unknown"  # type: ignore[index]
    assert status_of(kube, "rk")["phase"] not in ("Succeeded", "Failed")


def single_worker_run(name: str, url: str) -> dict[str, Any]:
    return run_manifest(
        name,
        url,
        load={"mode": "concurrency", "concurrency": 1, "workers": 1},
        gates={"baseline": False, "timeout": "1s"},
    )


async def publish_until(
    port: int, snaps: Callable[[int], list[MetricsSnapshot]], done: Callable[[], Any]
) -> None:
    """Publish ``snaps(seq)`` on one socket (ordered) until ``done()`` (slow joiner: repeat)."""
    pub = Publisher(f"tcp://127.0.0.1:{port}")
    seq = 0

    def step() -> Any:
        nonlocal seq
        seq += 1
        for snap in snaps(seq):
            pub.publish(snap)
        return done()

    try:
        await wait_for(step, 15, message="published")
    finally:
        pub.close()


async def test_an_interrupted_complete_is_not_final_while_the_job_runs(
    kube: Kube, operator_task: Any, mock: MockServer
) -> None:
    """An evicted worker's last COMPLETE (interrupted) waits for its replacement's."""
    settings = settings_for()
    start(operator_task, kube, settings)
    await kube.client.create(BENCHMARKRUNS, single_worker_run("ri", mock.url))
    await wait_for(lambda: kube.emulator.read(JOBS, "ri-loadgen"), 10)
    key = job_env(kube, "ri-loadgen")["BENCHOP_RUN"]
    await publish_until(
        settings.snapshot_port,
        lambda seq: [snapshot(key, "COMPLETE", seq, interrupted=True)],
        lambda: "live" in status_of(kube, "ri"),  # seen by the run loop, and it went on
    )
    assert condition(kube, "ri", c.SUCCEEDED)["status"] == "Unknown"  # type: ignore[index]
    await publish_until(
        settings.snapshot_port,
        lambda seq: [snapshot(key, "COMPLETE", 1000 + seq)],
        lambda: condition(kube, "ri", c.SUCCEEDED)["status"] == "True",  # type: ignore[index]
    )


async def test_an_error_building_results_fails_the_run_with_results_error(
    kube: Kube, operator_task: Any, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise ValueError("boom")

    monkeypatch.setattr(runs, "build_final", broken)
    settings = settings_for()
    start(operator_task, kube, settings)
    await kube.client.create(BENCHMARKRUNS, single_worker_run("re", mock.url))
    await wait_for(lambda: kube.emulator.read(JOBS, "re-loadgen"), 10)
    key = job_env(kube, "re-loadgen")["BENCHOP_RUN"]
    await publish_until(
        settings.snapshot_port,
        lambda seq: [snapshot(key, "COMPLETE", seq)],
        lambda: condition(kube, "re", c.SUCCEEDED)["status"] == "False",  # type: ignore[index]
    )
    failed = condition(kube, "re", c.SUCCEEDED)
    assert failed is not None and failed["reason"] == "ResultsError" and "boom" in failed["message"]


def test_a_deleted_pod_keeps_its_termination_message() -> None:
    """The termination message is the fallback results source: a pod DELETED event keeps it."""
    manifest = single_worker_run("r", "http://127.0.0.1:1/v1")
    spec = BenchmarkRun.model_validate({"metadata": manifest["metadata"], **manifest}).spec
    writer: Any = None  # not used by pod bookkeeping
    ctx = runs.RunContext("default.r.12345678", "default", "r", "12345678-uid", 1, spec, writer)
    pod = {
        "metadata": {
            "name": "r-loadgen-0",
            "namespace": "default",
            "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
            "labels": {"batch.kubernetes.io/job-completion-index": "0"},
        },
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": "loadgen",
                    "state": {"terminated": {"exitCode": 0, "message": '{"run": "x"}'}},
                }
            ],
        },
    }
    runs._note_pod(ctx, pod)
    assert ctx.termination() == {0: '{"run": "x"}'}
    runs._note_pod(ctx, pod, deleted=True)
    assert ctx.pods == {} and ctx.termination() == {0: '{"run": "x"}'}


async def test_a_run_holding_an_earlier_versions_finalizer_is_released(
    kube: Kube, operator_task: Any, mock: MockServer
) -> None:
    """Runs created by an operator that still put kopf's finalizer on them (before the run
    scheduler) lose it at the first event, so deleting them never hangs."""
    memo = kopf.Memo(settings=settings_for(), connection=kopf.ConnectionInfo(server=kube.url))
    operator_task(memo=memo)
    body = single_worker_run("old", mock.url)
    body["metadata"]["finalizers"] = [FINALIZER]
    await kube.client.create(BENCHMARKRUNS, body)
    await wait_for(
        lambda: not kube.emulator.read(BENCHMARKRUNS, "old")["metadata"].get("finalizers"), 10
    )
    await kube.client.delete(BENCHMARKRUNS, "old")
    await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "old") is None, 10)


async def test_deleting_a_run_mid_run_forgets_its_gate_and_snapshot_state(
    kube: Kube, operator_task: Any, mock: MockServer
) -> None:
    settings = settings_for()
    memo = kopf.Memo(settings=settings, connection=kopf.ConnectionInfo(server=kube.url))
    operator_task(memo=memo)
    await kube.client.create(BENCHMARKRUNS, single_worker_run("rd", mock.url))
    await wait_for(lambda: kube.emulator.read(JOBS, "rd-loadgen"), 10)
    key = job_env(kube, "rd-loadgen")["BENCHOP_RUN"]
    await publish_until(
        settings.snapshot_port,
        lambda seq: [snapshot(key, "LIVE", seq)],
        lambda: "live" in status_of(kube, "rd"),
    )
    services: runs.Services = memo.services
    assert key in services.runs and services.snapshots.latest(key)
    assert key in services.gates.coordinator._runs  # type: ignore[attr-defined]
    # nothing of kopf's on a run: no finalizer holds its deletion, no bookkeeping annotations
    meta = kube.emulator.read(BENCHMARKRUNS, "rd")["metadata"]
    assert not meta.get("finalizers") and not meta.get("annotations")
    await kube.client.delete(BENCHMARKRUNS, "rd")
    await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "rd") is None, 10)
    await wait_for(lambda: key not in services.runs, 10)  # from the DELETED event
    assert not services.keys and not services.writers and key in services.ended
    assert key not in services.gates.coordinator._runs  # type: ignore[attr-defined]
    assert services.snapshots.latest(key) == {} and services.snapshots.complete(key) == {}
    rejected = services.snapshots.rejected
    await publish_until(  # a worker still draining: its snapshots are dropped, not kept
        settings.snapshot_port,
        lambda seq: [snapshot(key, "LIVE", 1000 + seq)],
        lambda: services.snapshots.rejected > rejected,
    )
    assert services.snapshots.latest(key) == {}


async def test_a_failed_agent_re_resolution_is_retried_before_workers_ready(
    kube: Kube, operator_task: Any, mock: MockServer
) -> None:
    """The re-resolution at WorkersReady fails once: it is tried again, not lost."""
    settings = settings_for()
    memo = kopf.Memo(settings=settings, connection=kopf.ConnectionInfo(server=kube.url))
    operator_task(memo=memo)
    manifest = run_manifest(
        "rr", mock.url, load={"mode": "concurrency", "concurrency": 1, "workers": 1}
    )
    await kube.client.create(BENCHMARKRUNS, manifest)
    await wait_condition(kube, "rr", c.ACCEPTED, "True", 15)
    job = await wait_for(lambda: kube.emulator.read(JOBS, "rr-loadgen"), 10)
    services: runs.Services = memo.services
    real = services.gates.register
    calls: list[str] = []

    async def flaky(ctx: Any, restored: Any, *, fresh: bool = False) -> None:
        assert fresh  # at WorkersReady the agents are read now, not from the admission's cache
        calls.append(ctx.key)
        if len(calls) == 1:  # the agent list fails (API outage) at WorkersReady
            raise kopf.TemporaryError("agents: HTTP 503", delay=0.1)
        await real(ctx, restored, fresh=fresh)

    services.gates.register = flaky  # type: ignore[method-assign]
    meta = job["spec"]["template"]["metadata"]
    annotations = {**meta["annotations"], "batch.kubernetes.io/job-completion-index": "0"}
    pod = {
        "metadata": {"name": "rr-loadgen-0", "labels": meta["labels"], "annotations": annotations},
        "spec": job["spec"]["template"]["spec"],
    }
    await kube.client.create("v1/pods", pod)
    running = {"name": "loadgen", "restartCount": 0, "state": {"running": {}}}
    await kube.client.patch_status(
        "v1/pods", "rr-loadgen-0", {"phase": "Running", "containerStatuses": [running]}
    )
    await wait_condition(kube, "rr", c.WORKERS_READY, "True", 15)
    assert len(calls) == 2  # failed once, then resolved before WorkersReady was written


async def test_watchdog_fails_a_run_whose_children_are_never_created(
    kube: Kube, operator_task: Any, mock: MockServer
) -> None:
    """The Job create keeps failing (5xx, retried by kopf): the watchdog still ends the run."""
    kube.emulator.fail_next("POST", "/jobs", 503, times=1000)
    start(operator_task, kube, settings_for(deadline_grace_s=0.5))
    await kube.client.create(BENCHMARKRUNS, run_manifest("rw", mock.url, activeDeadlineSeconds=1))
    failed = await wait_condition(kube, "rw", c.SUCCEEDED, "False", 10)
    assert failed["reason"] == "DeadlineExceeded"
    assert kube.emulator.read(JOBS, "rw-loadgen") is None


@pytest.mark.parametrize("case", ["succeeds", "child-refused"])
async def test_the_api_key_reaches_the_workers_and_no_status_event_or_log(
    kube: Kube,
    operator_task: Any,
    agent: Agent,
    kubelet: Kubelet,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    """apiKeySecretRef: the workers authenticate with the key (the mock server refuses
    requests without it), the operator never reads the Secret, and the key is in no object
    the run leaves in the API (status, events, Job, ConfigMap, pods: every stored version), no
    operator log line and no worker log, record or termination message. ``child-refused``:
    the Job is refused (422): the run fails, with the error in its status and the operator's
    log. (kopf posts no Event against the emulator; tests/cluster scans ``kubectl get
    events``.)"""
    caplog.set_level(logging.DEBUG)
    key = "sk-bench-" + secrets.token_hex(12)
    server = await start_mock_server(
        MockConfig(ttft=0.004, itl=0.001, output_tokens=8, api_key=key)
    )
    try:
        await kube.client.create(
            SECRETS,
            {
                "metadata": {"name": "llm-key"},
                "data": {"token": base64.b64encode(key.encode()).decode()},
            },
        )
        await add_target_and_agent(kube)
        if case == "child-refused":
            kube.emulator.fail_next("POST", "/jobs", 422, message="Job.batch is invalid: env")
        start(operator_task, kube, settings_for(agent))
        doc = run_manifest("sec", server.url)
        doc["spec"]["target"]["apiKeySecretRef"] = {"name": "llm-key", "key": "token"}
        await kube.client.create(BENCHMARKRUNS, doc)
        if case == "succeeds":
            await wait_condition(kube, "sec", c.ACCEPTED, "True", 15)
            await kubelet.start("sec")
            assert await kubelet.wait_all() == [0, 0]
            await kubelet.job_condition("Complete")
            await wait_condition(kube, "sec", c.SUCCEEDED, "True")
            assert status_of(kube, "sec")["results"]["requests"]["ok"] == 40
            assert server.stats["unauthorized"] == 0
            assert server.stats["ok"] == 40 + 4 + 2  # profiling, warmup, 2 preflight requests
        else:
            failed = await wait_condition(kube, "sec", c.SUCCEEDED, "False", 10)
            assert failed["reason"] == "ChildCreateFailed"
    finally:
        await server.close()
    assert [
        c.path for c in kube.emulator.calls if "/secrets" in c.path and c.method != "POST"
    ] == []

    sources = {"operator log": caplog.text}
    secret_res = kmock.resource(SECRETS)
    for (res, ns, name), obj in kube.emulator.objects.items():
        if res != secret_res:
            for i, version in enumerate(obj.history):
                plain = json.loads(json.dumps(version, default=dict))
                sources[f"{res.plural}/{ns}/{name}@{i}"] = as_yaml(plain)
    sources.update({f"kubelet:{k}": v for k, v in files(tmp_path).items()})
    assert scan(key, sources) == [], describe(scan(key, sources))


async def test_curve_between_operator_agent_and_workers(
    kube: Kube, operator_task: Any, mock: MockServer, kubelet: Kubelet, tmp_path: Path
) -> None:
    """--curve-secret: the operator makes the release's keys (no Secret yet), the agent allows
    only the operator's key, the workers dial with the operator's public key from the Job; the
    run takes both baselines through CurveZMQ and succeeds. A plain ZMQ client gets nothing."""
    baseline_port = free_port()
    settings = settings_for(curve_secret="benchop-curve", curve_namespace="default")
    settings = dataclasses.replace(settings, agent_port=baseline_port)
    start(operator_task, kube, settings)
    stored = await wait_for(lambda: kube.emulator.read(SECRETS, "benchop-curve"), 10)
    keys = curvekeys.decode(json.loads(json.dumps(stored, default=dict)))
    (tmp_path / "clients").mkdir()
    (tmp_path / "agent.key_secret").write_text(keys["agent.key_secret"])
    (tmp_path / "clients" / "operator.key").write_text(keys["operator.key"])
    agent = Agent(
        AgentConfig.local(
            gpu_backend="simulated",
            simulated_gpus=2,
            node_name=TARGET_NODE,
            agent_name="agent-a",
            metrics_port=0,
            baseline_port=baseline_port,
            curve_secret_key=tmp_path / "agent.key_secret",
            curve_public_keys=tmp_path / "clients",
        )
    )
    await agent.start()
    try:
        await add_target_and_agent(kube)
        await kube.client.create(BENCHMARKRUNS, run_manifest("rc", mock.url))
        await wait_condition(kube, "rc", c.ACCEPTED, "True", 15)
        await wait_for(lambda: kube.emulator.read(JOBS, "rc-loadgen"), 10)
        operator_public = keys["operator.key"].split('"')[1]
        assert job_env(kube, "rc-loadgen")["BENCHOP_CURVE_SERVER_KEY"] == operator_public
        plain = RequestClient(f"tcp://127.0.0.1:{settings.gate_port}")
        try:
            with pytest.raises(RequestTimeout):
                ask = GateRequest(run="x", phase_id="p", boundary="START", worker=0, workers=1)
                await plain.request(ask, timeout=0.5, retries=0)
        finally:
            plain.close()
        await kubelet.start("rc")
        assert await kubelet.wait_all() == [0, 0]
        await kubelet.job_condition("Complete")
        await wait_condition(kube, "rc", c.SUCCEEDED, "True")
        res = status_of(kube, "rc")["results"]
        assert res["source"] == "pubsub" and res["requests"]["ok"] == 40
        assert res["gpu"]["agents"] == ["agent-a"]
        assert agent.stats().baseline_requests == 2
    finally:
        await agent.stop()
