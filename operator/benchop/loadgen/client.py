"""OpenAI-compatible HTTP client: one request in, one :class:`RequestRecord` out.

One :class:`~benchop.loadgen.http.Pool` of keep-alive connections (asyncio
protocols, llhttp; one connection per request in flight) per target URL serves
every request of a worker: aiohttp's per-request cost alone was the client's
whole budget, and httpx's shared pool collapses at high concurrency. With several
URLs (``target.urls``) requests go to them in turn, starting at the worker's index.
Each read of a streamed response is parsed at byte level by
:class:`~benchop.loadgen.sse.StreamParser` inside the protocol's ``data_received``,
stamped with the time of that read; a non-streaming one (``request.stream: false``) is
collected and decoded at its end by :class:`~benchop.loadgen.response.ResponseParser`.
The body, headers and TLS come from :mod:`benchop.loadgen.request`.

Every request ends in exactly one call of its ``sink`` with a record whose
``outcome`` is ``"ok"`` or a reason: ``http_4xx``, ``http_429``, ``http_5xx`` (also
for an error object inside a 200 stream, by its code), ``timeout``, ``connection`` (no
response: refused, reset before headers, or failed while connects back off),
``malformed_stream`` (not SSE or JSON, an undecodable or unknown chunk, no content, no
usage in a non-streaming answer), ``truncated`` (``[DONE]`` came but no choice ever had a
``finish_reason``: the server cut the answer short), ``disconnected`` (the stream broke or
ended without ``[DONE]``), ``cancelled`` (the worker stopped it; the sink runs and the
``CancelledError`` propagates) or ``other`` (e.g. bytes that are not an HTTP response, an
error object without a code). Errors never escape :meth:`StreamClient.send`.
With ``run``, each request carries ``x-benchop-request-id: <run>/<worker>/<phase>/<index>``
(:meth:`Ident.request_id`), which a server ignores and benchop's mock counts.

    async with StreamClient(Target(url, "m"), request_timeout=60) as client:
        await client.send(client.body("a b c", 16), ident=Ident(0, 1, 0), input_words=3,
                          sink=records.append)
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from benchop.core.names import REQUEST_ID_HEADER
from benchop.loadgen.http import BadResponse, ConnectError, Disconnected, NotSent, Pool
from benchop.loadgen.records import OK, RequestRecord
from benchop.loadgen.request import BodyTemplate, RequestFormat
from benchop.loadgen.response import ResponseParser
from benchop.loadgen.sse import StreamParser
from benchop.loadgen.trigger import SendTrigger

__all__ = ["Ident", "Sink", "StreamClient", "Target"]

log = logging.getLogger(__name__)

Sink = Callable[[RequestRecord], None]
_perf_ns = time.perf_counter_ns
_wall_ns = time.time_ns
_ERROR_CHARS = 200
_current_task = asyncio.current_task
_RID = REQUEST_ID_HEADER.encode()
NO_CONTENT = "stream had no content"
"""The error of a response that ended properly with no content (e.g. the end-of-sequence
token first): a failure in a benchmark, a live server to the preflight check."""


@dataclass(frozen=True, slots=True)
class Target:
    """The server under test: OpenAI base URL(s) (``http://host:8000/v1``) and model.

    ``urls`` (several replicas) replaces ``url`` when given; ``headers`` are sent with every
    request (after ``Authorization: Bearer <api_key>``); ``ssl_context`` is used for https.
    """

    url: str
    model: str
    api: Literal["chat", "completions"] = "chat"
    api_key: str | None = field(default=None, repr=False)
    urls: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def bases(self) -> tuple[str, ...]:
        """The base URLs requests go to, in turn."""
        return self.urls or (self.url,)

    @property
    def endpoint(self) -> str:
        """The completions endpoint for ``api`` (of the first base URL)."""
        return self.endpoint_of(self.bases[0])

    def endpoint_of(self, base: str) -> str:
        path = "/chat/completions" if self.api == "chat" else "/completions"
        return base.rstrip("/") + path


@dataclass(frozen=True, slots=True)
class Ident:
    """Who sends a request: worker index, attempt (1 + resumes) and request index."""

    worker: int
    attempt: int
    index: int

    @property
    def id(self) -> str:
        return f"w{self.worker}-a{self.attempt}-{self.index}"

    @property
    def phase(self) -> str:
        """``preflight`` (attempt < 0), ``warmup`` (attempt 0) or ``profiling``."""
        return "preflight" if self.attempt < 0 else "warmup" if self.attempt == 0 else "profiling"

    def request_id(self, run: str) -> str:
        """The ``x-benchop-request-id`` value, ``<run>/<worker>/<phase>/<index>``: without the
        attempt, so a request a resumed worker sends again (the same index) has the same one.

        >>> Ident(1, 2, 7).request_id("ns.r")
        'ns.r/1/profiling/7'
        """
        return f"{run}/{self.worker}/{self.phase}/{self.index}"


def _status_outcome(status: int) -> str:
    if status == 429:
        return "http_429"
    if 400 <= status < 500:
        return "http_4xx"
    if status >= 500:
        return "http_5xx"
    return "other"


class StreamClient:
    """Sends completions and measures them; use as an async context manager.

    ``request`` is the body's format (streaming, usage, output-length and extra fields);
    ``start`` is the first URL of the round robin (the worker index spreads workers out).
    """

    def __init__(
        self,
        target: Target,
        *,
        request_timeout: float,
        connect_timeout: float = 10.0,
        request: RequestFormat | None = None,
        start: int = 0,
        count_tokens: Callable[[str], int] | None = None,
        run: str | None = None,
    ) -> None:
        self.target = target
        fmt = self.request = request or RequestFormat()
        self._stream = fmt.stream
        # counts an answer's tokens when the server reports no usage (else: stream chunks)
        self._count_tokens = count_tokens
        self._timeout = request_timeout
        self._timeout_ns = int(request_timeout * 1e9)
        self._connect_timeout = connect_timeout
        accept = "text/event-stream" if fmt.stream else "application/json"
        headers = {"Content-Type": "application/json", "Accept": accept}
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        for name, value in target.headers.items():  # the spec's headers win, in any case
            for k in [k for k in headers if k.lower() == name.lower()]:
                del headers[k]
            headers[name] = value
        self._headers = headers
        # with ``run``, every request carries its identity (Ident.request_id), unless the
        # spec's headers set that header themselves
        self._run = run
        if run is not None and any(c in run for c in "\r\n\x00"):
            raise ValueError(f"run {run!r}: holds CR, LF or NUL")
        if any(k.lower() == REQUEST_ID_HEADER for k in headers):
            self._run = None
        self._pools: list[Pool] = []
        self._closed_attempts = (0, 0)  # (attempts, failures) of pools already closed
        self._rr = start  # the next URL of the round robin
        self._before_read: Callable[[], None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._calls: set[_Call] = set()  # in flight, with their deadlines
        self._template = BodyTemplate(target.model, target.api, fmt)
        #: Requests currently in flight.
        self.in_flight = 0
        # Receive lags (wall ns, from ``benchop_sent_ns``, one per read) of finished
        # requests, as int64 so taking them is a view, not a conversion (see take_recv_lags).
        self._recv_lags: array[int] = array("q")
        #: Stream chunks with content received by finished requests (all outcomes).
        self.chunks = 0

    @property
    def before_read(self) -> Callable[[], None] | None:
        """Called before each read of a response is handled (e.g. ``OpenLoop.poll``)."""
        return self._before_read

    @before_read.setter
    def before_read(self, hook: Callable[[], None] | None) -> None:
        self._before_read = hook
        for pool in self._pools:
            pool.before_read = hook

    @property
    def pools(self) -> list[Pool]:
        """One connection pool per base URL (``target.bases``), while open."""
        return self._pools

    @property
    def connect_attempts(self) -> int:
        """TCP connects tried so far, over every URL (requests and checks)."""
        return sum(p.attempts for p in self._pools) + self._closed_attempts[0]

    @property
    def connect_failures(self) -> int:
        return sum(p.failures for p in self._pools) + self._closed_attempts[1]

    async def __aenter__(self) -> StreamClient:
        self._pools = [
            Pool(
                self.target.endpoint_of(base),
                headers=self._headers,
                connect_timeout=self._connect_timeout,
                ssl_context=self.target.ssl_context,
            )
            for base in self.target.bases
        ]
        for pool in self._pools:
            pool.before_read = self._before_read
        self._watchdog = asyncio.create_task(self._expire())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._closed_attempts = (self.connect_attempts, self.connect_failures)
        for pool in self._pools:
            pool.close()
        self._pools = []

    def take_recv_lags(self) -> npt.NDArray[np.int64]:
        """The receive lags (ns) recorded since the last call, and start afresh."""
        lags, self._recv_lags = self._recv_lags, array("q")
        return np.frombuffer(lags, dtype=np.int64)

    def body(self, prompt: str, max_tokens: int) -> bytes:
        """The JSON request body for ``api`` in the client's format (``request``), with every
        output-length field set to ``max_tokens``; the prompt is the one user message (chat) or
        the prompt (completions). Only the prompt is encoded per call."""
        return self._template.body(prompt, max_tokens)

    def body_messages(self, messages: list[dict[str, str]], max_tokens: int) -> bytes:
        """The chat request body with these ``messages`` (``{"role", "content"}`` dicts)."""
        return self._template.body_messages(messages, max_tokens)

    async def _expire(self) -> None:
        """Cancel requests past their deadline (one timer for all, ~10 checks per timeout)."""
        period = min(max(self._timeout / 10, 0.01), 1.0)
        while True:
            await asyncio.sleep(period)
            now = _perf_ns()
            for c in [c for c in self._calls if c.deadline <= now]:
                t = c.trigger
                if t is not None and (not t.sent_ns or t.sent_ns + self._timeout_ns > now):
                    continue  # not sent yet: its time counts from its send
                self._calls.discard(c)
                c.timed_out = True
                if c.task is not None:
                    c.task.cancel()

    async def send(
        self,
        body: bytes,
        *,
        ident: Ident,
        input_words: int,
        sink: Sink,
        trigger: SendTrigger | None = None,
        endpoint: int | None = None,
        keep_text: bool = False,
    ) -> str | None:
        """Send one request and call ``sink`` once with its record; never raises
        (except ``CancelledError``, after the sink ran). It goes to the next base URL in turn,
        or to ``endpoint`` (an index of ``target.bases``). With ``keep_text``, returns the
        answer's text when the request succeeded (else None).

        With an open loop's ``trigger``, the request is sent when the trigger fires (written
        by the firer on a connection reserved ahead); ``trigger.sent_ns`` is its start, and
        the record's ``send_lag_ns`` is that time minus the trigger's scheduled time. A
        request whose trigger was cancelled before it fired was never sent: no record, and a
        cancellation before the send propagates without one.
        """
        pools = self._pools
        assert pools, "use StreamClient as an async context manager"
        if endpoint is None:
            if len(pools) == 1:
                endpoint = 0
            else:
                endpoint = self._rr % len(pools)
                self._rr += 1
        pool = pools[endpoint]
        c = _Call(self._stream)
        c.endpoint = endpoint
        c.task = task = _current_task()
        c.trigger = trigger
        c.keep_text = keep_text or self._count_tokens is not None
        self.in_flight += 1
        wall0 = _wall_ns()
        t0 = _perf_ns()
        c.deadline = t0 + self._timeout_ns
        c.wall_offset = wall0 - t0
        calls = self._calls
        calls.add(c)
        try:
            extra = b""
            if self._run is not None:
                extra = b"%s: %s\r\n" % (_RID, ident.request_id(self._run).encode())
            await pool.request(body, c, trigger, extra=extra)
            c.complete()
        except NotSent:
            calls.discard(c)
            self.in_flight -= 1
            return None
        except ConnectError as exc:
            c.fail("connection", str(exc)[:_ERROR_CHARS])
        except Disconnected as exc:
            c.fail("connection" if c.status == 0 else "disconnected", str(exc)[:_ERROR_CHARS])
        except BadResponse as exc:
            c.fail("other", str(exc)[:_ERROR_CHARS])
        except asyncio.CancelledError:
            calls.discard(c)
            if trigger is not None and not trigger.sent_ns:  # cancelled before it was sent
                self.in_flight -= 1
                raise
            if c.timed_out and task is not None and task.uncancel() == 0:
                c.fail("timeout", f"no complete response within {self._timeout:g}s")
            else:
                c.fail("cancelled", "stopped by the worker")
                self._finish(c, ident, t0, input_words, sink)
                raise
        except Exception as exc:  # a request must never crash the worker
            c.fail("other", _short(exc))
            log.debug("request %s failed", ident.id, exc_info=True)
        calls.discard(c)
        self._finish(c, ident, t0, input_words, sink)
        p = c.parser
        if keep_text and c.outcome == OK and p is not None and p.text is not None:
            return "".join(p.text)
        return None

    def _finish(self, c: _Call, ident: Ident, t0: int, input_words: int, sink: Sink) -> None:
        self.in_flight -= 1
        trigger = c.trigger
        if trigger is not None and trigger.sent_ns:
            t0 = trigger.sent_ns
        ttft = None
        itl: list[int] = []
        out_tokens = 0
        chunks = 0
        in_tokens = input_words
        from_usage = False
        finish = None
        parser = c.parser
        if parser is not None:
            if parser.first_ns >= 0:
                ttft = parser.first_ns - t0
            itl = parser.itl_ns
            out_tokens = parser.n_tokens
            finish = parser.finish_reason
            if c.stream:
                chunks = parser.n_tokens
                self.chunks += chunks
            if parser.usage_completion is not None:
                out_tokens = parser.usage_completion
                from_usage = True
            elif self._count_tokens is not None and parser.text is not None:
                out_tokens = self._count_tokens("".join(parser.text))
            if parser.usage_prompt is not None:
                in_tokens = parser.usage_prompt
            if parser.recv_lag_ns:
                self._recv_lags.extend(parser.recv_lag_ns)
        rec = RequestRecord(
            id=ident.id,
            worker=ident.worker,
            attempt=ident.attempt,
            index=ident.index,
            sent_ns=t0 + c.wall_offset,
            outcome=c.outcome,
            status=c.status,
            error=c.error,
            ttft_ns=ttft,
            itl_ns=itl,
            e2e_ns=c.t_end - t0,
            input_tokens=in_tokens,
            output_tokens=out_tokens,
            tokens_from_usage=from_usage,
            send_lag_ns=None if trigger is None else t0 - trigger.scheduled_ns,
            delayed=trigger is not None and trigger.delayed,
            finish_reason=finish,
            chunks=chunks,
            stream=c.stream,
            endpoint=c.endpoint,
        )
        try:
            sink(rec)
        except Exception:  # a failing sink must not take the worker down either
            log.exception("recording request %s failed", ident.id)


class _Call:
    """The facts of one request while it runs; the :class:`~benchop.loadgen.http.Handler`
    of its response."""

    __slots__ = (
        "deadline",
        "endpoint",
        "error",
        "error_body",
        "finished",
        "keep_text",
        "outcome",
        "parser",
        "status",
        "stream",
        "t_end",
        "task",
        "timed_out",
        "trigger",
        "wall_offset",
    )

    def __init__(self, stream: bool = True) -> None:
        self.stream = stream
        self.endpoint = 0
        self.task: asyncio.Task[Any] | None = None
        self.deadline = 0  # perf_counter_ns after which the watchdog cancels it
        self.trigger: SendTrigger | None = None  # open loop: the deadline counts from its send
        self.wall_offset = 0  # wall ns - perf_counter ns, for the receive lag
        self.timed_out = False
        self.keep_text = False  # keep the answer's text (the parser's text)
        self.status = 0  # HTTP status; 0 until headers arrived
        self.outcome = "other"
        self.error: str | None = None
        self.error_body: bytes | None = None  # start of a non-200 body
        self.parser: StreamParser | ResponseParser | None = None
        self.finished = False  # ended (outcome set): later errors do not change it
        self.t_end = 0

    def on_headers(self, status: int, content_type: str) -> bool:
        self.status = status
        if status != 200:
            self.error_body = b""
            return False
        if not self.stream:
            if content_type[:16].lower() != "application/json":
                why = f"expected application/json, got {content_type[:80]!r}"
                self.end("malformed_stream", why)
                return True
            self.parser = ResponseParser(self.wall_offset, self.keep_text)
            return False
        if content_type[:17].lower() != "text/event-stream":
            self.end("malformed_stream", f"expected text/event-stream, got {content_type[:80]!r}")
            return True
        self.parser = StreamParser(self.wall_offset, self.keep_text)
        return False

    def on_body(self, data: bytes, t_ns: int) -> bool:
        p = self.parser
        if p is None:  # a non-200 answer: keep its start for the error message
            if self.error_body is not None and len(self.error_body) < _ERROR_CHARS:
                self.error_body += data[: _ERROR_CHARS - len(self.error_body)]
            return False
        if self.finished:  # after [DONE]: read to the end, the connection is reused
            return False
        if p.feed(data, t_ns):
            self.end(*_stream_outcome(p), t_ns)  # ends when the read that ended it arrived
            return not p.done  # an error or a malformed stream: abandon it
        return False

    def complete(self) -> None:
        """The response ended (or was abandoned) without a transport error."""
        if self.finished:
            return
        p = self.parser
        if isinstance(p, ResponseParser):
            p.close()  # the whole answer is in: it ended at its last read
            self.end(*_stream_outcome(p), p.last_ns if p.last_ns >= 0 else None)
        elif p is not None:
            self.end(*_stream_outcome(p))
        elif self.error_body is not None:
            self.end(_status_outcome(self.status), self.error_body.decode("utf-8", "replace"))
        else:
            self.end("other", "no response")

    def end(self, outcome: str, error: str | None, t_ns: int | None = None) -> None:
        self.t_end = _perf_ns() if t_ns is None else t_ns
        self.outcome = outcome
        self.error = error
        self.finished = True

    def fail(self, outcome: str, error: str) -> None:
        if not self.finished:
            self.end(outcome, error)


def _stream_outcome(p: StreamParser | ResponseParser) -> tuple[str, str | None]:
    if p.malformed is not None:
        return "malformed_stream", p.malformed[:_ERROR_CHARS]
    if p.error is not None:
        code = p.error_code
        outcome = _status_outcome(code) if code is not None else "other"
        return outcome, p.error[:_ERROR_CHARS]
    if not p.done:
        if p.n_chunks == 0:
            return "disconnected", "stream ended without [DONE] and without any event"
        return "disconnected", "stream ended without [DONE]"
    if p.finish_reason is None:
        return "truncated", (
            f"[DONE] after {p.n_tokens} content chunks but no finish_reason: the server cut "
            "the answer short"
        )
    if p.n_tokens == 0:
        return "malformed_stream", NO_CONTENT
    return OK, None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:_ERROR_CHARS]
