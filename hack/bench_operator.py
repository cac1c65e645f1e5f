#!/usr/bin/env python3
"""Benchmark the operator: N BenchmarkRuns against the kube emulator or a real kube-apiserver.

Starts the real operator as a subprocess (``python -m benchop operator``, logged in through a
kubeconfig), creates N runs (paced, or a bounded number of concurrent POSTs), and measures for
each the time from sending its create request to the watch event that shows ``Accepted=True``
(and the create request's own round trip). Prints p50/p99/max of that latency, the wall time
for all, the operator's RSS (current and peak), the API requests the operator made per run,
the CPU of the operator and, on the real control plane, of kube-apiserver, etcd, the
controller-manager and the scheduler, and the latency and CPU by creation order (tenths).
Workers never start, so every run stays in progress (held by the operator's run scheduler):
the worst case for memory.

  --backend emulator   the emulator of tests/integration/kube, served by this process.
  --backend real       the control plane of hack/kube-up.sh: the Job controller makes the
                       worker pods, whose node selector no node matches (the operator gets
                       --stuck-after 1h so they do not fail the runs). The operator logs in as
                       the chart's ServiceAccount with the chart's RBAC; its requests are
                       counted from the apiserver's audit log. Started (and stopped and
                       purged afterwards) when not running; a running one is used as it is.

    python hack/bench_operator.py --runs 1000 --rate 40                   # emulator
    python hack/bench_operator.py --backend real --runs 10000 --rate 40   # real apiserver
    python hack/bench_operator.py --runs 1000 --rate 40 --restart         # + restart's preload
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "tests" / "cluster"))

from kube.harness import BENCHMARKRUNS, start_emulator  # noqa: E402
from realkube import API_URL, KUBE_DIR, TOOLS_BIN  # noqa: E402

NS = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def print_windows(
    created: dict[str, float],
    done: dict[str, float],
    samples: list[tuple[float, dict[str, float]]],
    windows: int = 10,
) -> None:
    """Latency by creation order, in ``windows`` slices, with each process's CPU (% of a core)
    while the slice's runs were created: does the latency grow with the runs in progress, and
    which process was busy then?"""
    names = sorted((n for n in created if n != "warmup"), key=created.__getitem__)
    if len(names) < windows or len(samples) < 2:
        return
    size = len(names) // windows
    print(f"by creation order ({windows} slices; CPU as % of a core while they were created):")
    for w in range(windows):
        part = names[w * size : (w + 1) * size if w < windows - 1 else len(names)]
        lat = np.array([done[n] - created[n] for n in part if n in done]) * 1e3
        t_from, t_to = created[part[0]], created[part[-1]]
        inside = [s for s in samples if t_from <= s[0] <= t_to] or samples[-2:]
        (ta, a), (tb, b) = inside[0], inside[-1]
        busy = (
            " ".join(f"{n} {(b[n] - a[n]) / max(tb - ta, 1e-9):4.0%}" for n in a) if tb > ta else ""
        )
        p50, p99 = (np.percentile(lat, 50), np.percentile(lat, 99)) if len(lat) else (0, 0)
        print(f"  runs {w * size:>5}+: p50 {p50:6.0f} ms p99 {p99:6.0f} ms | {busy}")


def _kind(path: str) -> str:
    """``/apis/g/v/namespaces/ns/benchmarkruns/r/status`` -> ``benchmarkruns/*/status``."""
    parts = path.split("?")[0].strip("/").split("/")
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        parts = parts[parts.index("namespaces") + 2 :]
    else:
        parts = parts[-1:]
    return "/".join([parts[0], *("*" if i == 0 else p for i, p in enumerate(parts[1:]))])


def manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "metadata": {"name": name},
        "spec": {
            "target": {
                "url": "http://model.default.svc:8000/v1",
                "model": "m",
                # as real runs have: the gates look up the agents on the target's nodes
                "podSelector": {"matchLabels": {"app": "model"}},
            },
            "load": {"mode": "concurrency", "concurrency": 8, "workers": 2},
            "phases": {"profiling": {"requests": 100}},
            # no node matches: the worker pods stay Pending wherever the bench runs
            "pod": {"nodeSelector": {"benchop.io/bench": "no-such-node"}},
        },
    }


def accepted(obj: dict[str, Any]) -> bool:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Accepted" and cond.get("status") == "True":
            return True
    return False


@dataclass
class Backend:
    """What the measurement needs from an API server."""

    kubeconfig: Path
    namespace: str | None  # the operator's --namespace; None: cluster-wide (the chart's default)
    create: Callable[[dict[str, Any]], Awaitable[None]]
    updates: Callable[[], AsyncIterator[dict[str, Any]]]  # every BenchmarkRun as it changes
    calls: Callable[[], list[tuple[str, str, int]]]  # the operator's (method, path, status)
    servers: dict[str, int] = field(default_factory=dict)  # name -> pid, for CPU figures
    operator_args: list[str] = field(default_factory=list)
    remove_all: Callable[[], Awaitable[int]] | None = None  # delete every run; how many are left


async def measure(
    backend: Backend,
    runs: int,
    concurrency: int,
    rate: float,
    timeout_s: float,
    restart: bool = False,
) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    env = {**os.environ, "KUBECONFIG": str(backend.kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    health_port = free_port()
    cmd = [
        sys.executable, "-m", "benchop", "operator",
        *(["--namespace", backend.namespace] if backend.namespace else []),
        "--gate-port", str(free_port()), "--snapshot-port", str(free_port()),
        "--health-port", str(health_port), "--bind-host", "127.0.0.1",
        "--operator-service", "127.0.0.1", *backend.operator_args,
    ]  # fmt: skip
    log = open(tmp / "operator.log", "wb")  # noqa: SIM115, ASYNC230 - child's stderr
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=log, stderr=log)

    async def healthy_after(proc: asyncio.subprocess.Process, limit_s: float = 900) -> float:
        """Seconds until the operator's /healthz answers 200 (what its liveness probe asks)."""
        t = time.perf_counter()
        async with aiohttp.ClientSession() as http:
            while time.perf_counter() - t < limit_s:
                if proc.returncode is not None:
                    raise RuntimeError(f"operator exited {proc.returncode}; see {tmp}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{health_port}/healthz") as resp:
                        if resp.status == 200:
                            return time.perf_counter() - t
                await asyncio.sleep(0.1)
        raise RuntimeError(f"/healthz not 200 within {limit_s:.0f}s after a restart")

    created: dict[str, float] = {}
    responded: dict[str, float] = {}
    done: dict[str, float] = {}
    progress = asyncio.Event()

    async def watch() -> None:
        async for obj in backend.updates():
            name = obj["metadata"].get("name", "")
            if name in created and name not in done and accepted(obj):
                done[name] = time.perf_counter()
                progress.set()

    async def until(n: int) -> None:
        while len(done) < n:
            if proc.returncode is not None:
                raise RuntimeError(f"operator exited {proc.returncode}; see {tmp}")
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), 1.0)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.5)  # the watch is open before the first create
        created["warmup"] = time.perf_counter()
        await backend.create(manifest("warmup"))  # the operator answers: its first run accepted
        async with asyncio.timeout(120):
            await until(1)
        rss_idle, _ = rss_kib(proc.pid)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{health_port}/healthz") as resp,
        ):
            print(f"liveness /healthz:      {resp.status} {await resp.text()}")
        calls_before = len(backend.calls())
        cpu_before = {name: cpu_s(pid) for name, pid in backend.servers.items()}
        op_cpu_before = cpu_s(proc.pid)
        sem = asyncio.Semaphore(concurrency)

        async def create(i: int) -> None:
            name = f"run-{i:05d}"
            if rate > 0:  # paced: run i is created at t0 + i / rate
                await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            async with sem:
                # from the moment the create is sent (as `kubectl apply` is run): its Accepted
                # event may arrive before its create response
                created[name] = time.perf_counter()
                await backend.create(manifest(name))
                responded[name] = time.perf_counter()

        t0 = time.perf_counter()
        pids = {**backend.servers, "operator": proc.pid, "bench": os.getpid()}
        samples: list[tuple[float, dict[str, float]]] = []

        async def sample() -> None:  # CPU of each process every second: the windows' shares
            while True:
                samples.append((time.perf_counter(), {n: cpu_s(p) for n, p in pids.items()}))
                await asyncio.sleep(1)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(create(i) for i in range(runs)))
        t_created = time.perf_counter() - t0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until(runs + 1), timeout_s)
        t_all = time.perf_counter() - t0
        await asyncio.sleep(5)  # let the per-run loops make their first pass before RSS
        sampler.cancel()
        rss, hwm = rss_kib(proc.pid)
        cpu = {name: cpu_s(pid) - cpu_before[name] for name, pid in backend.servers.items()}
        op_cpu = cpu_s(proc.pid) - op_cpu_before
        wall = time.perf_counter() - t0
        lat = np.array([done[n] - created[n] for n in created if n != "warmup" and n in done])
        calls = backend.calls()[calls_before:]
        pace = f"{rate:g}/s" if rate > 0 else f"burst, {concurrency} concurrent"
        print(f"runs created:           {runs} in {t_created:.2f}s ({pace})")
        print(f"runs accepted:          {len(lat)}/{runs} in {t_all:.2f}s")
        if len(lat):
            print(
                "create -> Accepted:     "
                f"p50 {np.percentile(lat, 50) * 1e3:.0f} ms, "
                f"p99 {np.percentile(lat, 99) * 1e3:.0f} ms, max {lat.max() * 1e3:.0f} ms"
            )
        post = np.array([responded[n] - created[n] for n in responded])
        if len(post):
            print(
                "create request:         "
                f"p50 {np.percentile(post, 50) * 1e3:.0f} ms, "
                f"p99 {np.percentile(post, 99) * 1e3:.0f} ms"
            )
        print(
            f"operator RSS:           {rss / 1024:.1f} MiB after "
            f"(idle with 1 run: {rss_idle / 1024:.1f} MiB, peak {hwm / 1024:.1f} MiB)"
        )
        print(f"operator CPU:           {op_cpu:.1f} s over {wall:.0f} s")
        for name, seconds in cpu.items():
            print(f"{name + ' CPU:':23} {seconds:.1f} s ({seconds / wall:.0%} of a core)")
        print_windows(created, done, samples)
        print(f"API requests seen:      {len(calls)} ({len(calls) / max(runs, 1):.1f} per run)")
        kinds = collections.Counter((m, _kind(p), s) for m, p, s in calls)
        for (method, kind, status), n in kinds.most_common(12):
            print(f"  {n / max(runs, 1):6.2f}/run  {method:6} {kind:28} -> {status}")
        if restart:  # the restarted operator preloads every run in progress before it serves
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
            proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=log, stderr=log)
            took = await healthy_after(proc)
            print(f"restart -> /healthz:    {took:.1f} s (preloading {runs + 1} runs in progress)")
        if backend.remove_all is not None:  # while the operator runs: it removes its finalizer
            t_del = time.perf_counter()
            left = await backend.remove_all()
            took = time.perf_counter() - t_del
            print(f"runs deleted:           {runs + 1 - left} in {took:.1f}s")
        return 0 if len(lat) == runs else 1
    finally:
        watcher.cancel()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()


# --------------------------------------------------------------------------- emulator


async def bench_emulator(
    runs: int, concurrency: int, rate: float, timeout_s: float, restart: bool
) -> int:
    async with start_emulator() as kube:
        emulator = kube.emulator
        # kmock 0.8 routes each request by scanning every request served so far (`request in
        # payload._source`): O(total requests) per request, quadratic over a bench. Bounding its
        # request log keeps routing O(1); the fidelity layer's own log (`emulator.calls`) is kept.
        emulator._requests = collections.deque(maxlen=16)
        events: asyncio.Queue[Any] = asyncio.Queue()
        emulator._watchers.add(events)  # every committed write, in order (bench-only hook)
        tmp = Path(tempfile.mkdtemp(prefix="bench-emulator-"))
        (tmp / "kubeconfig").write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: emu, cluster: {{server: '{kube.url}'}}}}]\n"
            "users: [{name: emu, user: {}}]\n"
            "contexts: [{name: emu, context: {cluster: emu, user: emu, namespace: default}}]\n"
            "current-context: emu\n"
        )

        async def create(body: dict[str, Any]) -> None:
            await kube.client.create(BENCHMARKRUNS, body)

        async def updates() -> AsyncIterator[dict[str, Any]]:
            while True:
                yield (await events.get()).obj

        def calls() -> list[tuple[str, str, int]]:  # the operator's: not the bench's creates
            return [
                (c.method, c.path, c.status)
                for c in emulator.calls
                if not (c.method == "POST" and c.path.endswith("/benchmarkruns"))
            ]

        backend = Backend(tmp / "kubeconfig", "default", create, updates, calls)
        return await measure(backend, runs, concurrency, rate, timeout_s, restart)


# --------------------------------------------------------------------------- real control plane


def kubectl(*args: str, input: str | None = None) -> str:
    env = {
        **os.environ,
        "KUBECONFIG": str(KUBE_DIR / "admin.kubeconfig"),
        "PATH": f"{TOOLS_BIN}:{os.environ['PATH']}",
    }
    return subprocess.run(
        ["kubectl", *args], env=env, input=input, capture_output=True, text=True, check=True
    ).stdout


def pid_of(component: str) -> int:
    return int((KUBE_DIR / "pids" / f"{component}.pid").read_text())


def operator_identity(tmp: Path) -> tuple[Path, str]:
    """The chart's operator ServiceAccount and RBAC (rendered by helm) and a kubeconfig with a
    token of that ServiceAccount; returns (kubeconfig, the audit log's user name)."""
    env = {**os.environ, "PATH": f"{TOOLS_BIN}:{os.environ['PATH']}"}
    rendered = subprocess.run(
        ["helm", "template", "benchop", str(ROOT / "charts" / "benchop"), "-n", NS,
         "-s", "templates/serviceaccount.yaml", "-s", "templates/rbac.yaml"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    kubectl("apply", "-f", "-", input=rendered)
    # the cluster-scoped RBAC would block a later `helm install` of the chart: removed at exit
    atexit.register(
        subprocess.run,
        ["kubectl", "delete", "--ignore-not-found", "-f", "-"],
        env={**env, "KUBECONFIG": str(KUBE_DIR / "admin.kubeconfig")},
        input=rendered, capture_output=True, text=True, check=False,
    )  # fmt: skip
    token = kubectl("-n", NS, "create", "token", "benchop-operator", "--duration=6h").strip()
    path = tmp / "operator.kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": API_URL,
                            "certificate-authority": str(KUBE_DIR / "pki" / "ca.crt"),
                        },
                    }
                ],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [
                    {"name": "local", "context": {"cluster": "local", "user": "operator"}}
                ],
                "current-context": "local",
            }
        )
    )
    return path, f"system:serviceaccount:{NS}:benchop-operator"


@contextlib.contextmanager
def real_control_plane() -> Iterator[tuple[Path, str]]:
    """The control plane of hack/kube-up.sh (started without nodes, and purged afterwards,
    when none runs), the CRDs, an empty namespace and the operator's identity."""
    pidfile = KUBE_DIR / "pids" / "kube-apiserver.pid"
    try:
        os.kill(int(pidfile.read_text()), 0)
        started = False
    except (OSError, ValueError):
        started = True
        env = {**os.environ, "BENCHOP_KUBE_NODES": ""}
        subprocess.run(["bash", str(ROOT / "hack" / "kube-up.sh")], env=env, check=True)
    try:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        kubectl("wait", "--for=condition=Established", "crd/benchmarkruns.benchop.io")
        # runs left by an interrupted bench of an operator version that put kopf's finalizer
        # on runs would hold the namespace's deletion forever: drop the finalizers first
        unblock = '{"metadata":{"finalizers":null}}'
        for name in kubectl("-n", NS, "get", "br", "-o", "name", "--ignore-not-found").split():
            with contextlib.suppress(subprocess.CalledProcessError):  # gone meanwhile
                kubectl("-n", NS, "patch", name, "--type=merge", "-p", unblock)
        kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=300s")
        kubectl("create", "namespace", NS)
        yield operator_identity(Path(tempfile.mkdtemp(prefix="bench-real-")))
    finally:
        if started:
            subprocess.run(["bash", str(ROOT / "hack" / "kube-down.sh"), "--purge"], check=False)


async def bench_real(
    identity: tuple[Path, str],
    runs: int,
    concurrency: int,
    rate: float,
    timeout_s: float,
    restart: bool,
) -> int:
    kubeconfig, user = identity
    pki = KUBE_DIR / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    base = f"{API_URL}/apis/benchop.io/v1alpha1/namespaces/{NS}/benchmarkruns"
    audit = KUBE_DIR / "audit" / "audit.log"
    offset = audit.stat().st_size
    seen: list[tuple[str, str, int]] = []

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=64),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
    ) as http:

        async def create(body: dict[str, Any]) -> None:
            async with http.post(base, json=body) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"create: {resp.status} {await resp.text()}")

        async def updates() -> AsyncIterator[dict[str, Any]]:
            version = "0"
            while True:  # a 429 while the CRD's watch cache starts, or a stream ended: again
                params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "600"}
                async with http.get(base, params=params) as resp:
                    if resp.status != 200:
                        await asyncio.sleep(0.5)
                        continue
                    async for line in resp.content:
                        event = json.loads(line)
                        if event["type"] in ("ADDED", "MODIFIED"):
                            version = event["object"]["metadata"]["resourceVersion"]
                            yield event["object"]

        def calls() -> list[tuple[str, str, int]]:
            nonlocal offset
            with audit.open("rb") as f:
                f.seek(offset)
                for line in f:
                    if not line.endswith(b"\n"):
                        break
                    offset += len(line)
                    e = json.loads(line)
                    if e["user"]["username"] == user:
                        code = int(e.get("responseStatus", {}).get("code", 0))
                        seen.append((e["verb"].upper(), e["requestURI"], code))
            return seen

        async def remove_all() -> int:
            try:
                async with http.delete(base) as resp:
                    if resp.status != 504:  # a 504: the collection's deletion goes on
                        resp.raise_for_status()
            except aiohttp.ServerDisconnectedError:  # 10,000 runs: it goes on server-side too
                pass
            deadline = time.monotonic() + 600
            while True:
                async with http.get(base, params={"limit": "1"}) as resp:
                    listed = await resp.json()
                left = len(listed["items"]) + int(listed["metadata"].get("remainingItemCount", 0))
                if not left or time.monotonic() > deadline:
                    return left
                await asyncio.sleep(1)

        backend = Backend(
            kubeconfig,
            None,
            create,
            updates,
            calls,
            servers={
                name: pid_of(name)
                for name in ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler")
            },
            operator_args=["--stuck-after", "1h"],
            remove_all=remove_all,
        )
        return await measure(backend, runs, concurrency, rate, timeout_s, restart)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("emulator", "real"), default="emulator")
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=20, help="concurrent create requests")
    p.add_argument(
        "--rate", type=float, default=0.0, help="creates per second (default: unpaced burst)"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for Accepted")
    p.add_argument(
        "--restart",
        action="store_true",
        help="then restart the operator and time its /healthz (the startup preload of every run)",
    )
    args = p.parse_args()
    load = (args.runs, args.concurrency, args.rate, args.timeout, args.restart)
    if args.backend == "emulator":
        return asyncio.run(bench_emulator(*load))
    with real_control_plane() as identity:
        return asyncio.run(bench_real(identity, *load))


if __name__ == "__main__":
    sys.exit(main())
