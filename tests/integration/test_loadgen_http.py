"""benchop.loadgen.http against real sockets on 127.0.0.1: keep-alive, bodies, errors, TLS.

The servers are the mock server (behind a connection-counting TCP proxy) or hand-written
``asyncio.start_server`` handlers that speak HTTP byte by byte, so what the client sends and
how the server's bytes are cut into TCP segments are both under the test's control.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from benchop import __version__
from benchop.loadgen import http as http_mod
from benchop.loadgen.http import BadResponse, ConnectError, Disconnected, NotSent, Pool
from benchop.loadgen.trigger import SendTrigger
from benchop.mockserver import DONE, MockConfig, start_mock_server

pytestmark = pytest.mark.timeout(30)

LOOPBACK = "127.0.0.1"
now = time.perf_counter_ns  # the clock of SendTrigger and the pool


# ---------------------------------------------------------------------------------------------
# Helpers: a handler that records everything, hand-written servers, a counting proxy


class Collect:
    """A :class:`~benchop.loadgen.http.Handler` that keeps every call; can abandon."""

    def __init__(self, *, abandon_on_headers: bool = False, abandon_on_body: bool = False):
        self.abandon_on_headers = abandon_on_headers
        self.abandon_on_body = abandon_on_body
        self.heads: list[tuple[int, str]] = []
        self.chunks: list[bytes] = []
        self.times: list[int] = []

    def on_headers(self, status: int, content_type: str) -> bool:
        self.heads.append((status, content_type))
        return self.abandon_on_headers

    def on_body(self, data: bytes, t_ns: int) -> bool:
        assert isinstance(data, bytes) and data, "on_body must get non-empty bytes"
        self.chunks.append(data)
        self.times.append(t_ns)
        return self.abandon_on_body

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


Serve = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """``asyncio.start_server`` on 127.0.0.1 running ``serve`` per connection.

    Counts connections, keeps the raw bytes of every request read with
    :meth:`read_request` and counts connections the client closed (:meth:`wait_client_close`).
    """

    def __init__(self, serve: Serve, *, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self._serve = serve
        self._ssl = ssl_ctx
        self.connections = 0
        self.requests: list[bytes] = []
        self.client_closed = 0
        self.got_request = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._on_conn, LOOPBACK, 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str = "/v1/chat/completions", scheme: str = "http") -> str:
        return f"{scheme}://{LOOPBACK}:{self.port}{path}"

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._serve(self, reader, writer)
        except (ConnectionError, ssl.SSLError):
            pass
        except asyncio.CancelledError:  # by __aexit__; a cancelled callback task logs an error
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One whole request (head and Content-Length body), or None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        m = re.search(rb"(?im)^content-length: *(\d+)\r$", head)
        body = await reader.readexactly(int(m.group(1))) if m else b""
        self.requests.append(head + body)
        self.got_request.set()
        return head + body

    async def wait_client_close(self, reader: asyncio.StreamReader) -> None:
        """Wait until the client closes this connection (EOF or reset); anything sent
        instead is a failure."""
        try:
            extra = await reader.read()
        except ConnectionError:
            extra = b""
        assert extra == b"", f"the client sent more on a connection it abandoned: {extra!r}"
        self.client_closed += 1


def sized(body: bytes, *, ctype: str = "text/plain", extra: str = "") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n{extra}Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def answering(answer: bytes) -> Serve:
    """A ``serve`` that writes ``answer`` to every request of a connection."""

    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await srv.read_request(r) is not None:
            w.write(answer)
            await w.drain()

    return serve


def chunked_head(ctype: str = "text/event-stream") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )


def chunk(data: bytes, ext: str = "") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), ext.encode(), data)


def answer_each(response: Callable[[int], bytes]) -> Serve:
    """Keep-alive: answer the i-th request of the server (over all connections) with
    ``response(i)`` until the client closes."""

    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await srv.read_request(r) is not None:
            w.write(response(len(srv.requests) - 1))
            await w.drain()

    return serve


async def until(cond: Callable[[], bool], what: str) -> None:
    """Poll ``cond`` for up to 3 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3.0
    while not cond():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except ConnectionError:
        pass
    finally:
        w.close()


def proxy_to(port: int) -> Serve:
    """A TCP proxy to 127.0.0.1:port: the RawServer counts the client's connections."""

    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(LOOPBACK, port)
        await asyncio.gather(_pipe(r, up_w), _pipe(up_r, w))

    return serve


def chat_body(prompt: str, max_tokens: int) -> bytes:
    return msgspec.json.encode(
        {
            "model": "m",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": True,
        }
    )


def assert_non_decreasing(times: list[int]) -> None:
    assert times, "no body was delivered"
    assert all(a <= b for a, b in itertools.pairwise(times)), times


