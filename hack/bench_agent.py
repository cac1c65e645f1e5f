#!/usr/bin/env python
"""Benchmark the node agent: CPU per sampling tick and baseline round-trip latency.

The agent runs in a child process (8 simulated GPUs, 10 Hz sampling, its
exporter and baseline server bound on loopback); this process is the
coordinators. Two measurements:

1. CPU per tick: the child's process CPU time (user + sys, all threads) over
   a quiet window divided by the ticks in it, and as % of one core.
2. Baseline round trip: N RequestClients (DEALER, like N coordinators) each
   send one BaselineRequest at the same moment; the time from send to ack is
   recorded per request, over many rounds, for N = 1, 8, 64.

For reference the same clients are then run against a bare RequestServer
child that answers every request with a precomputed ack (no GPU read): the
transport's own floor on this machine, which the agent cannot beat.

Targets (issue 4): <= 1 ms CPU per tick; baseline p99 <= 5 ms at 64 concurrent.

    python hack/bench_agent.py            # ~20 s
    python hack/bench_agent.py --quick    # ~8 s
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import time
from multiprocessing.connection import Connection

from benchagent.agent import Agent, AgentConfig
from benchagent.baseline import ack_for
from benchagent.gpu import SimulatedReader
from benchagent.transport import RequestClient, RequestServer
from benchagent.wire import BaselineAck, BaselineRequest, Message


def agent_main(conn: Connection, gpus: int, interval_s: float) -> None:
    """Child: run an agent; answer ("cpu", seconds) with CPU stats, ("stop",) to exit."""

    async def main() -> None:
        agent = Agent(
            AgentConfig.local(gpu_backend="simulated", simulated_gpus=gpus, interval_s=interval_s)
        )
        await agent.start()
        async with asyncio.timeout(10):
            await agent.wait_ready()
        conn.send((agent.baseline_endpoint, agent.metrics_url))
        loop = asyncio.get_running_loop()
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd[0] == "stop":
                break
            ticks0, cpu0, wall0 = agent.sampler.count, time.process_time(), time.monotonic()
            await asyncio.sleep(cmd[1])
            ticks1, cpu1, wall1 = agent.sampler.count, time.process_time(), time.monotonic()
            render0 = time.process_time()
            for _ in range(20):
                agent.render_metrics()
            render_ms = (time.process_time() - render0) / 20 * 1000
            conn.send((ticks1 - ticks0, cpu1 - cpu0, wall1 - wall0, render_ms))
        await agent.stop()

    asyncio.run(main())


def echo_main(conn: Connection, gpus: int) -> None:
    """Child: a bare RequestServer answering with precomputed samples (transport floor)."""
    samples = SimulatedReader(gpus).read()

    async def handler(msg: Message) -> Message | None:
        assert isinstance(msg, BaselineRequest)
        return ack_for(msg, agent="echo", node="echo", simulated=True, samples=samples)

    async def main() -> None:
        server = RequestServer()
        task = asyncio.create_task(server.serve(handler))
        conn.send(server.endpoint)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        server.close()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def round_trips(endpoint: str, concurrency: int, rounds: int) -> list[float]:
    """Latencies in ms of ``rounds`` x ``concurrency`` requests (after 3 warm-up rounds)."""
    clients = [RequestClient(endpoint) for _ in range(concurrency)]
    latencies: list[float] = []

    async def one(client: RequestClient, i: int, record: bool) -> None:
        req = BaselineRequest(request_id=str(i), run="bench", phase_id="p", boundary="START")
        t0 = time.perf_counter_ns()
        ack = await client.request(req, timeout=5.0, retries=0)
        dt = (time.perf_counter_ns() - t0) / 1e6
        assert isinstance(ack, BaselineAck) and ack.success and len(ack.samples) > 0
        if record:
            latencies.append(dt)

    try:
        for r in range(rounds + 3):
            await asyncio.gather(*(one(c, i, r >= 3) for i, c in enumerate(clients)))
    finally:
        for c in clients:
            c.close()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer rounds")
    args = parser.parse_args()
    cpu_window = 3.0 if args.quick else 10.0
    rounds = {1: 200, 8: 50, 64: 10} if args.quick else {1: 1000, 8: 250, 64: 60}

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=agent_main, args=(child, args.gpus, 1.0 / args.hz), daemon=True)
    proc.start()
    try:
        endpoint, _metrics_url = parent.recv()
        parent.send(("cpu", cpu_window))
        ticks, cpu_s, wall_s, render_ms = parent.recv()
        per_tick_ms = cpu_s / max(ticks, 1) * 1000
        core_pct = cpu_s / wall_s * 100
        results = {c: asyncio.run(round_trips(endpoint, c, n)) for c, n in rounds.items()}
        parent.send(("stop",))
        proc.join(10)
    finally:
        if proc.is_alive():
            proc.kill()
    e_parent, e_child = ctx.Pipe()
    echo = ctx.Process(target=echo_main, args=(e_child, args.gpus), daemon=True)
    echo.start()
    try:
        echo_endpoint = e_parent.recv()
        floor = {c: asyncio.run(round_trips(echo_endpoint, c, n)) for c, n in rounds.items()}
        e_parent.send("stop")
        echo.join(10)
    finally:
        if echo.is_alive():
            echo.kill()

    print(
        f"benchop agent: {args.gpus} simulated GPUs at {args.hz:g} Hz, loopback TCP, "
        f"{mp.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    print()
    print(f"{'measure':<44} {'value':>12} {'target':>10}")
    print("-" * 68)
    print(f"{'CPU per tick (process, all threads), ms':<44} {per_tick_ms:>12.3f} {'<= 1':>10}")
    print(f"{'CPU, % of one core':<44} {core_pct:>11.2f}% {'':>10}")
    print(f"{'ticks in window / window s':<44} {f'{ticks} / {wall_s:.1f}':>12} {'':>10}")
    print(f"{'/metrics render (CPU per scrape), ms':<44} {render_ms:>12.3f} {'':>10}")
    print()
    print(
        f"{'baseline round trip':<20} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9} "
        f"{'max ms':>9} {'target':>12}"
    )
    print("-" * 80)
    rows = [(f"{c} concurrent", lat, "p99 <= 5" if c == 64 else "") for c, lat in results.items()]
    rows += [(f"{c} conc. (floor)", lat, "") for c, lat in floor.items()]
    for label, lat, target in rows:
        print(
            f"{label:<20} {len(lat):>6} {percentile(lat, 50):>9.3f} "
            f"{percentile(lat, 99):>9.3f} {statistics.fmean(lat):>9.3f} {max(lat):>9.3f} "
            f"{target:>12}"
        )
    print()
    print("floor: the same clients against a bare RequestServer that answers without reading GPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
