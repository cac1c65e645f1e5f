"""StreamClient against the real mock server: the request timeout, cancellation, the body."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from benchop.loadgen.client import Ident, StreamClient, Target
from benchop.loadgen.records import RequestRecord
from benchop.mockserver import MockConfig, start_mock_server

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_body_template_equals_the_encoded_request(api: str) -> None:
    target = Target("http://h/v1", 'm"\\u0000', api)  # type: ignore[arg-type]
    client = StreamClient(target, request_timeout=1)
    prompt = 'say "hi"\n\u0000 é'
    body = msgspec.json.decode(client.body(prompt, 77))
    common = {
        "model": 'm"\\u0000',
        "max_tokens": 77,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    want = (
        {"messages": [{"role": "user", "content": prompt}], **common}
        if api == "chat"
        else {"prompt": prompt, **common}
    )
    assert body == want


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