# ---------------------------------------------------------------------------------------------
# 1. Keep-alive


async def test_sequential_requests_to_the_mock_server_reuse_one_connection() -> None:
    async with (
        await start_mock_server(MockConfig(ttft=0.0, itl=0.0)) as mock,
        RawServer(proxy_to(int(mock.url.rsplit(":", 1)[1].split("/")[0]))) as proxy,
    ):
        pool = Pool(proxy.url(), headers={"Content-Type": "application/json"})
        try:
            conns = set()
            for i in range(5):
                h = Collect()
                await pool.request(chat_body("a b c", 4 + i), h)
                assert h.heads == [(200, "text/event-stream")]
                assert h.body.endswith(DONE) and h.body.count(b'"content"') == 4 + i
                assert_non_decreasing(h.times)
                conns |= pool._all
                assert len(pool._all) == 1 and len(pool._idle) == 1
        finally:
            pool.close()
        assert mock.stats["chat"] == 5 and mock.stats["ok"] == 5
        assert len(conns) == 1
        assert proxy.connections == 1


async def test_connection_close_answers_get_a_fresh_connection_each() -> None:
    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        n = len(srv.requests)
        assert await srv.read_request(r) is not None
        w.write(sized(b"answer %d" % n, extra="Connection: close\r\n"))
        await w.drain()
        await srv.wait_client_close(r)  # the client must close it, not reuse it

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            for i in range(3):
                h = Collect()
                await pool.request(b"x", h)
                assert h.heads == [(200, "text/plain")] and h.body == b"answer %d" % i
                assert not pool._all and not pool._idle
            await until(lambda: srv.client_closed == 3, "the client to close 3 connections")
        finally:
            pool.close()
        assert srv.connections == 3 and len(srv.requests) == 3


# ---------------------------------------------------------------------------------------------
# 2. Bodies


async def test_large_content_length_body_arrives_complete_and_the_connection_is_reused() -> None:
    big = bytes(range(256)) * 1024  # 256 KiB: many reads
    async with RawServer(answer_each(lambda i: sized(big[i:], ctype="application/x"))) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            for i in range(2):
                h = Collect()
                await pool.request(b"{}", h)
                assert h.heads == [(200, "application/x")]
                assert h.body == big[i:]
                assert_non_decreasing(h.times)
        finally:
            pool.close()
        assert srv.connections == 1


async def test_chunked_body_split_into_tiny_writes_with_pauses() -> None:
    """Headers and chunk framing cut into 1..7-byte TCP writes; one long pause between two
    chunks shows t_ns is the time of the read, not of the request's end."""
    pieces = [b'data: {"n": %d}\n\n' % i for i in range(12)]
    pause_after = 6  # chunks before the long pause
    resumed_ns: list[int] = []

    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await srv.read_request(r) is not None:
            parts = [chunked_head("text/event-stream; charset=utf-8")]
            parts += [chunk(p, ";ext=1" if i == 3 else "") for i, p in enumerate(pieces)]
            parts.append(b"0\r\nX-Trailer: yes\r\n\r\n")
            for k, part in enumerate(parts):
                if k == pause_after + 1:  # parts[0] is the head
                    await asyncio.sleep(0.05)
                    resumed_ns.append(time.perf_counter_ns())
                sizes = [1, 2, 3, 5, 7]
                j = 0
                while j < len(part):
                    n = sizes[j % len(sizes)]
                    w.write(part[j : j + n])
                    await w.drain()
                    await asyncio.sleep(0.0005)
                    j += n

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            for _ in range(2):
                resumed_ns.clear()
                h = Collect()
                await pool.request(b"{}", h)
                assert h.heads == [(200, "text/event-stream; charset=utf-8")]
                assert h.body == b"".join(pieces)
                assert len(h.chunks) >= 10, "the tiny writes should arrive as many reads"
                assert_non_decreasing(h.times)
                before = len(b"".join(pieces[:pause_after]))
                seen = 0
                last_before = first_after = None
                for data, t in zip(h.chunks, h.times, strict=True):
                    if seen + len(data) <= before:
                        last_before = t
                    elif first_after is None:
                        first_after = t
                    seen += len(data)
                assert last_before is not None and first_after is not None
                assert last_before < resumed_ns[0] <= first_after
        finally:
            pool.close()
        assert srv.connections == 1 and len(srv.requests) == 2


# ---------------------------------------------------------------------------------------------
# 3. A keep-alive connection closed by the server while idle


