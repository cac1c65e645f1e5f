#!/usr/bin/env python3
"""Load-generator benchmark: the benchop worker against wrk, same mock server, one client core.

Starts the mock server (ttft=0, itl=0, N output tokens) pinned to one core, then drives
its streaming chat endpoint for a few seconds from the other core with each client:

- ``wrk``: 1 thread, C connections, a Lua script that POSTs a streaming chat request
  (wrk reads whole responses and parses nothing: the ceiling of a client);
- ``aiohttp-bare``: aiohttp + uvloop, C tasks, reads each stream without parsing it
  (the ceiling of a Python client);
- ``benchop``: the worker's fixed-concurrency client (``measure_benchop``).

It also reports the server's own capacity (req/s per core-second of server CPU during the
wrk run), so the reader knows whether the server or the client was the bottleneck: a
client whose req/s equals the server's capacity measured the server, not itself.

wrk is installed with ``apt-get install -y wrk`` when missing and running as root;
otherwise its row is skipped with a message.

Usage::

    python hack/bench_loadgen.py                      # C=32, 64 tokens, 5 s per client
    python hack/bench_loadgen.py -c 64 --tokens 128 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from benchop.mockserver import MockConfig, spawn_mock_server_process

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class ClientResult:
    """What one client achieved in its measurement window."""

    requests: int  # completed with HTTP 200 and a whole body
    seconds: float
    cpu_seconds: float  # the client's own CPU (user + system) over the window
    errors: int = 0
    recv_lag_p99_ms: float | None = None  # from the chunks' benchop_sent_ns stamps
    start_wall: float = 0.0  # time.time() at the start of the window

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def payload(tokens: int) -> dict[str, object]:
    return {
        "model": "benchop-mock",
        "messages": [{"role": "user", "content": "say hello to the benchmark"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": tokens,
    }


# ---------------------------------------------------------------------------------------------
# wrk

WRK_LUA = """\
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_SUMMARY requests=%d duration_us=%d status=%d connect=%d read=%d write=%d timeout=%d\\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def ensure_wrk() -> str | None:
    """Path of wrk, installing the Debian package when missing and root; None to skip."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("wrk not found and not root (or no apt-get): skipping the wrk row", file=sys.stderr)
        return None
    print("installing wrk: apt-get install -y wrk", file=sys.stderr)
    cmd = ["apt-get", "install", "-y", "wrk"]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True)
        subprocess.run(cmd, capture_output=True)
    path = shutil.which("wrk")
    if not path:
        print("could not install wrk: skipping the wrk row", file=sys.stderr)
    return path


def measure_wrk(
    wrk: str, url: str, concurrency: int, seconds: float, tokens: int, cpu: int | None
) -> ClientResult:
    """wrk -t1 -cC against the streaming chat endpoint; CPU from the child's rusage."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "chat.lua"
        script.write_text(WRK_LUA.replace("{body}", json.dumps(payload(tokens))))
        cmd = [wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-s", str(script)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start_wall = time.time()
        out = subprocess.run(
            [*cmd, f"{url}/chat/completions"],
            capture_output=True,
            text=True,
            check=True,
            preexec_fn=_pin(cpu),
        ).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(x for x in out.splitlines() if x.startswith("WRK_SUMMARY"))
    f = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    errors = f["status"] + f["connect"] + f["read"] + f["write"] + f["timeout"]
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    ok = f["requests"] - f["status"]
    return ClientResult(ok, f["duration_us"] / 1e6, cpu_s, errors, start_wall=start_wall)


# ---------------------------------------------------------------------------------------------
# Python clients (each run in a child process pinned to the client core)


async def _bare_aiohttp(url: str, concurrency: int, seconds: float, tokens: int) -> ClientResult:
    """Reference: aiohttp reading each stream to the end without parsing it."""
    import aiohttp

    body = json.dumps(payload(tokens)).encode()
    headers = {"Content-Type": "application/json"}
    warmup_end = time.perf_counter() + 0.5
    end = warmup_end + seconds
    counts = {"ok": 0, "errors": 0}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while (now := time.perf_counter()) < end:
                try:
                    async with session.post(
                        f"{url}/chat/completions", data=body, headers=headers
                    ) as r:
                        async for _ in r.content.iter_any():
                            pass
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if now >= warmup_end and time.perf_counter() <= end:
                    counts["ok" if ok else "errors"] += 1

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(max(0.0, warmup_end - time.perf_counter()))
        cpu0, t0, w0 = time.process_time(), time.perf_counter(), time.time()
        await asyncio.gather(*tasks)
        cpu1, t1 = time.process_time(), time.perf_counter()
    window = min(t1 - t0, seconds)
    return ClientResult(counts["ok"], window, cpu1 - cpu0, counts["errors"], start_wall=w0)


def measure_benchop(
    url: str, concurrency: int, seconds: float, tokens: int = 64
) -> ClientResult | None:
    """The worker's own fixed-concurrency path (``measure_fixed_concurrency``): one
    StreamClient, ``run_closed``, every record folded into a metrics registry (folded every
    0.1 s), every chunk's content decoded. None when benchop.loadgen is not importable."""
    try:
        from fixed_concurrency import measure_fixed_concurrency
    except ImportError as exc:
        print(f"benchop.loadgen is not available ({exc}): skipping the benchop row")
        return None
    stats = _run_loop(
        measure_fixed_concurrency(url, "benchop-mock", concurrency, seconds, tokens, warmup_s=0.5)
    )
    return ClientResult(
        requests=int(stats["requests"]),
        seconds=stats["window_s"],
        cpu_seconds=stats["cpu_s"],
        errors=int(stats["errors"]),
        recv_lag_p99_ms=stats["recv_lag_p99_ms"] or None,
        start_wall=stats["start_wall"],
    )


R = TypeVar("R")


def _run_loop(coro: Coroutine[Any, Any, R]) -> R:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _child_main(argv: list[str]) -> int:
    """``--child aiohttp|benchop URL C SECONDS TOKENS``: prints ``RESULT {json}`` or nothing."""
    kind, url, conc, secs, tokens = argv
    result: ClientResult | None
    if kind == "benchop":
        result = measure_benchop(url, int(conc), float(secs), int(tokens))
    else:
        result = _run_loop(_bare_aiohttp(url, int(conc), float(secs), int(tokens)))
    if result is not None:
        print("RESULT " + json.dumps(asdict(result)), flush=True)
    return 0


def measure_child(
    kind: str, url: str, concurrency: int, seconds: float, tokens: int, cpu: int | None
) -> ClientResult | None:
    args = [kind, url, str(concurrency), str(seconds), str(tokens)]
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        preexec_fn=_pin(cpu),
        timeout=seconds + 120,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return ClientResult(**json.loads(line[len("RESULT ") :]))
    msg = (proc.stdout + proc.stderr).strip().splitlines()
    print(f"{kind}: no result ({msg[-1] if msg else f'exit {proc.returncode}'})")
    return None


# ---------------------------------------------------------------------------------------------
# Orchestration


def _pin(cpu: int | None):  # type: ignore[no-untyped-def]
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _proc_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _busy_cpu_seconds() -> float:
    """CPU-seconds spent busy by the whole machine (all cores), from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / CLK_TCK


class CpuSampler:
    """Samples (wall time, server CPU-s, machine busy CPU-s) every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = (time.time(), _proc_cpu_seconds(self.pid), _busy_cpu_seconds())
            self.samples.append(sample)
            self._stop.wait(0.05)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, t0: float, t1: float) -> tuple[float, float]:
        """(server CPU-s, machine busy CPU-s) from the samples closest inside [t0, t1]."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return 0.0, 0.0
        a, b = inside[0], inside[-1]
        scale = (t1 - t0) / (b[0] - a[0])  # extrapolate the sampled span to the window
        return (b[1] - a[1]) * scale, (b[2] - a[2]) * scale


@dataclass
class Row:
    name: str
    result: ClientResult
    server_cpu_s: float
    other_cpu_s: float  # busy CPU of everything else on the machine in the window


def measure(
    name: str, what: str, args: argparse.Namespace, url: str, cpu: int | None, sampler: CpuSampler
) -> Row | None:
    if name.startswith("wrk"):
        res: ClientResult | None = measure_wrk(
            what, url, args.concurrency, args.seconds, args.tokens, cpu
        )
    else:
        res = measure_child(what, url, args.concurrency, args.seconds, args.tokens, cpu)
    if res is None:
        return None
    time.sleep(0.1)  # let the sampler pass the end of the window
    server_s, busy_s = sampler.between(res.start_wall, res.start_wall + res.seconds)
    return Row(name, res, server_s, max(0.0, busy_s - server_s - res.cpu_seconds))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return _child_main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-c", "--concurrency", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64, help="output tokens (chunks) per response")
    p.add_argument("--seconds", type=float, default=5.0, help="measurement window per client")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds; median is shown")
    p.add_argument("--server-cpu", type=int, default=0, help="core for the mock server")
    p.add_argument("--client-cpu", type=int, default=1, help="core for the client")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--clients", default="wrk,aiohttp,benchop", help="comma-separated subset to run")
    args = p.parse_args()
    wanted = set(args.clients.split(","))
    server_cpu = None if args.no_pin else args.server_cpu
    client_cpu = None if args.no_pin else args.client_cpu

    wrk = ensure_wrk() if "wrk" in wanted else None
    runs: list[tuple[str, str]] = [("wrk -t1", wrk)] if wrk else []
    runs += [
        (n, w) for n, w in (("aiohttp-bare", "aiohttp"), ("benchop", "benchop")) if w in wanted
    ]
    config = MockConfig(ttft=0.0, itl=0.0, output_tokens=args.tokens)
    proc, url = spawn_mock_server_process(config)
    results: dict[str, list[Row]] = {name: [] for name, _ in runs}
    try:
        if server_cpu is not None:
            os.sched_setaffinity(proc.pid, {server_cpu})
        with CpuSampler(proc.pid) as sampler:
            for _ in range(args.rounds):
                for name, what in runs:
                    row = measure(name, what, args, url, client_cpu, sampler)
                    if row is not None:
                        results[name].append(row)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    rows = []
    for found in results.values():
        if found:
            found.sort(key=lambda r: r.result.rps)
            rows.append(found[len(found) // 2])
    print_table(args, server_cpu, client_cpu, rows)
    return 0


def print_table(
    args: argparse.Namespace, server_cpu: int | None, client_cpu: int | None, rows: list[Row]
) -> None:
    print(
        f"\nmock server: ttft=0 itl=0 tokens={args.tokens}; C={args.concurrency}; "
        f"window {args.seconds:g}s x {args.rounds} round(s), median shown; "
        f"server cpu {server_cpu}, client cpu {client_cpu}\n"
    )
    wrk = next((r for r in rows if r.name.startswith("wrk")), None)
    head = ["client", "req/s", "x wrk", "tok/s", "client CPU%", "us/req", "us/tok"]
    head += ["server CPU%", "other CPU%", "errors", "lag p99 ms"]
    fmt = "{:<14}{:>9}{:>7}{:>10}{:>13}{:>8}{:>8}{:>13}{:>12}{:>8}{:>12}"
    print(fmt.format(*head))
    for row in rows:
        r, w = row.result, row.result.seconds or 1.0
        us_req = 1e6 * r.cpu_seconds / r.requests if r.requests else 0.0
        lag = "-" if r.recv_lag_p99_ms is None else f"{r.recv_lag_p99_ms:.2f}"
        ratio = f"{r.rps / wrk.result.rps:.2f}" if wrk is not None and wrk.result.rps else "-"
        cells = [row.name, f"{r.rps:.0f}", ratio, f"{r.rps * args.tokens:.0f}"]
        cells += [f"{100 * r.cpu_seconds / w:.0f}", f"{us_req:.1f}", f"{us_req / args.tokens:.2f}"]
        cells += [f"{100 * row.server_cpu_s / w:.0f}", f"{100 * row.other_cpu_s / w:.0f}"]
        cells += [str(r.errors), lag]
        print(fmt.format(*cells))
    for row in rows:
        if row.name.startswith("wrk") and row.server_cpu_s > 0:
            cap = row.result.requests / row.server_cpu_s
            print(
                f"\nserver capacity: {cap:.0f} req/s per server core-second "
                f"(wrk run: {row.result.requests} requests / {row.server_cpu_s:.2f} server CPU-s)"
            )
            for other in rows:
                if other is not row:
                    print(f"{other.name} / wrk = {other.result.rps / row.result.rps:.2f}")
    for row in rows:
        r = row.result
        w = r.seconds or 1.0
        if row.server_cpu_s / w > 0.9:
            print(f"{row.name}: server at {100 * row.server_cpu_s / w:.0f}% CPU: server-bound")
        elif r.cpu_seconds / w > 0.9:
            print(f"{row.name}: client at {100 * r.cpu_seconds / w:.0f}% CPU: client-bound")
    if any(100 * row.other_cpu_s / (row.result.seconds or 1.0) > 10 for row in rows):
        print("WARNING: other processes used > 10% CPU during a window: figures are contended")


if __name__ == "__main__":
    sys.exit(main())
