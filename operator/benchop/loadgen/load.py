"""Load modes: fixed concurrency (closed loop) and request rate (open loop).

- :func:`run_closed`: ``concurrency`` tasks, each sends its next request as soon
  as its previous one finished.
- :class:`OpenLoop`: sends on an absolute schedule (``t0 + offset_k``) whatever
  the responses do, so a late send never shifts the ones after it. Offsets
  come from :func:`arrival_offsets` (constant or Poisson). The event loop's
  timers are precise to 1 ms only, so the send time itself is timed by a
  :mod:`~benchop.loadgen.timers` fine timer, armed early by the learned wake-up
  latency (:func:`learn_lead`: an integral controller on the observed lags, at
  most 0.5 ms), so lags centre on zero. Each request's task starts 10 ms ahead
  and reserves a connection; the timer's callback fires its :class:`SendTrigger`,
  which writes the request there and then. While the loop is busy, ``poll()``
  (called before each read is handled) fires a trigger whose time has come
  between two reads. The record's ``send_lag_ns`` is the actual minus the
  scheduled time (may be slightly negative).
  With a ``max_in_flight`` cap, an arrival that finds the cap reached waits
  for a slot; it is counted in ``delayed`` and its send lag is measured from
  the moment the slot freed (the cap's delay is the user's choice, not
  client lag).

Both stop admitting requests when the :class:`Budget` says so (request count,
deadline, or ``stop()``) and return once every admitted request finished. A
request is built by ``prepare()`` before its send time (prompt generation is
not send lag) and sent by ``send(prepared, trigger)`` (``trigger`` is None in the
closed loop; see :class:`SendTrigger`).

    budget = Budget(requests=100)
    await run_closed(8, budget, prepare, send)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, Literal, TypeVar

from benchop.loadgen.timers import FineTimer, fine_timer
from benchop.loadgen.trigger import SendTrigger

__all__ = [
    "AHEAD_NS",
    "LEAD_MAX_NS",
    "Budget",
    "OpenLoop",
    "SendFn",
    "arrival_offsets",
    "learn_lead",
    "run_closed",
]

T = TypeVar("T")
SendFn = Callable[[T, SendTrigger | None], Coroutine[Any, Any, None]]
"""``send(prepared, trigger)``: the open loop's :class:`SendTrigger`, None in a closed loop."""
log = logging.getLogger(__name__)
_perf_ns = time.perf_counter_ns

AHEAD_NS = 10_000_000
"""How early an open-loop arrival is reserved: its task started, a connection taken."""
LEAD_MAX_NS = 500_000
"""The most the fine timer is armed ahead of a send time (the learned wake-up latency)."""