async def test_idle_connection_closed_by_the_server_is_skipped() -> None:
    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert await srv.read_request(r) is not None
        w.write(sized(b"one answer per connection"))  # keep-alive by default (1.1)
        await w.drain()
        # ...then close it while the client holds it idle

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            for i in range(3):
                h = Collect()
                # a lost connection taken from the pool would never answer: time-box it
                await asyncio.wait_for(pool.request(b"x", h), 2)
                assert h.body == b"one answer per connection"
                assert len(pool._idle) == 1  # kept: the response allowed keep-alive
                await until(lambda: pool._idle[0].lost, f"the client to see close #{i}")
        finally:
            pool.close()
        assert srv.connections == 3


# ---------------------------------------------------------------------------------------------
# 4. Errors


async def test_connection_refused_names_host_and_port() -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))  # bound, not listening: connecting is refused
        port = s.getsockname()[1]
        pool = Pool(f"http://{LOOPBACK}:{port}/v1", headers={}, connect_timeout=2)
        with pytest.raises(ConnectError, match=rf"^cannot connect to 127\.0\.0\.1:{port}: "):
            await pool.request(b"x", Collect())
        assert not pool._all


def refused_port() -> socket.socket:
    """A socket bound on 127.0.0.1 and not listening: connects to its port are refused."""
    s = socket.socket()
    s.bind((LOOPBACK, 0))
    return s


async def test_connection_refused_carries_the_errno() -> None:
    with refused_port() as s:
        port = s.getsockname()[1]
        pool = Pool(f"http://{LOOPBACK}:{port}/v1", headers={})
        with pytest.raises(ConnectError, match=r": ECONNREFUSED: \[Errno 111\]") as err:
            await pool.request(b"x", Collect())
        assert err.value.errno == 111 and not err.value.tls
        assert (pool.attempts, pool.failures) == (1, 1)


async def test_failing_connects_back_off_one_attempt_at_a_time() -> None:
    """32 requests in flight, each retried 6 times: the first wave tries 32 connects, then
    one request at a time tries, at most one per backoff step (50 ms doubling); the others
    fail with its error. Every request fails and says why."""
    with refused_port() as s:
        port = s.getsockname()[1]
        pool = Pool(f"http://{LOOPBACK}:{port}/v1", headers={})
        errors: list[str] = []

        async def loop() -> None:
            for _ in range(6):
                with pytest.raises(ConnectError) as err:
                    await pool.request(b"x", Collect())
                errors.append(str(err.value))

        await asyncio.gather(*(loop() for _ in range(32)))
    assert len(errors) == 32 * 6
    assert all("ECONNREFUSED" in e for e in errors)
    assert sum("backing off" in e for e in errors) >= 32 * 5 - 31
    # 32 at once, then one per backoff step: 5 rounds of 31 waiters and one prober
    assert pool.failures == pool.attempts
    assert 32 < pool.attempts <= 32 + 8, pool.attempts


