"""The mock OpenAI-compatible server over real HTTP on loopback."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from benchop import mockserver
from benchop.mockserver import (
    Fault,
    MockConfig,
    MockServer,
    plan_request,
    run_in_thread,
    spawn_mock_server_process,
    start_mock_server,
)

FAST = MockConfig(ttft=0.0, itl=0.0, output_tokens=8)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "one two  three\nfour"}]}
COMPLETION = {"model": "m", "prompt": "one two three four five"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def serve(config: MockConfig) -> MockServer:
    return await start_mock_server(config)


async def read_events(resp: aiohttp.ClientResponse) -> list[bytes]:
    """The payloads of a complete SSE body, in order."""
    body = await resp.read()
    assert body.endswith(b"\n\n")
    events = body[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") for e in events)
    return [e[len(b"data: ") :] for e in events]


async def post(
    session: aiohttp.ClientSession, url: str, payload: dict[str, Any]
) -> tuple[int, bytes]:
    async with session.post(url, json=payload) as r:
        return r.status, await r.read()


async def test_models_and_health(session: aiohttp.ClientSession) -> None:
    async with await serve(MockConfig(model="llama")) as server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", server.url)
        async with session.get(f"{server.url}/models") as r:
            assert r.status == 200
            data = await r.json()
        assert data["object"] == "list"
        assert [m["id"] for m in data["data"]] == ["llama"]
        assert data["data"][0]["object"] == "model"
        async with session.get(server.url.removesuffix("/v1") + "/healthz") as r:
            assert r.status == 200
        assert server.stats["models"] == 1


async def test_streaming_chat_shape_and_usage(session: aiohttp.ClientSession) -> None:
    payload = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 5}
    async with await serve(FAST) as server:
        before = time.time_ns()
        async with session.post(f"{server.url}/chat/completions", json=payload) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = await read_events(r)
        after = time.time_ns()
        assert events[-1] == b"[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        tokens, usage = chunks[:-1], chunks[-1]
        assert len(tokens) == 5
        for i, c in enumerate(tokens):
            assert c["object"] == "chat.completion.chunk"
            assert c["model"] == "m"
            assert c["id"] == tokens[0]["id"] and c["id"].startswith("chatcmpl-")
            assert isinstance(c["created"], int)
            (choice,) = c["choices"]
            assert choice["index"] == 0
            assert choice["delta"]["content"] == f" tok{i}"
            assert choice["finish_reason"] == ("length" if i == 4 else None)
            assert before <= c["benchop_sent_ns"] <= after
        assert tokens[0]["choices"][0]["delta"]["role"] == "assistant"
        assert usage["choices"] == []
        assert usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
        assert server.stats["ok"] == 1 and server.stats["tokens"] == 5


async def test_streaming_completions_shape(session: aiohttp.ClientSession) -> None:
    payload = {**COMPLETION, "stream": True}
    async with (
        await serve(FAST) as server,
        session.post(f"{server.url}/completions", json=payload) as r,
    ):
        events = await read_events(r)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == FAST.output_tokens  # no usage chunk unless asked for
    for i, c in enumerate(chunks):
        assert c["object"] == "text_completion"
        assert c["id"].startswith("cmpl-")
        assert c["choices"][0]["text"] == f" tok{i}"
        assert "usage" not in c
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_streaming_completions_usage_counts_token_ids(
    session: aiohttp.ClientSession,
) -> None:
    payload = {
        "prompt": [[1, 2, 3], "four five"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 2,
    }
    async with (
        await serve(FAST) as server,
        session.post(f"{server.url}/completions", json=payload) as r,
    ):
        events = await read_events(r)
    usage = json.loads(events[-2])
    assert usage["object"] == "text_completion" and usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


async def test_non_streaming(session: aiohttp.ClientSession) -> None:
    async with await serve(FAST) as server:
        async with session.post(
            f"{server.url}/chat/completions", json={**CHAT, "max_tokens": 3}
        ) as r:
            assert r.status == 200
            chat = await r.json()
        async with session.post(f"{server.url}/completions", json=COMPLETION) as r:
            comp = await r.json()
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": " tok0 tok1 tok2"}
    assert chat["choices"][0]["finish_reason"] == "length"
    assert chat["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert comp["object"] == "text_completion"
    assert len(comp["choices"][0]["text"].split()) == FAST.output_tokens
    assert comp["usage"]["prompt_tokens"] == 5


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, 8),
        ({"max_tokens": 3}, 3),
        ({"max_completion_tokens": 11, "max_tokens": 3}, 11),
        ({"max_tokens": 20, "ignore_eos": True}, 20),
    ],
)
async def test_output_length(
    session: aiohttp.ClientSession, extra: dict[str, Any], expected: int
) -> None:
    async with await serve(FAST) as server:
        payload = {**CHAT, "stream": True, **extra}
        async with session.post(f"{server.url}/chat/completions", json=payload) as r:
            events = await read_events(r)
    assert len(events) - 1 == expected


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", b"{not json"),
        ("/chat/completions", b'{"model": "m"}'),
        ("/chat/completions", b'{"messages": "hi"}'),
        ("/completions", b'{"model": "m"}'),
        ("/completions", b'{"prompt": "x", "max_tokens": 0}'),
    ],
)
async def test_bad_requests(session: aiohttp.ClientSession, path: str, body: bytes) -> None:
    async with await serve(FAST) as server:
        async with session.post(f"{server.url}{path}", data=body) as r:
            assert r.status == 400
            err = await r.json()
        assert err["error"]["type"] == "invalid_request_error"
        assert server.stats["bad_requests"] == 1


async def test_timing_roughly_as_configured(session: aiohttp.ClientSession) -> None:
    config = MockConfig(ttft=0.2, itl=0.05)
    payload = {**CHAT, "stream": True, "max_tokens": 5}
    arrivals: list[float] = []
    async with await serve(config) as server:
        t0 = time.perf_counter()
        async with session.post(f"{server.url}/chat/completions", json=payload) as r:
            while (event := await r.content.readuntil(b"\n\n")) != b"data: [DONE]\n\n":
                assert event.startswith(b"data: {")
                arrivals.append(time.perf_counter())
    assert len(arrivals) == 5
    ttft = arrivals[0] - t0
    assert 0.199 <= ttft < 1.0
    assert arrivals[-1] - t0 >= 0.2 + 4 * 0.05 - 0.001  # absolute schedule: never early
    mean_gap = (arrivals[-1] - arrivals[0]) / 4
    assert 0.02 < mean_gap < 0.3


async def test_capacity_stretches_every_delay_beyond_it(session: aiohttp.ClientSession) -> None:
    """4 streams on a server of capacity 2. The k-th arrival's TTFT (0.3 s) is stretched by
    max(1, k/2); the first two streams' inter-token delays all start while 4 are in flight (x2),
    so no stream ends before 0.3 + 4 * 0.1 s. Lower bounds from each request's send only: the
    schedule is absolute from the request's arrival, so a token is never early (beyond the
    event loop's timer resolution, 1 ms)."""
    config = MockConfig(ttft=0.3, itl=0.05, capacity=2)
    payload = {**CHAT, "stream": True, "max_tokens": 5}

    async def stream() -> tuple[float, float]:
        """(TTFT, last token) of one request, from its send."""
        arrivals = []
        sent = time.perf_counter()
        async with session.post(f"{server.url}/chat/completions", json=payload) as r:
            while await r.content.readuntil(b"\n\n") != b"data: [DONE]\n\n":
                arrivals.append(time.perf_counter())
        assert len(arrivals) == 5
        return arrivals[0] - sent, arrivals[-1] - sent

    async with await serve(config) as server:
        alone = await stream()  # 1 in flight <= capacity: full speed
        four = sorted(await asyncio.gather(*(stream() for _ in range(4))))
        assert server.stats["ok"] == 5 and server.stats["tokens"] == 25
    early = 0.002
    assert alone[0] >= 0.3 - early and alone[1] >= 0.3 + 4 * 0.05 - early
    ttfts = [t for t, _ in four]
    for got, want in zip(ttfts, [0.3, 0.3, 0.3 * 3 / 2, 0.3 * 4 / 2], strict=True):
        assert got >= want - early, ttfts
    ends = [end for _, end in four]
    assert all(end >= 0.3 + 4 * 0.05 * 4 / 2 - early for end in ends), ends  # unlimited: 0.5
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        MockConfig(capacity=-1)


