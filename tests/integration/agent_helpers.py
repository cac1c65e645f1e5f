"""Helpers of the agent's integration tests: HTTP GET, metric parsing, deadline waits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


def families(text: str) -> dict[str, tuple[str, list[Sample]]]:
    """Parsed exposition: family name -> (type, samples)."""
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


async def metric(url: str, name: str) -> float:
    """The single value of an unlabelled family on ``url``/metrics."""
    _, text = await get(url + "/metrics")
    (row,) = families(text)[name][1]
    return row.value


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, deadline_s: float = 10.0
) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        if await check():
            return
        if loop.time() > end:
            raise AssertionError(f"not within {deadline_s} s: {what}")
        await asyncio.sleep(0.02)