async def test_after_backing_off_a_target_that_came_back_is_used_again() -> None:
    """The probe that connects resets the backoff: the requests waiting for it connect too."""
    sock = refused_port()
    port = sock.getsockname()[1]
    pool = Pool(f"http://{LOOPBACK}:{port}/v1", headers={})
    for _ in range(3):
        with pytest.raises(ConnectError):
            await pool.request(b"x", Collect())
    answered = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        while await reader.readuntil(b"\r\n\r\n"):
            await reader.readexactly(1)
            answered += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    sock.listen()
    server = await asyncio.start_server(serve, sock=sock)
    try:
        handlers = [Collect() for _ in range(8)]
        await asyncio.gather(*(pool.request(b"x", h) for h in handlers))
        assert all(h.body == b"ok" for h in handlers) and answered == 8
        assert pool.failures == 3 and pool.attempts == 3 + 8
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port on 127.0.0.1 whose accept queue is full: a connect there hangs (Linux drops
    the SYN). Skips where the kernel answers anyway."""
    listener = socket.socket()
    held: list[socket.socket] = []
    try:
        listener.bind((LOOPBACK, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(8):
            c = socket.socket()
            c.settimeout(0.1)
            try:
                c.connect((LOOPBACK, port))
            except TimeoutError:
                c.close()
                break
            held.append(c)
        else:
            pytest.skip("cannot fill a loopback accept queue here: connects never hang")
        yield port
    finally:
        for c in held:
            c.close()
        listener.close()


async def test_connect_timeout(full_backlog: int) -> None:
    pool = Pool(f"http://{LOOPBACK}:{full_backlog}/", headers={}, connect_timeout=0.2)
    t = time.monotonic()
    with pytest.raises(ConnectError, match=rf"127\.0\.0\.1:{full_backlog} timed out after 0\.2s"):
        await pool.request(b"x", Collect())
    assert 0.19 <= time.monotonic() - t < 1.5
    assert not pool._all


async def test_cancelled_while_connecting_raises_cancelled_not_connect_error(
    full_backlog: int,
) -> None:
    pool = Pool(f"http://{LOOPBACK}:{full_backlog}/", headers={}, connect_timeout=5)
    task = asyncio.create_task(pool.request(b"x", Collect()))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not pool._all


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_server_closing_mid_body_raises_disconnected(framing: str) -> None:
    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert await srv.read_request(r) is not None
        if framing == "chunked":
            w.write(chunked_head() + chunk(b"first half") + b"40\r\npartial")
        else:
            w.write(sized(b"first half" + b"." * 90)[:-90])
        await w.drain()  # then the handler returns: the server closes mid-body

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        h = Collect()
        with pytest.raises(Disconnected, match="server closed the connection"):
            await pool.request(b"x", h)
        assert len(h.heads) == 1 and h.body.startswith(b"first half")
        assert not pool._all and not pool._idle


async def test_server_closing_before_any_answer_raises_disconnected() -> None:
    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert await srv.read_request(r) is not None

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        h = Collect()
        with pytest.raises(Disconnected):
            await pool.request(b"x", h)
        assert h.heads == [] and h.chunks == [] and not pool._all


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 two hundred\r\n\r\n",
    ],
    ids=["ssh", "bad-length", "bad-chunk-size", "bad-status"],
)
async def test_garbage_instead_of_a_response_raises_bad_response(garbage: bytes) -> None:
    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert await srv.read_request(r) is not None
        w.write(garbage)
        await w.drain()
        await srv.wait_client_close(r)  # the server keeps it open: the client must close

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        with pytest.raises(BadResponse, match=r"^invalid HTTP response: "):
            await pool.request(b"x", Collect())
        assert not pool._all and not pool._idle
        await until(lambda: srv.client_closed == 1, "the client to close the connection")


@pytest.mark.parametrize("where", ["on_headers", "on_body"])
async def test_handler_abandoning_returns_and_closes_the_connection(where: str) -> None:
    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if await srv.read_request(r) is None:
            return
        if len(srv.requests) > 1:  # the request after the abandoned one
            w.write(sized(b"fine"))
            await w.drain()
            await srv.wait_client_close(r)
            return
        w.write(chunked_head() + chunk(b"first"))  # a response that never ends
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(chunk(b"second"))
        await w.drain()
        await srv.wait_client_close(r)

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            h = Collect(
                abandon_on_headers=where == "on_headers", abandon_on_body=where == "on_body"
            )
            await asyncio.wait_for(pool.request(b"x", h), 2)
            assert h.heads == [(200, "text/event-stream")]
            assert h.chunks == ([] if where == "on_headers" else [b"first"])
            assert not pool._all and not pool._idle
            await until(lambda: srv.client_closed == 1, "the client to close the connection")
            h2 = Collect()
            await pool.request(b"y", h2)
            assert h2.body == b"fine"
            assert h.chunks == ([] if where == "on_headers" else [b"first"])  # nothing late
        finally:
            pool.close()
        assert srv.connections == 2


# ---------------------------------------------------------------------------------------------
# 5. Cancellation


async def test_cancelling_a_request_closes_its_connection_and_the_pool_stays_usable() -> None:
    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        first = srv.connections == 1
        while await srv.read_request(r) is not None:
            if first:  # never answers: the client cancels
                await srv.wait_client_close(r)
                return
            w.write(sized(b"ok %d" % len(srv.requests)))
            await w.drain()

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            h = Collect()
            task = asyncio.create_task(pool.request(b"x", h))
            await asyncio.wait_for(srv.got_request.wait(), 2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not pool._all and not pool._idle and h.heads == []
            await until(lambda: srv.client_closed == 1, "the client to close the connection")
            for n in (2, 3):
                h = Collect()
                await pool.request(b"y", h)
                assert h.body == b"ok %d" % n
        finally:
            pool.close()
        assert srv.connections == 2


async def test_a_handler_raising_in_on_body_fails_the_request_not_the_loop() -> None:
    class Boom(Collect):
        def on_body(self, data: bytes, t_ns: int) -> bool:
            raise ValueError("handler bug")

    async with RawServer(answering(sized(b"body"))) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            with pytest.raises(ValueError, match="handler bug"):
                await asyncio.wait_for(pool.request(b"x", Boom()), 2)
            assert not pool._all and not pool._idle  # closed, not reused
            h = Collect()
            await pool.request(b"y", h)
            assert h.body == b"body"
        finally:
            pool.close()


async def test_closing_the_pool_mid_request_says_the_client_closed_it() -> None:
    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if await srv.read_request(r) is not None:
            await srv.wait_client_close(r)  # never answers

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        task = asyncio.create_task(pool.request(b"x", Collect()))
        await asyncio.wait_for(srv.got_request.wait(), 2)
        pool.close()
        with pytest.raises(Disconnected, match=r"^connection closed by the client$"):
            await task
        assert not pool._all and not pool._idle


# ---------------------------------------------------------------------------------------------
# 6. TLS


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (IP SAN), made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed: cannot make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-days", "2", "-subj", "/CN=benchop-test", "-keyout", str(key)),
            *("-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=20,
    )
    return cert, key


@pytest.fixture
async def tls_server(tls_cert: tuple[Path, Path]) -> AsyncIterator[RawServer]:
    """HTTPS, keep-alive; closes each connection after its second answer."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*tls_cert)

    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(2):
            if await srv.read_request(r) is None:
                return
            w.write(sized(b"secret %d" % len(srv.requests), extra="X-Pad: " + "p" * 40000 + "\r\n"))
            await w.drain()

    async with RawServer(serve, ssl_ctx=ctx) as srv:
        yield srv


