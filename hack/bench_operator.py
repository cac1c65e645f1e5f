#!/usr/bin/env python3
"""Benchmark the operator: N BenchmarkRuns against the kube emulator.

Serves the emulator (tests/integration/kube) on loopback in this process, starts the real
operator as a subprocess (``python -m benchop operator``, logged in through a kubeconfig that
points at the emulator), creates N runs (a bounded number of concurrent POSTs), and measures for
each the time from its create response to the watch event that shows ``Accepted=True``. Prints
p50/p99/max of that latency, the wall time for all, the operator's RSS (current and peak) and
the API requests the operator made. Workers never start (nothing plays the kubelet), so every
run stays in progress: a daemon per run, the worst case for memory.

    python hack/bench_operator.py --runs 1000            # burst: queueing at the emulator
    python hack/bench_operator.py --runs 1000 --rate 40  # paced below the emulator's limit
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from kube.harness import BENCHMARKRUNS, start_emulator  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubeconfig(url: str, path: Path) -> None:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: emu, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: emu, user: {}}]\n"
        "contexts: [{name: emu, context: {cluster: emu, user: emu, namespace: default}}]\n"
        "current-context: emu\n"
    )


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def _kind(path: str) -> str:
    """``/apis/g/v/namespaces/ns/benchmarkruns/r/status`` -> ``benchmarkruns/*/status``."""
    parts = path.strip("/").split("/")
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
            "target": {"url": "http://model.default.svc:8000/v1", "model": "m"},
            "load": {"mode": "concurrency", "concurrency": 8, "workers": 2},
            "phases": {"profiling": {"requests": 100}},
        },
    }


def accepted(obj: dict[str, Any]) -> bool:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Accepted" and cond.get("status") == "True":
            return True
    return False


async def bench(runs: int, concurrency: int, rate: float, timeout_s: float) -> int:
    async with start_emulator() as kube:
        emulator = kube.emulator
        # kmock 0.8 routes each request by scanning every request served so far (`request in
        # payload._source`): O(total requests) per request, quadratic over a bench. Bounding its
        # request log keeps routing O(1); the fidelity layer's own log (`emulator.calls`) is kept.
        emulator._requests = collections.deque(maxlen=16)
        events: asyncio.Queue[Any] = asyncio.Queue()
        emulator._watchers.add(events)  # every committed write, in order (bench-only hook)
        tmp = Path(tempfile.mkdtemp(prefix="bench-operator-"))
        kubeconfig(kube.url, tmp / "kubeconfig")
        env = {**os.environ, "KUBECONFIG": str(tmp / "kubeconfig")}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        health_port = free_port()
        cmd = [
            sys.executable, "-m", "benchop", "operator", "--namespace", "default",
            "--gate-port", str(free_port()), "--snapshot-port", str(free_port()),
            "--health-port", str(health_port), "--bind-host", "127.0.0.1",
            "--operator-service", "127.0.0.1",
        ]  # fmt: skip
        log = open(tmp / "operator.log", "wb")  # noqa: SIM115, ASYNC230 - child's stderr
        proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=log, stderr=log)
        created: dict[str, float] = {}
        done: dict[str, float] = {}

        progress = asyncio.Event()

        async def watch() -> None:
            while True:
                ev = await events.get()
                if ev is None:
                    return
                name = ev.obj["metadata"].get("name", "")
                if name in created and name not in done and accepted(ev.obj):
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
            # wait until the operator answers: its first run accepted
            await kube.client.create(BENCHMARKRUNS, manifest("warmup"))
            created["warmup"] = time.perf_counter()
            async with asyncio.timeout(60):
                await until(1)
            rss_idle, _ = rss_kib(proc.pid)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{health_port}/healthz") as resp,
            ):
                print(f"liveness /healthz:      {resp.status} {await resp.text()}")
            calls_before = len(emulator.calls)
            sem = asyncio.Semaphore(concurrency)

            async def create(i: int) -> None:
                name = f"run-{i:05d}"
                if rate > 0:  # paced: run i is created at t0 + i / rate
                    await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
                async with sem:
                    await kube.client.create(BENCHMARKRUNS, manifest(name))
                    created[name] = time.perf_counter()

            t0 = time.perf_counter()
            await asyncio.gather(*(create(i) for i in range(runs)))
            t_created = time.perf_counter() - t0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until(runs + 1), timeout_s)
            t_all = time.perf_counter() - t0
            await asyncio.sleep(5)  # let the per-run loops make their first pass before RSS
            rss, hwm = rss_kib(proc.pid)
            lat = np.array([done[n] - created[n] for n in created if n != "warmup" and n in done])
            calls = emulator.calls[calls_before:]
            pace = f"{rate:g}/s" if rate > 0 else f"burst, {concurrency} concurrent"
            print(f"runs created:           {runs} in {t_created:.2f}s ({pace})")
            print(f"runs accepted:          {len(lat)}/{runs} in {t_all:.2f}s")
            if len(lat):
                print(
                    "create -> Accepted:     "
                    f"p50 {np.percentile(lat, 50) * 1e3:.0f} ms, "
                    f"p99 {np.percentile(lat, 99) * 1e3:.0f} ms, max {lat.max() * 1e3:.0f} ms"
                )
            print(
                f"operator RSS:           {rss / 1024:.1f} MiB after "
                f"(idle with 1 run: {rss_idle / 1024:.1f} MiB, peak {hwm / 1024:.1f} MiB)"
            )
            print(f"API requests seen:      {len(calls)} ({len(calls) / max(runs, 1):.1f} per run)")
            kinds = collections.Counter((c.method, _kind(c.path), c.status) for c in calls)
            for (method, kind, status), n in kinds.most_common(12):
                print(f"  {n / max(runs, 1):6.2f}/run  {method:6} {kind:28} -> {status}")
            return 0 if len(lat) == runs else 1
        finally:
            events.put_nowait(None)
            watcher.cancel()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            log.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=20, help="concurrent create requests")
    p.add_argument(
        "--rate", type=float, default=0.0, help="creates per second (default: unpaced burst)"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for Accepted")
    args = p.parse_args()
    return asyncio.run(bench(args.runs, args.concurrency, args.rate, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
