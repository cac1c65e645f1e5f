"""Fault suite on the real control plane (hack/kube-up.sh): what happens to runs in flight when
pods, the operator, the API server, etcd, the model server or a node fail — in numbers.

    BENCHOP_KUBE_SLOT=3 python hack/fault_suite.py            # every scenario, 3 runs each
    BENCHOP_KUBE_SLOT=3 python hack/fault_suite.py --short    # the CI subset, 1 run each
    python hack/fault_suite.py --only api-429-5xx --runs 1    # one scenario

Starts the control plane (or reuses a running one; stops the one it started), installs the chart,
serves benchop's mock model server as a Deployment on the GPU node, and for each scenario creates
BenchmarkRuns, injects the fault and waits for a terminal condition. One table, one line per
scenario: runs, outcome, requests lost, requests counted twice, responses the server completed
again for a request a restarted worker sent again (resent), seconds to the terminal condition
(max over the runs), operator restarts (new operator processes during the runs); the last line is
``scenarios S passed P lost L double D``; the exit code is 1 when a scenario did not end as
documented (docs/faults.md says what each expects).

Lost and double come from the mock server's counters (``GET /benchop/stats``, plus the ``STATS``
line each stopped mock process printed) against the run's results, by request identity: every
request of a worker carries ``x-benchop-request-id`` (docs/request.md; a request a restarted
worker sends again has the same one) and the mock runs with ``--request-ids``.
``benchop.mockserver.tally`` is the rule: ``served`` = the distinct requests the server
completed during the run (``ok`` less ``ok_repeats``), ``counted`` = ``results.requests.ok``
plus the warmup requests; lost = served - counted when positive, double = counted - served
when positive, resent = ``ok_repeats`` (shown, neither lost nor double). In the model-server
fault scenarios (the server injects failures; every request reaches it) ``served`` = requests
it received and ``counted`` = ``results.requests.total`` plus warmup, and each injected fault
must be in ``results.requests.byReason`` exactly once.

The operator reaches the API server through a fault-injecting TLS proxy of this process on the
slot's host IP (``KUBERNETES_SERVICE_HOST``/``PORT`` in the chart's ``operator.extraEnv``, which
both kopf and the operator's own client honour, as client-go does; the proxy serves the
apiserver's own certificate, which names that IP, and forwards the operator's bearer token). It
is a pass-through except in the ``api-429-5xx`` scenario, which fails when the operator made no
request through it during the errors.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import dataclasses
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cluster"))
sys.path.insert(0, str(ROOT / "operator"))

from realkube import (  # noqa: E402
    API_URL,
    GPU_NODE,
    HOST_IP,
    PROJECT_IMAGE,
    RELEASE,
    RELEASE_NS,
    SLOT,
    RealKube,
    namespace,
)

from benchop.mockserver import MockConfig, config_args, tally  # noqa: E402

NS = "benchop-faults"
PROXY_PORT = 6444 + 100 * SLOT
MOCK = MockConfig(ttft=0.05, itl=0.01)
WORKERS = 2
PROFILING = 240  # requests across the workers
WARMUP = 20
CPU_NODE = "benchop-cpu"
KCM_ARGS = "--node-monitor-grace-period=20s --node-monitor-period=2s"
"""A node without heartbeats is NotReady (and tainted) within ~20 s (the test kubelet renews
its Lease every 10 s, so less would flap)."""


# --------------------------------------------------------------------------- API fault proxy


class ApiProxy:
    """A TLS proxy to the apiserver on HOST_IP:PROXY_PORT, in a thread of its own; between
    ``fail_for(s)`` and its end every request is answered 429 or 503 in turn (Retry-After: 1)."""

    def __init__(self, kube_dir: Path) -> None:
        self.kube_dir = kube_dir
        self.fail_until = 0.0
        self.injected = 0
        self.injected_by: dict[str, int] = {}  # User-Agent's product -> requests refused
        self.forwarded = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the API proxy did not start")

    def fail_for(self, seconds: float) -> None:
        self.fail_until = time.monotonic() + seconds

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        pki = self.kube_dir / "pki"
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(pki / "apiserver.crt", pki / "apiserver.key")
        client_ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.session = ClientSession(
            connector=TCPConnector(ssl=client_ctx, limit=0),
            timeout=ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, HOST_IP, PROXY_PORT, ssl_context=server_ctx).start()
        self._ready.set()
        await asyncio.Event().wait()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self.fail_until:
            self.injected += 1
            agent = request.headers.get("User-Agent", "-").split("/")[0].split(" ")[0]
            self.injected_by[agent] = self.injected_by.get(agent, 0) + 1
            code = 429 if self.injected % 2 else 503
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                    "reason": "TooManyRequests" if code == 429 else "ServiceUnavailable",
                    "message": "injected by hack/fault_suite.py"}  # fmt: skip
            return web.json_response(status, status=code, headers={"Retry-After": "1"})
        self.forwarded += 1
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "transfer-encoding")}  # fmt: skip
        body = await request.read()
        resp: web.StreamResponse | None = None
        try:
            async with self.session.request(
                request.method, API_URL + request.path_qs, headers=headers,
                data=body or None, skip_auto_headers=("Content-Type",), allow_redirects=False,
            ) as upstream:  # fmt: skip
                resp = web.StreamResponse(status=upstream.status)
                for k, v in upstream.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        resp.headers[k] = v
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except (ClientError, OSError, TimeoutError) as e:
            if resp is None:  # the apiserver is down: answer as a load balancer would
                return web.Response(status=502, text=f"proxy: {e}")
            if request.transport is not None:  # cut mid-body (a watch): cut ours too
                request.transport.abort()
            return resp


# --------------------------------------------------------------------------- the suite


@dataclass
class Result:
    ok: bool
    outcome: str
    lost: int | None
    double: int | None
    resent: int | None
    took: float
    restarts: int
    problems: list[str] = field(default_factory=list)


class Suite:
    def __init__(self, cluster: RealKube, proxy: ApiProxy) -> None:
        self.k = cluster
        self.proxy = proxy
        self.mock_config: MockConfig | None = None
        self.seq = 0

    # ---------------------------------------------------------------- setup

    def install(self) -> None:
        namespace(self.k, RELEASE_NS)
        env = [
            {"name": "KUBERNETES_SERVICE_HOST", "value": HOST_IP},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(PROXY_PORT)},
        ]
        # the operator on the GPU node: node-lost loses the CPU node, and an operator there
        # would be evicted minutes later, in the middle of another scenario
        values = {"operator": {"extraEnv": env,
                               "nodeSelector": {"kubernetes.io/hostname": GPU_NODE}}}  # fmt: skip
        self.k.helm(
            "upgrade", "--install", RELEASE, str(ROOT / "charts" / "benchop"),
            "-n", RELEASE_NS, "-f", str(ROOT / "hack" / "local-cluster-values.yaml"),
            "-f", "-", "--wait", "--timeout", "3m", input=json.dumps(values), timeout=240,
        )  # fmt: skip
        namespace(self.k, NS)
        self.k.kubectl(
            "delete", "br", "--all", "-n", NS, "--wait=true", "--timeout=120s", timeout=150
        )  # fmt: skip  (an interrupted suite's runs)

    def mock(self, config: MockConfig) -> None:
        """The mock server as Deployment mock-llm (+ Service) on the GPU node with ``config``,
        counting request ids."""
        config = dataclasses.replace(config, request_ids=True)
        if config == self.mock_config:
            return
        labels = {"app": "mock-llm"}
        container = {
            "name": "mock-llm",
            "image": PROJECT_IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "args": ["mock-server", "--host", "0.0.0.0", "--port", "8000", *config_args(config)],
            "ports": [{"name": "http", "containerPort": 8000}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
        }
        self.k.apply([
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "mock-llm", "namespace": NS, "labels": labels},
             "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                      "strategy": {"type": "Recreate"},
                      "template": {"metadata": {"labels": labels}, "spec": {
                          "automountServiceAccountToken": False,
                          "nodeSelector": {"kubernetes.io/hostname": GPU_NODE},
                          "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                              "seccompProfile": {"type": "RuntimeDefault"}},
                          "containers": [container]}}}},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "mock-llm", "namespace": NS, "labels": labels},
             "spec": {"selector": labels, "ports": [{"name": "http", "port": 8000,
                                                     "targetPort": "http"}]}},
        ])  # fmt: skip
        self.k.kubectl("-n", NS, "rollout", "status", "deployment/mock-llm", "--timeout=120s",
                       timeout=130)  # fmt: skip
        self.k.wait_for(lambda: len(self.mock_pods()) == 1, timeout=60, what="one mock pod")
        self.mock_config = config

    def mock_pods(self) -> list[dict[str, Any]]:
        return [
            p
            for p in self.k.get("pods", namespace=NS)
            if p["metadata"].get("labels", {}).get("app") == "mock-llm"
            and not p["metadata"].get("deletionTimestamp")
        ]

    def served(self) -> dict[str, int]:
        """The mock's counters over every process it ran: the STATS lines of stopped ones plus
        the running one's /benchop/stats."""
        total: dict[str, int] = {}
        [pod] = self.mock_pods()  # one pod all along: a restart is a container restart in it
        for line in self.k.container_logs(NS, pod["metadata"]["name"], "mock-llm").splitlines():
            if line.startswith("STATS "):
                for key, v in json.loads(line[6:]).items():
                    total[key] = total.get(key, 0) + v

        def live() -> dict[str, int] | None:
            ip = (self.k.get("pod", pod["metadata"]["name"], namespace=NS) or {}).get(
                "status", {}).get("podIP")  # fmt: skip
            try:
                url = f"http://{ip}:8000/benchop/stats"
                with urllib.request.urlopen(url, timeout=5) as r:
                    return dict(json.load(r))
            except (OSError, ValueError):
                return None

        now = self.k.wait_for(live, timeout=60, what="the mock server's counters")
        for key, v in now.items():
            total[key] = total.get(key, 0) + v
        return total

    def settled(self, timeout: float = 40) -> dict[str, int]:
        """``served()`` once no response is in flight (a stalled one ends with its stall), or
        after ``timeout`` (a restarted server's cut responses never finish)."""
        ends = ("ok", "bad_requests", "unauthorized", "errors", "rate_limited", "disconnects",
                "client_disconnects")  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            now = self.served()
            if now["requests"] <= sum(now[k] for k in ends) or time.monotonic() > deadline:
                return now
            time.sleep(1.0)

    # ---------------------------------------------------------------- runs

    def spec(self, **over: Any) -> dict[str, Any]:
        # The mock's counters are compared with the run's requests: no preflight (its test
        # request is no run's, and a pod that starts again checks again), and no early end on
        # failures (maxFailureRatio 1: a restarted or faulty server's failures are counted,
        # which is what these scenarios measure). The model is the one the mock lists.
        spec: dict[str, Any] = {
            "target": {
                "url": f"http://mock-llm.{NS}.svc:8000/v1",
                "model": MOCK.model,
                "podSelector": {"matchLabels": {"app": "mock-llm"}},
            },
            "workload": {"promptTokens": 16, "outputTokens": 16},
            "load": {"mode": "concurrency", "concurrency": 4, "workers": WORKERS,
                     "requestTimeout": "5s", "maxFailureRatio": 1},
            "phases": {"warmup": {"requests": WARMUP}, "profiling": {"requests": PROFILING}},
            "gates": {"baseline": True, "timeout": "10s"},
            "preflight": {"enabled": False},
        }  # fmt: skip
        spec.update(over)
        return spec

    def create(self, stem: str, spec: dict[str, Any]) -> str:
        self.seq += 1
        name = f"{stem}-{self.seq}-{int(time.time()) % 100000}"
        self.k.apply({"apiVersion": "benchop.io/v1alpha1", "kind": "BenchmarkRun",
                      "metadata": {"name": name, "namespace": NS}, "spec": spec})  # fmt: skip
        return name

    def run(self, name: str) -> dict[str, Any]:
        return dict(self.k.get("br", name, namespace=NS) or {})

    def phase(self, name: str) -> str:
        return str((self.run(name).get("status") or {}).get("phase") or "")

    def operator_pods(self) -> dict[str, int]:
        """uid -> restartCount of the operator pods."""
        return {
            p["metadata"]["uid"]: sum(
                c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or []
            )
            for p in self.k.get("pods", namespace=RELEASE_NS)
            if p["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
        }

    def worker_pods(self, name: str, running_only: bool = True) -> list[dict[str, Any]]:
        return [
            p
            for p in self.k.get("pods", namespace=NS)
            if p["metadata"].get("labels", {}).get("job-name") == f"{name}-loadgen"
            and (not running_only or p["status"].get("phase") == "Running")
            and not p["metadata"].get("deletionTimestamp")
        ]

    def report_stuck(self, after_s: float = 90) -> None:
        """Print the pods Terminating for longer than ``after_s`` (a deletion the test kubelet
        missed; not a failure of the scenario at hand)."""
        now = time.time()
        for p in self.k.get("pods", namespace=NS):
            ts = p["metadata"].get("deletionTimestamp")
            if ts:
                age = now - calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ"))
                if age > after_s:
                    print(f"#   stuck: pod {p['metadata']['name']} Terminating for {age:.0f}s "
                          f"({p['status'].get('phase')})", flush=True)  # fmt: skip

    def wait_served(self, before: dict[str, int], n: int, timeout: float = 120) -> None:
        """Until the mock completed ``n`` more responses than in ``before``."""
        self.k.wait_for(lambda: self.served().get("ok", 0) - before.get("ok", 0) >= n,
                        timeout=timeout, what=f"{n} responses served")  # fmt: skip

    def measure(
        self,
        stem: str,
        inject: Callable[[str, dict[str, int]], None],
        *,
        spec: dict[str, Any] | None = None,
        mock: MockConfig = MOCK,
        expect: tuple[str, str] = ("True", "Completed"),
        telemetry: str | None = None,
        exact: bool = True,
        faults: dict[str, str] | None = None,
        resent: int = 0,
        timeout: float = 300,
    ) -> Result:
        """Create a run, call ``inject(name, served_before)``, wait for the end, compare.

        ``faults`` maps a mock counter to the results' byReason key it must equal (each
        injected fault counted once as that failure); ``resent``: at least that many responses
        completed twice (a request sent again by a restarted worker)."""
        self.mock(mock)
        self.report_stuck()
        spec = spec or self.spec()
        before = self.served()
        ops_before = self.operator_pods()
        start = time.monotonic()
        name = self.create(stem, spec)
        problems: list[str] = []
        try:
            inject(name, before)
        except AssertionError as e:
            problems.append(f"injecting: {e}")
        try:
            run = self.k.wait_ended("br", name, NS, timeout=timeout)
        except AssertionError as e:
            return Result(False, "no terminal condition", None, None, None,
                          time.monotonic() - start, 0, [*problems, str(e)])  # fmt: skip
        took = time.monotonic() - start
        ops_after = self.operator_pods()
        restarts = len(ops_after.keys() - ops_before.keys()) + sum(
            n - ops_before.get(uid, 0) for uid, n in ops_after.items() if uid in ops_before
        )
        cond = self.k.condition(run, "Succeeded")
        outcome = "Succeeded" if cond.get("status") == "True" else f"Failed {cond.get('reason')}"
        if (cond.get("status"), cond.get("reason")) != expect:
            problems.append(f"ended {cond.get('status')} {cond.get('reason')}: "
                            f"{cond.get('message')}")  # fmt: skip
        status = run.get("status") or {}
        if telemetry is not None:
            tel = self.k.condition(run, "TelemetryDegraded")
            got = f"{tel.get('status')} {tel.get('reason')}"
            outcome += f", TelemetryDegraded {tel.get('reason')}"
            if got != telemetry:
                problems.append(f"TelemetryDegraded {got}, expected {telemetry}")
        results = status.get("results") or {}
        req = results.get("requests") or {}
        if req.get("total") != PROFILING and spec["phases"]["profiling"].get("requests"):
            problems.append(f"results count {req.get('total')} requests, not {PROFILING}")
        after = self.settled()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        warmup = (spec["phases"].get("warmup") or {}).get("requests") or 0
        if faults:  # every request reaches the server and is counted once, whatever its end
            t, what = tally(delta, req.get("total", 0) + warmup, received=True), "got"
        else:  # distinct requests the server completed against the successes counted
            t, what = tally(delta, req.get("ok", 0) + warmup), "completed"
        if exact and (t.lost or t.double):
            problems.append(f"server {what} {t.served} distinct, results+warmup count "
                            f"{t.counted}")  # fmt: skip
        if t.resent < resent:
            problems.append(f"{t.resent} responses completed twice, expected at least {resent}")
        by_reason = req.get("byReason") or {}
        for counter, reason in (faults or {}).items():
            if delta.get(counter, 0) != by_reason.get(reason, 0) or not delta.get(counter):
                problems.append(f"mock {counter}={delta.get(counter, 0)}, results "
                                f"{reason}={by_reason.get(reason, 0)}")  # fmt: skip
        self.k.kubectl("-n", NS, "delete", "br", name, "--wait=false", check=False)
        return Result(not problems, outcome, t.lost, t.double, t.resent, took, restarts, problems)

    # ---------------------------------------------------------------- injections

    def delete_pod(self, pod: dict[str, Any], *args: str) -> None:
        meta = pod["metadata"]
        self.k.kubectl("-n", meta["namespace"], "delete", "pod", meta["name"], "--wait=false",
                       *args)  # fmt: skip

    def operator_pod(self) -> dict[str, Any]:
        pods = [p for p in self.k.get("pods", namespace=RELEASE_NS)
                if p["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
                and not p["metadata"].get("deletionTimestamp")]  # fmt: skip
        return dict(pods[0])

    def agent_pod(self) -> dict[str, Any]:
        pods = [p for p in self.k.get("pods", namespace=RELEASE_NS)
                if p["metadata"]["labels"].get("app.kubernetes.io/component") == "agent"
                and not p["metadata"].get("deletionTimestamp")]  # fmt: skip
        return dict(pods[0])

    def signal_container(self, pod: dict[str, Any], container: str, sig: int) -> None:
        """Signal the process group of a running container (the test kubelet's pid file)."""
        meta = pod["metadata"]
        pods_dir = self.k.dir / "kubelet" / "pods"
        pid_files = sorted(
            pods_dir.glob(f"{meta['namespace']}_{meta['name']}*/{container}/*.pid"),
            key=lambda p: p.stat().st_mtime,
        )
        if not pid_files:
            raise AssertionError(f"no pid file of {meta['name']}/{container}")
        os.killpg(int(pid_files[-1].read_text().split()[0]), sig)

    def profiling_started(self, name: str, before: dict[str, int], share: float) -> None:
        self.k.wait_for(lambda: self.phase(name) == "Profiling", timeout=120,
                        what="phase Profiling")  # fmt: skip
        self.wait_served(before, WARMUP + int(PROFILING * share))

    def component(self, name: str, down_s: float) -> None:
        env = {**os.environ, "BENCHOP_KUBE_DIR": str(self.k.dir), "BENCHOP_KUBE_EXTRA_KCM_ARGS":
               KCM_ARGS}  # fmt: skip
        subprocess.run(["bash", str(ROOT / "hack" / "kube-down.sh"), "--only", name], env=env,
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        time.sleep(down_s)
        subprocess.run(["bash", str(ROOT / "hack" / "kube-up.sh")], env=env, check=True,
                       capture_output=True, timeout=300)  # fmt: skip


# --------------------------------------------------------------------------- scenarios


def worker_deleted(s: Suite, times: int) -> Result:
    def inject(name: str, before: dict[str, int]) -> None:
        for k in range(times):
            s.profiling_started(name, before, 0.2 + 0.2 * k)
            pods = s.worker_pods(name)
            if not pods:
                raise AssertionError("no running worker to delete")
            s.delete_pod(sorted(pods, key=lambda p: p["metadata"]["name"])[0])

    return s.measure("wdel", inject)


def worker_killed(s: Suite, unrecorded: bool = False) -> Result:
    """SIGKILL a worker mid-profiling. ``unrecorded``: SIGSTOP it first and let the server
    finish the responses it was receiving (a response takes ~0.2 s), so the kill always
    hits responses the server completed and the worker never recorded: the restarted worker
    sends them again, with the same request ids (resent, not lost)."""

    def inject(name: str, before: dict[str, int]) -> None:
        s.profiling_started(name, before, 0.3)
        pod = s.worker_pods(name)[0]
        if unrecorded:
            s.signal_container(pod, "loadgen", signal.SIGSTOP)
            time.sleep(2.0)
        s.signal_container(pod, "loadgen", signal.SIGKILL)

    return s.measure("wkill", inject, resent=1 if unrecorded else 0)


def operator_deleted(s: Suite, when: str) -> Result:
    def inject(name: str, before: dict[str, int]) -> None:
        if when == "warmup":
            s.k.wait_for(lambda: s.phase(name) == "Warmup", timeout=120, what="phase Warmup")
            s.wait_served(before, 2)
        elif when == "profiling":
            s.profiling_started(name, before, 0.3)
        else:  # the START gate: the agent is stopped, so the gate waits for its timeout
            s.k.wait_for(lambda: s.phase(name) == "Warmup", timeout=120, what="phase Warmup")
            agent = s.agent_pod()
            s.signal_container(agent, "agent", signal.SIGSTOP)
            try:
                s.wait_served(before, WARMUP)
                time.sleep(1.0)  # the workers are at the gate, which waits for the agent
                s.delete_pod(s.operator_pod())
                s.k.wait_for(lambda: (s.run(name).get("status") or {}).get("gates", {})
                             .get("START"), timeout=120, what="START closed")  # fmt: skip
            finally:
                s.signal_container(agent, "agent", signal.SIGCONT)
            return
        s.delete_pod(s.operator_pod())

    telemetry = "True AgentMissing" if when == "gate" else None
    return s.measure(f"op-{when}", inject, telemetry=telemetry)


def agent_deleted(s: Suite) -> Result:
    def inject(name: str, before: dict[str, int]) -> None:
        s.profiling_started(name, before, 0.2)
        s.delete_pod(s.agent_pod())

    return s.measure("agent", inject, telemetry="True AgentMissing")


def apiserver_restarted(s: Suite) -> Result:
    def inject(name: str, before: dict[str, int]) -> None:
        s.profiling_started(name, before, 0.2)
        s.component("kube-apiserver", 2.0)

    return s.measure("apirestart", inject)


def etcd_down(s: Suite) -> Result:
    def inject(name: str, before: dict[str, int]) -> None:
        s.profiling_started(name, before, 0.2)
        s.component("etcd", 5.0)

    return s.measure("etcd", inject)


def api_errors(s: Suite) -> Result:
    def inject(name: str, before: dict[str, int]) -> None:
        s.k.wait_for(lambda: s.phase(name) == "Initializing" or s.phase(name) == "Warmup",
                     timeout=60, what="the run accepted")  # fmt: skip
        injected, by = s.proxy.injected, dict(s.proxy.injected_by)
        s.proxy.fail_for(20.0)
        time.sleep(20.0)
        refused = {k: n - by.get(k, 0) for k, n in s.proxy.injected_by.items() if n > by.get(k, 0)}
        print(f"#   api: {s.proxy.injected - injected} requests answered 429/503 {refused}",
              flush=True)  # fmt: skip
        if not refused.get("benchop-operator"):
            raise AssertionError(f"the operator's client made no API request in the 20 s of "
                                 f"errors (refused: {refused})")  # fmt: skip

    return s.measure("api", inject)


def model_fault(s: Suite, config: MockConfig, faults: dict[str, str]) -> Callable[[], Result]:
    def go() -> Result:
        # no warmup: every injected fault is in the profiling results
        spec = s.spec(phases={"profiling": {"requests": PROFILING}})
        return s.measure("model", lambda name, before: None, spec=spec, mock=config,
                         faults=faults)  # fmt: skip

    return go


def model_restart(s: Suite) -> Result:
    def inject(name: str, before: dict[str, int]) -> None:
        s.profiling_started(name, before, 0.3)
        s.signal_container(s.mock_pods()[0], "mock-llm", signal.SIGTERM)

    # requests in flight at the restart, and those refused while it is down, fail: counted
    # as failures, not lost
    return s.measure("modelrestart", inject)


def node_lost(s: Suite) -> Result:
    flag = s.k.dir / "kubelet" / "nodes" / CPU_NODE / "stop-heartbeat"

    def inject(name: str, before: dict[str, int]) -> None:
        try:
            s.profiling_started(name, before, 0.1)
        finally:  # the workers are placed: the replacements go to the GPU node
            s.k.kubectl("uncordon", GPU_NODE, check=False)
        pods = s.worker_pods(name)
        if not any(p["spec"].get("nodeName") == CPU_NODE for p in pods):
            raise AssertionError(f"no worker on {CPU_NODE} to lose")
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.touch()
        names = {p["metadata"]["name"] for p in pods}
        s.k.wait_for(lambda: [p for p in s.worker_pods(name) if p["metadata"]["name"] not in names],
                     timeout=120, what="the Job's replacement worker running")  # fmt: skip

    spec = s.spec(
        pod={
            "tolerations": [
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 2},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 2},
            ]
        }
    )  # fmt: skip
    # slower tokens (5 requests/s): the node is declared lost ~20 s after the fault
    slow = MockConfig(ttft=0.05, itl=0.05)
    s.mock(slow)
    # the scheduler may put both workers on either node: with the GPU node cordoned until they
    # run, they are on the CPU node (the mock server and the agent stay where they run)
    s.k.kubectl("cordon", GPU_NODE)
    try:
        return s.measure("node", inject, spec=spec, mock=slow)
    finally:
        s.k.kubectl("uncordon", GPU_NODE, check=False)
        flag.unlink(missing_ok=True)


def scenarios(s: Suite) -> list[tuple[str, bool, Callable[[], Result]]]:
    """(name, in --short, run once)."""
    r = 1.0  # every fault rate high enough to hit ~24 of 240 requests
    return [
        ("worker-pod-deleted", False, lambda: worker_deleted(s, 1)),
        ("worker-pod-deleted-3x", False, lambda: worker_deleted(s, 3)),
        ("worker-killed", True, lambda: worker_killed(s)),
        ("worker-killed-unrecorded", True, lambda: worker_killed(s, unrecorded=True)),
        ("operator-deleted-warmup", False, lambda: operator_deleted(s, "warmup")),
        ("operator-deleted-gate", True, lambda: operator_deleted(s, "gate")),
        ("operator-deleted-profiling", True, lambda: operator_deleted(s, "profiling")),
        ("agent-deleted", False, lambda: agent_deleted(s)),
        ("apiserver-restarted", True, lambda: apiserver_restarted(s)),
        ("etcd-down-5s", False, lambda: etcd_down(s)),
        ("api-429-5xx-20s", True, lambda: api_errors(s)),
        ("model-errors", True, model_fault(s, MockConfig(ttft=0.05, itl=0.01, error_rate=0.1 * r),
                                            {"errors": "http_5xx"})),
        ("model-disconnects", False, model_fault(
            s, MockConfig(ttft=0.05, itl=0.01, disconnect_rate=0.1 * r),
            {"disconnects": "disconnected"})),
        ("model-malformed", False, model_fault(
            s, MockConfig(ttft=0.05, itl=0.01, malformed_rate=0.1 * r),
            {"malformed": "malformed_stream"})),
        ("model-stall>timeout", False, model_fault(
            s, MockConfig(ttft=0.05, itl=0.01, stall_rate=0.05, stall=30.0),
            {"stalls": "timeout"})),
        ("model-slowloris", False, model_fault(
            s, MockConfig(ttft=0.05, itl=0.01, trickle_rate=0.05, trickle=0.05),
            {"trickles": "timeout"})),
        ("model-restart", False, lambda: model_restart(s)),
        ("node-lost", False, lambda: node_lost(s)),
    ]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="the CI subset, one run each")
    ap.add_argument("--runs", type=int, default=None, help="runs per scenario (default 3; 1)")
    ap.add_argument("--only", action="append", default=[], help="scenario name (repeatable)")
    ap.add_argument("--keep", action="store_true", help="leave a control plane it started up")
    args = ap.parse_args()
    runs = args.runs or (1 if args.short else 3)

    env_kcm = os.environ.setdefault("BENCHOP_KUBE_EXTRA_KCM_ARGS", KCM_ARGS)
    cluster = RealKube.up()
    if not cluster.started and env_kcm == KCM_ARGS:  # a reused one: its KCM gets our timings
        Suite(cluster, ApiProxy(cluster.dir)).component("kube-controller-manager", 0)
    proxy = ApiProxy(cluster.dir)
    proxy.start()
    suite = Suite(cluster, proxy)
    t0 = time.monotonic()
    rows = []
    try:
        suite.install()
        for name, short, fn in scenarios(suite):
            if args.only and name not in args.only:
                continue
            if args.short and not short and not args.only:
                continue
            results = []
            for i in range(runs):
                res = fn()
                results.append(res)
                status = "ok" if res.ok else "FAILED: " + "; ".join(res.problems)
                line = (f"{res.outcome} lost={res.lost} double={res.double} resent={res.resent} "
                        f"took={res.took:.0f}s")  # fmt: skip
                print(f"# {name} run {i + 1}: {line} restarts={res.restarts} {status}", flush=True)
            rows.append((name, results))
    finally:
        if args.keep:
            pass
        elif cluster.started:
            cluster.down()
        else:  # a control plane of someone else's: leave no operator behind the dead proxy
            cluster.kubectl("delete", "br", "--all", "-n", NS, "--wait=true", "--timeout=60s",
                            check=False, timeout=90)  # fmt: skip
            cluster.helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait", check=False,
                         timeout=180)  # fmt: skip
            cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)

    print()
    print(f"{'scenario':30} {'runs':>4}  {'outcome':42} {'lost':>5} {'double':>6} "
          f"{'resent':>6} {'end s':>6} {'op restarts':>11}")  # fmt: skip
    passed = lost_all = double_all = 0
    for name, results in rows:
        ok = all(r.ok for r in results)
        passed += ok
        outcomes = sorted({r.outcome for r in results})
        lost = sum(r.lost or 0 for r in results)
        double = sum(r.double or 0 for r in results)
        resent = sum(r.resent or 0 for r in results)
        lost_all += lost
        double_all += double
        took = max(r.took for r in results)
        restarts = sum(r.restarts for r in results)
        mark = "" if ok else "  << not as documented"
        print(f"{name:30} {len(results):>4}  {' / '.join(outcomes):42} {lost:>5} {double:>6} "
              f"{resent:>6} {took:>6.0f} {restarts:>11}{mark}")  # fmt: skip
    print(f"(total {time.monotonic() - t0:.0f}s)")
    print(f"scenarios {len(rows)} passed {passed} lost {lost_all} double {double_all}")
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
