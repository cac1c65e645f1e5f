"""Streaming OpenAI-compatible HTTP client: one request in, one :class:`RequestRecord` out.

One :class:`~benchop.loadgen.http.Pool` of keep-alive connections (asyncio
protocols, llhttp; one connection per request in flight) serves every request
of a worker: aiohttp's per-request cost alone was the client's whole budget,
and httpx's shared pool collapses at high concurrency. Each read of a response
is parsed at byte level by :class:`~benchop.loadgen.sse.StreamParser` inside
the protocol's ``data_received``, stamped with the time of that read.

Every request ends in exactly one call of its ``sink`` with a record whose
``outcome`` is ``"ok"`` or a reason: ``http_4xx``, ``http_429``, ``http_5xx``,
``timeout``, ``connection`` (no response: refused, reset before headers),
``malformed_stream`` (not SSE, undecodable chunk, no content), ``disconnected``
(the stream broke or ended without ``[DONE]``), ``cancelled`` (the worker
stopped it; the sink runs and the ``CancelledError`` propagates) or ``other``
(e.g. bytes that are not an HTTP response).
Errors never escape :meth:`StreamClient.send`.

    async with StreamClient(Target(url, "m"), request_timeout=60) as client:
        await client.send(client.body("a b c", 16), ident=Ident(0, 1, 0), input_words=3,
                          sink=records.append)
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from benchop.loadgen.http import BadResponse, ConnectError, Disconnected, NotSent, Pool
from benchop.loadgen.records import OK, RequestRecord
from benchop.loadgen.sse import StreamParser
from benchop.loadgen.trigger import SendTrigger

__all__ = ["Ident", "Sink", "StreamClient", "Target"]

log = logging.getLogger(__name__)

Sink = Callable[[RequestRecord], None]
_perf_ns = time.perf_counter_ns
_wall_ns = time.time_ns
_ERROR_CHARS = 200
_current_task = asyncio.current_task


@dataclass(frozen=True, slots=True)
class Target:
    """The server under test: OpenAI base URL (``http://host:8000/v1``) and model."""

    url: str
    model: str
    api: Literal["chat", "completions"] = "chat"
    api_key: str | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """The streaming endpoint for ``api``."""
        path = "/chat/completions" if self.api == "chat" else "/completions"
        return self.url.rstrip("/") + path


@dataclass(frozen=True, slots=True)
class Ident:
    """Who sends a request: worker index, attempt (1 + resumes) and request index."""

    worker: int
    attempt: int
    index: int

    @property
    def id(self) -> str:
        return f"w{self.worker}-a{self.attempt}-{self.index}"


def _status_outcome(status: int) -> str:
    if status == 429:
        return "http_429"
    if 400 <= status < 500:
        return "http_4xx"
    if status >= 500:
        return "http_5xx"
    return "other"


class StreamClient:
    """Sends streaming completions and measures them; use as an async context manager."""

    def __init__(
        self,
        target: Target,
        *,
        request_timeout: float,
        connect_timeout: float = 10.0,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        self.target = target
        # counts an answer's tokens when the server reports no usage (else: stream chunks)
        self._count_tokens = count_tokens
        self._timeout = request_timeout
        self._timeout_ns = int(request_timeout * 1e9)
        self._connect_timeout = connect_timeout
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if target.api_key:
            self._headers["Authorization"] = f"Bearer {target.api_key}"
        self._pool: Pool | None = None
        self._before_read: Callable[[], None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._calls: set[_Call] = set()  # in flight, with their deadlines
        encode = self._encode = msgspec.json.Encoder().encode
        # The body is these halves around the JSON-encoded prompt (see ``body``).
        common = {
            "model": target.model,
            "max_tokens": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
        if target.api == "chat":
            self._prompt_tpl = _template(
                encode({"messages": [{"role": "user", "content": "\x00"}], **common})
            )
            self._messages_tpl = _template(encode({"messages": "\x00", **common}))
        else:
            self._prompt_tpl = _template(encode({"prompt": "\x00", **common}))
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
        if self._pool is not None:
            self._pool.before_read = hook

    async def __aenter__(self) -> StreamClient:
        self._pool = Pool(
            self.target.endpoint, headers=self._headers, connect_timeout=self._connect_timeout
        )
        self._pool.before_read = self._before_read
        self._watchdog = asyncio.create_task(self._expire())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def take_recv_lags(self) -> npt.NDArray[np.int64]:
        """The receive lags (ns) recorded since the last call, and start afresh."""
        lags, self._recv_lags = self._recv_lags, array("q")
        return np.frombuffer(lags, dtype=np.int64)

    def body(self, prompt: str, max_tokens: int) -> bytes:
        """The JSON request body for ``api``: streaming, usage included, ``ignore_eos``; the
        prompt is the one user message (chat) or the prompt (completions).

        Only the prompt is encoded per call; the rest is a template built once.
        """
        return _fill(self._prompt_tpl, self._encode(prompt), max_tokens)

    def body_messages(self, messages: list[dict[str, str]], max_tokens: int) -> bytes:
        """The chat request body with these ``messages`` (``{"role", "content"}`` dicts)."""
        if self.target.api != "chat":
            raise ValueError("messages need the chat API")
        return _fill(self._messages_tpl, self._encode(messages), max_tokens)

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
        keep_text: bool = False,
    ) -> str | None:
        """Send one request and call ``sink`` once with its record; never raises
        (except ``CancelledError``, after the sink ran). With ``keep_text``, returns the
        answer's text when the request succeeded (else None).

        With an open loop's ``trigger``, the request is sent when the trigger fires (written
        by the firer on a connection reserved ahead); ``trigger.sent_ns`` is its start, and
        the record's ``send_lag_ns`` is that time minus the trigger's scheduled time. A
        request whose trigger was cancelled before it fired was never sent: no record, and a
        cancellation before the send propagates without one.
        """
        pool = self._pool
        assert pool is not None, "use StreamClient as an async context manager"
        c = _Call()
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
            await pool.request(body, c, trigger)
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
        in_tokens = input_words
        from_usage = False
        parser = c.parser
        if parser is not None:
            if parser.first_ns >= 0:
                ttft = parser.first_ns - t0
            itl = parser.itl_ns
            out_tokens = parser.n_tokens
            self.chunks += parser.n_tokens
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
        "error",
        "error_body",
        "finished",
        "keep_text",
        "outcome",
        "parser",
        "status",
        "t_end",
        "task",
        "timed_out",
        "trigger",
        "wall_offset",
    )

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.deadline = 0  # perf_counter_ns after which the watchdog cancels it
        self.trigger: SendTrigger | None = None  # open loop: the deadline counts from its send
        self.wall_offset = 0  # wall ns - perf_counter ns, for the receive lag
        self.timed_out = False
        self.keep_text = False  # keep the answer's text (StreamParser.text)
        self.status = 0  # HTTP status; 0 until headers arrived
        self.outcome = "other"
        self.error: str | None = None
        self.error_body: bytes | None = None  # start of a non-200 body
        self.parser: StreamParser | None = None
        self.finished = False  # ended (outcome set): later errors do not change it
        self.t_end = 0

    def on_headers(self, status: int, content_type: str) -> bool:
        self.status = status
        if status != 200:
            self.error_body = b""
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
        if self.parser is not None:
            self.end(*_stream_outcome(self.parser))
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


def _template(whole: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """A body split around its ``"\\u0000"`` placeholder and its ``max_tokens`` value:
    (head, middle, ``"max_tokens":``, tail)."""
    head, _, tail = whole.partition(b'"\\u0000"')
    a, key, b = tail.partition(b'"max_tokens":0')
    return head, a, key[:-1], b


def _fill(tpl: tuple[bytes, bytes, bytes, bytes], value: bytes, max_tokens: int) -> bytes:
    head, a, key, b = tpl
    return b"".join((head, value, a, key, b"%d" % max_tokens, b))


def _stream_outcome(p: StreamParser) -> tuple[str, str | None]:
    if p.malformed is not None:
        return "malformed_stream", p.malformed[:_ERROR_CHARS]
    if p.error is not None:
        code = p.error_code
        outcome = _status_outcome(code) if code is not None else "other"
        return outcome, p.error[:_ERROR_CHARS]
    if not p.done:
        return "disconnected", "stream ended without [DONE]"
    if p.n_tokens == 0:
        return "malformed_stream", "stream had no content"
    return OK, None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:_ERROR_CHARS]
