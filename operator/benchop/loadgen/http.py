"""The load generator's HTTP/1.1 connections: asyncio protocols, responses parsed by llhttp.

Why not aiohttp on this path: measured with ``hack/bench_loadgen.py``, aiohttp's request
machinery alone costs ~90 us of CPU per request (0.75x wrk while parsing nothing), the
whole budget of a client that must keep up with wrk. A benchmark POST needs much less:
keep-alive connections (one per request in flight, no shared pool to contend on), the
request prebuilt as bytes, the response parsed by llhttp (``httptools``: status, headers,
chunked or sized body) and the body handed to the caller as it is read, with no task
wake-up in between. Plain ``http`` on Linux (x86_64, aarch64) reads the socket itself with
``recvmsg`` and ``SO_TIMESTAMPNS``: each read carries the kernel's receive time, so a busy
event loop delays when a token is processed, not the time recorded for it. Elsewhere (and
for ``https``) a read's time is when ``data_received`` ran.

Not supported, as a model server needs none of it: proxies, redirects (a 3xx is an
answer like any other), compression (no ``Accept-Encoding`` is sent), HTTP/2. ``https``
URLs use the given ``ssl.SSLContext`` (a CA bundle, a client certificate; see
:mod:`benchop.loadgen.request`), else the system's CA store.

Connect failures back off: after one, the next connect waits 50 ms, doubling up to 1 s while
they keep failing, and only one request at a time tries (the others wait for it and fail with
its error, or connect once it succeeded). A dead target costs a worker about one connect
attempt per second, not one per request (``attempts`` and ``failures`` count them).

An open-loop request can be written at its send time by a callback rather than by its
task (a loop iteration later): :meth:`Pool.request` takes a
:class:`~benchop.loadgen.trigger.SendTrigger`, reserves a connection ahead of the send and
hands the trigger the write. ``Pool.before_read`` is called before each read is handled, so
a trigger whose time has come fires between two reads of a busy loop rather than after all
of them.

    pool = Pool("http://127.0.0.1:8000/v1/chat/completions", headers={}, connect_timeout=10)
    await pool.request(body, handler)   # handler.on_headers / handler.on_body, then returns
    pool.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import platform
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

from benchop import __version__
from benchop.loadgen.trigger import SendTrigger

__all__ = ["BadResponse", "ConnectError", "Disconnected", "Handler", "NotSent", "Pool"]

_perf_ns = time.perf_counter_ns
BACKOFF_MIN_S = 0.05
"""Wait before the connect after a failed one; doubles with each failure in a row ..."""
BACKOFF_MAX_S = 1.0
"""... up to this: a dead target gets about one connect attempt per second per pool."""


def describe_os_error(exc: OSError) -> str:
    """``ECONNREFUSED: [Errno 111] Connect call failed ...``: the errno's name, then the text."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's, not the OS's
        return text
    name = errno.errorcode.get(exc.errno) if isinstance(exc.errno, int) else None
    return f"{name}: {text}" if name else text


class ConnectError(Exception):
    """No connection: refused, unreachable, name not resolved, TLS failed, or timed out.

    ``errno`` is the OS error number when there was one; ``tls`` is True when the TCP
    connection was made and the TLS handshake failed.
    """

    def __init__(self, message: str, *, errno: int | None = None, tls: bool = False) -> None:
        super().__init__(message)
        self.errno = errno
        self.tls = tls


class Disconnected(Exception):
    """The connection closed or broke before the response ended."""


class BadResponse(Exception):
    """The server's bytes are not a valid HTTP/1.1 response."""


class NotSent(Exception):
    """The request's trigger was cancelled before it fired: nothing was sent."""


class Handler(Protocol):
    """Receives one response. Returning True from either method abandons it: the
    request returns at once and the connection is closed, not reused."""

    def on_headers(self, status: int, content_type: str) -> bool: ...

    def on_body(self, data: bytes, t_ns: int) -> bool: ...


class _Transport(Protocol):
    """What a connection needs of its transport."""

    def write(self, data: bytes) -> None: ...

    def abort(self) -> None: ...