async def test_https_self_signed_certificate_fails_verification(tls_server: RawServer) -> None:
    pool = Pool(tls_server.url(scheme="https"), headers={})
    with pytest.raises(ConnectError) as err:
        await pool.request(b"x", Collect())
    msg = str(err.value)
    assert f"127.0.0.1:{tls_server.port}" in msg and "certificate verify failed" in msg, msg
    assert isinstance(err.value.__cause__, ssl.SSLCertVerificationError)
    assert not pool._all and tls_server.requests == []


async def test_https_with_the_certificate_trusted(
    tls_server: RawServer, tls_cert: tuple[Path, Path]
) -> None:
    pool = Pool(tls_server.url(scheme="https"), headers={"Authorization": "Bearer k"})
    assert pool._ssl is not None and pool._ssl.verify_mode == ssl.CERT_REQUIRED
    pool._ssl = ssl.create_default_context(cafile=str(tls_cert[0]))  # trust the test CA
    try:
        for n in range(1, 4):
            h = Collect()
            await pool.request(b'{"n": %d}' % n, h)
            assert h.heads == [(200, "text/plain")] and h.body == b"secret %d" % n
            if n == 2:  # the server closed it after this answer: wait until the client knows
                await until(lambda: pool._idle[0].lost, "the client to see the TLS close")
    finally:
        pool.close()
    assert tls_server.connections == 2
    assert tls_server.requests[0].startswith(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{tls_server.port}\r\n".encode()
    )
    assert tls_server.requests[2].endswith(b'\r\n\r\n{"n": 3}')


# ---------------------------------------------------------------------------------------------
# 7. URL checks and the exact request bytes


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x/v1",
        "http:///v1/chat",
        "http://",
        "https://:443/v1",
        "localhost:8000/v1",
        "",
        "http://h:99999/v1",
    ],
)
def test_bad_url_raises_value_error_naming_it(url: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(url))):
        Pool(url, headers={})


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v1/chat/completions?model=a%20b&x=1", "/v1/chat/completions?model=a%20b&x=1"),
        ("", "/"),
        ("?q=1", "/?q=1"),
        ("/a/b#fragment", "/a/b"),
    ],
)
@pytest.mark.parametrize("userinfo", ["", "user:s3cret@"])
async def test_request_line_host_and_headers_are_exact(
    path: str, target: str, userinfo: str
) -> None:
    async with RawServer(answer_each(lambda i: sized(b""))) as srv:
        url = f"http://{userinfo}{LOOPBACK}:{srv.port}{path}"
        headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}
        pool = Pool(url, headers=headers)
        try:
            for body in (b'{"a": "\xc3\xa9"}', b""):
                await pool.request(body, Collect())
        finally:
            pool.close()
        assert srv.connections == 1
        for raw, body in zip(srv.requests, (b'{"a": "\xc3\xa9"}', b""), strict=True):
            want = (
                f"POST {target} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{srv.port}\r\n"
                f"User-Agent: benchop/{__version__}\r\n"
                "Content-Type: application/json\r\n"
                "Authorization: Bearer k\r\n"
                f"Content-Length: {len(body)}\r\n"
                "\r\n"
            ).encode() + body
            assert raw == want
            assert b"s3cret" not in raw and b"user:" not in raw


@pytest.mark.parametrize(
    ("url", "line", "host", "port"),
    [
        ("http://example.com/v1", "POST /v1 HTTP/1.1", "example.com", 80),
        ("https://example.com", "POST / HTTP/1.1", "example.com", 443),
        ("https://u:p@example.com:8443/v1?x", "POST /v1?x HTTP/1.1", "example.com:8443", 8443),
        ("http://[::1]:8080/v1", "POST /v1 HTTP/1.1", "[::1]:8080", 8080),
    ],
)
def test_default_ports_and_host_header_without_connecting(
    url: str, line: str, host: str, port: int
) -> None:
    """Hosts that cannot be served on 127.0.0.1 here: check the prebuilt request head."""
    pool = Pool(url, headers={})
    assert pool._port == port
    assert pool._head.startswith(f"{line}\r\nHost: {host}\r\nUser-Agent: ".encode())
    assert (pool._ssl is not None) == url.startswith("https")


