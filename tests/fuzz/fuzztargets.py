"""Fuzz targets: one per input surface of benchop, each a function of one ``bytes`` input.

A target returns when its oracle holds and raises ``AssertionError`` (or the bug's own
exception) when it does not. The same functions run under hypothesis in the CI tests
(``test_fuzz_*.py``, bounded and derandomized), under atheris in ``hack/fuzz.py`` (coverage
guided, for as long as asked) and on every committed input in ``corpus/<target>/``
(``test_fuzz_corpus.py``), so an input a fuzzer found stays a regression test.

=========  ===============================================================================
target     input and oracle
=========  ===============================================================================
codec      one ZMQ frame: ``MsgpackCodec.decode`` returns a message or None with the error
           counted; never raises; a decoded message re-encodes to the same bytes
sse        byte 0 picks how the rest is cut into reads, fed to ``StreamParser``: never
           raises; the token/ITL/usage facts are consistent; a stop has a reason
http       byte 0 picks the reads (and whether the server closes); the rest is what a server
           answers a streaming POST with, over a real loopback socket: ``StreamClient.send``
           returns within the request timeout with one record whose outcome is a counted
           reason, nothing escapes (or reaches the event loop's exception handler), and the
           record goes into the worker's registry and onto the wire
baseline   multipart messages (msgpack ``list[list[bytes]]``, else the input as one frame)
gates      sent over a DEALER to the node agent's baseline server / the gate coordinator:
           undecodable payloads counted and dropped, no crash, and a valid request sent
           after them is answered
snapshots  the frames published to the operator's snapshot collector (a SUB): undecodable
           ones counted and dropped, a valid snapshot sent after them is kept, and what was
           kept makes a JSON-clean ``status.live`` and ``status.results``
=========  ===============================================================================

The socket targets share one event loop and their servers across inputs (a
:class:`Harness`); ``close()`` releases them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import zmq
import zmq.asyncio

from benchagent.baseline import BaselineServer
from benchagent.codec import MsgpackCodec
from benchagent.gpu import SimulatedReader
from benchagent.wire import (
    BaselineAck,
    BaselineRequest,
    GateGranted,
    GateRequest,
    Message,
    MetricsSnapshot,
)
from benchop.core.results import build_final_results, final_snapshots
from benchop.gates import GateCoordinator
from benchop.loadgen.client import Ident, StreamClient, Target
from benchop.loadgen.records import RequestRecord, new_registry, record_into
from benchop.loadgen.sse import StreamParser
from benchop.metrics import names
from benchop.operator.snapshots import SnapshotCollector, live_status

CORPUS = Path(__file__).resolve().parent / "corpus"
TARGETS = ("codec", "sse", "http", "baseline", "gates", "snapshots")
OUTCOMES = frozenset({"ok", *names.FAILURE_REASONS})
INT64 = (-(2**63), 2**63 - 1)

T = TypeVar("T")


def corpus_files(target: str) -> list[Path]:
    """The committed inputs of ``target`` (sorted; README files are not inputs)."""
    folder = CORPUS / target
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".md")


def cut(data: bytes, seed: int, most: int = 8) -> list[bytes]:
    """``data`` cut into 1..``most`` non-empty reads at places ``seed`` picks (deterministic)."""
    if len(data) < 2:
        return [data] if data else []
    rng = random.Random(seed)
    n = rng.randint(1, min(most, len(data)))
    edges = [0, *sorted(rng.sample(range(1, len(data)), n - 1)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# --------------------------------------------------------------------------- pure targets


def codec(data: bytes) -> None:
    c = MsgpackCodec()
    msg = c.decode(data)
    if msg is None:
        assert c.decode_errors == 1
        return
    assert c.decode_errors == 0
    encoded = c.encode(msg)
    again = c.decode(encoded)
    assert again is not None and type(again) is type(msg)
    assert c.encode(again) == encoded  # bytes, not ==: NaN fields are not equal to themselves


def check_parser(p: StreamParser, stopped: bool) -> None:
    """What every consumer of a StreamParser relies on, whatever bytes it was fed."""
    if p.n_tokens:
        assert 0 <= p.first_ns <= p.last_ns
        assert len(p.itl_ns) == p.n_tokens - 1
        assert all(x >= 0 for x in p.itl_ns)
    else:
        assert p.first_ns == -1 and p.itl_ns == []
    assert stopped == (p.done or p.malformed is not None or p.error is not None)
    for n in (p.usage_prompt, p.usage_completion):
        assert n is None or 0 <= n <= INT64[1], n
    assert p.error_code is None or type(p.error_code) is int
    assert all(INT64[0] <= lag <= INT64[1] for lag in p.recv_lag_ns)


def sse(data: bytes) -> None:
    if not data:
        return
    p = StreamParser(wall_offset_ns=1_700_000_000_000_000_000)
    stopped = False
    t = 0
    for part in cut(data[1:], data[0]):
        t += 1_000
        if p.feed(part, t):
            stopped = True
            break
    check_parser(p, stopped)


# --------------------------------------------------------------------------- the harness


class Harness:
    """One event loop (uvloop when installed, as the worker runs) for the socket targets.

    Exceptions that reach the loop's exception handler (a protocol callback that raised) are
    collected in ``loop_errors``: each target fails on them.
    """

    def __init__(self) -> None:
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
            self.loop = asyncio.new_event_loop()
        self.loop_errors: list[str] = []
        self.loop.set_exception_handler(self._on_loop_error)
        self._http: _HttpServer | None = None
        self._baseline: _Router | None = None
        self._gates: _Router | None = None
        self._snapshots: _Snapshots | None = None

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.loop_errors.append(f"{context.get('message')}: {exc!r}")

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        self.loop_errors.clear()
        result = self.loop.run_until_complete(coro)
        assert not self.loop_errors, self.loop_errors
        return result

    def close(self) -> None:
        for part in (self._http, self._baseline, self._gates, self._snapshots):
            if part is not None:
                self.loop.run_until_complete(part.close())
        self._http = self._baseline = self._gates = self._snapshots = None
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    # ------------------------------------------------------------------ targets

    def http(self, data: bytes) -> None:
        if self._http is None:
            self._http = self.loop.run_until_complete(_HttpServer.start())
        self.run(self._http.exchange(data))

    def baseline(self, data: bytes) -> None:
        if self._baseline is None:
            self._baseline = self.loop.run_until_complete(_Router.baseline())
        self.run(self._baseline.exchange(frames_of(data)))

    def gates(self, data: bytes) -> None:
        if self._gates is None:
            self._gates = self.loop.run_until_complete(_Router.gates())
        self.run(self._gates.exchange(frames_of(data)))

    def snapshots(self, data: bytes) -> None:
        if self._snapshots is None:
            self._snapshots = self.loop.run_until_complete(_Snapshots.start())
        self.run(self._snapshots.exchange(frames_of(data)))

    def target(self, name: str) -> Callable[[bytes], None]:
        """The target function called ``name`` (pure ones do not need the harness)."""
        pure = {"codec": codec, "sse": sse}
        return pure[name] if name in pure else getattr(self, name)


@contextlib.contextmanager
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


# --------------------------------------------------------------------------- http


REQUEST_TIMEOUT_S = 0.5
HANG_S = 5.0  # past the request timeout: a hang


class _Logged(logging.Handler):
    """Collects the client's records of unexpected exceptions ("request ... failed")."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None:
            self.errors.append(self.format(record))


