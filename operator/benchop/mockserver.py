"""Mock OpenAI-compatible model server: the default target of local runs and of every test.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``
(streaming SSE and non-streaming, OpenAI's shapes), ``GET /healthz``.

Behaviour, set by :class:`MockConfig` (also the flags of ``benchop mock-server``):

- Timing: the first token is due ``ttft`` seconds after the request body was read, each next
  one ``itl`` seconds after the previous one, every delay scaled by ``1 + jitter * U(-1, 1)``.
  Due times are absolute (``loop.time()`` targets), so event-loop overhead never accumulates;
  tokens that are already due are written together in one write (``ttft=0, itl=0`` sends the
  whole stream at once). Under uvloop, timers have 1 ms resolution.
- Capacity (``capacity`` > 0, default 0 = unlimited): a server whose compute is shared by the
  requests in flight, like a GPU whose batch is full. With ``n`` generation requests in flight,
  each delay (the TTFT and every ITL) is stretched by ``max(1, n / capacity)`` at the moment it
  starts. Up to ``capacity`` concurrent streams run at full speed; beyond, every stream slows in
  proportion, so throughput stays at ``capacity`` streams' worth and latency grows: a closed
  loop of ``c`` requests sees ``itl * c / capacity``. The knee of an SLO search is known: with
  ``slo.itlMs`` (or ``tpotMs``) between ``itl`` and ``itl * (capacity + 1) / capacity`` it is
  ``capacity``.
- Tokens: each output token is one word (``" tok0"``, ``" tok1"``, ...) and one SSE chunk,
  so 1 chunk = 1 token. Count: ``max_completion_tokens``, else ``max_tokens``, else
  ``output_tokens``; ``ignore_eos`` is accepted (the mock never stops early anyway).
  ``finish_reason`` (on the last token's chunk) is ``"length"`` when a limit was given,
  else ``"stop"``.
- Prompt tokens are counted as whitespace-separated words of the completions ``prompt`` (an
  integer in a token-id list counts as one) or of all chat message contents. The load
  generator builds prompts whose word count equals the requested token count, so
  ``usage.prompt_tokens`` echoes it. With ``tokenizer`` (a ``tokenizer.json``: what
  ``spec.workload.tokenizer`` gives the load generator), each text is counted by it instead
  (special tokens and chat template not counted), as benchop counts what it sent.
- Any ``model`` name is accepted and echoed; ``/v1/models`` lists ``config.model`` (local
  mode starts the mock with the run's model name, so the preflight check passes).
- ``required_header`` (``"name: value"``, e.g. ``"x-api-key: s3cret"``): every ``/v1``
  request without that header and value gets 401, as a gateway in front of a server would.
- Faults, drawn per request in arrival order from one ``random.Random(seed)`` per server
  (same seed and request order -> same behaviour): ``error_rate`` -> HTTP 500,
  ``rate_limit_rate`` -> HTTP 429 (500 is drawn first), ``disconnect_rate`` -> the transport
  is aborted after 1..n-1 token chunks (no ``[DONE]``; non-streaming: no response at all),
  ``malformed_rate`` -> one token chunk is sent as truncated, unparsable JSON (the stream
  then continues to ``[DONE]``; non-streaming: a truncated JSON body), ``stall_rate`` -> the
  stream stops for ``stall`` seconds after 1..n-1 token chunks, then goes on (non-streaming:
  the body is ``stall`` seconds late), ``trickle_rate`` -> a slow-loris response: every byte
  of it is written on its own, ``trickle`` seconds after the previous one.
- ``GET /benchop/stats``: the counters (``STATS_KEYS``) as JSON, so a test outside the
  process compares what the server served with what a run counted; ``benchop mock-server``
  also prints them as ``STATS {...}`` on stdout when it stops (a restarted server starts
  from zero).
- ``request_ids``: the ``ok`` responses are also counted by their ``x-benchop-request-id``
  header (every request of benchop's load generator has one, :class:`RequestIds`):
  ``ok_ids`` distinct ids, ``ok_repeats`` completions of an id already completed (a request
  a resumed worker sent again). Off by default: the set of ids grows with the requests.
  :func:`tally` compares the counters with what a client counted.
- ``api_key``: when set, a ``/v1`` request without ``Authorization: Bearer <key>`` is
  answered 401, like a missing ``required_header`` (``benchop mock-server --api-key-env
  NAME`` reads the key from the environment, never from the command line).

Non-standard field: every chunk, and a non-streaming body, carries ``"benchop_sent_ns"``,
``time.time_ns()`` when the server built it, so a client on the same host measures receive
lag as ``time.time_ns() - benchop_sent_ns`` (across hosts only with synchronised clocks).
Tokens written together share one stamp.

Example::

    server = await start_mock_server(MockConfig(ttft=0.05, itl=0.01))
    ...  # POST f"{server.url}/chat/completions"
    await server.close()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, overload

import msgspec
from aiohttp import web

from benchop.core.names import REQUEST_ID_HEADER

__all__ = [
    "STATS",
    "STATS_KEYS",
    "ChunkEncoder",
    "Fault",
    "MockConfig",
    "MockServer",
    "Plan",
    "RequestIds",
    "Tally",
    "add_arguments",
    "build_app",
    "config_args",
    "count_prompt_tokens",
    "plan_request",
    "run",
    "run_in_thread",
    "spawn_mock_server_process",
    "start_mock_server",
    "tally",
]

STATS_KEYS = (
    "requests",  # generation requests received (chat + completions)
    "chat",
    "completions",
    "models",  # GET /v1/models
    "ok",  # generation responses completed normally (including malformed ones)
    "unauthorized",  # 401: the required header or the API key was missing or wrong
    "bad_requests",  # 400
    "errors",  # injected 500
    "rate_limited",  # injected 429
    "disconnects",  # injected mid-stream disconnects
    "malformed",  # injected malformed chunks / bodies
    "stalls",  # injected stalls
    "trickles",  # injected slow-loris responses
    "client_disconnects",  # the client went away before the response was complete
    "tokens",  # output tokens written
    "ok_ids",  # with request_ids: distinct x-benchop-request-id values among the "ok"
    "ok_repeats",  # with request_ids: "ok" of a request id this process had completed before
)


@dataclass(frozen=True, slots=True)
class MockConfig:
    """How the mock server behaves; times in seconds, rates and jitter as fractions 0..1."""

    ttft: float = 0.02
    itl: float = 0.005
    jitter: float = 0.0
    output_tokens: int = 64
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    disconnect_rate: float = 0.0
    malformed_rate: float = 0.0
    stall_rate: float = 0.0
    stall: float = 30.0  # seconds a stalled response stops for
    trickle_rate: float = 0.0
    trickle: float = 0.05  # seconds between the bytes of a trickled response
    seed: int = 0
    model: str = "benchop-mock"
    required_header: str | None = None  # "name: value"
    tokenizer: str | None = None  # a tokenizer.json that counts prompt tokens (else words)
    capacity: int = 0  # streams served at full speed; 0: unlimited
    request_ids: bool = False  # count distinct request ids (ok_ids, ok_repeats); memory grows
    api_key: str | None = field(default=None, repr=False)
    """When set, a ``/v1`` request without ``Authorization: Bearer <api_key>`` gets 401."""

    def __post_init__(self) -> None:
        if self.required_header is not None and ":" not in self.required_header:
            raise ValueError("required_header must be 'name: value'")
        if self.ttft < 0 or self.itl < 0 or self.stall < 0 or self.trickle < 0:
            raise ValueError("ttft, itl, stall and trickle must be >= 0")
        if self.capacity < 0:
            raise ValueError("capacity must be >= 0 (0: unlimited)")
        if self.output_tokens < 1:
            raise ValueError("output_tokens must be >= 1")
        for name in (
            "jitter",
            "error_rate",
            "rate_limit_rate",
            "disconnect_rate",
            "malformed_rate",
            "stall_rate",
            "trickle_rate",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")


# ---------------------------------------------------------------------------------------------
# Pure core: request parsing, planning, encoding


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _Part(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class _Message(msgspec.Struct):
    role: str
    content: str | list[_Part] | None = None


class _Request(msgspec.Struct):
    """The fields of an OpenAI chat/completions request the mock reads; others are ignored."""

    model: str | None = None
    messages: list[_Message] | None = None
    prompt: str | list[Any] | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    ignore_eos: bool | None = None


_decode_request = msgspec.json.Decoder(_Request).decode


def _words(text: str) -> int:
    return len(text.split())


def count_prompt_tokens(req: _Request, count: Callable[[str], int] = _words) -> int:
    """Tokens of the prompt or of all message contents (ids count 1), each text counted by
    ``count`` (default: whitespace-separated words)."""
    n = 0
    if req.messages is not None:
        for m in req.messages:
            if isinstance(m.content, str):
                n += count(m.content)
            elif m.content is not None:
                n += sum(count(p.text) for p in m.content if p.text)
    prompt = req.prompt
    if isinstance(prompt, str):
        n += count(prompt)
    elif prompt is not None:
        for item in prompt:
            if isinstance(item, str):
                n += count(item)
            elif isinstance(item, list):
                n += len(item)
            else:
                n += 1
    return n


class Fault(enum.Enum):
    NONE = "none"
    ERROR = "error"
    RATE_LIMIT = "rate_limit"
    DISCONNECT = "disconnect"
    MALFORMED = "malformed"
    STALL = "stall"
    TRICKLE = "trickle"


class _Stretched(Sequence[float]):
    """Due offsets on a shared server (``capacity``): each delay stretched by the load at the
    moment it starts. Offset ``k`` is computed when first read — the stream reads it when
    token ``k - 1`` is written — in order, so a delay never changes once started."""

    __slots__ = ("_base", "_due", "_stretch")

    def __init__(self, base: Sequence[float], stretch: Callable[[], float]) -> None:
        self._base = base
        self._due: list[float] = []
        self._stretch = stretch

    def __len__(self) -> int:
        return len(self._base)

    @overload
    def __getitem__(self, k: int) -> float: ...
    @overload
    def __getitem__(self, k: slice) -> Sequence[float]: ...
    def __getitem__(self, k: int | slice) -> float | Sequence[float]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        base, due = self._base, self._due
        while len(due) <= k:
            i = len(due)
            step = base[i] - (base[i - 1] if i else 0.0)
            due.append((due[i - 1] if i else 0.0) + step * self._stretch())
        return due[k]


@dataclass(slots=True)
class Plan:
    """What one request will get: the fault, token count, due offsets and the fault position.

    ``offsets[i]`` is when token i is due, in seconds after the request arrived. ``at`` is the
    number of token chunks sent before a disconnect or a stall, or the index of the malformed
    chunk.
    """

    fault: Fault
    n_tokens: int
    offsets: Sequence[float]
    at: int = 0


def plan_request(config: MockConfig, rng: random.Random, n_tokens: int) -> Plan:
    """Draw one request's fate; all draws happen here, so arrival order alone decides them."""
    fault = Fault.NONE
    if config.error_rate and rng.random() < config.error_rate:
        fault = Fault.ERROR
    elif config.rate_limit_rate and rng.random() < config.rate_limit_rate:
        fault = Fault.RATE_LIMIT
    elif config.disconnect_rate and rng.random() < config.disconnect_rate:
        fault = Fault.DISCONNECT
    elif config.malformed_rate and rng.random() < config.malformed_rate:
        fault = Fault.MALFORMED
    elif config.stall_rate and rng.random() < config.stall_rate:
        fault = Fault.STALL
    elif config.trickle_rate and rng.random() < config.trickle_rate:
        fault = Fault.TRICKLE
    if fault in (Fault.ERROR, Fault.RATE_LIMIT):
        return Plan(fault, 0, [])
    at = 0
    if fault in (Fault.DISCONNECT, Fault.STALL):
        at = rng.randint(1, max(1, n_tokens - 1))
    elif fault is Fault.MALFORMED:
        at = rng.randrange(n_tokens)
    ttft, itl, jitter = config.ttft, config.itl, config.jitter
    if jitter:
        rand = rng.random
        t = ttft * (1.0 + jitter * (2.0 * rand() - 1.0))
        offsets = [t]
        for _ in range(n_tokens - 1):
            t += itl * (1.0 + jitter * (2.0 * rand() - 1.0))
            offsets.append(t)
    else:
        offsets = [ttft + i * itl for i in range(n_tokens)]
    if fault is Fault.STALL:  # every token from the at-th on is `stall` seconds later
        offsets[at:] = [t + config.stall for t in offsets[at:]]
    return Plan(fault, n_tokens, offsets, at)