# ---------------------------------------------------------------------------------------------
# Bugs found while writing these tests: they fail until http.py is fixed (left failing on
# purpose; see the docstrings).


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
        b"Connection: close\r\n\r\n",
    ],
    ids=["http1.0", "http1.1-connection-close"],
)
async def test_close_delimited_body_is_a_complete_response(head: bytes) -> None:
    """A response with neither Content-Length nor chunked framing ends when the server
    closes the connection (RFC 9112 section 6.3, rule 8): httptools has no ``feed_eof``, so
    the pool itself must take that close as the end, not as ``Disconnected``."""

    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert await srv.read_request(r) is not None
        w.write(head + b"the whole body")
        await w.drain()  # then close: that ends the body

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        h = Collect()
        await pool.request(b"x", h)
        assert h.body == b"the whole body"


async def test_interim_1xx_response_is_not_the_answer() -> None:
    """A 1xx interim response (here 103 Early Hints) is skipped, not taken as the answer
    (RFC 9110 section 15.2: a client must parse 1xx responses before the final one)."""

    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await srv.read_request(r) is not None:
            w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.02)
            w.write(sized(b"final answer"))
            await w.drain()

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            h = Collect()
            await pool.request(b"x", h)
            assert h.heads == [(200, "text/plain")] and h.body == b"final answer"
        finally:
            pool.close()


# ---------------------------------------------------------------------------------------------
# 8. Kernel receive times (plain TCP on Linux x86_64/aarch64)

kernel_timestamps = pytest.mark.skipif(
    not http_mod._KERNEL_TIMESTAMPS, reason="SO_TIMESTAMPNS is used on Linux x86_64/aarch64 only"
)


@kernel_timestamps
async def test_plain_http_reads_carry_the_kernels_receive_time_not_the_loops() -> None:
    """The server (a thread, independent of the client's loop) answers while the client's
    event loop is blocked for 0.3 s: the body's time is when it reached this host, not when
    the loop got to it."""
    sent_at: list[int] = []
    srv = socket.create_server((LOOPBACK, 0))
    port = srv.getsockname()[1]
    loop = asyncio.get_running_loop()

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            loop.call_soon_threadsafe(time.sleep, 0.3)  # block the client's loop...
            time.sleep(0.05)  # ...which is asleep by now
            sent_at.append(time.perf_counter_ns())
            conn.sendall(sized(b"on time"))
            conn.recv(1)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    pool = Pool(f"http://{LOOPBACK}:{port}/v1/chat/completions", headers={})
    try:
        h = Collect()
        await asyncio.wait_for(pool.request(b"x", h), 5)
        handled = time.perf_counter_ns()
        assert h.body == b"on time"
        [conn] = pool._idle
        assert isinstance(conn.transport, http_mod._TimestampedTransport)
        assert handled - sent_at[0] >= 200_000_000  # the loop really was late
        assert h.times[0] - sent_at[0] < 50_000_000  # the recorded time was not
    finally:
        pool.close()
        srv.close()
        thread.join(5)


@kernel_timestamps
async def test_a_request_larger_than_the_socket_buffer_is_sent_whole() -> None:
    big = bytes(range(256)) * (32 * 1024)  # 8 MiB: many partial sends

    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (req := await srv.read_request(r)) is not None:
            body = req.partition(b"\r\n\r\n")[2]
            w.write(sized(b"%d %d" % (len(body), body == big)))
            await w.drain()

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            for _ in range(2):
                h = Collect()
                await asyncio.wait_for(pool.request(big, h), 10)
                assert h.body == b"%d 1" % len(big)
            assert srv.connections == 1
        finally:
            pool.close()


# ---------------------------------------------------------------------------------------------
# 9. Review findings (each failed before its fix)


def test_a_header_with_cr_or_lf_is_refused_without_echoing_its_value() -> None:
    with pytest.raises(ValueError, match="'Authorization'") as err:
        Pool("http://127.0.0.1:1/v1", headers={"Authorization": "Bearer sk-123\n"})
    assert "sk-123" not in str(err.value)