class _HttpServer:
    """Answers every connection's request with the current input's bytes, then closes it
    (or, when the input says so, keeps it open until the client goes)."""

    def __init__(self) -> None:
        self.reads: list[bytes] = []
        self.close_after = True
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.url = ""

    @classmethod
    async def start(cls) -> _HttpServer:
        self = cls()
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            for part in self.reads:
                writer.write(part)
                await writer.drain()
            if not self.close_after:
                await reader.read()  # until the client closes (done or timed out)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # by exchange(); a cancelled callback task logs an error
            pass
        finally:
            writer.close()
            self.tasks.discard(task)

    async def exchange(self, data: bytes) -> None:
        flags = data[0] if data else 0
        self.reads = cut(data[1:], flags)
        self.close_after = (flags & 0x81) != 0x81  # a quarter keep the connection open
        records: list[RequestRecord] = []
        logged = _Logged()
        client_log = logging.getLogger("benchop.loadgen.client")
        client_log.addHandler(logged)
        level = client_log.level
        client_log.setLevel(logging.DEBUG)
        try:
            async with StreamClient(
                Target(self.url, "m", api_key="fuzz-key"),
                request_timeout=REQUEST_TIMEOUT_S,
                connect_timeout=2.0,
            ) as client:
                async with asyncio.timeout(HANG_S):
                    await client.send(
                        client.body("hello", 8),
                        ident=Ident(0, 1, 0),
                        input_words=1,
                        sink=records.append,
                    )
        finally:
            client_log.removeHandler(logged)
            client_log.setLevel(level)
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        assert not logged.errors, logged.errors
        assert len(records) == 1, records
        rec = records[0]
        assert rec.outcome in OUTCOMES, rec
        assert rec.outcome != "cancelled", rec  # nobody stopped it
        assert (rec.outcome == "ok") == (rec.error is None), rec
        # the worker's path from here: the registry, then a snapshot on the wire
        reg = new_registry()
        record_into(reg, rec)
        counters, gauges, series = reg.snapshot(include_values=True)
        wire = MsgpackCodec().encode(
            MetricsSnapshot(
                run="ns.r",
                worker=0,
                seq=1,
                state="COMPLETE",
                phase="done",
                time_ns=time.time_ns(),
                elapsed_s=1.0,
                n_pending=0,
                counters=counters,
                gauges=gauges,
                series=series,
            )
        )
        assert MsgpackCodec().decode(wire) is not None

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# --------------------------------------------------------------------------- zmq


