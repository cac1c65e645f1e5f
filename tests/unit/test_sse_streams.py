"""The SSE parser against real servers' streams: byte streams recorded from llama.cpp's
Python server (tests/fixtures/streams/llamacpp/) and streams written from the documented
formats of vLLM, SGLang, TGI, TensorRT-LLM, llama.cpp's llama-server and OpenAI
(tests/fixtures/streams/documented/; README.md there says where each comes from).

Each stream is fed whole, in the reads it arrived in (recorded ones: one HTTP chunk per
read) and one byte per read; every split must give the same facts. What the client makes
of the facts (ok, truncated, malformed, the server's error) is tested in
tests/integration/test_loadgen_streams.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchop.loadgen.sse import StreamParser

STREAMS = Path(__file__).resolve().parents[1] / "fixtures" / "streams"
DOCUMENTED = STREAMS / "documented"
RECORDED = STREAMS / "llamacpp"


@dataclass(frozen=True)
class Facts:
    """What the parser concluded about one whole stream."""

    tokens: int  # chunks with content
    usage: tuple[int | None, int | None] = (None, None)  # (prompt, completion)
    done: bool = True
    error: str | None = None  # start of the error message sent inside the stream
    error_code: int | None = None
    malformed: bool = False
    finish: str | None = None  # the last finish_reason


def facts(p: StreamParser) -> Facts:
    return Facts(
        tokens=p.n_tokens,
        usage=(p.usage_prompt, p.usage_completion),
        done=p.done,
        error=None if p.error is None else p.error[:20],
        error_code=p.error_code,
        malformed=p.malformed is not None,
        finish=p.finish_reason,
    )


def parse(reads: list[bytes]) -> tuple[StreamParser, list[int]]:
    """Feed ``reads`` at times 0, 1, 2, ... until the parser stops; the times it stopped at."""
    p = StreamParser(wall_offset_ns=0)
    for t, data in enumerate(reads):
        if p.feed(data, t):
            return p, [t]
    return p, []


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# -- written from the servers' documented formats ------------------------------------------

EXPECTED = {
    # role-only first chunk (content ""), a finish_reason "length" chunk, usage-only last chunk
    "vllm-chat-usage.sse": Facts(5, (14, 5), finish="length"),
    "vllm-completions-usage.sse": Facts(5, (6, 5), finish="length"),
    # vLLM's current reasoning field: `reasoning` chunks are tokens, like `reasoning_content`
    "vllm-chat-reasoning.sse": Facts(6, (12, 6), finish="length"),
    # the name chunk and three argument chunks are tokens (usage counts 12: the server's
    # tokenizer cut the arguments finer than its chunks)
    "vllm-chat-tool-calls.sse": Facts(4, (180, 12), finish="tool_calls"),
    # an error then [DONE] in one read: the error is the outcome, done stays False
    "vllm-error-in-stream.sse": Facts(2, done=False, error="Internal server erro", error_code=500),
    # null-valued fields everywhere, reasoning_content, finish_reason in a separate empty chunk
    "sglang-chat-reasoning-usage.sse": Facts(5, (12, 5), finish="length"),
    "sglang-error-abort.sse": Facts(1, done=False, error="Request was aborted:", error_code=503),
    # "data:" without a space, ":" keep-alives, an empty-content last chunk (the EOS token):
    # 4 chunks with content, usage counts 5 tokens
    "tgi-chat-usage.sse": Facts(4, (14, 5), finish="stop"),
    # the error is a string, with no code
    "tgi-error-in-stream.sse": Facts(2, done=False, error="Request failed durin"),
    "openai-chat-usage.sse": Facts(6, (11, 6), finish="stop"),
    "openai-error-event.sse": Facts(1, done=False, error="The server had an er"),
    # several tokens per chunk (speculative decoding): 3 chunks, usage counts 7 tokens
    "trtllm-chat-usage.sse": Facts(3, (14, 7), finish="length"),
    "llamacpp-server-chat-usage.sse": Facts(4, (14, 4), finish="length"),
    "llamacpp-server-error.sse": Facts(1, done=False, error="Context size has bee", error_code=500),
}


def test_every_documented_stream_has_an_expectation() -> None:
    assert sorted(p.name for p in DOCUMENTED.glob("*.sse")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_documented_stream(name: str) -> None:
    data = (DOCUMENTED / name).read_bytes()
    whole, stopped = parse([data])
    assert stopped == [0]
    assert facts(whole) == EXPECTED[name]
    by_byte, stopped = parse(bytewise(data))
    assert stopped, "the parser must stop at [DONE] or at the error"
    assert facts(by_byte) == EXPECTED[name]


def test_reasoning_chunks_start_the_first_token() -> None:
    """TTFT is the first generated token, reasoning included (vLLM's `reasoning` field)."""
    data = (DOCUMENTED / "vllm-chat-reasoning.sse").read_bytes()
    events = [e + b"\n\n" for e in data.split(b"\n\n") if e]
    p, _ = parse(events)
    assert p.first_ns == 1  # event 0 is the role-only chunk, event 1 the first reasoning delta
    assert p.itl_ns == [1, 1, 1, 1, 1]


def test_tool_call_deltas_are_tokens() -> None:
    p, _ = parse([(DOCUMENTED / "vllm-chat-tool-calls.sse").read_bytes()])
    assert p.done and p.usage_completion == 12
    assert p.n_tokens == 4  # the name chunk and three argument chunks
    assert p.first_ns == 0 and p.finish_reason == "tool_calls"


CHUNK = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("event", "why"),
    [
        (b'data: {"detail":"Not Found"}\n\n', "no choices, usage or error"),
        (b'data: {"id":"x","object":"chat.completion.chunk"}\n\n', "no choices, usage or error"),
        (b'data: {"choices":[{"message":{"content":"a"}}]}\n\n', "no delta, text or finish"),
        (b'data: {"choices":[{"index":0}]}\n\n', "no delta, text or finish"),
        (b"data: [1, 2]\n\n", "undecodable chunk"),
        (b'data: {"choices": null}\n\n', "undecodable chunk"),
        (b'data: {"choices":[{"delta":{"content":"a"}}]\n\n', "undecodable"),
    ],
)
def test_a_chunk_the_parser_does_not_understand_ends_the_stream(event: bytes, why: str) -> None:
    """Never a silently wrong count: the stream stops as malformed, quoting the bytes, split
    or not, and whether [DONE] follows in the same read or not."""
    for reads in ([CHUNK + event + DONE], bytewise(CHUNK + event + DONE), [CHUNK, event, DONE]):
        p, stopped = parse(reads)
        assert stopped and p.malformed is not None and why in p.malformed, (reads, p.malformed)
        assert not p.done and p.n_tokens == 1
        assert event.strip()[6:40].decode() in p.malformed


