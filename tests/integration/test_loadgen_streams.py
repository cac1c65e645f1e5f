"""What the client records for each real server's response, served byte for byte on loopback.

The recorded llama.cpp responses (tests/fixtures/streams/llamacpp/*.http: status line,
headers, chunked body as the server wrote it) and the documented streams of vLLM, SGLang, TGI,
TensorRT-LLM, llama.cpp's llama-server and OpenAI (documented/*.sse, sent as one chunked 200
text/event-stream body) go through :class:`StreamClient` like any answer: each request ends in
one record whose outcome, tokens and finish_reason are checked here. (The parser's facts for
the same bytes, split every way: tests/unit/test_sse_streams.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchop.loadgen.client import NO_CONTENT, Ident, StreamClient, Target
from benchop.loadgen.records import RequestRecord
from benchop.loadgen.request import RequestFormat

pytestmark = pytest.mark.timeout(30)

STREAMS = Path(__file__).resolve().parents[1] / "fixtures" / "streams"


class Replay:
    """Answers every request on a connection with ``response`` (raw bytes), then closes."""

    def __init__(self) -> None:
        self.response = b""
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Replay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            self.requests.append(head + await r.readexactly(length))
            w.write(self.response)
            await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()


@pytest.fixture
async def replay() -> AsyncIterator[Replay]:
    async with Replay() as server:
        yield server


def sse_response(body: bytes) -> bytes:
    """A 200 text/event-stream answer with ``body`` as one chunk, then the last chunk."""
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
        b"connection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )


async def send(server: Replay, response: bytes, *, stream: bool = True) -> RequestRecord:
    server.response = response
    records: list[RequestRecord] = []
    target = Target(f"http://127.0.0.1:{server.port}/v1", "gemma-3-270m")
    fmt = RequestFormat(stream=stream)
    async with StreamClient(target, request_timeout=10, request=fmt) as client:
        await client.send(
            client.body("Name three colours.", 8),
            ident=Ident(0, 1, 0),
            input_words=3,
            sink=records.append,
        )
    (rec,) = records
    return rec


@dataclass(frozen=True)
class Want:
    outcome: str
    output_tokens: int = 0
    from_usage: bool = False
    finish: str | None = None
    chunks: int = 0
    error: str | None = None  # the start of the record's error
    status: int = 200


RECORDED = {
    # no usage chunk: tokens counted from content chunks, the prompt's words as input tokens
    "chat-stream-usage.http": Want("ok", 8, finish="length", chunks=8),
    "completions-stream-usage.http": Want("ok", 8, finish="length", chunks=8),
    "completions-stream-ping.http": Want("ok", 4, finish="length", chunks=4),
    # interrupt_requests: [DONE] without a finish_reason is a failure of its own, not an ok
    # request with fewer tokens
    "chat-stream-interrupted.http": Want(
        "truncated", 5, chunks=5, error="[DONE] after 5 content chunks but no finish_reason"
    ),
    # the end-of-sequence token first: a proper end, but nothing to time
    "chat-stream-eos.http": Want("malformed_stream", finish="stop", error=NO_CONTENT),
    # a prompt over the context, streaming: 200 and an empty body
    "error-too-long-stream.http": Want(
        "disconnected", error="stream ended without [DONE] and without any event"
    ),
    # outside a stream: the server's status and the start of its message
    "error-too-long.http": Want(
        "http_4xx", error='{"error":{"message":"This model\'s maximum context length', status=400
    ),
    "error-bad-field.http": Want("http_5xx", error='{"error":{"message":"1 validation', status=500),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
async def test_recorded_llamacpp_response(replay: Replay, name: str) -> None:
    rec = await send(replay, (STREAMS / "llamacpp" / name).read_bytes())
    want = RECORDED[name]
    got = Want(
        rec.outcome,
        rec.output_tokens,
        rec.tokens_from_usage,
        rec.finish_reason,
        rec.chunks,
        None if want.error is None else (rec.error or "")[: len(want.error)],
        rec.status,
    )
    assert got == want, rec
    if rec.outcome == "ok":
        assert rec.input_tokens == 3  # the prompt's words: the server's count never came
        assert rec.ttft_ns is not None and len(rec.itl_ns) == rec.chunks - 1


@pytest.mark.parametrize("name", ["chat.http", "completions.http"])
async def test_recorded_non_streaming_answer(replay: Replay, name: str) -> None:
    """stream: false: TTFT is the whole answer's time, no gaps, tokens from usage."""
    rec = await send(replay, (STREAMS / "llamacpp" / name).read_bytes(), stream=False)
    assert (rec.outcome, rec.output_tokens, rec.tokens_from_usage) == ("ok", 8, True)
    assert rec.input_tokens in (13, 6) and rec.finish_reason == "length" and not rec.stream
    assert rec.ttft_ns == rec.e2e_ns and rec.itl_ns == [] and rec.chunks == 0
    assert b'"stream":false' in replay.requests[0] and b"stream_options" not in replay.requests[0]


