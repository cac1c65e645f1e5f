"""What the real server sends, as benchop's load generator depends on it (raw HTTP)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from llamaserver import MODEL_ALIAS, Server

from benchop.loadgen.client import Ident, StreamClient, Target
from benchop.loadgen.records import RequestRecord
from benchop.loadgen.sse import StreamParser

pytestmark = pytest.mark.realserver

CHAT = {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": "Name three colours."}]}
# what the load generator sent before spec.request (ignore_eos always): the server drops
# both stream_options and ignore_eos silently
BENCHOP = {"stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}


def request(server: Server, method: str, path: str, body: Any = None) -> tuple[bytes, bytes]:
    """One request on a fresh connection; (head, decoded body) of the response."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    with socket.create_connection((server.host, server.port), timeout=60) as s:
        s.sendall(head.encode() + b"\r\n" + payload)
        raw = b"".join(iter(lambda: s.recv(65536), b""))
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head_bytes.lower():
        return head_bytes, rest
    out = b""
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += rest[:n]
        rest = rest[n + 2 :]
    return head_bytes, out


def events(body: bytes) -> list[Any]:
    """The JSON payloads of the SSE body's data lines (``[DONE]`` as the string)."""
    out: list[Any] = []
    for line in body.splitlines():
        if line.startswith(b"data: "):
            data = line[6:]
            out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


def test_models_lists_the_served_model(llama_server: Server) -> None:
    head, body = request(llama_server, "GET", "/v1/models")
    assert head.startswith(b"HTTP/1.1 200")
    assert [m["id"] for m in json.loads(body)["data"]] == [MODEL_ALIAS]


def test_chat_stream_shape_and_what_it_lacks(llama_server: Server) -> None:
    """Role-only first chunk, one chunk per token, an empty-delta finish chunk, [DONE] —
    and no usage chunk although ``stream_options.include_usage`` was sent."""
    head, body = request(
        llama_server, "POST", "/v1/chat/completions", {**CHAT, **BENCHOP, "max_tokens": 6}
    )
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-type: text/event-stream" in head.lower()
    evs = events(body)
    assert evs[-1] == "[DONE]"
    chunks = evs[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert all("usage" not in c for c in chunks)  # include_usage is ignored
    p = StreamParser(wall_offset_ns=0)
    assert p.feed(body, 1) and p.done
    with_content = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert p.n_tokens == len(with_content) and p.usage_completion is None


def test_non_streaming_reports_usage(llama_server: Server) -> None:
    head, body = request(
        llama_server, "POST", "/v1/completions",
        {"model": MODEL_ALIAS, "prompt": "The sky is", "max_tokens": 5, "temperature": 0},
    )  # fmt: skip
    assert head.startswith(b"HTTP/1.1 200")
    doc = json.loads(body)
    assert doc["usage"]["completion_tokens"] <= 5 and doc["usage"]["prompt_tokens"] > 0


def test_unknown_model_is_served_anyway(llama_server: Server) -> None:
    """With one model loaded, any ``model`` name is answered by it (no 404)."""
    head, body = request(
        llama_server, "POST", "/v1/chat/completions",
        {**CHAT, "model": "no-such-model", "max_tokens": 2},
    )  # fmt: skip
    assert head.startswith(b"HTTP/1.1 200"), head + body


async def send(server: Server, api: str, prompt: str, max_tokens: int) -> RequestRecord:
    records: list[RequestRecord] = []
    target = Target(server.url, MODEL_ALIAS, api)  # type: ignore[arg-type]
    async with StreamClient(target, request_timeout=120) as client:
        await client.send(
            client.body(prompt, max_tokens), ident=Ident(0, 1, 0), input_words=3,
            sink=records.append,
        )  # fmt: skip
    (rec,) = records
    return rec


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_client_counts_chunks_as_tokens(llama_server: Server, api: str) -> None:
    rec = await send(llama_server, api, "red green blue", 6)
    assert rec.outcome == "ok" and rec.status == 200
    # no usage in the stream: chunks counted (6 unless the model ended its text first)
    assert 1 <= rec.output_tokens <= 6 and not rec.tokens_from_usage
    assert rec.input_tokens == 3  # the prompt's word count: the server's count never arrives
    assert rec.ttft_ns is not None and len(rec.itl_ns) == rec.output_tokens - 1


async def test_prompt_over_the_context_streams_an_empty_200(llama_server: Server) -> None:
    """The server answers 200 text/event-stream and closes with an empty body (the
    context-length error is raised after the headers went out): the client can only say
    the stream ended without [DONE] or any event."""
    rec = await send(llama_server, "completions", " ".join(["word"] * 2100), 4)
    assert (rec.outcome, rec.status) == ("disconnected", 200)
    assert rec.error == "stream ended without [DONE] and without any event"
