"""ZMQ transport over real loopback sockets: pub/sub, request/reply, retries, garbage, CURVE."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar, cast

import msgspec
import pytest
import zmq
import zmq.asyncio
import zmq.auth

from benchagent.codec import MsgpackCodec
from benchagent.transport import (
    CurveClient,
    CurveEphemeral,
    CurveServer,
    Handler,
    Publisher,
    RequestClient,
    RequestServer,
    RequestTimeout,
    Subscriber,
)
from benchagent.wire import (
    GateGranted,
    GateRequest,
    Message,
    MetricsSnapshot,
    SeriesSummary,
    SnapshotState,
)

pytestmark = pytest.mark.timeout(30)

S = TypeVar("S", Publisher, Subscriber, RequestClient, RequestServer)


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


def snapshot(
    worker: int, seq: int, state: SnapshotState = "LIVE", run: str = "r"
) -> MetricsSnapshot:
    return MetricsSnapshot(
        run=run,
        worker=worker,
        seq=seq,
        state=state,
        phase="profiling",
        time_ns=time.time_ns(),
        elapsed_s=1.0,
        n_pending=0 if state == "COMPLETE" else 3,
        counters={"requests_total": seq},
    )


def gate(worker: int, run: str = "r") -> GateRequest:
    return GateRequest(run=run, phase_id="p1", boundary="START", worker=worker, workers=3)


def granted(req: GateRequest) -> GateGranted:
    return GateGranted(
        run=req.run,
        phase_id=req.phase_id,
        boundary=req.boundary,
        worker=req.worker,
        start_at_ns=time.time_ns(),
        baseline_captured=True,
    )


async def grant(msg: Message) -> Message | None:
    assert isinstance(msg, GateRequest)
    return granted(msg)


class Closer:
    def __init__(self) -> None:
        self.items: list[Publisher | Subscriber | RequestClient | RequestServer] = []
        self.tasks: list[asyncio.Task[None]] = []

    def __call__(self, item: S) -> S:
        self.items.append(item)
        return item

    def serve(self, server: RequestServer, handler: Handler = grant) -> None:
        self.tasks.append(asyncio.create_task(server.serve(handler)))


@pytest.fixture
async def closer() -> AsyncIterator[Closer]:
    c = Closer()
    yield c
    for item in reversed(c.items):
        item.close()
    for task in c.tasks:
        task.cancel()
    await asyncio.gather(*c.tasks, return_exceptions=True)


# ---------------------------------------------------------------- pub/sub


async def test_pubsub_latest_and_complete(closer: Closer) -> None:
    sub = closer(Subscriber())
    assert sub.endpoint.startswith("tcp://127.0.0.1:") and not sub.endpoint.endswith("*")
    sub.start()
    pubs = [closer(Publisher(sub.endpoint)) for _ in range(2)]

    # Slow joiner: keep publishing LIVE until the subscription is through.
    seq = 0

    def both_live() -> bool:
        nonlocal seq
        seq += 1
        for worker, pub in enumerate(pubs):
            pub.publish(snapshot(worker, seq))
        return len(sub.latest("r")) == 2

    await wait_until(both_live)
    assert sub.complete("r") == {}
    assert pubs[0].publish(snapshot(0, 1000, "COMPLETE"))
    assert pubs[1].publish(snapshot(1, 1000, "COMPLETE"))

    done = await sub.wait_for_complete("r", 2, timeout=5.0)
    assert sorted(done) == [0, 1]
    assert all(s.state == "COMPLETE" and s.seq == 1000 for s in done.values())
    assert sub.latest("r")[1].state == "COMPLETE"
    assert sub.latest("other") == {}
    assert pubs[0].published >= 2

    sub.forget("r")
    assert sub.latest("r") == {} and sub.complete("r") == {}


async def test_wait_for_complete_returns_partial_at_deadline(closer: Closer) -> None:
    sub = closer(Subscriber())
    pub = closer(Publisher(sub.endpoint))
    sub.start()
    await wait_until(lambda: pub.publish(snapshot(0, 1)) and bool(sub.latest("r")))
    assert pub.publish(snapshot(0, 2, "COMPLETE"))

    started = time.monotonic()
    done = await sub.wait_for_complete("r", [0, 1], timeout=0.3)
    elapsed = time.monotonic() - started
    assert list(done) == [0]
    assert 0.25 <= elapsed < 2.0


async def test_publish_without_peer_is_counted_as_drop(closer: Closer, tmp_path: Path) -> None:
    pub = closer(Publisher(f"ipc://{tmp_path}/nobody.sock"))
    assert pub.peers == 0
    assert pub.publish(snapshot(0, 1)) is False
    assert pub.publish(snapshot(0, 2)) is False
    assert (pub.drops, pub.published) == (2, 0)


async def test_publish_at_hwm_is_counted_as_drop(closer: Closer) -> None:
    stalled: zmq.Socket[bytes] = zmq.Context.instance().socket(
        zmq.SUB
    )  # stops reading after one probe
    stalled.linger = 0
    stalled.rcvhwm = 1
    stalled.subscribe(b"")
    port = stalled.bind_to_random_port("tcp://127.0.0.1")
    try:
        pub = closer(Publisher(f"tcp://127.0.0.1:{port}", sndhwm=1, linger_ms=0))
        await wait_until(lambda: pub.peers == 1)

        def probe_through() -> bool:  # the subscription is in effect once a probe arrives
            pub.publish(snapshot(0, 0))
            try:
                stalled.recv(zmq.NOBLOCK)
            except zmq.Again:
                return False
            return True

        await wait_until(probe_through)
        pub.drops = pub.published = 0
        big = MetricsSnapshot(
            run="r",
            worker=0,
            seq=0,
            state="LIVE",
            phase="profiling",
            time_ns=0,
            elapsed_s=0.0,
            n_pending=0,
            series={"ttft_ns": SeriesSummary(values=bytes(1 << 18))},
        )
        attempts = 0
        while pub.drops == 0 and attempts < 400:
            pub.publish(big)
            attempts += 1
            await asyncio.sleep(0)
        assert pub.drops > 0, "a stalled subscriber never filled the queue"
        assert pub.published + pub.drops == attempts
    finally:
        stalled.close()


async def test_conflating_publisher_delivers(closer: Closer) -> None:
    sub = closer(Subscriber(conflate=True))
    pub = closer(Publisher(sub.endpoint, conflate=True))
    sub.start()
    seq = 0

    def delivered() -> bool:
        nonlocal seq
        seq += 1
        pub.publish(snapshot(3, seq))
        return 3 in sub.latest("r")

    await wait_until(delivered)
    assert pub.publish(snapshot(3, seq + 1, "COMPLETE"))
    done = await sub.wait_for_complete("r", [3], timeout=5.0)
    assert done[3].seq == seq + 1


async def test_subscriber_drops_garbage_and_other_kinds(closer: Closer) -> None:
    sub = closer(Subscriber())
    sub.start()
    ctx = zmq.asyncio.Context.instance()
    raw = ctx.socket(zmq.PUB)
    raw.linger = 0
    raw.connect(sub.endpoint)
    codec = MsgpackCodec()
    try:
        seq = 0

        def through() -> bool:
            nonlocal seq
            seq += 1
            raw.send(b"\x00garbage", zmq.NOBLOCK)
            raw.send(codec.encode(gate(0)), zmq.NOBLOCK)
            raw.send(codec.encode(snapshot(0, seq)), zmq.NOBLOCK)
            return bool(sub.latest("r"))

        await wait_until(through)
        await wait_until(lambda: sub.codec.decode_errors >= 1 and sub.unexpected >= 1)
        assert sub.received >= 1
    finally:
        raw.close()


# ---------------------------------------------------------------- request/reply


async def test_request_reply(closer: Closer) -> None:
    server = closer(RequestServer())
    closer.serve(server)
    client = closer(RequestClient(server.endpoint))
    reply = await client.request(gate(2), timeout=2.0)
    assert isinstance(reply, GateGranted)
    assert (reply.worker, reply.phase_id, reply.boundary) == (2, "p1", "START")
    assert (server.requests, server.replies, client.attempts) == (1, 1, 1)


async def test_concurrent_requests_are_handled_concurrently(closer: Closer) -> None:
    """Each handler waits until all three requests are in: only concurrent handling passes."""
    server = closer(RequestServer())
    arrived: set[int] = set()
    all_in = asyncio.Event()

    async def barrier(msg: Message) -> Message | None:
        assert isinstance(msg, GateRequest)
        arrived.add(msg.worker)
        if len(arrived) == 3:
            all_in.set()
        await all_in.wait()
        return granted(msg)

    closer.serve(server, barrier)
    clients = [closer(RequestClient(server.endpoint)) for _ in range(3)]
    replies = await asyncio.gather(
        *(c.request(gate(i), timeout=5.0, retries=0) for i, c in enumerate(clients))
    )
    assert [r.worker for r in replies if isinstance(r, GateGranted)] == [0, 1, 2]


async def test_one_client_serialises_concurrent_callers(closer: Closer) -> None:
    server = closer(RequestServer())
    closer.serve(server)
    client = closer(RequestClient(server.endpoint))
    replies = await asyncio.gather(*(client.request(gate(i), timeout=2.0) for i in range(5)))
    assert [r.worker for r in replies if isinstance(r, GateGranted)] == list(range(5))


async def test_retry_reaches_a_server_that_starts_late(closer: Closer, tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/late.sock"
    client = closer(RequestClient(endpoint))
    pending = asyncio.create_task(client.request(gate(1), timeout=0.2, retries=10, backoff=0.05))
    await wait_until(lambda: client.timeouts >= 1)  # the first attempt was lost
    server = closer(RequestServer(endpoint))
    closer.serve(server)
    reply = await asyncio.wait_for(pending, 10)
    assert isinstance(reply, GateGranted) and reply.worker == 1
    assert client.attempts >= 2


async def test_lost_reply_is_retried_on_a_fresh_socket(closer: Closer) -> None:
    """The first reply comes after the client gave up; the retry gets its own answer."""
    server = closer(RequestServer())
    calls = 0

    async def slow_first(msg: Message) -> Message | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.5)  # the handler being slow is the scenario, not a race fix
        assert isinstance(msg, GateRequest)
        return granted(msg)

    closer.serve(server, slow_first)
    client = closer(RequestClient(server.endpoint))
    reply = await client.request(gate(4), timeout=0.2, retries=3, backoff=0.01)
    assert isinstance(reply, GateGranted) and reply.worker == 4
    assert client.timeouts == 1 and client.attempts == 2


async def test_request_times_out_after_all_attempts(closer: Closer, tmp_path: Path) -> None:
    client = closer(RequestClient(f"ipc://{tmp_path}/nobody.sock"))
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        await client.request(gate(0), timeout=0.1, retries=2, backoff=0.05)
    elapsed = time.monotonic() - started
    assert client.attempts == 3
    assert 0.3 + 0.05 + 0.1 <= elapsed < 3.0  # 3 timeouts + 2 backoffs


async def test_garbage_frames_do_not_kill_the_router(closer: Closer) -> None:
    server = closer(RequestServer())
    closer.serve(server)
    raw = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(server.endpoint)
    try:
        await raw.send(b"")
        await raw.send(b"\xc1\xc1\xc1")
        await raw.send_multipart([b"env", b"not msgpack"])
        await raw.send(MsgpackCodec().encode(gate(0))[:-3])  # truncated
        await wait_until(lambda: server.codec.decode_errors == 4)
        assert server.requests == 0
        client = closer(RequestClient(server.endpoint))
        reply = await client.request(gate(7), timeout=2.0, retries=0)
        assert isinstance(reply, GateGranted) and reply.worker == 7
    finally:
        raw.close()


async def test_handler_error_is_counted_and_server_survives(closer: Closer) -> None:
    server = closer(RequestServer())

    async def flaky(msg: Message) -> Message | None:
        assert isinstance(msg, GateRequest)
        if msg.worker == 0:
            raise RuntimeError("boom")
        return granted(msg)

    closer.serve(server, flaky)
    client = closer(RequestClient(server.endpoint))
    with pytest.raises(RequestTimeout):
        await client.request(gate(0), timeout=0.2, retries=0)
    reply = await client.request(gate(1), timeout=2.0, retries=0)
    assert isinstance(reply, GateGranted)
    assert server.handler_errors == 1


async def test_async_handler_reply_that_cannot_be_encoded_is_a_handler_error(
    closer: Closer,
) -> None:
    server = closer(RequestServer())

    async def bad_reply(msg: Message) -> Message | None:
        assert isinstance(msg, GateRequest)
        if msg.worker == 0:
            return cast(Message, object())  # the codec raises on this, inside the task
        return granted(msg)

    closer.serve(server, bad_reply)
    client = closer(RequestClient(server.endpoint))
    with pytest.raises(RequestTimeout):
        await client.request(gate(0), timeout=0.2, retries=0)
    await wait_until(lambda: server.handler_errors == 1)
    reply = await client.request(gate(1), timeout=2.0, retries=0)
    assert isinstance(reply, GateGranted)
    assert (server.requests, server.replies, server.handler_errors) == (2, 1, 1)
    assert not server._tasks  # the failed task finished (its error handled, not left pending)


async def test_plain_function_handler_is_answered_without_a_task(closer: Closer) -> None:
    """A handler returning the reply directly is answered in the same wakeup."""
    server = closer(RequestServer())
    tasks_seen: list[int] = []

    def now(msg: Message) -> Message | None:
        assert isinstance(msg, GateRequest)
        tasks_seen.append(len(server._tasks))
        if msg.worker == 9:
            return None  # no reply
        if msg.worker == 8:
            raise RuntimeError("boom")
        if msg.worker == 7:
            return cast(Message, object())  # cannot be encoded: a handler error too
        return granted(msg)

    closer.serve(server, now)
    clients = [closer(RequestClient(server.endpoint)) for _ in range(5)]
    replies = await asyncio.gather(
        *(c.request(gate(i), timeout=2.0, retries=0) for i, c in enumerate(clients))
    )
    assert [r.worker for r in replies if isinstance(r, GateGranted)] == list(range(5))
    assert tasks_seen == [0] * 5 and server.replies == 5
    with pytest.raises(RequestTimeout):
        await clients[0].request(gate(9), timeout=0.2, retries=0)
    with pytest.raises(RequestTimeout):
        await clients[1].request(gate(8), timeout=0.2, retries=0)
    with pytest.raises(RequestTimeout):
        await clients[2].request(gate(7), timeout=0.2, retries=0)
    reply = await clients[3].request(gate(3), timeout=2.0, retries=0)  # still serving
    assert isinstance(reply, GateGranted)
    assert (server.requests, server.replies, server.handler_errors) == (9, 6, 2)


async def test_future_handler_is_answered_when_the_future_is_done(closer: Closer) -> None:
    server = closer(RequestServer())
    futures: dict[int, asyncio.Future[Message | None]] = {}

    def later(msg: Message) -> asyncio.Future[Message | None]:
        assert isinstance(msg, GateRequest)
        futures[msg.worker] = asyncio.get_running_loop().create_future()
        return futures[msg.worker]

    closer.serve(server, later)
    clients = [closer(RequestClient(server.endpoint)) for _ in range(3)]
    pending = [
        asyncio.create_task(c.request(gate(i), timeout=1.0, retries=0))
        for i, c in enumerate(clients)
    ]
    await wait_until(lambda: len(futures) == 3)
    assert not server._tasks  # no task per request
    futures[2].set_result(granted(gate(2)))
    futures[0].set_exception(RuntimeError("boom"))  # a handler error: no reply
    futures[1].set_result(None)  # no reply
    reply = await pending[2]
    assert isinstance(reply, GateGranted) and reply.worker == 2
    for p in pending[:2]:
        with pytest.raises(RequestTimeout):
            await p
    assert (server.requests, server.replies, server.handler_errors) == (3, 1, 1)
    futures.clear()
    waiting = asyncio.create_task(clients[0].request(gate(5), timeout=0.3, retries=0))
    await wait_until(lambda: 5 in futures)
    server.close()
    assert futures[5].cancelled()  # close() cancels what is still pending
    with pytest.raises(RequestTimeout):
        await waiting


async def test_frames_queued_together_are_dispatched_as_one_batch(closer: Closer) -> None:
    """Everything queued before a wakeup is drained before any handler runs.

    inproc: a send puts the frame in the pipe before it returns, so all six
    are queued when serve() starts.
    """
    ctx = zmq.asyncio.Context.instance()
    server = closer(RequestServer("inproc://benchop-batch-test", ctx=ctx))
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(server.endpoint)
    batches: list[int] = []

    def record(msg: Message) -> Message | None:
        assert isinstance(msg, GateRequest)
        batches.append(server.batches)
        return granted(msg)

    try:
        codec = MsgpackCodec()
        for i in range(6):
            await raw.send_multipart([b"id-%d" % i, codec.encode(gate(i))])
        closer.serve(server, record)
        got = []
        for _ in range(6):
            async with asyncio.timeout(5):
                got.append(await raw.recv_multipart())
    finally:
        raw.close()
    assert [f[0] for f in got] == [b"id-%d" % i for i in range(6)]
    assert batches == [1] * 6 and server.batches == 1


async def test_close_ends_serve(closer: Closer) -> None:
    server = RequestServer()
    task = asyncio.create_task(server.serve(grant))
    await asyncio.sleep(0)  # let serve() reach its first recv
    server.close()
    await asyncio.wait_for(task, 2.0)
    assert task.done() and not task.cancelled()


# ---------------------------------------------------------------- CURVE


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    allowed = tmp_path / "allowed"
    other = tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    server_pub, server_secret = zmq.auth.create_certificates(tmp_path, "server")
    _, client_secret = zmq.auth.create_certificates(allowed, "client")
    _, intruder_secret = zmq.auth.create_certificates(other, "intruder")
    return {
        "server_pub": Path(server_pub),
        "server_secret": Path(server_secret),
        "allowed": allowed,
        "client_secret": Path(client_secret),
        "intruder_secret": Path(intruder_secret),
    }


async def test_curve_accepts_the_allowed_client(closer: Closer, keys: dict[str, Path]) -> None:
    server = closer(
        RequestServer(curve=CurveServer(keys["server_secret"], client_keys_dir=keys["allowed"]))
    )
    closer.serve(server)
    client = closer(
        RequestClient(server.endpoint, curve=CurveClient(keys["client_secret"], keys["server_pub"]))
    )
    reply = await client.request(gate(5), timeout=3.0, retries=0)
    assert isinstance(reply, GateGranted) and reply.worker == 5


async def test_curve_rejects_an_unknown_key(closer: Closer, keys: dict[str, Path]) -> None:
    server = closer(
        RequestServer(curve=CurveServer(keys["server_secret"], client_keys_dir=keys["allowed"]))
    )
    closer.serve(server)
    intruder = closer(
        RequestClient(
            server.endpoint, curve=CurveClient(keys["intruder_secret"], keys["server_pub"])
        )
    )
    plain = closer(RequestClient(server.endpoint))
    with pytest.raises(RequestTimeout):
        await intruder.request(gate(6), timeout=0.5, retries=0)
    with pytest.raises(RequestTimeout):
        await plain.request(gate(6), timeout=0.3, retries=0)
    assert server.requests == 0


async def test_curve_pubsub(closer: Closer, keys: dict[str, Path]) -> None:
    sub = closer(Subscriber(curve=CurveServer(keys["server_secret"], keys["allowed"])))
    sub.start()
    pub = closer(
        Publisher(sub.endpoint, curve=CurveClient(keys["client_secret"], keys["server_pub"]))
    )
    seq = 0

    def delivered() -> bool:
        nonlocal seq
        seq += 1
        pub.publish(snapshot(0, seq))
        return bool(sub.latest("r"))

    await wait_until(delivered)


async def test_failed_set_up_releases_the_authenticator(keys: dict[str, Path]) -> None:
    threads = threading.active_count()
    with pytest.raises(ValueError, match="no secret key"):
        RequestServer(curve=CurveServer(keys["server_pub"]))  # a public key file only
    server = RequestServer()
    try:
        with pytest.raises(zmq.ZMQError):
            RequestServer(server.endpoint, curve=CurveServer(keys["server_secret"]))  # in use
    finally:
        server.close()
    assert threading.active_count() == threads


async def test_subscriber_drops_snapshots_of_runs_it_does_not_accept(closer: Closer) -> None:
    wanted = {"r"}
    sub = closer(Subscriber(accept=wanted.__contains__))
    sub.start()
    pub = closer(Publisher(sub.endpoint))
    seq = 0

    def through() -> bool:
        nonlocal seq
        seq += 1
        pub.publish(snapshot(0, seq, run="stranger"))
        pub.publish(snapshot(0, seq, run="r"))
        return bool(sub.latest("r"))

    await wait_until(through)
    await wait_until(lambda: sub.rejected >= 1)
    assert sub.latest("stranger") == {} and sub.complete("stranger") == {}
    assert "stranger" not in sub._latest

    # a late snapshot after forget (the run ended) is not kept again
    wanted.discard("r")
    sub.forget("r")
    rejected = sub.rejected
    assert pub.publish(snapshot(0, seq + 1, "COMPLETE", run="r"))
    await wait_until(lambda: sub.rejected > rejected)
    assert sub.latest("r") == {} and sub.complete("r") == {}
    assert sub._latest == {} and sub._complete == {}


async def test_subscriber_max_message_bytes_drops_an_oversized_snapshot(closer: Closer) -> None:
    sub = closer(Subscriber(max_message_bytes=4096))
    sub.start()
    big = msgspec.structs.replace(
        snapshot(1, 1, "COMPLETE"), counters={f"c{i}": i for i in range(2000)}
    )
    assert len(MsgpackCodec().encode(big)) > 4096
    pub_small = closer(Publisher(sub.endpoint))
    pub_big = closer(Publisher(sub.endpoint))
    seq = 0

    def through() -> bool:
        nonlocal seq
        seq += 1
        pub_big.publish(big)
        pub_small.publish(snapshot(0, seq))
        return seq > 20 and 0 in sub.latest("r")

    await wait_until(through)
    assert 1 not in sub.latest("r") and sub.complete("r") == {}


async def test_an_ephemeral_client_reaches_a_server_that_accepts_any_key(
    closer: Closer, keys: dict[str, Path]
) -> None:
    """A worker has no key of its own: a fresh pair per socket and the server's public key."""
    server_public, _ = zmq.auth.load_certificate(keys["server_pub"])
    server = closer(RequestServer(curve=CurveServer(keys["server_secret"])))
    closer.serve(server)
    client = closer(RequestClient(server.endpoint, curve=CurveEphemeral(server_public)))
    reply = await client.request(gate(7), timeout=3.0, retries=0)
    assert isinstance(reply, GateGranted) and reply.worker == 7
    sub = closer(Subscriber(curve=CurveServer(keys["server_secret"])))
    sub.start()
    pub = closer(Publisher(sub.endpoint, curve=CurveEphemeral(server_public)))
    seq = 0

    def delivered() -> bool:
        nonlocal seq
        seq += 1
        pub.publish(snapshot(0, seq))
        return bool(sub.latest("r"))

    await wait_until(delivered)


async def test_an_ephemeral_client_does_not_talk_to_an_impostor(
    closer: Closer, keys: dict[str, Path], tmp_path: Path
) -> None:
    _, impostor_secret = zmq.auth.create_certificates(tmp_path, "impostor")
    server_public, _ = zmq.auth.load_certificate(keys["server_pub"])
    impostor = closer(RequestServer(curve=CurveServer(Path(impostor_secret))))
    closer.serve(impostor)
    client = closer(RequestClient(impostor.endpoint, curve=CurveEphemeral(server_public)))
    with pytest.raises(RequestTimeout):
        await client.request(gate(8), timeout=0.5, retries=0)
    assert impostor.requests == 0
    with pytest.raises(ValueError, match="40 Z85"):
        CurveEphemeral(b"short")
