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
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchop.mockserver import MockConfig, spawn_mock_server_process

if TYPE_CHECKING:
    from benchop.loadgen.records import RequestRecord

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class ClientResult:
    """What one client achieved in its measurement window."""

    requests: int  # completed with HTTP 200 and a whole body
    seconds: float
    cpu_seconds: float  # the client's own CPU (user + system) over the window
    errors: int = 0
    recv_lag_p99_ms: float | None = None  # from the chunks' benchop_sent_ns stamps

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
    return ClientResult(f["requests"] - f["status"], f["duration_us"] / 1e6, cpu_s, errors)


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
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*tasks)
        cpu1, t1 = time.process_time(), time.perf_counter()
    return ClientResult(counts["ok"], min(t1 - t0, seconds), cpu1 - cpu0, counts["errors"])


def measure_benchop(
    url: str, concurrency: int, seconds: float, tokens: int = 64
) -> ClientResult | None:
    """LEAD: the benchop worker's client under fixed concurrency; None = not available.

    PROVISIONAL: drives ``benchop.loadgen.client.StreamClient.send`` from ``concurrency``
    closed-loop tasks, with every record folded into a metrics registry as the worker
    does. Switch it to the loadgen's own fixed-concurrency runner when that lands, keeping
    the same result: requests completed ok in the window, the window, the process CPU
    (``time.process_time()``) spent in it, and the receive-lag p99.
    """
    try:
        from benchop.loadgen.client import Ident, StreamClient, Target
        from benchop.loadgen.records import new_registry, record_into
    except ImportError as exc:
        print(f"benchop.loadgen is not available yet ({exc}): skipping the benchop row")
        return None

    async def go() -> ClientResult:
        reg = new_registry()
        counts = {"ok": 0, "errors": 0}
        warmup_end = time.perf_counter() + 0.5
        end = warmup_end + seconds
        prompt = "say hello to the benchmark"
        async with StreamClient(
            Target(url, "benchop-mock"), request_timeout=60, limit=concurrency
        ) as client:
            body = client.body(prompt, tokens)

            def sink(rec: RequestRecord) -> None:
                record_into(reg, rec)
                if warmup_end <= time.perf_counter() <= end:
                    counts["ok" if rec.outcome == "ok" else "errors"] += 1

            async def worker(w: int) -> None:
                i = 0
                while time.perf_counter() < end:
                    ident = Ident(worker=0, attempt=1, index=w * 10_000_000 + i)
                    await client.send(body, ident=ident, input_words=4, sink=sink)
                    i += 1

            tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
            await asyncio.sleep(max(0.0, warmup_end - time.perf_counter()))
            client.recv_lags.clear()
            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*tasks)
            cpu1, t1 = time.process_time(), time.perf_counter()
            lags = sorted(client.recv_lags)
        p99 = lags[int(0.99 * (len(lags) - 1))] / 1e6 if lags else None
        return ClientResult(counts["ok"], min(t1 - t0, seconds), cpu1 - cpu0, counts["errors"], p99)

    return _run_loop(go())


def _run_loop(coro: Coroutine[Any, Any, ClientResult]) -> ClientResult:
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


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return _child_main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-c", "--concurrency", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64, help="output tokens (chunks) per response")
    p.add_argument("--seconds", type=float, default=5.0, help="measurement window per client")
    p.add_argument("--server-cpu", type=int, default=0, help="core for the mock server")
    p.add_argument("--client-cpu", type=int, default=1, help="core for the client")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = p.parse_args()
    server_cpu = None if args.no_pin else args.server_cpu
    client_cpu = None if args.no_pin else args.client_cpu

    config = MockConfig(ttft=0.0, itl=0.0, output_tokens=args.tokens)
    proc, url = spawn_mock_server_process(config)
    rows: list[tuple[str, ClientResult, float]] = []
    try:
        if server_cpu is not None:
            os.sched_setaffinity(proc.pid, {server_cpu})
        wrk = ensure_wrk()
        runs: list[tuple[str, object]] = []
        if wrk:
            runs.append(("wrk -t1", wrk))
        runs += [("aiohttp-bare", "aiohttp"), ("benchop", "benchop")]
        for name, what in runs:
            srv0 = _proc_cpu_seconds(proc.pid)
            if name.startswith("wrk"):
                res: ClientResult | None = measure_wrk(
                    str(what), url, args.concurrency, args.seconds, args.tokens, client_cpu
                )
            else:
                res = measure_child(
                    str(what), url, args.concurrency, args.seconds, args.tokens, client_cpu
                )
            srv1 = _proc_cpu_seconds(proc.pid)
            if res is not None:
                rows.append((name, res, srv1 - srv0))
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    print(
        f"\nmock server: ttft=0 itl=0 tokens={args.tokens}; C={args.concurrency}; "
        f"window {args.seconds:g}s; server cpu {server_cpu}, client cpu {client_cpu}\n"
    )
    head = (
        "client",
        "req/s",
        "tok/s",
        "client CPU %",
        "client us/req",
        "server CPU %",
        "errors",
        "recv lag p99 ms",
    )
    print("{:<14}{:>10}{:>12}{:>14}{:>15}{:>14}{:>8}{:>17}".format(*head))
    wrk_rps = None
    for name, r, _ in rows:
        if name.startswith("wrk"):
            wrk_rps = r.rps
    for name, r, srv_cpu in rows:
        cpu_pct = 100 * r.cpu_seconds / r.seconds if r.seconds else 0.0
        us_req = 1e6 * r.cpu_seconds / r.requests if r.requests else 0.0
        # the server ran during the whole child process (startup, warmup), so its share is
        # approximate for the Python rows: server CPU seconds / client window.
        srv_pct = 100 * srv_cpu / r.seconds if r.seconds else 0.0
        lag = "-" if r.recv_lag_p99_ms is None else f"{r.recv_lag_p99_ms:.2f}"
        print(
            f"{name:<14}{r.rps:>10.0f}{r.rps * args.tokens:>12.0f}{cpu_pct:>14.0f}"
            f"{us_req:>15.1f}{min(srv_pct, 999):>14.0f}{r.errors:>8}{lag:>17}"
        )
    for name, r, srv_cpu in rows:
        if name.startswith("wrk") and srv_cpu > 0:
            cap = r.requests / srv_cpu
            print(
                f"\nserver capacity: {cap:.0f} req/s per server core "
                f"({r.requests} requests / {srv_cpu:.2f} server CPU-s during the wrk run)"
            )
    if wrk_rps:
        for name, r, _ in rows:
            if not name.startswith("wrk"):
                print(f"{name} / wrk = {r.rps / wrk_rps:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
