"""One task drives every run in progress: each run's pass runs when it is due or woken.

A run's pass is ``step(key)``; it returns the seconds until the run needs its next pass, or
None when the run is done. :meth:`Scheduler.wake` makes a pass due now (a pod or Job event, a
worker's first snapshot); a wake during the run's own pass makes another pass follow it. No
run has two passes at once, and at most ``limit`` passes run together (the rest wait their
turn in due order), so 10,000 runs due at once after a restart do not become 10,000 tasks.

One timer heap and a task per pass in flight replace a kopf daemon (a task, its stopper and a
live copy of the object's body) per run in progress: with 1,000 runs waiting for their pods
that was most of the operator's memory and a wake-up per run per check.

    scheduler = Scheduler(step, limit=64)
    scheduler.start()
    scheduler.wake("ns.run.uid")
    await scheduler.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable

from benchop.core import backoff

log = logging.getLogger(__name__)

Step = Callable[[str], Awaitable[float | None]]
LIMIT = 64
"""Passes in flight at once (each may make a few API requests)."""


class Scheduler:
    """Due times per key in a heap; :meth:`start` runs the loop that starts due passes."""

    def __init__(self, step: Step, *, limit: int = LIMIT) -> None:
        self._step = step
        self._limit = limit
        self._due: dict[str, float] = {}  # key -> loop time of its next pass
        self._heap: list[tuple[float, str]] = []  # (time, key); stale entries skipped
        self._running: set[str] = set()
        self._again: set[str] = set()  # woken during its own pass
        self._failures: dict[str, int] = {}  # passes in a row that raised, per key
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Keys with a pass due or in flight."""
        return len(self._due.keys() | self._running)

    def wake(self, key: str) -> None:
        """A pass of ``key`` now (after its pass in flight, if one is)."""
        if key in self._running:
            self._again.add(key)
        else:
            self.after(key, 0.0)

    def after(self, key: str, seconds: float) -> None:
        """A pass of ``key`` in ``seconds``, unless one is due sooner."""
        when = asyncio.get_running_loop().time() + max(seconds, 0.0)
        if key in self._due and self._due[key] <= when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, key))
        self._changed.set()

    def forget(self, key: str) -> None:
        """No more passes of ``key`` (one in flight finishes)."""
        self._due.pop(key, None)
        self._again.discard(key)
        self._failures.pop(key, None)

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="benchop-run-scheduler")

    async def close(self) -> None:
        """Stop the loop and cancel the passes in flight."""
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._changed.clear()
            now = loop.time()
            while self._heap and len(self._running) < self._limit:
                when, key = self._heap[0]
                if self._due.get(key) != when:  # rescheduled or forgotten since
                    heapq.heappop(self._heap)
                    continue
                if when > now:
                    break
                heapq.heappop(self._heap)
                del self._due[key]
                self._running.add(key)
                task = asyncio.create_task(self._pass(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            timeout = None
            if self._heap and len(self._running) < self._limit:
                timeout = max(self._heap[0][0] - now, 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    async def _pass(self, key: str) -> None:
        try:
            delay = await self._step(key)
            self._failures.pop(key, None)
        except Exception:  # a bug or an API outage: this run is retried, the others go on
            attempt = self._failures.get(key, 0)
            self._failures[key] = attempt + 1
            delay = backoff.delay(attempt)
            log.exception("run %s: pass failed; next in %.1fs", key, delay)
        finally:
            self._running.discard(key)
            self._changed.set()
        if key in self._again:
            self._again.discard(key)
            delay = 0.0
        if delay is not None:
            self.after(key, delay)
        else:
            self._failures.pop(key, None)
