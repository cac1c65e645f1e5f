"""StreamClient against the real mock server: the request timeout, cancellation, the body."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import msgspec
import pytest

from benchop.loadgen.client import Ident, StreamClient, Target
from benchop.loadgen.http import _KERNEL_TIMESTAMPS
from benchop.loadgen.records import RequestRecord
from benchop.loadgen.request import RequestFormat
from benchop.loadgen.trigger import SendTrigger
from benchop.mockserver import MockConfig, start_mock_server

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_body_template_equals_the_encoded_request(api: str) -> None:
    """The default body: streaming, usage asked for, max_tokens; no ignore_eos."""
    target = Target("http://h/v1", 'm"\\u0000', api)  # type: ignore[arg-type]
    client = StreamClient(target, request_timeout=1)
    prompt = 'say "hi"\n\u0000 é'
    body = msgspec.json.decode(client.body(prompt, 77))
    common = {
        "model": 'm"\\u0000',
        "max_tokens": 77,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    want = (
        {"messages": [{"role": "user", "content": prompt}], **common}
        if api == "chat"
        else {"prompt": prompt, **common}
    )
    assert body == want


@pytest.mark.parametrize(
    ("fmt", "want"),
    [
        # not streaming: no stream_options (vLLM, TRT-LLM refuse them without stream)
        (RequestFormat(stream=False), {"stream": False, "max_tokens": 9}),
        (RequestFormat(include_usage=False), {"stream": True, "max_tokens": 9}),
        # fixed output lengths on vLLM: ignore_eos, min_tokens = max_tokens
        (
            RequestFormat(
                output_fields=("max_tokens", "min_tokens"),
                extra_body={"ignore_eos": True, "temperature": 0, "nvext": {"a": [1, "\u0000"]}},
            ),
            {
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": 9,
                "min_tokens": 9,
                "ignore_eos": True,
                "temperature": 0,
                "nvext": {"a": [1, "\u0000"]},
            },
        ),
        (
            RequestFormat(output_fields=("max_completion_tokens",)),
            {"stream": True, "stream_options": {"include_usage": True}, "max_completion_tokens": 9},
        ),
    ],
)
def test_body_in_the_requested_format(fmt: RequestFormat, want: dict[str, object]) -> None:
    """The request's format around the workload's prompt and output length, for one prompt and
    for a multi-turn conversation's messages alike."""
    client = StreamClient(Target("http://h/v1", "m"), request_timeout=1, request=fmt)
    prompt = "a \u0000 -7340033 b"
    body = msgspec.json.decode(client.body(prompt, 9))
    assert body == {"model": "m", "messages": [{"role": "user", "content": prompt}], **want}
    assert list(body)[:2] == ["model", "messages"]
    turns = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": '"\u0000" -7340032'},
        {"role": "user", "content": "and?"},
    ]
    body = msgspec.json.decode(client.body_messages(turns, 9))
    assert body == {"model": "m", "messages": turns, **want}
    assert list(body)[:2] == ["model", "messages"]


def test_messages_need_the_chat_api() -> None:
    client = StreamClient(Target("http://h/v1", "m", "completions"), request_timeout=1)
    with pytest.raises(ValueError, match="chat API"):
        client.body_messages([{"role": "user", "content": "a"}], 4)


async def test_slow_response_times_out_and_the_client_stays_usable() -> None:
    async with await start_mock_server(MockConfig(ttft=1.5, itl=0.0)) as slow:
        records: list[RequestRecord] = []
        async with StreamClient(Target(slow.url, "m"), request_timeout=0.3) as client:
            body = client.body("a b", 4)
            t = asyncio.get_running_loop().time()
            await client.send(body, ident=Ident(0, 1, 0), input_words=2, sink=records.append)
            took = asyncio.get_running_loop().time() - t
            assert client.in_flight == 0
        assert [r.outcome for r in records] == ["timeout"]
        assert 0.3 <= took < 2.0 and 0.3e9 <= records[0].e2e_ns < 2.0e9
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_cancelled_request_is_recorded_and_the_cancel_propagates() -> None:
    async with (
        await start_mock_server(MockConfig(ttft=1.5, itl=0.0)) as slow,
        StreamClient(Target(slow.url, "m"), request_timeout=30) as client,
    ):
        records: list[RequestRecord] = []
        body = client.body("a b", 4)
        task = asyncio.create_task(
            client.send(body, ident=Ident(0, 1, 0), input_words=2, sink=records.append)
        )
        deadline = asyncio.get_running_loop().time() + 5
        while slow.stats["requests"] == 0:  # wait until the request reached the server
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [r.outcome for r in records] == ["cancelled"] and client.in_flight == 0