async def test_a_101_answer_is_a_bad_response_at_once() -> None:
    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if await srv.read_request(r) is not None:
            w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n")
            w.write(b"Connection: Upgrade\r\n\r\n")
            await w.drain()
            await srv.wait_client_close(r)

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        with pytest.raises(BadResponse, match="invalid HTTP response"):
            await asyncio.wait_for(pool.request(b"x", Collect()), 2)
        assert not pool._all and not pool._idle


async def test_a_second_answer_in_the_same_read_is_not_given_to_the_handler() -> None:
    two_answers = sized(b"first") + sized(b"stray", ctype="text/event-stream")
    async with RawServer(answering(two_answers)) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            h = Collect()
            await asyncio.wait_for(pool.request(b"x", h), 2)
            assert h.heads == [(200, "text/plain")] and h.body == b"first"
            assert not pool._idle  # a connection that talks out of turn is not reused
        finally:
            pool.close()


@kernel_timestamps
async def test_a_kernel_refusing_timestamps_still_connects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_mod, "_SO_TIMESTAMPNS", 0x7FFF)  # an option no kernel knows

    async with RawServer(answering(sized(b"ok"))) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            h = Collect()
            before = time.perf_counter_ns()
            await asyncio.wait_for(pool.request(b"x", h), 2)
            assert h.body == b"ok" and h.times[0] >= before
        finally:
            pool.close()


@kernel_timestamps
async def test_a_wall_clock_step_never_dates_a_read_before_its_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kernel times are wall-clock: a step forward between arrival and read would shift
    the converted time back by the step; it is clamped to the request's start."""
    monkeypatch.setattr(http_mod, "_wall_ns", lambda: time.time_ns() + 2_000_000_000)

    async with RawServer(answering(sized(b"ok"))) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            for _ in range(2):  # a fresh and a reused connection
                h = Collect()
                before = time.perf_counter_ns()
                await asyncio.wait_for(pool.request(b"x", h), 2)
                assert h.times and all(t >= before for t in h.times), (h.times, before)
        finally:
            pool.close()


# ---------------------------------------------------------------------------------------------
# 10. Open-loop triggers: a request on an idle connection is written by whoever fires its trigger


class WriteSpy:
    """Stands in for a connection's transport: notes each write and whether the trigger had
    fired when it happened, then writes for real."""

    def __init__(self, transport: Any, trigger: SendTrigger) -> None:
        self._transport = transport
        self._trigger = trigger
        self.writes: list[tuple[bytes, bool]] = []

    def write(self, data: bytes) -> None:
        self.writes.append((data, self._trigger.fired.done()))
        self._transport.write(data)

    def abort(self) -> None:
        self._transport.abort()


async def _one_idle_connection(pool: Pool) -> Any:
    await pool.request(b"warm", Collect())
    assert len(pool._idle) == 1
    return pool._idle[0]


async def test_a_triggered_request_is_written_inside_fire_on_the_reserved_connection() -> None:
    async with RawServer(answering(sized(b"body"))) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            conn = await _one_idle_connection(pool)
            trigger = SendTrigger(asyncio.get_running_loop(), now())
            spy = conn.transport = WriteSpy(conn.transport, trigger)
            h = Collect()
            task = asyncio.create_task(pool.request(b"triggered", h, trigger))
            await asyncio.sleep(0.05)
            assert pool._idle == [] and spy.writes == [] and len(srv.requests) == 1  # reserved
            before = now()
            trigger.fire()
            after = now()
            assert [(w.endswith(b"triggered"), fired) for w, fired in spy.writes] == [(True, True)]
            assert before <= trigger.sent_ns <= after
            await asyncio.wait_for(task, 2)
            assert h.body == b"body" and pool._idle == [conn]
        finally:
            pool.close()
        assert srv.connections == 1 and srv.requests[1].endswith(b"triggered")


async def test_a_trigger_cancelled_before_it_fired_sends_nothing_and_keeps_the_connection() -> None:
    async with RawServer(answering(sized(b"body"))) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            conn = await _one_idle_connection(pool)
            trigger = SendTrigger(asyncio.get_running_loop(), now())
            h = Collect()
            task = asyncio.create_task(pool.request(b"never", h, trigger))
            await asyncio.sleep(0.05)
            trigger.cancel()
            with pytest.raises(NotSent):
                await asyncio.wait_for(task, 2)
            assert trigger.sent_ns == 0 and h.heads == [] and pool._idle == [conn]
            trigger.fire()  # too late: nothing happens
            h2 = Collect()
            await pool.request(b"next", h2)
            assert h2.body == b"body"
        finally:
            pool.close()
        assert srv.connections == 1
        assert [r.rsplit(b"\r\n", 1)[1] for r in srv.requests] == [b"warm", b"next"]