DOCUMENTED = {
    "vllm-chat-usage.sse": Want("ok", 5, True, "length", 5),
    "vllm-completions-usage.sse": Want("ok", 5, True, "length", 5),
    "vllm-chat-reasoning.sse": Want("ok", 6, True, "length", 6),
    # tool-call argument deltas are the answer: counted, not "no content"
    "vllm-chat-tool-calls.sse": Want("ok", 12, True, "tool_calls", 4),
    "sglang-chat-reasoning-usage.sse": Want("ok", 5, True, "length", 5),
    # usage counts the EOS token that came as an empty chunk: 5 tokens, 4 chunks
    "tgi-chat-usage.sse": Want("ok", 5, True, "stop", 4),
    "openai-chat-usage.sse": Want("ok", 6, True, "stop", 6),
    # several tokens per chunk (speculative decoding): 7 tokens in 3 chunks
    "trtllm-chat-usage.sse": Want("ok", 7, True, "length", 3),
    "llamacpp-server-chat-usage.sse": Want("ok", 4, True, "length", 4),
    # an error object inside the 200 stream: a failure by its code, with the server's message
    "vllm-error-in-stream.sse": Want("http_5xx", 2, chunks=2, error="Internal server error"),
    "sglang-error-abort.sse": Want("http_5xx", 1, chunks=1, error="Request was aborted"),
    "llamacpp-server-error.sse": Want("http_5xx", 1, chunks=1, error="Context size has been"),
    "tgi-error-in-stream.sse": Want("other", 2, chunks=2, error="Request failed during"),
    "openai-error-event.sse": Want("other", 1, chunks=1, error="The server had an error"),
}


def test_every_documented_stream_is_replayed() -> None:
    assert sorted(DOCUMENTED) == sorted(p.name for p in (STREAMS / "documented").glob("*.sse"))


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
async def test_documented_stream(replay: Replay, name: str) -> None:
    rec = await send(replay, sse_response((STREAMS / "documented" / name).read_bytes()))
    want = DOCUMENTED[name]
    got = Want(
        rec.outcome,
        rec.output_tokens,
        rec.tokens_from_usage,
        rec.finish_reason,
        rec.chunks,
        None if want.error is None else (rec.error or "")[: len(want.error)],
        rec.status,
    )
    assert got == want, rec


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'data: {"detail":"Not Found"}\n\n', "unknown chunk: no choices, usage or error"),
        (b'data: {"choices":[{"message":{"content":"a"}}]}\n\n', "unknown chunk: a choice"),
        (b"data: not json\n\n", "undecodable chunk"),
    ],
)
async def test_a_chunk_the_client_does_not_understand_is_a_counted_failure(
    replay: Replay, body: bytes, why: str
) -> None:
    rec = await send(replay, sse_response(body + b"data: [DONE]\n\n"))
    assert rec.outcome == "malformed_stream" and (rec.error or "").startswith(why), rec