async def test_ok_request_counts_every_token() -> None:
    async with (
        await start_mock_server(MockConfig(ttft=0.0, itl=0.0)) as fast,
        StreamClient(Target(fast.url, "m"), request_timeout=10) as client,
    ):
        records: list[RequestRecord] = []
        for i in range(3):
            await client.send(
                client.body("a b c", 50), ident=Ident(0, 1, i), input_words=3, sink=records.append
            )
        assert [(r.outcome, r.output_tokens, len(r.itl_ns)) for r in records] == [
            ("ok", 50, 49)
        ] * 3
        assert client.chunks == 150


@pytest.mark.skipif(not _KERNEL_TIMESTAMPS, reason="kernel receive times: Linux x86_64/aarch64")
async def test_times_are_the_arrival_times_even_when_the_loop_is_late() -> None:
    """A server thread sends a whole stream while the client's event loop is blocked for
    0.3 s: TTFT, the gaps and the end-to-end latency are those of the arrival (the stream
    took ~40 ms), not of the moment the loop got to the bytes."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    loop = asyncio.get_running_loop()
    chunk = b'data: {"choices":[{"delta":{"content":"t"}}]}\n\n'
    last = b'data: {"choices":[{"delta":{"content":"t"},"finish_reason":"length"}]}\n\n'

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                data += conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            conn.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
            loop.call_soon_threadsafe(time.sleep, 0.3)  # the loop is late from here on
            for c in (chunk, chunk, chunk, last):
                time.sleep(0.01)
                conn.sendall(b"%x\r\n%s\r\n" % (len(c), c))
            done = b"data: [DONE]\n\n"
            conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
            conn.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    records: list[RequestRecord] = []
    try:
        target = Target(f"http://127.0.0.1:{port}/v1", "m")
        async with StreamClient(target, request_timeout=10) as c:
            await c.send(c.body("a", 4), ident=Ident(0, 1, 0), input_words=1, sink=records.append)
    finally:
        srv.close()
        thread.join(5)
    [rec] = records
    assert rec.outcome == "ok" and rec.output_tokens == 4
    assert rec.ttft_ns is not None and rec.ttft_ns < 200_000_000
    assert rec.e2e_ns < 200_000_000, rec.e2e_ns  # ~40 ms of stream, not the loop's 0.3 s
    assert len(rec.itl_ns) == 3 and all(g < 100_000_000 for g in rec.itl_ns), rec.itl_ns


# --- open-loop triggers -------------------------------------------------------------------------


async def _triggered(
    client: StreamClient, trigger: SendTrigger, records: list[RequestRecord]
) -> asyncio.Task[None]:
    task = asyncio.create_task(
        client.send(
            client.body("a b", 4),
            ident=Ident(0, 1, 7),
            input_words=2,
            sink=records.append,
            trigger=trigger,
        )
    )
    await asyncio.sleep(0.05)  # started: holds its write at the trigger
    return task


async def test_a_triggered_request_is_timed_from_its_send_not_from_its_task() -> None:
    async with (
        await start_mock_server(MockConfig(ttft=0.0, itl=0.0)) as fast,
        StreamClient(Target(fast.url, "m"), request_timeout=0.2) as client,
    ):
        records: list[RequestRecord] = []
        await client.send(
            client.body("a", 1), ident=Ident(0, 1, 0), input_words=1, sink=records.append
        )
        trigger = SendTrigger(asyncio.get_running_loop(), time.perf_counter_ns() - 1_000_000)
        trigger.delayed = True
        task = await _triggered(client, trigger, records)
        await asyncio.sleep(0.3)  # held longer than the request timeout: not a timeout
        assert fast.stats["requests"] == 1 and len(records) == 1
        wall = time.time_ns()
        trigger.fire()
        await asyncio.wait_for(task, 5)
        rec = records[1]
        assert rec.outcome == "ok" and rec.delayed
        assert rec.send_lag_ns == trigger.sent_ns - trigger.scheduled_ns >= 1_000_000
        assert abs(rec.sent_ns - wall) < 20_000_000  # the send's wall time, not the task's
        assert rec.e2e_ns < 300_000_000  # not counted from the task's start
        assert client.in_flight == 0


@pytest.mark.parametrize("how", ["trigger cancelled", "task cancelled"])
async def test_a_request_stopped_before_its_send_leaves_no_record(how: str) -> None:
    """Its trigger was cancelled before it fired (the phase stopped first): it returns quietly; its
    task cancelled before the send: the cancel propagates. Neither is a request."""
    async with (
        await start_mock_server(MockConfig(ttft=0.0, itl=0.0)) as fast,
        StreamClient(Target(fast.url, "m"), request_timeout=5) as client,
    ):
        records: list[RequestRecord] = []
        task = await _triggered(client, SendTrigger(asyncio.get_running_loop(), 0), records)
        assert client.in_flight == 1
        if how == "trigger cancelled":
            (call,) = client._calls
            assert call.trigger is not None
            call.trigger.cancel()
            await asyncio.wait_for(task, 5)
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert records == [] and client.in_flight == 0 and not client._calls
        assert fast.stats["requests"] == 0