async def test_a_triggered_request_without_an_idle_connection_connects_ahead_of_its_send() -> None:
    async with RawServer(answering(sized(b"body"))) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            trigger = SendTrigger(asyncio.get_running_loop(), now())
            h = Collect()
            task = asyncio.create_task(pool.request(b"triggered", h, trigger))
            await until(lambda: srv.connections == 1 and len(pool._all) == 1, "the connect")
            await asyncio.sleep(0.05)
            assert srv.requests == []  # connected, nothing sent before the trigger fires
            before = now()
            trigger.fire()
            after = now()
            await asyncio.wait_for(task, 2)
            assert h.body == b"body" and srv.connections == 1
            assert before <= trigger.sent_ns <= after  # written inside fire()
        finally:
            pool.close()


async def test_a_trigger_fired_before_its_connect_counts_from_the_connect_start() -> None:
    async with RawServer(answering(sized(b"body"))) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            trigger = SendTrigger(asyncio.get_running_loop(), now())
            trigger.fire()  # due before the request even started: its task was late
            fired = trigger.sent_ns
            h = Collect()
            await asyncio.sleep(0.02)
            before = now()
            await asyncio.wait_for(pool.request(b"late", h, trigger), 2)
            assert h.body == b"body"
            assert fired < before <= trigger.sent_ns < now()  # the lateness is send lag
        finally:
            pool.close()


async def test_a_triggered_connect_failure_is_raised_at_the_send_time_or_not_at_all() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    pool = Pool(f"http://{LOOPBACK}:{port}/v1", headers={})
    loop = asyncio.get_running_loop()
    try:
        trigger = SendTrigger(loop, now())
        task = asyncio.create_task(pool.request(b"x", Collect(), trigger))
        await asyncio.sleep(0.05)
        assert not task.done()  # refused already, but not before its send time
        trigger.fire()
        with pytest.raises(ConnectError, match=str(port)):
            await asyncio.wait_for(task, 2)
        assert trigger.sent_ns
        closed = SendTrigger(loop, now())
        task = asyncio.create_task(pool.request(b"x", Collect(), closed))
        await asyncio.sleep(0.05)
        closed.cancel()  # the phase stopped first: never sent, so no connection error
        with pytest.raises(NotSent):
            await asyncio.wait_for(task, 2)
    finally:
        pool.close()


async def test_cancelling_a_held_request_closes_its_connection_and_a_later_fire_sends_nothing() -> (
    None
):
    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await srv.read_request(r) is not None:
            w.write(sized(b"body"))
            await w.drain()
        srv.client_closed += 1

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            conn = await _one_idle_connection(pool)
            trigger = SendTrigger(asyncio.get_running_loop(), now())
            spy = conn.transport = WriteSpy(conn.transport, trigger)
            task = asyncio.create_task(pool.request(b"triggered", Collect(), trigger))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            trigger.fire()
            assert spy.writes == [] and trigger.sent_ns == 0 and trigger.fired.cancelled()
            assert conn.lost and not pool._all
            await until(lambda: srv.client_closed == 1, "the client to close the connection")
        finally:
            pool.close()
        assert len(srv.requests) == 1


async def test_before_read_runs_before_each_read_is_handled() -> None:
    events: list[str] = []

    class Noting(Collect):
        def on_body(self, data: bytes, t_ns: int) -> bool:
            events.append("body")
            return super().on_body(data, t_ns)

    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        w.write(chunked_head())
        for i in range(5):
            w.write(chunk(b"data: %d\n\n" % i))
            await w.drain()
            await asyncio.sleep(0.01)  # one read each
        w.write(chunk(b""))
        await w.drain()

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        pool.before_read = lambda: events.append("poll")
        try:
            h = Noting()
            await asyncio.wait_for(pool.request(b"x", h), 2)
        finally:
            pool.close()
    assert events.count("body") == 5 and events[0] == "poll"
    # each read is announced before the handler gets it
    assert all(a == "poll" for a, b in itertools.pairwise(events) if b == "body")


async def test_a_reserved_connection_the_server_closes_fails_the_request_at_its_send() -> None:
    async def serve(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert await srv.read_request(r) is not None
        w.write(sized(b"body"))
        await w.drain()
        await asyncio.sleep(0.05)  # then closes, while the client holds it reserved

    async with RawServer(serve) as srv:
        pool = Pool(srv.url(), headers={})
        try:
            conn = await _one_idle_connection(pool)
            trigger = SendTrigger(asyncio.get_running_loop(), now())
            task = asyncio.create_task(pool.request(b"triggered", Collect(), trigger))
            await until(lambda: conn.lost, "the server to close the reserved connection")
            trigger.fire()
            with pytest.raises(Disconnected):
                await asyncio.wait_for(task, 2)
            assert not pool._all and not pool._idle
        finally:
            pool.close()
        assert len(srv.requests) == 1