_TOKENS = [b" tok%d" % i for i in range(4096)]


def _token(i: int) -> bytes:
    return _TOKENS[i] if i < len(_TOKENS) else b" tok%d" % i


DONE = b"data: [DONE]\n\n"


class ChunkEncoder:
    """Builds one request's SSE chunks from per-request byte templates (no json.dumps per chunk).

    A token chunk is ``head + token + tail + sent_ns + b"}\\n\\n"``.
    """

    __slots__ = ("_common", "_done_tail", "_first", "_head", "_tail", "_tail_last", "chat")

    def __init__(
        self, *, chat: bool, rid: int, created: int, model: str, usage: bool, finish: str
    ) -> None:
        self.chat = chat
        kind = b"chat.completion.chunk" if chat else b"text_completion"
        prefix = b"chatcmpl-" if chat else b"cmpl-"
        self._common = b'{"id":"%s%d","object":"%s","created":%d,"model":%s' % (
            prefix,
            rid,
            kind,
            created,
            json.dumps(model).encode(),
        )
        usage_null = b',"usage":null' if usage else b""
        if chat:
            self._head = b'data: %s,"choices":[{"index":0,"delta":{"content":"' % self._common
            self._first = (
                b'data: %s,"choices":[{"index":0,"delta":{"role":"assistant","content":"'
                % self._common
            )
            close = b'"},"logprobs":null,"finish_reason":'
        else:
            self._head = self._first = b'data: %s,"choices":[{"index":0,"text":"' % self._common
            close = b'","logprobs":null,"finish_reason":'
        self._tail = close + b'null}]%s,"benchop_sent_ns":' % usage_null
        self._tail_last = close + b'"%s"}]%s,"benchop_sent_ns":' % (finish.encode(), usage_null)

    def tokens(self, start: int, stop: int, n: int, sent_ns: bytes) -> list[bytes]:
        """Parts of the chunks for tokens ``start..stop-1`` of ``n``, all stamped ``sent_ns``."""
        parts: list[bytes] = []
        end = b"%s}\n\n" % sent_ns
        for i in range(start, stop):
            parts.append(self._first if i == 0 else self._head)
            parts.append(_token(i))
            parts.append(self._tail_last if i == n - 1 else self._tail)
            parts.append(end)
        return parts

    def malformed(self, i: int, n: int, sent_ns: bytes) -> bytes:
        """Token i's chunk cut in the middle of its JSON: an unparsable SSE event."""
        chunk = b"".join(self.tokens(i, i + 1, n, sent_ns))
        return chunk[: len(chunk) // 2] + b"\n\n"

    def usage(self, prompt_tokens: int, completion_tokens: int, sent_ns: bytes) -> bytes:
        """The final ``include_usage`` chunk: empty choices and the usage totals."""
        return b'data: %s,"choices":[],"usage":%s,"benchop_sent_ns":%s}\n\n' % (
            self._common,
            _usage(prompt_tokens, completion_tokens),
            sent_ns,
        )


def _usage(prompt_tokens: int, completion_tokens: int) -> bytes:
    return b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (
        prompt_tokens,
        completion_tokens,
        prompt_tokens + completion_tokens,
    )


def full_body(
    *, chat: bool, rid: int, created: int, model: str, n: int, prompt_tokens: int, finish: str
) -> bytes:
    """The non-streaming response body for ``n`` output tokens."""
    text = b"".join(_token(i) for i in range(n)).decode()
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    body = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{rid}",
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n,
            "total_tokens": prompt_tokens + n,
        },
        "benchop_sent_ns": time.time_ns(),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _error_body(message: str, type_: str, code: str | int | None) -> bytes:
    err = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return json.dumps(err, separators=(",", ":")).encode()