@pytest.mark.parametrize(
    ("config", "status"),
    [(MockConfig(error_rate=1.0), 500), (MockConfig(rate_limit_rate=1.0), 429)],
)
async def test_error_injection(
    session: aiohttp.ClientSession, config: MockConfig, status: int
) -> None:
    async with await serve(config) as server:
        for stream in (True, False):
            code, body = await post(
                session, f"{server.url}/chat/completions", {**CHAT, "stream": stream}
            )
            assert code == status
            assert "message" in json.loads(body)["error"]
        key = "errors" if status == 500 else "rate_limited"
        assert server.stats[key] == 2 and server.stats["ok"] == 0


async def test_disconnect_truncates_stream(session: aiohttp.ClientSession) -> None:
    config = MockConfig(ttft=0.0, itl=0.001, output_tokens=10, disconnect_rate=1.0)
    async with await serve(config) as server:
        received = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.post(
                f"{server.url}/chat/completions", json={**CHAT, "stream": True}
            ) as r:
                assert r.status == 200
                async for data in r.content.iter_any():
                    received += data
        events = received.split(b"\n\n")
        assert events[-1] == b""
        assert 1 <= len(events) - 1 < 10
        assert b"[DONE]" not in received
        for e in events[:-1]:
            json.loads(e.removeprefix(b"data: "))
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(session, f"{server.url}/completions", COMPLETION)
        assert server.stats["disconnects"] == 2


