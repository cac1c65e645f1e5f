"""benchop's ZMQ sockets (pyzmq asyncio), one small class per socket role.

    Publisher (PUB)      ── snapshots ──▶  Subscriber (SUB)        worker -> operator
    RequestClient (DEALER) ── request ──▶  RequestServer (ROUTER)  worker -> gates,
                           ◀── reply ───                           operator -> agent

Every frame payload is one :data:`~benchagent.wire.Message` encoded by a
:class:`~benchagent.codec.Codec`; malformed frames are counted and dropped by
the codec, never raised into a reader loop. Bind to ``tcp://127.0.0.1:*`` (the
OS picks the port) and read the real address from ``.endpoint``.

CurveZMQ is optional: the side that accepts connections takes a
:class:`CurveServer` (its secret key file and a directory of allowed client
public keys; it then gets its own context and a ZAP authenticator thread), the
other side a :class:`CurveClient` (its secret key file and the server's public
key file). Key files are the ones ``zmq.auth.create_certificates`` writes
(``name.key`` public, ``name.key_secret`` both). A client with no identity of its own (a
load-generator worker) takes a :class:`CurveEphemeral`: only the server's public key (Z85), a
fresh key pair per socket; the traffic is encrypted and the server authenticated, and a server
that accepts any client key (``CurveServer(..., client_keys_dir=None)``) lets it in.

Sockets share ``zmq.asyncio.Context.instance()`` unless a context is given;
``close()`` never terminates a shared context.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from benchagent.codec import Codec, MsgpackCodec
from benchagent.wire import Message, MetricsSnapshot

log = logging.getLogger(__name__)

ANY_LOCAL_PORT = "tcp://127.0.0.1:*"

Handler = Callable[[Message], Awaitable[Message | None] | Message | None]
"""A RequestServer handler: gets one decoded request, returns the reply or None (no reply).

An ``async def`` handler runs in its own task; a returned asyncio.Future is answered from
its done callback; a plain function's result is sent at once.
"""


@dataclass(frozen=True)
class CurveServer:
    """CurveZMQ keys of the side that authenticates its peers.

    ``client_keys_dir`` holds the allowed clients' ``*.key`` public key files;
    ``None`` accepts any client that speaks CURVE (encryption without
    client authentication).
    """

    secret_key_file: Path
    client_keys_dir: Path | None = None


@dataclass(frozen=True)
class CurveClient:
    """CurveZMQ keys of the side that dials a CurveServer."""

    secret_key_file: Path
    server_public_key_file: Path


@dataclass(frozen=True)
class CurveEphemeral:
    """CurveZMQ of a client with no key of its own: a fresh key pair per socket, the server
    authenticated by ``server_public_key`` (40 Z85 characters)."""

    server_public_key: bytes

    def __post_init__(self) -> None:
        if len(self.server_public_key) != 40:
            raise ValueError("a CurveZMQ public key is 40 Z85 characters")


ClientCurve = CurveClient | CurveEphemeral
Curve = CurveServer | ClientCurve


class RequestTimeout(TimeoutError):
    """No reply after every attempt of :meth:`RequestClient.request`."""


class _Sockets:
    """The context, authenticator and socket options one role needs (composition, not a base)."""

    def __init__(self, curve: Curve | None, ctx: zmq.asyncio.Context | None) -> None:
        self.curve = curve
        self.auth: ThreadAuthenticator | None = None
        self.owns_ctx = False
        self.open: list[zmq.asyncio.Socket] = []
        if isinstance(curve, CurveServer):
            # ZAP is per context: an own context keeps this server's allow-list its own.
            self.ctx = zmq.asyncio.Context()
            self.owns_ctx = True
            self.auth = ThreadAuthenticator(self.ctx, log=log.getChild("zap"))
            self.auth.start()
            location = (
                str(curve.client_keys_dir) if curve.client_keys_dir else zmq.auth.CURVE_ALLOW_ANY
            )
            self.auth.configure_curve(domain="*", location=location)
        else:
            self.ctx = ctx if ctx is not None else zmq.asyncio.Context.instance()

    def socket(self, socket_type: int, linger_ms: int) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(socket_type)
        self.open = [s for s in self.open if not s.closed]
        self.open.append(sock)
        sock.linger = linger_ms
        if isinstance(self.curve, CurveServer):
            public, secret = zmq.auth.load_certificate(self.curve.secret_key_file)
            if secret is None:
                raise ValueError(f"{self.curve.secret_key_file} holds no secret key")
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_server = True
        elif isinstance(self.curve, CurveClient):
            public, secret = zmq.auth.load_certificate(self.curve.secret_key_file)
            if secret is None:
                raise ValueError(f"{self.curve.secret_key_file} holds no secret key")
            server_public, _ = zmq.auth.load_certificate(self.curve.server_public_key_file)
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_serverkey = server_public
        elif isinstance(self.curve, CurveEphemeral):
            public, secret = zmq.curve_keypair()
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_serverkey = self.curve.server_public_key
        return sock

    @contextlib.contextmanager
    def closed_on_error(self) -> Iterator[None]:
        """Release everything if a role's set-up (bad key, address in use) fails."""
        try:
            yield
        except BaseException:
            for sock in self.open:
                sock.close(linger=0)
            self.open = []
            self.close()
            raise

    def close(self) -> None:
        """Close sockets still open (with their linger), the authenticator and an own context."""
        for sock in self.open:
            sock.close()
        self.open = []
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        if self.owns_ctx:
            self.ctx.term()
            self.owns_ctx = False


