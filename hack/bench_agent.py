#!/usr/bin/env python
"""Benchmark the node agent: CPU per sampling tick and baseline round-trip latency.

Three processes besides this one (the conductor, which only starts them and
prints):

- **agent**: a real Agent (8 simulated GPUs, 10 Hz sampling, exporter and
  baseline server on loopback TCP). It answers every BaselineRequest with a
  fresh read taken after the request arrived; the SimulatedReader does not
  block, so it is read on the event loop, once per batch of requests.
- **thread**: the same agent with the same reader declared blocking
  (``blocking = True``), so baseline reads take the NVML code path: one task
  per batch of requests and a coalesced read in a worker thread.
- **floor**: a bare RequestServer whose plain-function handler answers with a
  precomputed ack of the same size (no GPU read): the transport's own cost,
  which the agent cannot beat.
- **clients**: N clients (like N coordinators), each sending one
  BaselineRequest at the same moment; the time from send to ack is recorded
  per request over many rounds, for N = 1, 8, 64. The client process imports
  only the transport (a small heap) and pauses its garbage collector during a
  round (collecting between rounds), so the client's own GC pauses — up to
  ~15 ms with the agent's modules loaded — do not show up as server latency.
  Two kinds of client: ``raw`` (N blocking pyzmq DEALER sockets and a poller:
  little client overhead, closest to the server's latency) and ``asyncio``
  (N benchagent RequestClients on one event loop: what a coordinator sees,
  its own pyzmq-asyncio overhead included). Agent and floor are measured in
  alternating blocks so both see the same machine load.

Also measured in the servers: process CPU per request (user + sys, all
threads, the agent's idle sampler CPU subtracted).

Targets (issue 4): <= 1 ms CPU per tick; baseline p99 <= 5 ms at 64 concurrent.

    python hack/bench_agent.py            # ~30 s
    python hack/bench_agent.py --quick    # ~10 s
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Literal

ClientKind = Literal["raw", "asyncio"]
KINDS: tuple[ClientKind, ...] = ("raw", "asyncio")
TARGETS = ("agent", "thread", "floor")


# ------------------------------------------------------------------ servers


class BlockingReader:
    """A SimulatedReader declared blocking: the baseline server reads it in a thread (as NVML)."""

    blocking = True
    simulated = True

    def __init__(self, gpus: int) -> None:
        from benchagent.gpu import SimulatedReader

        self.inner = SimulatedReader(gpus)

    def read(self) -> list[Any]:
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()


def agent_main(conn: Connection, gpus: int, interval_s: float, threaded: bool) -> None:
    """Child: run an agent; ("cpu", s) -> tick CPU stats, ("mark",) -> CPU time, ("stop",)."""
    from benchagent.agent import Agent, AgentConfig

    async def main() -> None:
        agent = Agent(
            AgentConfig.local(gpu_backend="simulated", simulated_gpus=gpus, interval_s=interval_s),
            reader=BlockingReader(gpus) if threaded else None,
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
            if cmd[0] == "mark":
                conn.send((time.process_time(), time.monotonic()))
                continue
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


def floor_main(conn: Connection, gpus: int) -> None:
    """Child: a bare RequestServer answering with precomputed samples (transport floor)."""
    from benchagent.baseline import ack_for
    from benchagent.gpu import SimulatedReader
    from benchagent.transport import RequestServer
    from benchagent.wire import BaselineRequest, Message

    samples = SimulatedReader(gpus).read()

    def handler(msg: Message) -> Message | None:
        assert isinstance(msg, BaselineRequest)
        return ack_for(msg, agent="floor", node="floor", simulated=True, samples=samples)

    async def main() -> None:
        server = RequestServer()
        task = asyncio.create_task(server.serve(handler))
        conn.send(server.endpoint)
        loop = asyncio.get_running_loop()
        while (await loop.run_in_executor(None, conn.recv)) == "mark":
            conn.send((time.process_time(), time.monotonic()))
        server.close()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


# ------------------------------------------------------------------ clients


def raw_rounds(endpoint: str, concurrency: int, rounds: int) -> list[float]:
    """Latencies (ms) with N blocking DEALER sockets: send all, then poll every reply in."""
    import msgspec
    import zmq

    from benchagent.wire import BaselineAck, BaselineRequest

    ctx: zmq.Context[Any] = zmq.Context.instance()
    socks = []
    poller = zmq.Poller()
    for _ in range(concurrency):
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(endpoint)
        poller.register(s, zmq.POLLIN)
        socks.append(s)
    index = {s: i for i, s in enumerate(socks)}
    payloads = [
        msgspec.msgpack.encode(
            BaselineRequest(request_id=str(i), run="bench", phase_id="p", boundary="START")
        )
        for i in range(concurrency)
    ]
    latencies: list[float] = []
    try:
        for r in range(rounds + 3):  # 3 warm-up rounds
            sent = [0] * concurrency
            got: list[tuple[int, int, bytes]] = []
            gc.disable()
            for i, s in enumerate(socks):
                sent[i] = time.perf_counter_ns()
                s.send_multipart([b"r%d" % r, payloads[i]])
            while len(got) < concurrency:
                ready = poller.poll(5000)
                if not ready:
                    raise TimeoutError(f"no reply from {endpoint} within 5 s")
                for s, _ in ready:
                    while True:
                        try:
                            frames = s.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        got.append((index[s], time.perf_counter_ns(), frames[-1]))
            gc.enable()
            for i, t, payload in got:
                ack = msgspec.msgpack.decode(payload, type=BaselineAck)
                assert ack.success and ack.samples and ack.request_id == str(i)
                if r >= 3:
                    latencies.append((t - sent[i]) / 1e6)
            gc.collect(1)  # young garbage of the round, outside the timing
    finally:
        gc.enable()
        for s in socks:
            s.close()
    return latencies


async def asyncio_rounds(endpoint: str, concurrency: int, rounds: int) -> list[float]:
    """Latencies (ms) with N RequestClients on one event loop (what a coordinator does)."""
    from benchagent.transport import RequestClient
    from benchagent.wire import BaselineAck, BaselineRequest

    clients = [RequestClient(endpoint) for _ in range(concurrency)]
    latencies: list[float] = []

    async def one(client: RequestClient, i: int) -> float:
        req = BaselineRequest(request_id=str(i), run="bench", phase_id="p", boundary="START")
        t0 = time.perf_counter_ns()
        ack = await client.request(req, timeout=5.0, retries=0)
        dt = (time.perf_counter_ns() - t0) / 1e6
        assert isinstance(ack, BaselineAck) and ack.success and len(ack.samples) > 0
        return dt

    try:
        for r in range(rounds + 3):  # 3 warm-up rounds
            gc.disable()
            got = await asyncio.gather(*(one(c, i) for i, c in enumerate(clients)))
            gc.enable()
            if r >= 3:
                latencies += got
            gc.collect(1)  # young garbage of the round, outside the timing
    finally:
        gc.enable()
        for c in clients:
            c.close()
    return latencies


def client_main(conn: Connection) -> None:
    """Child: ("run", kind, endpoint, concurrency, rounds) -> latencies; ("stop",)."""
    import benchagent.transport
    import benchagent.wire  # noqa: F401 - imported before the freeze below

    gc.freeze()  # the imported modules are never scanned again
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            return
        _, kind, endpoint, concurrency, rounds = cmd
        if kind == "raw":
            conn.send(raw_rounds(endpoint, concurrency, rounds))
        else:
            conn.send(asyncio.run(asyncio_rounds(endpoint, concurrency, rounds)))


# ------------------------------------------------------------------ conductor


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer rounds")
    args = parser.parse_args()
    cpu_window = 3.0 if args.quick else 10.0
    rounds = {1: 200, 8: 50, 64: 20} if args.quick else {1: 600, 8: 150, 64: 150}
    blocks = 3  # agent and floor alternate, `blocks` times each, per (kind, concurrency)

    ctx = mp.get_context("spawn")
    conns: dict[str, Connection] = {}
    procs: list[mp.process.BaseProcess] = []

    def start(name: str, target: Callable[..., None], *extra: object) -> Connection:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(child, *extra), daemon=True, name=name)
        proc.start()
        procs.append(proc)
        conns[name] = parent
        return parent

    try:
        agent = start("agent", agent_main, args.gpus, 1.0 / args.hz, False)
        thread = start("thread", agent_main, args.gpus, 1.0 / args.hz, True)
        floor = start("floor", floor_main, args.gpus)
        clients = start("clients", client_main)
        endpoints = {"agent": agent.recv()[0], "thread": thread.recv()[0], "floor": floor.recv()}

        agent.send(("cpu", cpu_window))
        thread.send(("cpu", cpu_window))  # both idle agents over the same window
        ticks, cpu_s, wall_s, render_ms = agent.recv()
        _, t_cpu_s, t_wall_s, _ = thread.recv()
        per_tick_ms = cpu_s / max(ticks, 1) * 1000
        idle_cpu_per_s = {"agent": cpu_s / wall_s, "thread": t_cpu_s / t_wall_s, "floor": 0.0}

        lat: dict[tuple[str, ClientKind, int], list[float]] = {}
        cpu: dict[str, list[float]] = {t: [0.0, 0.0] for t in TARGETS}  # [cpu s, requests]
        for kind in KINDS:
            for conc, n in rounds.items():
                for _ in range(blocks):
                    for target in TARGETS:
                        server = conns[target]
                        mark = "mark" if target == "floor" else ("mark",)
                        server.send(mark)
                        cpu0, wall0 = server.recv()
                        clients.send(("run", kind, endpoints[target], conc, n // blocks))
                        got = clients.recv()
                        server.send(mark)
                        cpu1, wall1 = server.recv()
                        idle = idle_cpu_per_s[target] * (wall1 - wall0)
                        cpu[target][0] += cpu1 - cpu0 - idle
                        cpu[target][1] += (n // blocks + 3) * conc
                        lat.setdefault((target, kind, conc), []).extend(got)
        clients.send(("stop",))
        agent.send(("stop",))
        thread.send(("stop",))
        floor.send("stop")
        for proc in procs:
            proc.join(10)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()

    print(
        f"benchop agent: {args.gpus} simulated GPUs at {args.hz:g} Hz, loopback TCP, "
        f"{mp.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    print()
    print(f"{'agent process (measured in the agent)':<44} {'value':>12} {'target':>10}")
    print("-" * 68)
    print(f"{'CPU per tick (process, all threads), ms':<44} {per_tick_ms:>12.3f} {'<= 1':>10}")
    print(f"{'CPU, % of one core':<44} {idle_cpu_per_s['agent'] * 100:>11.2f}% {'':>10}")
    print(f"{'ticks in window / window s':<44} {f'{ticks} / {wall_s:.1f}':>12} {'':>10}")
    print(f"{'/metrics render (CPU per scrape), ms':<44} {render_ms:>12.3f} {'':>10}")
    print()
    print("baseline round trip, ms (measured in the client process, send -> ack received)")
    print(
        f"{'client':<8} {'conc':>4} {'n':>5} | {'agent p50':>9} {'p99':>6} | "
        f"{'thread p50':>10} {'p99':>6} | {'floor p50':>9} {'p99':>6} | "
        f"{'agent/floor p50':>15} {'p99':>5} | {'thread/floor p50':>16} {'p99':>5} | target"
    )
    print("-" * 130)
    for kind in KINDS:
        for conc in rounds:
            q = {
                t: (percentile(lat[(t, kind, conc)], 50), percentile(lat[(t, kind, conc)], 99))
                for t in TARGETS
            }
            (a50, a99), (t50, t99), (f50, f99) = q["agent"], q["thread"], q["floor"]
            target = ""
            if conc == 64:
                target = "p99<=5: " + ("met" if a99 <= 5 else "NOT met")
                target += " / " + ("met" if t99 <= 5 else "NOT met")
            print(
                f"{kind:<8} {conc:>4} {len(lat[('agent', kind, conc)]):>5} | "
                f"{a50:>9.3f} {a99:>6.2f} | {t50:>10.3f} {t99:>6.2f} | {f50:>9.3f} {f99:>6.2f} | "
                f"{a50 / f50:>15.2f} {a99 / f99:>5.2f} | {t50 / f50:>16.2f} {t99 / f99:>5.2f} | "
                f"{target}"
            )
    print()
    per_req = {t: cpu[t][0] / cpu[t][1] * 1e6 for t in TARGETS}
    print(
        "server CPU per request, us (measured in each server process over all round trips "
        "above; the agents' idle sampler CPU subtracted): "
        f"agent {per_req['agent']:.1f}, thread {per_req['thread']:.1f}, "
        f"floor {per_req['floor']:.1f}; ratios to floor "
        f"{per_req['agent'] / per_req['floor']:.2f}, {per_req['thread'] / per_req['floor']:.2f}"
    )
    print()
    print("agent: fresh simulated read on the event loop, one per batch of requests")
    print(
        "thread: same reader declared blocking: one task per batch, reads in a thread (NVML path)"
    )
    print("floor: bare RequestServer, plain-function handler, precomputed ack, no GPU read")
    print("raw: blocking DEALER sockets (little client overhead: ~server latency)")
    print("asyncio: RequestClients on one event loop (a coordinator's view)")
    print(
        f"clients: one separate lean process, GC paused within a round; the servers alternate "
        f"in {blocks} blocks each"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
