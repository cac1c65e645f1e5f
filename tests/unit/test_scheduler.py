"""The run scheduler: passes when due or woken, one at a time per run, at most ``limit``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from benchop.core import backoff
from benchop.operator.scheduler import Scheduler


class Steps:
    """A step that records its passes and returns what the test scripted per key."""

    def __init__(self, plan: dict[str, list[float | None]]) -> None:
        self.plan = plan
        self.passes: list[str] = []
        self.running: set[str] = set()
        self.overlap = 0
        self.most = 0
        self.release = asyncio.Event()
        self.release.set()
        self.done = asyncio.Event()

    async def __call__(self, key: str) -> float | None:
        if key in self.running:
            self.overlap += 1
        self.running.add(key)
        self.most = max(self.most, len(self.running))
        try:
            await self.release.wait()
            self.passes.append(key)
            left = self.plan[key]
            result = left.pop(0) if left else None
            if all(not v for v in self.plan.values()):
                self.done.set()
            if isinstance(result, Exception):
                raise result
            return result
        finally:
            self.running.discard(key)


async def until(check: Callable[[], bool]) -> None:
    """Yield to the loop until ``check()`` holds (the caller's wait_for bounds it)."""
    for _ in iter(check, True):
        await asyncio.sleep(0.001)


async def running(scheduler: Scheduler, body: Callable[[], Awaitable[None]]) -> None:
    scheduler.start()
    try:
        await asyncio.wait_for(body(), 10)
    finally:
        await scheduler.close()


async def test_a_woken_run_passes_until_its_step_says_done() -> None:
    steps = Steps({"a": [0.0, 0.0, None]})
    scheduler = Scheduler(steps)

    async def body() -> None:
        scheduler.wake("a")
        await steps.done.wait()
        await until(lambda: len(scheduler) == 0)

    await running(scheduler, body)
    assert steps.passes == ["a", "a", "a"]


async def test_a_later_due_time_waits_and_an_earlier_one_wins() -> None:
    steps = Steps({"a": [None]})
    scheduler = Scheduler(steps)

    async def body() -> None:
        scheduler.after("a", 3600.0)
        await asyncio.sleep(0.05)
        assert steps.passes == []  # an hour away
        scheduler.after("a", 0.0)  # sooner: replaces it
        await steps.done.wait()

    await running(scheduler, body)
    assert steps.passes == ["a"]


async def test_a_wake_during_a_pass_is_a_pass_right_after_it_never_beside_it() -> None:
    steps = Steps({"a": [3600.0, None]})
    steps.release.clear()
    scheduler = Scheduler(steps)

    async def body() -> None:
        scheduler.wake("a")
        await until(lambda: "a" in steps.running)
        scheduler.wake("a")  # while its pass waits: queued behind it, not started beside it
        scheduler.wake("a")
        await asyncio.sleep(0.01)
        steps.release.set()
        await steps.done.wait()  # the second pass came at once, not after the hour

    await running(scheduler, body)
    assert steps.passes == ["a", "a"] and steps.overlap == 0


async def test_at_most_limit_passes_run_together_and_all_of_them_run() -> None:
    keys = [f"r{i}" for i in range(20)]
    steps = Steps({k: [None] for k in keys})
    steps.release.clear()
    scheduler = Scheduler(steps, limit=4)

    async def body() -> None:
        for k in keys:
            scheduler.wake(k)
        await until(lambda: len(steps.running) == 4)
        await asyncio.sleep(0.01)
        assert len(steps.running) == 4  # the other 16 wait their turn
        steps.release.set()
        await steps.done.wait()

    await running(scheduler, body)
    assert sorted(steps.passes) == sorted(keys) and steps.most == 4


async def test_a_failing_pass_is_retried_with_backoff_and_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[int] = []

    def no_wait(attempt: int, **_: object) -> float:
        attempts.append(attempt)
        return 0.0

    monkeypatch.setattr(backoff, "delay", no_wait)
    boom = RuntimeError("API down")
    steps = Steps({"a": [boom, boom, None], "b": [None]})  # type: ignore[list-item]
    scheduler = Scheduler(steps)

    async def body() -> None:
        scheduler.wake("a")
        scheduler.wake("b")
        await steps.done.wait()

    await running(scheduler, body)
    assert steps.passes.count("a") == 3 and steps.passes.count("b") == 1
    assert attempts == [0, 1]  # the backoff grows per failure in a row


async def test_a_forgotten_run_gets_no_more_passes() -> None:
    steps = Steps({"a": [None]})
    scheduler = Scheduler(steps)

    async def body() -> None:
        scheduler.after("a", 0.05)
        scheduler.forget("a")
        await asyncio.sleep(0.1)

    await running(scheduler, body)
    assert steps.passes == [] and len(scheduler) == 0