_ERROR_500 = _error_body("injected server error (benchop mock)", "server_error", 500)
_ERROR_429 = _error_body(
    "injected rate limit (benchop mock)", "rate_limit_error", "rate_limit_exceeded"
)
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class RequestIds:
    """The ``ok_ids`` and ``ok_repeats`` counters of ``stats``: each ``ok`` response is counted
    once per distinct request id; one without an id is not counted here.

    >>> stats = dict.fromkeys(STATS_KEYS, 0); ids = RequestIds(stats)
    >>> for rid in ("r/0/profiling/0", "r/0/profiling/1", "r/0/profiling/0", None):
    ...     ids.completed(rid)
    >>> stats["ok_ids"], stats["ok_repeats"]
    (2, 1)
    """

    __slots__ = ("_seen", "_stats")

    def __init__(self, stats: dict[str, int]) -> None:
        self._stats = stats
        self._seen: set[str] = set()

    def completed(self, rid: str | None) -> None:
        if rid is None:
            return
        if rid in self._seen:
            self._stats["ok_repeats"] += 1
        else:
            self._seen.add(rid)
            self._stats["ok_ids"] += 1


@dataclass(frozen=True, slots=True)
class Tally:
    """A client's count against the server's: ``served`` (see :func:`tally`) and ``counted``;
    ``lost`` = served - counted and ``double`` = counted - served when positive; ``resent``
    = responses completed again for a request id already completed (neither lost nor double)."""

    served: int
    counted: int
    lost: int
    double: int
    resent: int