def frames_of(data: bytes) -> list[list[bytes]]:
    """The multipart messages an input stands for: msgpack ``list[list[bytes]]`` (what the
    structured strategies write), else the whole input as one single-frame message."""
    try:
        msgs = msgspec.msgpack.decode(data, type=list[list[bytes]])
    except msgspec.DecodeError:
        return [[data]]
    return [m for m in msgs if m][:64]


def _undecodable(frame: bytes) -> bool:
    return MsgpackCodec().decode(frame) is None


ANSWER_S = 5.0  # a valid request unanswered after this long: the role hangs


class _Router:
    """A role behind a ROUTER (the baseline server or the gate coordinator) and a raw DEALER
    that sends it anything; a valid request with an envelope of its own follows each input."""

    def __init__(
        self,
        endpoint: str,
        malformed: Callable[[], int],
        valid: Message,
        answered: Callable[[Message], bool],
        closers: list[Callable[[], Coroutine[Any, Any, None]]],
    ) -> None:
        self.malformed = malformed
        self.valid = MsgpackCodec().encode(valid)
        self.answered = answered
        self._closers = closers
        self.sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)
        self.seq = 0

    @classmethod
    async def baseline(cls) -> _Router:
        server = BaselineServer(SimulatedReader(2, seed=1), agent="fuzz", node="node-f")
        task = asyncio.create_task(server.serve())

        async def close() -> None:
            server.close()
            await asyncio.gather(task, return_exceptions=True)

        valid = BaselineRequest(request_id="valid", run="ns.r", phase_id="p", boundary="START")
        return cls(
            server.endpoint,
            lambda: server.malformed_frames,
            valid,
            lambda m: isinstance(m, BaselineAck) and m.request_id == "valid" and m.success,
            [close],
        )

    @classmethod
    async def gates(cls) -> _Router:
        coord = GateCoordinator()
        await coord.start()
        coord.register_run("ns.r", workers=1, agents=[], timeout_s=1.0, baseline=False)
        valid = GateRequest(run="ns.r", phase_id="valid", boundary="START", worker=0, workers=1)
        return cls(
            coord.endpoint,
            lambda: coord.malformed_frames,
            valid,
            lambda m: isinstance(m, GateGranted) and m.phase_id == "valid",
            [coord.close],
        )

    async def exchange(self, msgs: list[list[bytes]]) -> None:
        before = self.malformed()
        for frames in msgs:
            await self.sock.send_multipart(frames)
        self.seq += 1
        marker = b"valid-%d" % self.seq
        await self.sock.send_multipart([marker, self.valid])
        async with asyncio.timeout(ANSWER_S):
            while True:
                reply = await self.sock.recv_multipart()
                if reply[0] == marker:
                    break
        assert len(reply) == 2, reply
        msg = MsgpackCodec().decode(reply[1])
        assert msg is not None and self.answered(msg), msg
        expected = sum(_undecodable(frames[-1]) for frames in msgs)
        assert self.malformed() - before == expected, (self.malformed() - before, expected)

    async def close(self) -> None:
        self.sock.close(linger=0)
        for closer in self._closers:
            await closer()