async def test_malformed_chunk(session: aiohttp.ClientSession) -> None:
    config = MockConfig(ttft=0.0, itl=0.0, output_tokens=6, malformed_rate=1.0)
    async with await serve(config) as server:
        async with session.post(
            f"{server.url}/chat/completions", json={**CHAT, "stream": True}
        ) as r:
            events = await read_events(r)
        assert events[-1] == b"[DONE]"
        bad = 0
        for e in events[:-1]:
            try:
                json.loads(e)
            except json.JSONDecodeError:
                bad += 1
        assert bad == 1 and len(events) - 1 == 6
        _, body = await post(session, f"{server.url}/completions", COMPLETION)
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
        assert server.stats["malformed"] == 2


async def test_seed_makes_faults_reproducible(session: aiohttp.ClientSession) -> None:
    async def statuses(seed: int) -> list[int]:
        config = MockConfig(
            ttft=0, itl=0, output_tokens=2, error_rate=0.3, rate_limit_rate=0.3, seed=seed
        )
        async with await start_mock_server(config) as server:
            return [
                (await post(session, f"{server.url}/completions", COMPLETION))[0] for _ in range(40)
            ]

    a, b, c = await statuses(7), await statuses(7), await statuses(8)
    assert a == b
    assert a != c
    assert {200, 429, 500} <= set(a)


def test_plan_rates_and_jitter() -> None:
    config = MockConfig(ttft=0.1, itl=0.01, jitter=0.5, error_rate=0.25, seed=3)
    rng = random.Random(config.seed)
    plans = [plan_request(config, rng, 10) for _ in range(4000)]
    errors = sum(p.fault is Fault.ERROR for p in plans)
    assert 850 < errors < 1150
    ok = [p for p in plans if p.fault is Fault.NONE]
    for p in ok[:100]:
        assert len(p.offsets) == 10
        assert 0.05 <= p.offsets[0] <= 0.15
        gaps = [b - a for a, b in zip(p.offsets, p.offsets[1:], strict=False)]
        assert all(0.005 <= g <= 0.015 for g in gaps)
    assert len({p.offsets[0] for p in ok}) > 1  # jitter varies
    again = random.Random(config.seed)
    assert [plan_request(config, again, 10) for _ in range(4000)] == plans


async def test_client_going_away_is_counted_quietly(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    config = MockConfig(ttft=0.0, itl=0.02, output_tokens=100)
    caplog.set_level(logging.WARNING)
    async with await serve(config) as server:
        async with session.post(
            f"{server.url}/chat/completions", json={**CHAT, "stream": True}
        ) as r:
            await r.content.readuntil(b"\n\n")
            r.close()
        deadline = time.monotonic() + 5
        while server.stats["client_disconnects"] == 0:
            assert time.monotonic() < deadline, server.stats
            await asyncio.sleep(0.01)
        assert server.stats["ok"] == 0
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_run_in_thread() -> None:
    with run_in_thread(FAST) as server:
        with urllib.request.urlopen(f"{server.url}/models", timeout=10) as r:
            assert json.load(r)["data"][0]["id"] == FAST.model
        assert server.stats["models"] == 1


async def test_cli_prints_url_and_serves(session: aiohttp.ClientSession) -> None:
    config = MockConfig(ttft=0.0, itl=0.0, output_tokens=4, model="cli-model")
    proc, url = spawn_mock_server_process(config)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url)
        async with session.get(f"{url}/models") as r:
            assert (await r.json())["data"][0]["id"] == "cli-model"
        async with session.post(f"{url}/completions", json={**COMPLETION, "stream": True}) as r:
            events = await read_events(r)
        assert len(events) == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
    assert code == 0
    assert proc.stdout is not None
    [stats] = [line for line in proc.stdout.read().splitlines() if line.startswith("STATS ")]
    served = json.loads(stats.removeprefix("STATS "))
    assert (served["requests"], served["ok"], served["models"]) == (1, 1, 1)


def test_cli_rejects_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    mockserver.add_arguments(parser)
    assert mockserver.run(parser.parse_args(["--error-rate", "2"])) == 2
    assert "error_rate" in capsys.readouterr().err


