"""Issue 15 on the real control plane: a run whose prompts are a JSONL dataset in a ConfigMap
sends its rows as the workload says (checked at the server: a recording mock server on the
host, which the worker pods reach over the pods' bridge); its results bundle lands in the
ConfigMap ``<run>-results`` (no ``spec.output.pvc``: the test kubelet mounts no PVCs, see
docs/testing.md) and ``benchop results NAME`` returns it through the kubeconfig; and
``kubectl wait`` ends both ways: ``--for=condition=Succeeded`` for the good run,
``--for=condition=Failed`` at once for a run the operator refuses."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from realkube import E2E_NS, HOST_IP, RealKube, namespace

from benchop.mockserver import MockConfig, build_app

pytestmark = pytest.mark.cluster

ROWS = [{"prompt": f"row number {i}", "outputTokens": 2 + i % 3} for i in range(7)]
LIMIT = 5  # the workload uses the file's first 5 rows
WORKERS = 2
REQUESTS = 10  # two passes over the 5 rows, 5 requests per worker
MODEL = "mock"  # the recording server lists it: each worker's preflight checks /v1/models


@dataclass
class Recorder:
    """A mock model server on the host; every POST body kept with the client's address, in
    arrival order."""

    url: str
    bodies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@contextlib.contextmanager
def recording_server(host: str) -> Iterator[Recorder]:
    loop = asyncio.new_event_loop()
    started: asyncio.Future[Recorder] = loop.create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        recorder = Recorder("")

        @web.middleware
        async def keep(
            req: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if req.method == "POST":
                recorder.bodies.append((req.remote or "", json.loads(await req.read())))
            return await handler(req)

        app = build_app(MockConfig(ttft=0.002, itl=0.0005, model=MODEL))
        app.middlewares.append(keep)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, 0).start()
        except BaseException as exc:
            await runner.cleanup()
            started.set_exception(exc)
            return
        recorder.url = f"http://{host}:{runner.addresses[0][1]}/v1"
        started.set_result(recorder)
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(asyncio.wait_for(started, 30), loop).result(35)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()


def dataset_run(name: str, ns: str, url: str, dataset: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "target": {"model": MODEL, "url": url},
            "workload": {"dataset": dataset},
            "load": {"mode": "concurrency", "concurrency": WORKERS, "workers": WORKERS},
            "phases": {"profiling": {"requests": REQUESTS}},
            "gates": {"baseline": False},
        },
    }


def benchop(cluster: RealKube, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["benchop", *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait(cluster: RealKube, ns: str, obj: str, condition: str, timeout: str) -> float:
    """``kubectl wait --for=condition=...``; returns how long it took (it must succeed)."""
    start = time.monotonic()
    res = cluster.kubectl(
        "-n", ns, "wait", f"--for=condition={condition}", obj, f"--timeout={timeout}",
        check=False, timeout=400,
    )  # fmt: skip
    took = time.monotonic() - start
    body = cluster.get(*obj.split("/"), namespace=ns) or {}
    assert res.returncode == 0, (condition, res.stderr, body.get("status"))
    return took


def test_dataset_run_sends_its_rows_and_leaves_its_bundle(
    mock_server: str, release: RealKube
) -> None:
    """(``mock_server`` creates the namespace.)"""
    name = "dataset"
    release.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "rows", "namespace": E2E_NS},
            "data": {"rows.jsonl": "".join(json.dumps(r) + "\n" for r in ROWS)},
        }
    )
    with recording_server(HOST_IP) as server:
        ds = {"format": "jsonl", "configMap": {"name": "rows", "key": "rows.jsonl"},
              "sampling": "sequential", "limit": LIMIT}  # fmt: skip
        release.apply(dataset_run(name, E2E_NS, server.url, ds))
        took = wait(release, E2E_NS, f"br/{name}", "Succeeded", "300s")
        bodies = list(server.bodies)
    print(f"{name}: Succeeded after {took:.1f}s")
    # The other condition is already there, False: its wait returns at once too.
    wait(release, E2E_NS, f"br/{name}", "Failed=False", "5s")

    # --- the rows, as the server received them: worker w of W sends entries w, w+W, ... of
    # file order (sequential, the first LIMIT rows, a new pass after the last), one at a time
    # (concurrency 1 per worker), so each pod's requests arrive in its order.
    pods = [
        p
        for p in release.get("pods", namespace=E2E_NS)
        if p["metadata"].get("labels", {}).get("job-name") == f"{name}-loadgen"
    ]
    worker_of = {
        p["status"]["podIP"]: int(
            p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]
        )
        for p in pods
    }
    assert sorted(worker_of.values()) == list(range(WORKERS)), pods
    sent: dict[int, list[dict[str, Any]]] = {w: [] for w in range(WORKERS)}
    for remote, body in bodies:
        sent[worker_of[remote]].append(body)
    per_worker = REQUESTS // WORKERS
    for w in sent:  # first, the worker's preflight: one 1-token request, not a dataset row
        preflight, *sent[w] = sent[w]
        assert preflight["messages"] == [{"role": "user", "content": "Hi"}], preflight
        assert preflight["max_tokens"] == 1
    for w, got in sent.items():
        rows = [(w + WORKERS * k) % LIMIT for k in range(per_worker)]
        assert [b["messages"] for b in got] == [
            [{"role": "user", "content": ROWS[i]["prompt"]}] for i in rows
        ], w
        assert [b["max_tokens"] for b in got] == [ROWS[i]["outputTokens"] for i in rows]

    # --- the bundle: the ConfigMap status.output names, owned by the run
    run = release.get("br", name, namespace=E2E_NS)
    output = run["status"]["output"]
    assert output["configMap"] == f"{name}-results" and "error" not in output, output
    cm = release.get("configmap", output["configMap"], namespace=E2E_NS)
    [owner] = cm["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("BenchmarkRun", run["metadata"]["uid"])
    assert sorted(cm["data"]) == ["results.json", "timeseries.csv"]
    results = json.loads(cm["data"]["results.json"])
    assert results["run"]["name"] == name and results["status"]["phase"] == "Succeeded"
    assert results["spec"]["workload"]["dataset"]["configMap"] == {
        "name": "rows",
        "key": "rows.jsonl",
    }
    assert results["results"] == run["status"]["results"]
    assert results["metrics"]["ttft_ms"]["count"] == REQUESTS
    assert results["metrics"]["output_tokens"]["count"] == REQUESTS
    assert {"p50", "p90", "p95", "p99"} <= results["metrics"]["ttft_ms"]["percentiles"].keys()
    assert "omitted" in results["files"]["records.jsonl"]  # no PVC: no per-request records
    rows = list(csv.DictReader(io.StringIO(cm["data"]["timeseries.csv"])))
    assert output["timeseriesIntervalS"] == 1 and rows
    assert sum(int(r["requests"]) for r in rows) == sum(int(r["ok"]) for r in rows) == REQUESTS
    out_tokens = sum(ROWS[i]["outputTokens"] for i in [k % LIMIT for k in range(REQUESTS)])
    assert results["metrics"]["output_tokens"]["mean"] * REQUESTS == pytest.approx(out_tokens)

    # --- `benchop results NAME` through the kubeconfig returns it
    res = benchop(release, "results", name, "-n", E2E_NS, "-o", "json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == results
    res = benchop(release, "results", name, "-n", E2E_NS, "-o", "csv")
    assert res.returncode == 0, res.stderr
    assert res.stdout == cm["data"]["timeseries.csv"]


def test_kubectl_wait_for_failed_returns_for_a_refused_dataset_run(release: RealKube) -> None:
    # A dataset path that only means something locally: the operator refuses the run, and
    # `kubectl wait --for=condition=Failed` returns as soon as it did, not at its timeout.
    ns = namespace(release, "benchop-e2e-results")
    ds = {"format": "jsonl", "file": "data/chat.jsonl"}
    release.apply(dataset_run("local-path", ns, "http://unused.invalid/v1", ds))
    took = wait(release, ns, "br/local-path", "Failed", "120s")
    print(f"local-path: Failed after {took:.1f}s")
    run = release.get("br", "local-path", namespace=ns)
    failed = release.condition(run, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "InvalidSpec"), run["status"]
    assert "spec.workload.dataset.file" in failed["message"]
    assert release.condition(run, "Succeeded")["status"] == "False"
    assert release.get("job", "local-path-loadgen", namespace=ns) is None
    res = benchop(release, "results", "local-path", "-n", ns)
    assert res.returncode == 1 and "has no results bundle" in res.stderr, res.stderr


def test_a_dataset_source_that_does_not_exist_fails_the_run(release: RealKube) -> None:
    # A missing ConfigMap: the kubelet cannot mount it and keeps the pod in ContainerCreating,
    # saying so only in FailedMount events; the operator reads the ConfigMap while the workers
    # start and fails the run once it has been missing for --stuck-after (conftest.STUCK_AFTER).
    # A missing claim: the scheduler leaves the pod Unschedulable, which fails it the same way.
    ns = namespace(release, "benchop-e2e-results")
    sources = {
        "no-rows": {"configMap": {"name": "no-such-rows", "key": "rows.jsonl"}},
        "no-claim": {"pvc": {"claimName": "no-such-claim", "path": "rows.jsonl"}},
    }
    for name, source in sources.items():
        # a host the chart's allowlist admits (its pods never start: nothing dials it)
        release.apply(dataset_run(name, ns, "http://unused.svc:8000/v1", source))
    failed = {}
    for name in sources:
        took = wait(release, ns, f"br/{name}", "Failed", "180s")
        print(f"{name}: Failed after {took:.1f}s")
        run = release.get("br", name, namespace=ns)
        failed[name] = release.condition(run, "Failed")
        assert failed[name]["status"] == "True", run["status"]
        assert release.get("job", f"{name}-loadgen", namespace=ns)["spec"].get("suspend") is True
    assert failed["no-rows"]["reason"] == "WorkloadFileMissing"
    assert failed["no-rows"]["message"] == (
        f"spec.workload.dataset.configMap: ConfigMap no-such-rows not found in namespace {ns}: "
        "the worker pods cannot mount it"
    )
    assert failed["no-claim"]["reason"] == "Unschedulable"
    assert 'persistentvolumeclaim "no-such-claim" not found' in failed["no-claim"]["message"]
    mounts = [
        e["message"]
        for e in release.get("events", namespace=ns)
        if e["reason"] == "FailedMount" and e["involvedObject"]["name"].startswith("no-rows-")
    ]
    assert any('configmap "no-such-rows" not found' in m for m in mounts), mounts  # the kubelet's