def tally(stats: dict[str, int], counted: int, *, received: bool = False) -> Tally:
    """``counted`` (the client's requests) against ``stats`` (the mock's counters over the same
    requests, e.g. the difference of two reads; with ``request_ids``).

    ``served``: the responses completed (``ok``) less ``ok_repeats`` — the distinct requests
    completed, a request sent again counted once (with ``received``: the requests received,
    whatever their end, when every request reaches the server and is counted once).

    >>> tally({"ok": 11, "ok_repeats": 1, "requests": 12}, 10)
    Tally(served=10, counted=10, lost=0, double=0, resent=1)
    >>> tally({"ok": 10, "ok_repeats": 0}, 9).lost
    1
    """
    resent = stats.get("ok_repeats", 0)
    served = stats.get("requests", 0) if received else stats.get("ok", 0) - resent
    return Tally(served, counted, max(0, served - counted), max(0, counted - served), resent)


# ---------------------------------------------------------------------------------------------
# I/O shell: aiohttp handlers, server lifecycle

STATS = web.AppKey("benchop_mock_stats", dict)


class _Handlers:
    def __init__(self, config: MockConfig, stats: dict[str, int]) -> None:
        self.config = config
        self.stats = stats
        self.rng = random.Random(config.seed)
        self.ids = itertools.count(1)
        self.count: Callable[[str], int] = _words
        if config.tokenizer is not None:
            from benchop.loadgen.tokenizer import HfTokenizer  # the load generator's own rule

            self.count = HfTokenizer.from_file(config.tokenizer).count
        self.in_flight = 0  # generation requests past planning, not yet answered
        self.request_ids = RequestIds(stats) if config.request_ids else None
        created = int(time.time())
        self.models_body = json.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": config.model,
                        "object": "model",
                        "created": created,
                        "owned_by": "benchop",
                    }
                ],
            },
            separators=(",", ":"),
        ).encode()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        """401 when the request lacks ``required_header`` or ``Authorization: Bearer
        <api_key>`` (whichever are configured); every ``/v1`` route asks."""
        message = None
        required = self.config.required_header
        if required is not None:
            name, _, value = required.partition(":")
            if request.headers.get(name.strip()) != value.strip():
                message = f"missing or wrong {name.strip()} header"
        key = self.config.api_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            message = "invalid API key"
        if message is None:
            return None
        self.stats["unauthorized"] += 1
        body = _error_body(message, "authentication_error", 401)
        return web.Response(status=401, body=body, content_type="application/json")

    async def stats_view(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def models(self, request: web.Request) -> web.Response:
        self.stats["models"] += 1
        if (denied := self._unauthorized(request)) is not None:
            return denied
        return web.Response(body=self.models_body, content_type="application/json")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.stats["chat"] += 1
        if (denied := self._unauthorized(request)) is not None:
            return denied
        return await self._guarded(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.stats["completions"] += 1
        if (denied := self._unauthorized(request)) is not None:
            return denied
        return await self._guarded(request, chat=False)

    async def _guarded(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        """Count a client that went away (reset or closed early) instead of logging it."""
        try:
            return await self._generate(request, chat=chat)
        except ConnectionResetError:
            self.stats["client_disconnects"] += 1
            return web.Response()  # aiohttp drops a response for a closed connection

    def _bad_request(self, message: str) -> web.Response:
        self.stats["bad_requests"] += 1
        body = _error_body(message, "invalid_request_error", None)
        return web.Response(status=400, body=body, content_type="application/json")

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        stats = self.stats
        stats["requests"] += 1
        loop = asyncio.get_running_loop()
        body = await request.read()
        arrived = loop.time()
        try:
            req = _decode_request(body)
        except msgspec.DecodeError as exc:  # includes ValidationError
            return self._bad_request(f"invalid request body: {exc}")
        if chat and not req.messages:
            return self._bad_request("'messages' is required")
        if not chat and req.prompt is None:
            return self._bad_request("'prompt' is required")
        limit = req.max_completion_tokens
        if limit is None:
            limit = req.max_tokens
        if limit is not None and limit < 1:
            return self._bad_request("max_tokens must be >= 1")
        n = limit if limit is not None else self.config.output_tokens

        plan = plan_request(self.config, self.rng, n)
        if plan.fault is Fault.ERROR:
            stats["errors"] += 1
            return web.Response(status=500, body=_ERROR_500, content_type="application/json")
        if plan.fault is Fault.RATE_LIMIT:
            stats["rate_limited"] += 1
            return web.Response(
                status=429,
                body=_ERROR_429,
                content_type="application/json",
                headers={"Retry-After": "0"},
            )

        self.in_flight += 1
        try:
            return await self._respond(request, plan, req, chat=chat, limit=limit, arrived=arrived)
        finally:
            self.in_flight -= 1

    def stretch(self) -> float:
        """How much slower each delay runs now: ``max(1, in flight / capacity)``."""
        capacity = self.config.capacity
        return max(1.0, self.in_flight / capacity) if capacity else 1.0

    async def _respond(
        self,
        request: web.Request,
        plan: Plan,
        req: _Request,
        *,
        chat: bool,
        limit: int | None,
        arrived: float,
    ) -> web.StreamResponse:
        stats = self.stats
        loop = asyncio.get_running_loop()
        n = plan.n_tokens
        if self.config.capacity:
            plan.offsets = _Stretched(plan.offsets, self.stretch)
        rid = next(self.ids)
        model = req.model or self.config.model
        finish = "stop" if limit is None else "length"
        prompt_tokens = count_prompt_tokens(req, self.count)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            enc = ChunkEncoder(
                chat=chat,
                rid=rid,
                created=int(time.time()),
                model=model,
                usage=include_usage,
                finish=finish,
            )
            usage_tokens = prompt_tokens if include_usage else None
            return await self._stream(request, plan, enc, arrived, usage_tokens)

        delay = arrived + plan.offsets[n - 1] - loop.time()  # stretched by the load now
        if delay > 0:
            await asyncio.sleep(delay)
        if plan.fault is Fault.DISCONNECT:
            return self._abort(request)
        out = full_body(
            chat=chat,
            rid=rid,
            created=int(time.time()),
            model=model,
            n=n,
            prompt_tokens=prompt_tokens,
            finish=finish,
        )
        if plan.fault is Fault.MALFORMED:
            stats["malformed"] += 1
            out = out[: len(out) // 2]
        if plan.fault is Fault.STALL:
            stats["stalls"] += 1
        if plan.fault is Fault.TRICKLE:
            stats["trickles"] += 1
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await self._trickle(resp, out, eof=True)
        else:
            resp = web.Response(body=out, content_type="application/json")
        stats["tokens"] += n
        self._ok(request)
        return resp

    async def _trickle(self, resp: web.StreamResponse, data: bytes, *, eof: bool) -> None:
        """Write ``data`` one byte at a time, ``trickle`` seconds apart (a slow loris)."""
        for k in range(len(data)):
            await asyncio.sleep(self.config.trickle)
            if eof and k == len(data) - 1:
                await resp.write_eof(data[k:])
            else:
                await resp.write(data[k : k + 1])

    def _abort(self, request: web.Request) -> web.StreamResponse:
        self.stats["disconnects"] += 1
        if request.transport is not None:
            request.transport.abort()
        # The connection is gone; aiohttp drops whatever is returned for it.
        return web.Response(status=204)

    async def _stream(
        self,
        request: web.Request,
        plan: Plan,
        enc: ChunkEncoder,
        arrived: float,
        usage_prompt_tokens: int | None,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        stats = self.stats
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        n, offsets, fault = plan.n_tokens, plan.offsets, plan.fault
        if fault is Fault.STALL:
            stats["stalls"] += 1
        elif fault is Fault.TRICKLE:
            stats["trickles"] += 1
        stop_at = plan.at if fault is Fault.DISCONNECT else n
        malformed_at = plan.at if fault is Fault.MALFORMED else -1
        i = 0
        while i < stop_at:
            delay = arrived + offsets[i] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time() - arrived
            j = i + 1
            while j < stop_at and offsets[j] <= now:
                j += 1
            sent_ns = b"%d" % time.time_ns()
            if i <= malformed_at < j:
                parts = enc.tokens(i, malformed_at, n, sent_ns)
                parts.append(enc.malformed(malformed_at, n, sent_ns))
                parts += enc.tokens(malformed_at + 1, j, n, sent_ns)
                stats["malformed"] += 1
            else:
                parts = enc.tokens(i, j, n, sent_ns)
            last = j >= n and fault is not Fault.DISCONNECT
            if last:
                if usage_prompt_tokens is not None:
                    parts.append(enc.usage(usage_prompt_tokens, n, sent_ns))
                parts.append(DONE)
            if fault is Fault.TRICKLE:
                await self._trickle(resp, b"".join(parts), eof=last)
            elif last:
                await resp.write_eof(b"".join(parts))
            else:
                await resp.write(b"".join(parts))
            stats["tokens"] += j - i
            i = j
        if fault is Fault.DISCONNECT:
            return self._abort(request)
        self._ok(request)
        return resp

    def _ok(self, request: web.Request) -> None:
        self.stats["ok"] += 1
        if self.request_ids is not None:
            self.request_ids.completed(request.headers.get(REQUEST_ID_HEADER))


def build_app(config: MockConfig) -> web.Application:
    """The aiohttp application; ``app[STATS]`` counts what it served (keys: STATS_KEYS)."""
    app = web.Application()
    stats = dict.fromkeys(STATS_KEYS, 0)
    app[STATS] = stats
    h = _Handlers(config, stats)
    app.router.add_get("/healthz", h.healthz)
    app.router.add_get("/health", h.healthz)
    app.router.add_get("/benchop/stats", h.stats_view)
    app.router.add_get("/v1/models", h.models)
    app.router.add_post("/v1/chat/completions", h.chat)
    app.router.add_post("/v1/completions", h.completions)
    return app


class MockServer:
    """A running mock server: ``url`` is the OpenAI base URL (``http://host:port/v1``)."""

    def __init__(self, runner: web.AppRunner, url: str, config: MockConfig) -> None:
        self._runner = runner
        self.url = url
        self.config = config
        self.stats: dict[str, int] = runner.app[STATS]

    async def close(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> MockServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_mock_server(
    config: MockConfig, host: str = "127.0.0.1", port: int = 0
) -> MockServer:
    """Serve ``build_app(config)`` on host:port (0 = a free port) in the running loop.

    Example: ``async with await start_mock_server(MockConfig()) as server: ...``
    """
    # in-flight responses get 2 s at close (not aiohttp's 60): a stalled or trickled one would
    # hold the close for its whole stall
    runner = web.AppRunner(
        build_app(config), access_log=None, handle_signals=False, shutdown_timeout=2.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in url_host:
        url_host = f"[{url_host}]"
    return MockServer(runner, f"http://{url_host}:{bound_port}/v1", config)


@contextlib.contextmanager
def run_in_thread(config: MockConfig, host: str = "127.0.0.1") -> Iterator[MockServer]:
    """Run a mock server on its own event loop in a daemon thread, for synchronous callers.

    Example: ``with run_in_thread(MockConfig()) as server: requests.get(server.url + "/models")``
    (read ``server.stats`` only after the requests of interest finished).
    """
    loop = asyncio.new_event_loop()
    started: asyncio.Future[MockServer] = loop.create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            server = await start_mock_server(config, host)
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(server)
        await stop.wait()
        await server.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(_wait(started), loop).result(timeout=30)
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()


async def _wait(fut: asyncio.Future[MockServer]) -> MockServer:
    return await fut


def config_args(config: MockConfig) -> list[str]:
    """``benchop mock-server`` flags that reproduce ``config``."""
    args: list[str] = []
    for f in fields(config):
        if f.name == "api_key":  # never on a command line: see spawn_mock_server_process
            continue
        value = getattr(config, f.name)
        if isinstance(value, bool):  # a switch
            args += [f"--{f.name.replace('_', '-')}"] if value else []
        elif value is not None:
            args += [f"--{f.name.replace('_', '-')}", str(value)]
    return args


API_KEY_ENV = "BENCHOP_MOCK_API_KEY"


def spawn_mock_server_process(
    config: MockConfig, host: str = "127.0.0.1", timeout: float = 30.0
) -> tuple[subprocess.Popen[str], str]:
    """Start ``benchop mock-server`` as a child process on a free port; return it and its URL.

    The caller owns the process: ``proc.terminate(); proc.wait()``.
    """
    cmd = [sys.executable, "-m", "benchop", "mock-server", "--host", host, "--port", "0"]
    env = None
    if config.api_key is not None:  # through the environment, not argv (visible in ps)
        cmd += ["--api-key-env", API_KEY_ENV]
        env = {**os.environ, API_KEY_ENV: config.api_key}
    proc = subprocess.Popen(cmd + config_args(config), stdout=subprocess.PIPE, text=True, env=env)
    stdout = proc.stdout
    assert stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    line = lines[0] if lines else ""
    if not line.startswith("URL "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"mock server did not print its URL (got {line!r})")
    return proc, line.split(None, 1)[1].strip()


# ---------------------------------------------------------------------------------------------
# `benchop mock-server`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = MockConfig()
    a = parser.add_argument
    a("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    a("--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    a("--ttft", type=float, default=d.ttft, help="time to first token, s (default: %(default)s)")
    a("--itl", type=float, default=d.itl, help="inter-token latency, s (default: %(default)s)")
    a("--jitter", type=float, default=d.jitter, help="delay jitter fraction 0..1")
    a("--output-tokens", type=int, default=d.output_tokens, help="tokens when no max_tokens")
    a("--error-rate", type=float, default=d.error_rate, help="share of requests -> HTTP 500")
    a("--rate-limit-rate", type=float, default=d.rate_limit_rate, help="share -> HTTP 429")
    a("--disconnect-rate", type=float, default=d.disconnect_rate, help="share cut mid-stream")
    a("--malformed-rate", type=float, default=d.malformed_rate, help="share with a bad chunk")
    a("--stall-rate", type=float, default=d.stall_rate, help="share that stops mid-stream")
    a("--stall", type=float, default=d.stall, help="stall length, s (default: %(default)s)")
    a("--trickle-rate", type=float, default=d.trickle_rate,
      help="share sent as a slow loris, one byte at a time")  # fmt: skip
    a("--trickle", type=float, default=d.trickle,
      help="seconds between a trickled response's bytes (default: %(default)s)")  # fmt: skip
    a("--seed", type=int, default=d.seed, help="seed of the fault/jitter draws")
    a("--model", default=d.model, help="model name listed by /v1/models")
    a("--required-header", default=None, help="'name: value' every request must carry (else 401)")
    a("--tokenizer", default=None, help="tokenizer.json counting prompt tokens (default: words)")
    a("--capacity", type=int, default=d.capacity,
      help="streams at full speed; more slow all in proportion (0: unlimited)")  # fmt: skip
    a("--request-ids", action="store_true",
      help="count distinct x-benchop-request-id values of ok responses")  # fmt: skip
    a("--api-key-env", metavar="NAME",
      help="require 'Authorization: Bearer <key>', the key from this env variable")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; the first stdout line is ``URL http://host:port/v1``."""
    try:
        config = MockConfig(
            ttft=args.ttft,
            itl=args.itl,
            jitter=args.jitter,
            output_tokens=args.output_tokens,
            error_rate=args.error_rate,
            rate_limit_rate=args.rate_limit_rate,
            disconnect_rate=args.disconnect_rate,
            malformed_rate=args.malformed_rate,
            stall_rate=args.stall_rate,
            stall=args.stall,
            trickle_rate=args.trickle_rate,
            trickle=args.trickle,
            seed=args.seed,
            model=args.model,
            required_header=args.required_header,
            tokenizer=args.tokenizer,
            capacity=args.capacity,
            request_ids=args.request_ids,
            api_key=os.environ.get(args.api_key_env) if args.api_key_env else None,
        )
    except ValueError as exc:
        print(f"benchop mock-server: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        server = await start_mock_server(config, args.host, args.port)
        print(f"URL {server.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await server.close()
            # what this process served, for a caller that restarts it (counters start at 0)
            print("STATS " + json.dumps(server.stats, separators=(",", ":")), flush=True)

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())
    return 0