WORKERS = 4
MARKER_WORKER = WORKERS - 1


def _marker(seq: int) -> MetricsSnapshot:
    return MetricsSnapshot(
        run="ns.r",
        worker=MARKER_WORKER,
        seq=seq,
        state="LIVE",
        phase="profiling",
        time_ns=time.time_ns(),
        elapsed_s=1.0,
        n_pending=0,
    )


class _Snapshots:
    """The operator's SnapshotCollector (accepting run ``ns.r``) and a raw PUB feeding it."""

    def __init__(self, collector: SnapshotCollector) -> None:
        self.collector = collector
        self.pub = zmq.asyncio.Context.instance().socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.connect(collector.endpoint)
        self.seq = 0

    @classmethod
    async def start(cls) -> _Snapshots:
        collector = SnapshotCollector("127.0.0.1", 0, accept=lambda run: run == "ns.r")
        collector.start()
        self = cls(collector)
        # ZMQ's slow joiner: publish until the subscription has arrived
        async with asyncio.timeout(ANSWER_S):
            while not collector.latest("ns.r"):
                await self._send_marker()
                await asyncio.sleep(0.01)
        return self

    async def _send_marker(self) -> int:
        self.seq += 1
        await self.pub.send(MsgpackCodec().encode(_marker(self.seq)))
        return self.seq

    async def exchange(self, msgs: list[list[bytes]]) -> None:
        c = self.collector
        c.forget("ns.r")
        before = c.malformed_frames
        for frames in msgs:
            for frame in frames:  # a SUB reads frame by frame: each is a message
                await self.pub.send(frame)
        seq = await self._send_marker()
        async with asyncio.timeout(ANSWER_S):
            while (m := c.latest("ns.r").get(MARKER_WORKER)) is None or m.seq != seq:  # noqa: ASYNC110 - the collector has no event to wait on
                await asyncio.sleep(0.002)
        expected = sum(_undecodable(f) for frames in msgs for f in frames)
        assert c.malformed_frames - before == expected, (c.malformed_frames - before, expected)
        # what the operator's run loop makes of what was kept
        latest = c.latest("ns.r")
        assert all(s.run == "ns.r" for s in latest.values())
        live = live_status(latest, phase="Profiling", workers_connected=len(latest), now="now")
        json.dumps(live, allow_nan=False)
        final = final_snapshots(WORKERS, [("pubsub", c.complete("ns.r")), ("live", latest)])
        assert final is not None
        results = build_final_results(final, slo=None, gpu=None)
        json.dumps(results, allow_nan=False)

    async def close(self) -> None:
        self.pub.close(linger=0)
        self.collector.close()


__all__ = [
    "CORPUS",
    "TARGETS",
    "Harness",
    "codec",
    "corpus_files",
    "cut",
    "frames_of",
    "harness",
    "sse",
]