def test_usage_without_choices_and_empty_choices_are_understood() -> None:
    """Azure's first chunk has empty choices; some servers send usage without choices."""
    p, _ = parse(
        [
            b'data: {"choices":[],"prompt_filter_results":[]}\n\n',
            CHUNK,
            b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n',
            b'data: {"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n',
            DONE,
        ]
    )
    assert p.malformed is None and p.done and p.n_tokens == 1
    assert (p.usage_prompt, p.usage_completion, p.finish_reason) == (3, 1, "stop")


# -- recorded from llama-cpp-python's server -------------------------------------------------


def http_response(name: str) -> tuple[int, dict[str, str], list[bytes]]:
    """Status, headers (last one wins) and body of a recording; a chunked body as its
    chunks (one server write each), else the body as one read."""
    head, _, rest = (RECORDED / name).read_bytes().partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    if headers.get("transfer-encoding") != "chunked":
        return int(status_line.split()[1]), headers, [rest]
    reads = []
    while True:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        reads.append(rest[:n])
        rest = rest[n + 2 :]
    return int(status_line.split()[1]), headers, reads


RECORDED_STREAMS = {
    # one chunk per token, a role-only first chunk and an empty-delta finish chunk; no usage
    # chunk although benchop's body asks for one (stream_options is not in the server's model)
    "chat-stream.http": Facts(8, finish="length"),
    "chat-stream-usage.http": Facts(8, finish="length"),
    "completions-stream.http": Facts(8, finish="length"),
    "completions-stream-usage.http": Facts(8, finish="length"),
    # any model name is served by the one model
    "error-unknown-model.http": Facts(4, finish="length"),
    # ignore_eos is not honoured: the end-of-sequence token ends the stream with no content
    "chat-stream-eos.http": Facts(0, finish="stop"),
    # interrupt_requests (the server's default): [DONE] after 5 of 200 tokens and no
    # finish_reason (the client calls it truncated)
    "chat-stream-interrupted.http": Facts(5),
    # ": ping - <time>" comments, each in its own write, while the prompt is evaluated
    "completions-stream-ping.http": Facts(4, finish="length"),
    # a prompt over the context, streaming: 200, text/event-stream, and an empty body
    "error-too-long-stream.http": Facts(0, done=False),
}


@pytest.mark.parametrize("name", sorted(RECORDED_STREAMS))
def test_recorded_stream(name: str) -> None:
    status, headers, reads = http_response(name)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    p, stopped = parse(reads)
    assert facts(p) == RECORDED_STREAMS[name]
    if p.done:
        assert stopped == [len(reads) - 1]  # [DONE] is the last write
        by_byte, _ = parse(bytewise(b"".join(reads)))
        assert facts(by_byte) == RECORDED_STREAMS[name]


def test_recorded_ping_comments_are_not_tokens() -> None:
    _, _, reads = http_response("completions-stream-ping.http")
    pings = [r for r in reads if r.startswith(b": ping - ")]
    assert len(pings) >= 2 and all(r.endswith(b"\n\n") for r in pings)
    p, _ = parse(reads)
    assert p.n_tokens == 4
    assert sum(reads.index(x) < p.first_ns for x in pings) >= 2  # pings, then the first token


def test_recorded_non_streaming_and_errors() -> None:
    """What the server answers outside a stream: usage in non-streaming bodies, a 400 for an
    over-long prompt, a 500 (not a 4xx) for a body that fails validation."""
    for name in ("chat.http", "completions.http"):
        status, _, (body,) = http_response(name)
        doc = json.loads(body)
        assert status == 200 and doc["usage"]["completion_tokens"] == 8
    status, _, (body,) = http_response("error-too-long.http")
    assert status == 400 and json.loads(body)["error"]["code"] == "context_length_exceeded"
    status, _, (body,) = http_response("error-bad-field.http")
    assert status == 500 and "int_parsing" in json.loads(body)["error"]["message"]


def test_every_recording_is_indexed() -> None:
    index = json.loads((RECORDED / "index.json").read_text())
    assert sorted(f"{k}.http" for k in index) == sorted(p.name for p in RECORDED.glob("*.http"))