def _attach(sock: zmq.asyncio.Socket, endpoint: str, bind: bool) -> str:
    """Bind or connect; return the real endpoint (the OS-chosen port for ``:*``)."""
    if bind:
        sock.bind(endpoint)
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.connect(endpoint)
    return endpoint


class Publisher:
    """Fire-and-forget publisher of messages (workers publish MetricsSnapshot).

        ┌───────────────┐  connect (default)   ┌────────────────┐
        │ Publisher     │ ───────────────────▶ │ Subscriber     │
        │ XPUB / PUB    │    one frame per     │ SUB (bound)    │
        └───────────────┘       message        └────────────────┘
          worker 0..N-1                            operator

    ``publish`` never blocks. A message is counted in ``drops`` (and
    ``publish`` returns False) when no peer is connected or when the send
    queue is at ``sndhwm``. Without ``conflate`` the socket is an XPUB with
    ``XPUB_NODROP`` so a full queue is reported instead of silently dropped;
    with ``conflate`` it is a PUB with ``ZMQ_CONFLATE``: each peer's queue
    holds only the newest message and superseded ones are not drops. A peer
    that connected but whose subscription has not arrived yet still loses
    the message silently (ZMQ's slow joiner): publish periodically. ``linger_ms``
    is how long queued messages are still sent after ``close()``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = False,
        sndhwm: int = 1000,
        linger_ms: int = 1000,
        conflate: bool = False,
        curve: Curve | None = None,
        codec: Codec | None = None,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.codec: Codec = codec if codec is not None else MsgpackCodec()
        self.published = 0
        self.drops = 0
        self._peers: set[int] = set()
        self._sockets = _Sockets(curve, ctx)
        with self._sockets.closed_on_error():
            self._xpub = not conflate
            self._async_sock = self._sockets.socket(zmq.XPUB if self._xpub else zmq.PUB, linger_ms)
            # Publishing never awaits: a sync view of the same socket raises zmq.Again at once.
            self._sock: zmq.Socket[bytes] = zmq.Socket.shadow(self._async_sock.underlying)
            self._sock.sndhwm = sndhwm
            if conflate:
                self._sock.conflate = True
            else:
                self._sock.setsockopt(zmq.XPUB_NODROP, 1)
            mon = self._async_sock.get_monitor_socket(
                zmq.EVENT_CONNECTED | zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
            )
            self._monitor_async = mon
            self._sockets.open.append(mon)
            self._monitor: zmq.Socket[bytes] = zmq.Socket.shadow(mon.underlying)
            self.endpoint = _attach(self._async_sock, endpoint, bind)
        self._closed = False

    @property
    def peers(self) -> int:
        """Connected peers (TCP/IPC level) as last seen by the socket monitor."""
        self._poll_events()
        return len(self._peers)

    def publish(self, msg: Message) -> bool:
        """Queue one message for every subscriber; False (and counted) when dropped."""
        if self._closed:
            raise RuntimeError("publish on a closed Publisher")
        self._poll_events()
        if not self._peers:
            self.drops += 1
            log.debug("no peer: dropped %s", type(msg).__name__)
            return False
        try:
            self._sock.send(self.codec.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            self.drops += 1
            log.debug("send queue full: dropped %s", type(msg).__name__)
            return False
        self.published += 1
        return True

    def _poll_events(self) -> None:
        while True:
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            event = parse_monitor_message(frames)
            if event["event"] in (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED):
                self._peers.add(int(event["value"]))  # the peer's fd
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._peers.discard(int(event["value"]))
        if self._xpub:
            # Drain subscription frames so they do not pile up; peers are counted above.
            with contextlib.suppress(zmq.Again):
                while True:
                    self._sock.recv(zmq.NOBLOCK)

    def close(self) -> None:
        """Close; queued messages are still sent for up to ``linger_ms``."""
        if self._closed:
            return
        self._closed = True
        self._async_sock.disable_monitor()
        self._monitor_async.close(linger=0)
        self._async_sock.close()
        self._sockets.close()


class Subscriber:
    """Receives MetricsSnapshots and keeps the latest and the COMPLETE one per (run, worker).

        ┌───────────────┐                      ┌────────────────┐
        │ Publisher     │ ───────────────────▶ │ Subscriber     │
        │ PUB (worker i)│ ───────────────────▶ │ SUB, bound     │
        └───────────────┘                      └────────────────┘
                                               operator / local mode

    ``start()`` launches the reader task (``wait_for_complete`` starts it if
    needed). The latest snapshot is the last one received; the COMPLETE one
    is the last COMPLETE received. With ``conflate`` each publisher's queue
    keeps only its newest snapshot (a live view; COMPLETE is a worker's last
    snapshot so it is never superseded). Other message kinds are counted in
    ``unexpected`` and dropped.

    ``accept`` (a predicate on the run key) bounds what is kept: a snapshot of a run it
    rejects — unknown, or already forgotten, such as a late snapshot after ``forget`` — is
    counted in ``rejected`` and dropped, so a publisher cannot grow the subscriber's memory
    with run keys nobody asked for. ``max_message_bytes`` is ZMQ's ``MAXMSGSIZE``: a larger
    message makes ZMQ drop the connection of the peer that sent it (it reconnects).
    """

    def __init__(
        self,
        endpoint: str = ANY_LOCAL_PORT,
        *,
        bind: bool = True,
        conflate: bool = False,
        rcvhwm: int = 1000,
        max_message_bytes: int | None = None,
        accept: Callable[[str], bool] | None = None,
        curve: Curve | None = None,
        codec: Codec | None = None,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.codec: Codec = codec if codec is not None else MsgpackCodec()
        self.accept = accept
        self.received = 0
        self.unexpected = 0
        self.rejected = 0
        self._latest: dict[str, dict[int, MetricsSnapshot]] = {}
        self._complete: dict[str, dict[int, MetricsSnapshot]] = {}
        self._received_at: dict[str, dict[int, float]] = {}  # time.monotonic() of the latest
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sockets = _Sockets(curve, ctx)
        with self._sockets.closed_on_error():
            self._sock = self._sockets.socket(zmq.SUB, 0)
            self._sock.rcvhwm = rcvhwm
            if max_message_bytes is not None:
                self._sock.maxmsgsize = max_message_bytes
            if conflate:
                self._sock.conflate = True
            self._sock.subscribe(b"")
            self.endpoint = _attach(self._sock, endpoint, bind)
        self._closed = False

    def start(self) -> None:
        """Start the reader task (idempotent); needs a running event loop."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._read(), name="sub-reader")

    async def _read(self) -> None:
        while not self._closed:
            try:
                data = await self._sock.recv()
            except (asyncio.CancelledError, zmq.ZMQError):
                if self._closed:
                    return
                raise
            msg = self.codec.decode(data)
            if msg is None:
                continue
            if not isinstance(msg, MetricsSnapshot):
                self.unexpected += 1
                log.debug("subscriber dropped a %s", type(msg).__name__)
                continue
            if self.accept is not None and not self.accept(msg.run):
                self.rejected += 1
                log.debug("subscriber dropped a snapshot of run %r (not accepted)", msg.run)
                continue
            self.received += 1
            self._latest.setdefault(msg.run, {})[msg.worker] = msg
            self._received_at.setdefault(msg.run, {})[msg.worker] = time.monotonic()
            if msg.state == "COMPLETE":
                self._complete.setdefault(msg.run, {})[msg.worker] = msg
                self._changed.set()
                self._changed = asyncio.Event()

    def latest(self, run: str) -> dict[int, MetricsSnapshot]:
        """The last snapshot of each worker of ``run`` (a copy)."""
        return dict(self._latest.get(run, {}))

    def complete(self, run: str) -> dict[int, MetricsSnapshot]:
        """The COMPLETE snapshot of each worker of ``run`` that sent one (a copy)."""
        return dict(self._complete.get(run, {}))

    def received_at(self, run: str) -> dict[int, float]:
        """When (``time.monotonic()``) the latest snapshot of each worker of ``run`` arrived."""
        return dict(self._received_at.get(run, {}))

    async def wait_for_complete(
        self,
        run: str,
        workers: int | Iterable[int],
        timeout: float,  # noqa: ASYNC109 - returns partial results at the deadline
    ) -> dict[int, MetricsSnapshot]:
        """Wait until every worker (a count: indices 0..n-1, or the indices) sent COMPLETE.

        Returns what arrived by the deadline: a dict that may lack some workers.
        """
        self.start()
        wanted = set(range(workers)) if isinstance(workers, int) else set(workers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            done = self._complete.get(run, {})
            remaining = deadline - loop.time()
            if wanted <= done.keys() or remaining <= 0:
                return {w: s for w, s in done.items() if w in wanted}
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def forget(self, run: str) -> None:
        """Drop everything kept for ``run``."""
        self._latest.pop(run, None)
        self._complete.pop(run, None)
        self._received_at.pop(run, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._sock.close(linger=0)
        self._sockets.close()


class RequestClient:
    """Request/reply client with timeout, retries and backoff (ZMQ's lazy pirate).

        ┌────────────────┐  [req-id, request]  ┌─────────────────┐
        │ RequestClient  │ ──────────────────▶ │ RequestServer   │
        │ DEALER         │ ◀────────────────── │ ROUTER (bound)  │
        └────────────────┘  [req-id, reply]    └─────────────────┘
         worker / operator                      gates / agent

    One request is in flight at a time per client (concurrent callers queue).
    On a timeout the socket is closed and recreated, so a lost reply or a
    restarted server never wedges it; the request is then resent after
    ``backoff * 2**k`` seconds (capped at ``max_backoff``). Requests must be
    idempotent (the server may see one twice). A reply whose req-id does not
    match (a late reply to an earlier attempt) is ignored.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        curve: ClientCurve | None = None,
        codec: Codec | None = None,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.codec: Codec = codec if codec is not None else MsgpackCodec()
        self.attempts = 0
        self.timeouts = 0
        self._sockets = _Sockets(curve, ctx)
        self._lock = asyncio.Lock()
        self._seq = 0
        with self._sockets.closed_on_error():
            self._sock = self._connect()
        self._closed = False

    def _connect(self) -> zmq.asyncio.Socket:
        sock = self._sockets.socket(zmq.DEALER, 0)
        sock.connect(self.endpoint)
        return sock

    async def request(
        self,
        msg: Message,
        *,
        timeout: float = 1.0,  # noqa: ASYNC109 - per attempt, not overall
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
    ) -> Message:
        """Send ``msg`` and return the reply; RequestTimeout after ``1 + retries`` attempts."""
        payload = self.codec.encode(msg)
        async with self._lock:
            for attempt in range(retries + 1):
                if self._closed:
                    raise RuntimeError("request on a closed RequestClient")
                if attempt:
                    await asyncio.sleep(min(backoff * 2 ** (attempt - 1), max_backoff))
                self._seq += 1
                req_id = struct.pack("<Q", self._seq)
                self.attempts += 1
                try:
                    async with asyncio.timeout(timeout):
                        await self._sock.send_multipart([req_id, payload])
                        return await self._receive(req_id)
                except TimeoutError:
                    self.timeouts += 1
                    log.debug(
                        "no reply from %s (attempt %d/%d)", self.endpoint, attempt + 1, retries + 1
                    )
                    self._sock.close(linger=0)
                    self._sock = self._connect()
        raise RequestTimeout(
            f"no reply from {self.endpoint} to {type(msg).__name__} after {retries + 1} attempts"
        )

    async def _receive(self, req_id: bytes) -> Message:
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) != 2 or frames[0] != req_id:
                log.debug("ignored a stale or malformed reply from %s", self.endpoint)
                continue
            reply = self.codec.decode(frames[1])
            if reply is not None:
                return reply

    def close(self) -> None:
        """Close (do not close while a request is in flight)."""
        if self._closed:
            return
        self._closed = True
        self._sock.close(linger=0)
        self._sockets.close()


class RequestServer:
    """Serves requests concurrently and routes each reply back by peer identity.

        ┌────────────────┐                       ┌──────────────────┐
        │ RequestClient  │ ──┐  [id, env.., req] │ RequestServer    │
        │ DEALER (N)     │ ──┼─────────────────▶ │ ROUTER (bound)   │──▶ handler(msg)
        └────────────────┘ ◀─┴────────────────── │                  │◀── reply | None
                             [id, env.., reply]  └──────────────────┘

    ``serve(handler)`` runs until ``close()``. Each wakeup drains every frame
    already queued on the socket (up to ``max_batch``), then hands each
    decoded request to the handler: one *batch* (counted in ``batches``;
    every request of a batch arrived before the batch is dispatched). A
    handler that returns an awaitable (an ``async def``) runs in its own
    task, so it may wait (a barrier) without blocking others; one that
    returns an ``asyncio.Future`` is answered when the future is done (no
    task); one that returns the reply (or None) directly is answered at
    once, with no task and no await. The frames between the identity and the payload (the
    envelope: a RequestClient's req-id, a REQ socket's empty delimiter) are
    echoed back. Malformed frames are counted (``decode_errors`` on the
    codec) and dropped; a handler that raises, or whose reply cannot be
    encoded, is logged, counted in ``handler_errors`` and answered with nothing
    (the client retries).
    """

    max_batch = 256
    """Frames drained per wakeup at most, so a flood cannot starve the event loop."""

    def __init__(
        self,
        endpoint: str = ANY_LOCAL_PORT,
        *,
        max_message_bytes: int | None = None,
        curve: CurveServer | None = None,
        codec: Codec | None = None,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.codec: Codec = codec if codec is not None else MsgpackCodec()
        self.requests = 0
        self.replies = 0
        self.handler_errors = 0
        self.batches = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._futures: set[asyncio.Future[Message | None]] = set()
        self._sockets = _Sockets(curve, ctx)
        with self._sockets.closed_on_error():
            self._sock = self._sockets.socket(zmq.ROUTER, 0)
            if max_message_bytes is not None:
                self._sock.maxmsgsize = max_message_bytes
            # Draining and immediate replies use a sync view of the same socket: no futures.
            self._sync: zmq.Socket[bytes] = zmq.Socket.shadow(self._sock.underlying)
            self.endpoint = _attach(self._sock, endpoint, bind=True)
        self._closed = False

    async def serve(self, handler: Handler) -> None:
        """Receive and dispatch requests until ``close()``."""
        while not self._closed:
            try:
                batch = [await self._sock.recv_multipart()]
                while len(batch) < self.max_batch:
                    batch.append(self._sync.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                pass
            except (asyncio.CancelledError, zmq.ZMQError):
                if self._closed:
                    return
                raise
            self.batches += 1
            for frames in batch:
                if self._closed:  # a handler closed the server
                    return
                self._dispatch(handler, frames)
            if len(batch) >= self.max_batch:
                await asyncio.sleep(0)  # let the handlers' tasks and replies run

    def _dispatch(self, handler: Handler, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.codec.on_decode_error(b"".join(frames), ValueError("no payload frame"))
            return
        msg = self.codec.decode(frames[-1])
        if msg is None:
            return
        self.requests += 1
        route = frames[:-1]
        try:
            result = handler(msg)
            if not inspect.isawaitable(result) and result is not None:
                payload = self.codec.encode(result)
        except Exception:
            self._handler_failed(msg)
            return
        if isinstance(result, asyncio.Future):  # answered from its callback: no task
            self._futures.add(result)
            result.add_done_callback(functools.partial(self._on_done, route, msg))
        elif inspect.isawaitable(result):
            task = asyncio.ensure_future(self._finish(result, route, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif result is not None and not self._closed:
            try:
                self._sync.send_multipart([*route, payload], zmq.NOBLOCK)
            except zmq.Again:  # a ROUTER does not block; if it ever does, wait in a task
                task = asyncio.ensure_future(self._send(route, payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self.replies += 1

    def _on_done(
        self, route: list[bytes], msg: Message, fut: asyncio.Future[Message | None]
    ) -> None:
        self._futures.discard(fut)
        if fut.cancelled():
            return
        try:
            reply = fut.result()
            if reply is None or self._closed:
                return
            payload = self.codec.encode(reply)
        except Exception:
            self._handler_failed(msg)
            return
        # The asyncio socket (see _send); a ROUTER's send completes at once.
        sent = cast("asyncio.Future[object]", self._sock.send_multipart([*route, payload]))
        sent.add_done_callback(self._on_sent)

    def _on_sent(self, sent: asyncio.Future[object]) -> None:
        if not sent.cancelled() and sent.exception() is None:
            self.replies += 1

    def _handler_failed(self, msg: Message) -> None:
        self.handler_errors += 1
        log.exception("request handler failed on %s", type(msg).__name__)

    async def _finish(
        self, pending: Awaitable[Message | None], route: list[bytes], msg: Message
    ) -> None:
        try:
            reply = await pending
            if reply is None or self._closed:
                return
            payload = self.codec.encode(reply)
        except Exception:  # the handler raised, or its reply cannot be encoded
            self._handler_failed(msg)
            return
        await self._send(route, payload)

    async def _send(self, route: list[bytes], payload: bytes) -> None:
        # The asyncio socket, not the sync view: serve() may be awaiting a recv
        # on it, and only its own send re-checks the edge-triggered events.
        await self._sock.send_multipart([*route, payload])
        self.replies += 1

    def close(self) -> None:
        """Stop serving; in-flight handlers are cancelled."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for fut in list(self._futures):
            fut.cancel()
        self._sock.close(linger=0)
        self._sockets.close()