class Pool:
    """Keep-alive connections to the host of one URL, each serving one request at a time.

    A request takes an idle connection or opens one, so the number of connections is
    the number of requests in flight (which the load mode bounds). The caller's task
    can be cancelled at any point: the connection is then closed.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"target URL must be http:// or https:// with a host, got {url!r}")
        try:
            port = u.port
        except ValueError as exc:
            raise ValueError(f"target URL {url!r}: {exc}") from None
        self.url = url
        self._host = u.hostname
        self._port = port or (443 if u.scheme == "https" else 80)
        #: ``host:port`` for messages.
        self.where = f"{self._host}:{self._port}"
        self._ssl = (ssl_context or ssl.create_default_context()) if u.scheme == "https" else None
        self._connect_timeout = connect_timeout
        host = u.netloc.rpartition("@")[2]  # never send user:password@ in Host
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        lines = [f"Host: {host}", f"User-Agent: benchop/{__version__}"]
        for k, v in headers.items():
            if any(c in k or c in v for c in "\r\n\x00"):  # would split the request
                raise ValueError(f"header {k!r}: the name or value holds CR, LF or NUL")
            lines.append(f"{k}: {v}")
        self._lines = lines
        self._head = self._request_head("POST", target, lines)
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        #: Called before each read of any connection is handled (e.g. ``OpenLoop.poll``).
        self.before_read: Callable[[], None] | None = None
        #: Connects attempted and failed (requests, checks), for the worker's counters.
        self.attempts = 0
        self.failures = 0
        self._streak = 0  # rounds of failed connects in a row
        self._next_ns = 0  # while failing: no connect before this perf_counter_ns
        self._probe: asyncio.Future[bool | None] | None = None  # the one connect while failing
        self._last_error: ConnectError | None = None

    @staticmethod
    def _request_head(method: str, target: str, lines: list[str]) -> bytes:
        head = f"{method} {target} HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\nContent-Length: "
        return head.encode("latin-1")

    def head_for(self, method: str, target: str, *, accept: str = "application/json") -> bytes:
        """The start of another request to this host (:meth:`request`'s ``head``): same headers,
        ``Accept`` replaced."""
        lines = [x for x in self._lines if not x.lower().startswith("accept:")]
        return self._request_head(method, target, [*lines, f"Accept: {accept}"])

    async def request(
        self,
        body: bytes,
        handler: Handler,
        trigger: SendTrigger | None = None,
        *,
        head: bytes | None = None,
        extra: bytes = b"",
    ) -> None:
        """POST ``body`` and feed the response to ``handler`` until it ends or is abandoned.
        ``extra``: header lines of this request alone (each ending in CRLF).

        With a ``trigger``, a connection is reserved now (an idle one, or a new one) and the
        request is written when the trigger fires, by the firer. A trigger that fired while
        the connection was still being made counts the rest of the connect in the request's
        time (``trigger.sent_ns`` is not moved), as a request without a trigger does. A
        connect that fails is raised at the send time. Raises :class:`ConnectError`,
        :class:`Disconnected`, :class:`BadResponse`, or :class:`NotSent` when the trigger
        was cancelled before it fired.
        """
        idle = self._idle
        conn = idle.pop() if idle else None
        while conn is not None and conn.lost:  # closed by the server while idle
            conn = idle.pop() if idle else None
        data = b"".join((head or self._head, b"%d\r\n" % len(body), extra, b"\r\n", body))
        if conn is None:  # with a trigger: connect ahead of the send time
            started = _perf_ns()
            had_fired = trigger is not None and _has_fired(trigger)
            try:
                conn = await self._connect()
            except ConnectError:
                if trigger is not None and not await trigger.wait():  # fails at its send time
                    raise NotSent from None
                raise
            if trigger is not None and _has_fired(trigger):
                # due before the connection was up: the request started when its connect
                # did, or when its trigger fired if later; the rest is in its TTFT
                if had_fired:
                    trigger.sent_ns = started
                trigger = None  # write now
        fut = conn.start(handler)
        if trigger is None:
            conn.transport.write(data)
        else:
            trigger.hold(partial(conn.write_request, data))
            try:
                sent = await trigger.fired
            except BaseException:
                conn.release()
                conn.close()
                raise
            if not sent:
                conn.release()
                if not conn.lost:
                    idle.append(conn)
                raise NotSent
        try:
            await fut
        except BaseException:
            conn.close()
            raise
        if conn.reusable():
            idle.append(conn)
        else:
            conn.close()

    async def connect_idle(self) -> None:
        """Open one connection and keep it for the next request (the preflight's TCP check).
        Raises :class:`ConnectError`."""
        self._idle.append(await self._connect())

    async def fetch(
        self, method: str, target: str, *, body: bytes = b"", limit: int = 65536
    ) -> tuple[int, str, bytes]:
        """One request other than the benchmark's POST (e.g. ``GET /v1/models``): its status,
        content type and the first ``limit`` bytes of its body. Raises like :meth:`request`."""
        h = _Collect(limit)
        await self.request(body, h, head=self.head_for(method, target))
        return h.status, h.content_type, bytes(h.body)

    async def _connect(self) -> _Conn:
        """A new connection, with the backoff of the module doc while connects fail."""
        while self._streak:
            probe = self._probe
            if probe is None:
                return await self._probe_connect()
            outcome = await asyncio.shield(probe)  # True: connected, False: failed, None: gone
            if outcome is False and self._last_error is not None:
                e = self._last_error
                raise ConnectError(
                    f"{e} (backing off: {self._streak} connect rounds failed in a row)",
                    errno=e.errno,
                    tls=e.tls,
                )
        return await self._attempt()

    async def _probe_connect(self) -> _Conn:
        """The one connect while failing, at its backoff time; the others wait for it."""
        fut: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._probe = fut
        outcome: bool | None = None
        try:
            delay = (self._next_ns - _perf_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            conn = await self._attempt()
            outcome = True
            return conn
        except ConnectError:
            outcome = False
            raise
        finally:
            self._probe = None
            fut.set_result(outcome)

    async def _attempt(self) -> _Conn:
        """One connect, counted; a failure moves the backoff on, a success resets it."""
        self.attempts += 1
        streak = self._streak  # connects started together (the first wave) count as one
        try:
            conn = await self._connect_once()
        except ConnectError as exc:
            self.failures += 1
            self._streak = max(self._streak, streak + 1)
            self._last_error = exc
            wait = min(BACKOFF_MIN_S * 2 ** min(self._streak - 1, 16), BACKOFF_MAX_S)
            self._next_ns = _perf_ns() + int(wait * 1e9)
            raise
        self._streak = 0
        return conn

    async def _connect_once(self) -> _Conn:
        loop = asyncio.get_running_loop()
        where = self.where
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._ssl is None and _KERNEL_TIMESTAMPS:
                    return await self._connect_timestamped(loop)
                _, conn = await loop.create_connection(
                    lambda: _Conn(self), self._host, self._port, ssl=self._ssl
                )
        except TimeoutError:
            why = f"connect to {where} timed out after {self._connect_timeout:g}s"
            raise ConnectError(why, errno=errno.ETIMEDOUT) from None
        except OSError as exc:  # refused, unreachable, DNS (gaierror), TLS (SSLError)
            raise ConnectError(
                f"cannot connect to {where}: {describe_os_error(exc)}",
                errno=None if isinstance(exc, ssl.SSLError) or exc.errno is None else exc.errno,
                tls=isinstance(exc, ssl.SSLError),
            ) from exc
        return conn

    async def _connect_timestamped(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        """A plain TCP connection read by :class:`_TimestampedTransport`."""
        infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        error: OSError | None = None
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with contextlib.suppress(OSError):  # without it, reads use their own time
                    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            conn = _Conn(self)
            conn.attach(_TimestampedTransport(loop, sock, conn))
            return conn
        raise error or OSError(f"no address for {self._host}")

    def close(self) -> None:
        """Close every connection, idle or busy."""
        for conn in list(self._all):
            conn.close()
        self._idle.clear()


class _Collect:
    """A :class:`Handler` that keeps the status, content type and start of the body."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 0
        self.content_type = ""
        self.body = bytearray()

    def on_headers(self, status: int, content_type: str) -> bool:
        self.status = status
        self.content_type = content_type
        return False

    def on_body(self, data: bytes, t_ns: int) -> bool:
        room = self.limit - len(self.body)
        if room > 0:
            self.body += data[:room]
        return False


def _has_fired(trigger: SendTrigger) -> bool:
    fired = trigger.fired
    return fired.done() and not fired.cancelled() and fired.result()


class _Conn(asyncio.Protocol):
    """One connection; llhttp calls the ``on_*`` methods from ``feed_data``."""

    __slots__ = (
        "_ctype",
        "_framed",
        "_fut",
        "_handler",
        "_interim",
        "_keep_alive",
        "_parser",
        "_parts",
        "_pool",
        "_status",
        "_stopped",
        "_t_ns",
        "complete",
        "lost",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._handler: Handler | None = None
        self._fut: asyncio.Future[None] | None = None
        self._parts: list[bytes] = []  # body pieces of the current read
        self._ctype = ""
        self._framed = False  # Content-Length or chunked: else the body ends at close
        self._interim = False  # a 1xx answer, skipped: the real one follows
        self._status = 0  # of the current request's answer; 0 before its headers
        self._stopped = False  # the handler abandoned the response
        self._keep_alive = False  # llhttp's verdict, read at the end of the message
        self._t_ns = 0
        self.complete = False  # the current response ended
        self.lost = False
        self.transport: _Transport = None  # type: ignore[assignment]  # set on connect

    def start(self, handler: Handler) -> asyncio.Future[None]:
        if isinstance(self.transport, _TimestampedTransport):
            self.transport.not_before(_perf_ns())  # no answer arrives before its request
        self._handler = handler
        self._ctype = ""
        self._stopped = self.complete = self._keep_alive = self._framed = self._interim = False
        self._status = 0
        fut = self._fut = asyncio.get_running_loop().create_future()
        return fut

    def write_request(self, data: bytes) -> None:
        """Write a request held by a trigger; a connection lost meanwhile fails the request."""
        if self.lost:
            self._end(Disconnected("connection lost before the request was written"))
            return
        try:
            self.transport.write(data)
        except Exception as exc:  # uvloop raises on a transport closed meanwhile
            self._stop(Disconnected(f"connection lost before the request was written: {exc}"))

    def release(self) -> None:
        """Undo :meth:`start`: nothing was sent; bytes that still arrive close it."""
        fut, self._fut = self._fut, None
        self._handler = None
        if fut is not None and not fut.done():
            fut.cancel()
        elif fut is not None and not fut.cancelled():
            fut.exception()  # lost while reserved: nobody will wait for it

    def reusable(self) -> bool:
        return self.complete and self._keep_alive and not self._stopped and not self.lost

    def close(self) -> None:
        self._end(Disconnected("connection closed by the client"))
        if not self.lost:
            self.lost = True
            self.transport.abort()
        self._pool._all.discard(self)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.attach(cast(asyncio.Transport, transport))

    def attach(self, transport: _Transport) -> None:
        self.transport = transport
        self._pool._all.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._pool._all.discard(self)
        if self.complete or (exc is None and self._eof_body()):
            self._end(None)
        else:
            why = f"connection lost: {exc}" if exc else "server closed the connection"
            self._end(Disconnected(why))

    def data_received(self, data: bytes) -> None:
        self.received(data, _perf_ns())

    def received(self, data: bytes, t_ns: int) -> None:
        """``data`` arrived at ``t_ns`` (``perf_counter_ns`` clock)."""
        poll = self._pool.before_read
        if poll is not None:
            poll()
        self._t_ns = t_ns
        fut = self._fut
        if fut is None or fut.done():  # bytes nobody asked for: this connection is unusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._stop(BadResponse(f"invalid HTTP response: {type(exc).__name__} {exc}"))
            return
        if self._stopped:  # by on_headers
            self._stop(None)
            return
        parts = self._parts
        if parts:
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            parts.clear()
            assert self._handler is not None
            try:
                stop = self._handler.on_body(body, self._t_ns)
            except Exception as exc:  # raised from request(), not lost in the event loop
                self._stop(exc)
                return
            if stop:
                self._stop(None)
                return
        parts.clear()
        if self.complete:
            self._end(None)

    # llhttp callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        if n == 12 and name.lower() == b"content-type":
            self._ctype = value.decode("latin-1")
        elif (n == 14 and name.lower() == b"content-length") or (
            n == 17 and name.lower() == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._framed = True

    def on_headers_complete(self) -> None:
        if self.complete:  # a second answer to one request: not the handler's, and the
            self._keep_alive = False  # connection is not reused
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # 100 Continue, 103 Early Hints: not it
            self._interim = True
            return
        self._status = status
        assert self._handler is not None
        if self._handler.on_headers(status, self._ctype):
            self._stopped = True  # the rest of this read is not delivered

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self._parts.append(body)

    def on_message_complete(self) -> None:
        if self.complete:  # the end of an answer nobody asked for
            return
        if self._interim:
            self._interim = False
            self._ctype = ""
            self._framed = False
            return
        self.complete = True
        self._keep_alive = self._parser.should_keep_alive()  # reset after this call

    # internals

    def _eof_body(self) -> bool:
        """The answer's body ends when the connection does (no length, not chunked)."""
        status = self._status
        return not self._framed and status >= 200 and status not in (204, 304)

    def _stop(self, exc: Exception | None) -> None:
        self._stopped = True
        self._end(exc)
        self.close()

    def _end(self, exc: Exception | None) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)


# Plain TCP on Linux: SO_TIMESTAMPNS makes each recvmsg carry the kernel's receive time
# (CLOCK_REALTIME) of the data it returns, so a token's time is when it reached this host,
# not when a busy event loop got round to it.
# Python's socket module lacks the constant: 35 is SO_TIMESTAMPNS(_OLD) in Linux's generic
# and x86 headers, whose struct timespec is two longs on these 64-bit machines.
_SO_TIMESTAMPNS = 35
_KERNEL_TIMESTAMPS = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")
_TIMESPEC = struct.Struct("@ll")
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if _KERNEL_TIMESTAMPS else 0
_READ_SIZE = 64 * 1024  # below malloc's mmap threshold: a bigger buffer costs ~15 us per read
_wall_ns = time.time_ns


class _TimestampedTransport:
    """The part of an asyncio transport :class:`_Conn` uses (``write``, ``abort``), over
    a non-blocking socket read with ``recvmsg`` when the loop says it is readable."""

    __slots__ = ("_conn", "_fd", "_last_ns", "_loop", "_out", "_sock", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, conn: _Conn) -> None:
        self._loop = loop
        self._sock = sock
        self._conn = conn
        self._fd = sock.fileno()
        self._out = bytearray()  # unsent bytes (a request larger than the socket buffer)
        self._last_ns = 0  # time given to the last read
        self.closed = False
        loop.add_reader(self._fd, self._read)

    def _read(self) -> None:
        try:
            data, anc, _, _ = self._sock.recvmsg(_READ_SIZE, _ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(exc)
            return
        if not data:
            self._close(None)
            return
        t_ns = _perf_ns()
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(payload)
                # wall clock -> perf_counter clock: never later than now, never before the
                # last read (the offset between the clocks jitters by tens of ns)
                kernel = sec * 1_000_000_000 + nsec - (_wall_ns() - _perf_ns())
                t_ns = min(t_ns, max(kernel, self._last_ns))
        self._last_ns = t_ns
        self._conn.received(data, t_ns)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._out:
            self._out += data
            return
        try:
            n = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._close(exc)
            return
        if n < len(data):
            self._out += data[n:]
            self._loop.add_writer(self._fd, self._flush)

    def _flush(self) -> None:
        try:
            n = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(exc)
            return
        del self._out[:n]
        if not self._out:
            self._loop.remove_writer(self._fd)

    def not_before(self, t_ns: int) -> None:
        """Times given to later reads are ``t_ns`` or later (a wall-clock step between a
        packet's arrival and its read must not make a latency negative)."""
        self._last_ns = max(self._last_ns, t_ns)

    def abort(self) -> None:
        self._close(None)

    def _close(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self._conn.lost = True  # at once: the pool must not hand it out before the callback
        self._loop.remove_reader(self._fd)
        if self._out:
            self._loop.remove_writer(self._fd)
        self._sock.close()
        self._loop.call_soon(self._conn.connection_lost, exc)  # as asyncio transports do