class Budget:
    """How many more requests a phase may admit: a count, a deadline, or until ``stop()``.

    Deadlines are ``time.perf_counter_ns`` values.
    """

    def __init__(
        self,
        requests: int | None = None,
        deadline_ns: int | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.requests = requests
        self.deadline_ns = deadline_ns
        self.admitted = 0
        self.stopped = False  # stop() was called
        self.closed = False  # no more admissions (exhausted or stopped)
        self._on_close = on_close
        self._wakers: list[Callable[[], None]] = []

    def take(self, at_ns: int | None = None) -> bool:
        """Admit one request at ``at_ns`` (default now) if the budget allows it."""
        if self.closed:
            return False
        if (self.requests is not None and self.admitted >= self.requests) or (
            self.deadline_ns is not None
            and (_perf_ns() if at_ns is None else at_ns) >= self.deadline_ns
        ):
            self._close()
            return False
        self.admitted += 1
        return True

    def stop(self) -> None:
        """Admit nothing more (drain); wakes a waiting open-loop scheduler."""
        self.stopped = True
        self._close()
        for wake in self._wakers:
            wake()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._on_close is not None:
                self._on_close()

    def on_stop(self, wake: Callable[[], None]) -> None:
        self._wakers.append(wake)


async def run_closed(
    concurrency: int, budget: Budget, prepare: Callable[[], T], send: SendFn[T]
) -> None:
    """``concurrency`` loops of admit-then-send; cancelling it cancels in-flight requests."""

    async def loop() -> None:
        while budget.take():
            await send(prepare(), None)

    async with asyncio.TaskGroup() as tg:
        for _ in range(max(concurrency, 0)):
            tg.create_task(loop())


def arrival_offsets(
    rate: float, arrival: Literal["constant", "poisson"], seed: int, phase_s: float = 0.0
) -> Iterator[int]:
    """Send-time offsets in ns from the start for ``rate`` requests/s (infinite).

    Constant: ``phase + k / rate``. Poisson: exponential gaps of mean ``1/rate``
    from ``random.Random(seed)``, starting at ``phase``.

    >>> it = arrival_offsets(4.0, "constant", 0)
    >>> [next(it) for _ in range(3)]
    [0, 250000000, 500000000]
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    base = phase_s * 1e9
    if arrival == "constant":
        k = 0
        while True:
            yield round(base + k * 1e9 / rate)
            k += 1
    rng = random.Random(seed)
    t = base
    while True:
        yield round(t)
        t += rng.expovariate(rate) * 1e9


def learn_lead(lead_ns: int, lag_ns: int) -> int:
    """The wake-up lead after a send ``lag_ns`` late (negative: early) with ``lead_ns``.

    An integral controller: the lead moves by an eighth of the lag, within
    ``[0, LEAD_MAX_NS]``; a lag of ``LEAD_MAX_NS`` or more either way is a stall, not
    wake-up latency, and teaches nothing.

    >>> learn_lead(1_000, 80_000), learn_lead(1_000, 10_000_000), learn_lead(0, -8_000)
    (11000, 1000, 0)
    """
    if -LEAD_MAX_NS < lag_ns < LEAD_MAX_NS:
        return min(max(lead_ns + lag_ns // 8, 0), LEAD_MAX_NS)
    return lead_ns


def _resolve(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


class OpenLoop(Generic[T]):
    """Sends at ``t0 + offset`` for each offset while the budget admits them.

    ``run`` admits each arrival, prepares it and, ``ahead_ns`` before its time, starts its
    task, which reserves a connection and waits at the arrival's :class:`SendTrigger`. The
    reserved arrivals form a queue in send order; the fine timer (armed for the head, made by
    ``timer(loop)`` for each run) and :meth:`poll` fire every trigger whose time has come, so
    close arrivals are all ready before the first of them is due.
    """

    def __init__(
        self,
        offsets: Iterator[int],
        budget: Budget,
        prepare: Callable[[], T],
        send: SendFn[T],
        *,
        max_in_flight: int | None = None,
        ahead_ns: int = AHEAD_NS,
        timer: Callable[[asyncio.AbstractEventLoop], FineTimer] = fine_timer,
    ) -> None:
        self._offsets = offsets
        self._budget = budget
        self._prepare = prepare
        self._send = send
        self._cap = max_in_flight
        self._ahead_ns = ahead_ns
        self._make_timer = timer
        self._tasks: set[asyncio.Task[None]] = set()  # sent (or dropped), not finished
        self._queue: deque[tuple[SendTrigger, asyncio.Task[None]]] = deque()  # reserved
        self._timer: FineTimer | None = None
        self._armed_ns = 0  # the time the fine timer is armed for (0: not armed)
        self._waiter: asyncio.Future[Any] | None = None  # what run() waits on
        self._draining = False  # run() admits no more: it waits for the queue to empty
        self._lead_ns = 0  # learned wake-up latency: wake this much before the send time
        #: Arrivals that waited for a free slot under ``max_in_flight``.
        self.delayed = 0
        #: Sends made.
        self.sent = 0
        budget.on_stop(self._wake)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def lead_ns(self) -> int:
        """The learned wake-up latency the fine timer is armed ahead by (see :func:`learn_lead`)."""
        return self._lead_ns

    def poll(self) -> None:
        """Fire the triggers whose time has come. The client calls it before handling each
        read, so a loop busy with a burst of reads sends between two of them rather than
        after the whole burst."""
        q = self._queue
        if q and not q[0][0].delayed and _perf_ns() >= q[0][0].scheduled_ns - self._lead_ns:
            self._fire_due()

    def _on_time(self) -> None:
        """The fine timer's callback: its armed time came."""
        self._armed_ns = 0
        self._fire_due()

    def _fire_due(self) -> None:
        """Fire every reserved trigger whose time has come, in order while the in-flight cap
        allows; then arm the fine timer for the next. At the cap, the head waits (counted
        as delayed) and ``_done`` fires it when a slot frees."""
        q = self._queue
        budget = self._budget
        cap = self._cap
        while q and not budget.stopped:
            trigger = q[0][0]
            now = _perf_ns()
            if not trigger.delayed and trigger.scheduled_ns - self._lead_ns > now:
                break
            if cap is not None and len(self._tasks) >= cap:
                if not trigger.delayed:
                    trigger.delayed = True
                    self.delayed += 1
                break
            trigger, task = q.popleft()
            if trigger.delayed:  # the cap's delay is the user's choice, not lag
                trigger.scheduled_ns = max(now, trigger.scheduled_ns)
            else:
                self._lead_ns = learn_lead(self._lead_ns, now - trigger.scheduled_ns)
            self._track(task)
            self.sent += 1
            trigger.fire()
        timer = self._timer
        if timer is None:
            return
        if q and not q[0][0].delayed and not budget.stopped:
            t = q[0][0].scheduled_ns - self._lead_ns
            if t != self._armed_ns:
                self._armed_ns = t
                timer.arm(t, self._on_time)
        elif self._armed_ns:  # nothing to wait for: a delayed head waits for _done
            self._armed_ns = 0
            timer.disarm()
        if not q and self._draining:
            self._wake()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _drop_queue(self) -> int:
        """Cancel every reserved trigger (nothing is sent); return how many."""
        n = len(self._queue)
        while self._queue:
            trigger, task = self._queue.popleft()
            trigger.cancel()
            self._track(task)
        return n

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    async def _wait(self, delay_s: float | None) -> None:
        """Until ``delay_s`` passed (None: until woken) or ``_wake()``."""
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        handle = None if delay_s is None else loop.call_later(delay_s, _resolve, self._waiter)
        try:
            await self._waiter
        finally:
            if handle is not None:
                handle.cancel()
            self._waiter = None

    async def run(self, t0_ns: int | None = None) -> None:
        """Run the schedule from ``t0_ns`` (default now) and wait for every send to finish.

        Cancelling ``run`` cancels the requests in flight.
        """
        loop = asyncio.get_running_loop()
        timer = self._timer = self._make_timer(loop)
        t0 = _perf_ns() if t0_ns is None else t0_ns
        budget = self._budget
        tasks = self._tasks
        try:
            for off in self._offsets:
                t = t0 + off
                if budget.stopped or not budget.take(t):
                    break
                item = self._prepare()
                coarse = t - self._ahead_ns - _perf_ns()
                if coarse > 0:
                    await self._wait(coarse / 1e9)
                if budget.stopped:
                    budget.admitted -= 1  # admitted but never sent
                    break
                trigger = SendTrigger(loop, t)
                self._queue.append((trigger, loop.create_task(self._send(item, trigger))))
                self._fire_due()
            self._draining = True
            while self._queue and not budget.stopped:
                await self._wait(None)
            budget.admitted -= self._drop_queue()  # stopped: admitted but never sent
            while tasks:
                await asyncio.wait(list(tasks))
        finally:
            self._timer = None
            self._armed_ns = 0
            timer.close()
            self._drop_queue()
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(list(tasks))

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        q = self._queue
        if q and q[0][0].delayed:  # a slot freed for the arrival waiting at the cap
            self._fire_due()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("a send task raised", exc_info=exc)