async def test_clients_closing_before_the_response_are_counted_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    body = json.dumps({**CHAT, "stream": True}).encode()
    config = MockConfig(ttft=0.0, itl=0.0, output_tokens=4)
    async with await serve(config) as server:
        host, port = server.url.removeprefix("http://").removesuffix("/v1").split(":")
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        for _ in range(20):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(request * 5)  # pipelined: most are answered after the close
            writer.transport.abort()
        deadline = time.monotonic() + 5
        while server.stats["ok"] + server.stats["client_disconnects"] < server.stats["requests"]:
            assert time.monotonic() < deadline, server.stats
            await asyncio.sleep(0.01)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_stats_endpoint(session: aiohttp.ClientSession) -> None:
    async with await serve(FAST) as server:
        await post(session, f"{server.url}/completions", COMPLETION)
        async with session.get(server.url.removesuffix("/v1") + "/benchop/stats") as r:
            stats = await r.json()
        assert stats == server.stats
        assert set(stats) == set(mockserver.STATS_KEYS)
        assert (stats["requests"], stats["ok"], stats["tokens"]) == (1, 1, 8)


def test_plan_stall_delays_every_token_from_its_position() -> None:
    config = MockConfig(ttft=0.1, itl=0.01, stall_rate=1.0, stall=30.0)
    plan = plan_request(config, random.Random(1), 10)
    assert plan.fault is Fault.STALL and 1 <= plan.at <= 9
    normal = [0.1 + i * 0.01 for i in range(10)]
    assert plan.offsets[: plan.at] == normal[: plan.at]
    assert plan.offsets[plan.at :] == pytest.approx([t + 30.0 for t in normal[plan.at :]])


async def test_stall_stops_the_stream_midway(session: aiohttp.ClientSession) -> None:
    config = MockConfig(ttft=0.0, itl=0.0, output_tokens=6, stall_rate=1.0, stall=60.0)
    async with await serve(config) as server:
        received = b""
        async with session.post(
            f"{server.url}/chat/completions", json={**CHAT, "stream": True}
        ) as r:
            assert r.status == 200
            with pytest.raises(TimeoutError):
                while True:  # the chunks before the stall, then nothing for 60 s
                    received += await asyncio.wait_for(r.content.readuntil(b"\n\n"), 1.0)
        events = received.split(b"\n\n")[:-1]
        assert 1 <= len(events) <= 5, received
        assert b"[DONE]" not in received
        assert server.stats["stalls"] == 1


async def test_a_zero_stall_or_trickle_still_serves_the_whole_stream(
    session: aiohttp.ClientSession,
) -> None:
    for config in (
        MockConfig(ttft=0.0, itl=0.0, output_tokens=6, stall_rate=1.0, stall=0.0),
        MockConfig(ttft=0.0, itl=0.0, output_tokens=6, trickle_rate=1.0, trickle=0.0),
    ):
        async with await serve(config) as server:
            async with session.post(
                f"{server.url}/chat/completions", json={**CHAT, "stream": True}
            ) as r:
                events = await read_events(r)
            assert len(events) == 7 and events[-1] == b"[DONE]"
            _, body = await post(session, f"{server.url}/completions", COMPLETION)
            assert json.loads(body)["usage"]["completion_tokens"] == 6
            key = "stalls" if config.stall_rate else "trickles"
            assert (server.stats[key], server.stats["ok"]) == (2, 2)


async def test_trickle_sends_the_body_a_byte_at_a_time(session: aiohttp.ClientSession) -> None:
    config = MockConfig(ttft=0.0, itl=0.0, output_tokens=6, trickle_rate=1.0, trickle=60.0)
    async with await serve(config) as server:
        async with session.post(
            f"{server.url}/chat/completions", json={**CHAT, "stream": True}
        ) as r:
            assert r.status == 200  # the headers come at once, the body never within 1 s
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r.content.read(1), 1.0)
        assert server.stats["trickles"] == 1


async def test_request_ids_count_distinct_ok_responses(session: aiohttp.ClientSession) -> None:
    config = MockConfig(ttft=0.0, itl=0.0, output_tokens=3, request_ids=True)
    async with await serve(config) as server:
        for rid, stream in [("r/0/profiling/0", True), ("r/0/profiling/1", False),
                            ("r/0/profiling/0", False), (None, True)]:  # fmt: skip
            headers = {} if rid is None else {"x-benchop-request-id": rid}
            async with session.post(f"{server.url}/chat/completions", headers=headers,
                                    json={**CHAT, "stream": stream}) as r:  # fmt: skip
                assert r.status == 200
                await r.read()
        stats = server.stats
        assert (stats["ok"], stats["ok_ids"], stats["ok_repeats"]) == (4, 2, 1)
    async with await serve(FAST) as server:  # off by default: nothing kept
        rid = {"x-benchop-request-id": "r/0/profiling/0"}
        async with session.post(f"{server.url}/chat/completions", json=CHAT, headers=rid) as r:
            await r.read()
        assert (server.stats["ok"], server.stats["ok_ids"]) == (1, 0)
