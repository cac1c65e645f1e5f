"""Load modes: fixed concurrency (closed loop) and request rate (open loop).

- :func:`run_closed`: ``concurrency`` tasks, each sends its next request as soon
  as its previous one finished.
- :class:`OpenLoop`: sends on an absolute schedule (``t0 + offset_k``) whatever
  the responses do, so a late send never shifts the ones after it. Offsets
  come from :func:`arrival_offsets` (constant or Poisson). The event loop's
  timers are precise to 1 ms only, so the send time itself is timed by
  a Linux timerfd in the loop itself (elsewhere, a helper thread's
  ``time.sleep``), which fires early by the learned wake-up latency (an
  integral controller on the observed lags, at most 0.5 ms), so lags centre
  on zero. Each request's task starts 10 ms ahead and reserves a
  connection; the timer's callback opens its :class:`SendGate`, which writes
  the request there and then. While the loop is busy, ``poll()`` (called
  before each read is handled) opens a gate whose time has come between two
  reads. The record's ``send_lag_ns`` is the actual minus the scheduled time
  (may be slightly negative).
  With a ``max_in_flight`` cap, an arrival that finds the cap reached waits
  for a slot; it is counted in ``delayed`` and its send lag is measured from
  the moment the slot freed (the cap's delay is the user's choice, not
  client lag).

Both stop admitting requests when the :class:`Budget` says so (request count,
deadline, or ``stop()``) and return once every admitted request finished. A
request is built by ``prepare()`` before its send time (prompt generation is
not send lag) and sent by ``send(prepared, gate)`` (``gate`` is None in the closed
loop; see :class:`SendGate`).

    budget = Budget(requests=100)
    await run_closed(8, budget, prepare, send)
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import queue
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from functools import partial
from typing import Any, Generic, Literal, TypeVar

__all__ = [
    "Budget",
    "OpenLoop",
    "SendFn",
    "SendGate",
    "arrival_offsets",
    "measure_fixed_concurrency",
    "run_closed",
]

T = TypeVar("T")
SendFn = Callable[[T, "SendGate | None"], Coroutine[Any, Any, None]]
"""``send(prepared, gate)``: the open loop's :class:`SendGate`, None in a closed loop."""
log = logging.getLogger(__name__)
_perf_ns = time.perf_counter_ns
_AHEAD_NS = 10_000_000  # an arrival is reserved (task started, connection taken) this early
_LEAD_MAX_NS = 500_000  # the fine timer fires at most this much early


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


class _FineTimer:
    """A helper thread that resolves futures at precise ``perf_counter_ns`` times."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._q: queue.SimpleQueue[_Timed | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="benchop-arrivals", daemon=True)
        self._thread.start()

    def wait_until(self, t_ns: int, on_time: Callable[[], bool]) -> asyncio.Future[bool | None]:
        """A future resolved at ``t_ns`` with what ``on_time()`` returns; ``on_time`` runs in
        the loop callback itself, one loop iteration earlier than a coroutine awaiting the
        future would."""
        fut: asyncio.Future[bool | None] = self._loop.create_future()
        self._q.put((t_ns, fut, on_time))
        return fut

    def close(self) -> None:
        self._q.put(None)

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            t_ns, fut, on_time = item
            delay = t_ns - _perf_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            try:
                self._loop.call_soon_threadsafe(_fire, fut, on_time)
            except RuntimeError:  # loop closed
                return


_Timed = tuple[int, "asyncio.Future[bool | None]", Callable[[], bool]]


class _TimerFd:
    """Linux: a timerfd (through ctypes; ``os.timerfd_*`` needs Python 3.13) in the event
    loop itself, so the loop's own ``epoll_wait`` wakes at the nanosecond time, with no
    helper thread and no GIL hand-off between the wake-up and the send. One wait at a time
    (each ``wait_until`` re-arms the timer), which is how :class:`OpenLoop` waits."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._settime = libc.timerfd_settime
        self._settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_ITimerSpec),
            ctypes.c_void_p,
        ]
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self._fd = fd
        self._loop = loop
        self._spec = _ITimerSpec()
        self._pending: tuple[asyncio.Future[bool | None], Callable[[], bool]] | None = None
        try:
            loop.add_reader(fd, self._ready)
        except BaseException:  # e.g. a loop without add_reader: the caller falls back
            os.close(fd)
            raise

    def wait_until(self, t_ns: int, on_time: Callable[[], bool]) -> asyncio.Future[bool | None]:
        """As :meth:`_FineTimer.wait_until`, but one wait at a time: a wait still pending
        is cancelled."""
        if self._pending is not None:
            self._pending[0].cancel()
        fut: asyncio.Future[bool | None] = self._loop.create_future()
        self._pending = (fut, on_time)
        t_ns = max(t_ns, 1)  # 0 would disarm the timer; a time in the past fires at once
        self._spec.value_sec, self._spec.value_nsec = divmod(t_ns, 1_000_000_000)
        if self._settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")
        return fut

    def _ready(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiry count; clears readability
        except BlockingIOError:
            return
        pending, self._pending = self._pending, None
        if pending is not None:
            _fire(*pending)

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)


class _ITimerSpec(ctypes.Structure):
    _fields_ = [
        ("interval_sec", ctypes.c_long),
        ("interval_nsec", ctypes.c_long),
        ("value_sec", ctypes.c_long),
        ("value_nsec", ctypes.c_long),
    ]


_CLOCK_MONOTONIC = 1  # time.perf_counter_ns's clock on Linux
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


def _fine_timer(loop: asyncio.AbstractEventLoop) -> _TimerFd | _FineTimer:
    """A timerfd in the loop where Linux and the loop allow it, else the helper thread."""
    if sys.platform == "linux" and time.get_clock_info("perf_counter").implementation.endswith(
        "(CLOCK_MONOTONIC)"
    ):
        try:
            return _TimerFd(loop)
        except (OSError, AttributeError, NotImplementedError) as exc:
            log.debug("no timerfd (%s): open-loop sends timed by a helper thread", exc)
    return _FineTimer(loop)


def _fire(fut: asyncio.Future[bool | None], on_time: Callable[[], bool]) -> None:
    if not fut.done():  # else cancelled: the timer was re-armed or closed
        fut.set_result(on_time())


def _resolve(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


class SendGate:
    """When an open-loop request leaves.

    The request's task starts up to 10 ms before its send time, reserves a connection and
    hands the gate its write (:meth:`hold`). Whoever opens the gate at the send time, the
    fine timer's callback or a read that finds the time has come (:meth:`OpenLoop.poll`),
    writes the bytes there and then, not a task a loop iteration later.
    """

    __slots__ = ("_write", "delayed", "opened", "scheduled_ns", "sent_ns")

    def __init__(self, loop: asyncio.AbstractEventLoop, scheduled_ns: int) -> None:
        #: The send time (``perf_counter_ns``); for a delayed arrival, when its slot freed.
        self.scheduled_ns = scheduled_ns
        #: The arrival waited for a slot under ``max_in_flight``.
        self.delayed = False
        #: When the request left (its write, or the gate's opening while it still
        #: connected); 0 until then.
        self.sent_ns = 0
        #: True once open; False if it never will be (the phase stopped): nothing is sent.
        self.opened: asyncio.Future[bool] = loop.create_future()
        self._write: Callable[[], None] | None = None

    def hold(self, write: Callable[[], None]) -> None:
        """Call ``write`` when the gate opens, in the opener's callback (now if open)."""
        opened = self.opened
        if not opened.done():
            self._write = write
        elif not opened.cancelled() and opened.result():
            self.sent_ns = _perf_ns()
            write()

    async def wait(self) -> bool:
        """For a request with nothing to hold: True once open (it starts now, which is
        its ``sent_ns``), False if the gate will never open."""
        if await self.opened:
            self.sent_ns = _perf_ns()
            return True
        return False

    def open(self) -> None:
        """Open the gate and run the held write; a write that raises is logged (the
        request's own code must fail it), never raised into the opener."""
        if self.opened.done():
            return
        self.sent_ns = _perf_ns()
        self.opened.set_result(True)
        write, self._write = self._write, None
        if write is not None:
            try:
                write()
            except Exception:
                log.exception("an open-loop request's write raised")

    def cancel(self) -> None:
        """The request will not be sent."""
        self._write = None
        if not self.opened.done():
            self.opened.set_result(False)


class OpenLoop(Generic[T]):
    """Sends at ``t0 + offset`` for each offset while the budget admits them.

    ``run`` admits each arrival, prepares it and, ``_AHEAD_NS`` before its time, starts its
    task, which reserves a connection and waits at the arrival's :class:`SendGate`. The
    reserved arrivals form a queue in send order; the fine timer (armed for the head) and
    :meth:`poll` open every gate whose time has come, so close arrivals are all ready
    before the first of them is due.
    """

    def __init__(
        self,
        offsets: Iterator[int],
        budget: Budget,
        prepare: Callable[[], T],
        send: SendFn[T],
        *,
        max_in_flight: int | None = None,
    ) -> None:
        self._offsets = offsets
        self._budget = budget
        self._prepare = prepare
        self._send = send
        self._cap = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()  # sent (or dropped), not finished
        self._queue: deque[tuple[SendGate, asyncio.Task[None]]] = deque()  # reserved
        self._timer: _TimerFd | _FineTimer | None = None
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

    def poll(self) -> None:
        """Open the gates whose time has come. The client calls it before handling each
        read, so a loop busy with a burst of reads sends between two of them rather than
        after the whole burst."""
        q = self._queue
        if q and not q[0][0].delayed and _perf_ns() >= q[0][0].scheduled_ns - self._lead_ns:
            self._open_due()

    def _on_time(self, t_ns: int) -> bool:
        """The fine timer's callback for the wait armed for ``t_ns`` (a stale one, whose
        gate :meth:`poll` opened first, must not cause a second wait for the next)."""
        if t_ns == self._armed_ns:
            self._armed_ns = 0
        self._open_due()
        return True

    def _open_due(self) -> None:
        """Open every reserved gate whose time has come, in order while the in-flight cap
        allows; then arm the fine timer for the next. At the cap, the head waits (counted
        as delayed) and ``_done`` opens it when a slot frees."""
        q = self._queue
        budget = self._budget
        cap = self._cap
        while q and not budget.stopped:
            gate = q[0][0]
            now = _perf_ns()
            if not gate.delayed and gate.scheduled_ns - self._lead_ns > now:
                break
            if cap is not None and len(self._tasks) >= cap:
                if not gate.delayed:
                    gate.delayed = True
                    self.delayed += 1
                return
            gate, task = q.popleft()
            if gate.delayed:  # the cap's delay is the user's choice, not lag
                gate.scheduled_ns = max(now, gate.scheduled_ns)
            else:
                lag = now - gate.scheduled_ns
                if -_LEAD_MAX_NS < lag < _LEAD_MAX_NS:  # learn the wake-up latency
                    self._lead_ns = min(max(self._lead_ns + lag // 8, 0), _LEAD_MAX_NS)
            self._track(task)
            self.sent += 1
            gate.open()
        if not q:
            if self._draining:
                self._wake()
        elif not q[0][0].delayed and self._timer is not None:
            t = q[0][0].scheduled_ns - self._lead_ns
            if t != self._armed_ns:
                self._armed_ns = t
                self._timer.wait_until(t, partial(self._on_time, t))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _drop_queue(self) -> int:
        """Close every reserved gate (nothing is sent); return how many."""
        n = len(self._queue)
        while self._queue:
            gate, task = self._queue.popleft()
            gate.cancel()
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
        timer = self._timer = _fine_timer(loop)
        t0 = _perf_ns() if t0_ns is None else t0_ns
        budget = self._budget
        tasks = self._tasks
        try:
            for off in self._offsets:
                t = t0 + off
                if budget.stopped or not budget.take(t):
                    break
                item = self._prepare()
                coarse = t - _AHEAD_NS - _perf_ns()
                if coarse > 0:
                    await self._wait(coarse / 1e9)
                if budget.stopped:
                    budget.admitted -= 1  # admitted but never sent
                    break
                gate = SendGate(loop, t)
                self._queue.append((gate, loop.create_task(self._send(item, gate))))
                self._open_due()
            self._draining = True
            while self._queue and not budget.stopped:
                await self._wait(None)
            budget.admitted -= self._drop_queue()  # stopped: admitted but never sent
            while tasks:
                await asyncio.wait(list(tasks))
        finally:
            self._timer = None
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
            self._open_due()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("a send task raised", exc_info=exc)


async def measure_fixed_concurrency(
    url: str,
    model: str,
    concurrency: int,
    seconds: float,
    output_tokens: int,
    *,
    warmup_s: float = 0.5,
    prompt_words: int = 16,
) -> dict[str, float]:
    """Drive ``url`` (an OpenAI base URL, chat API) at fixed concurrency; measure the client.

    The worker's real path: one StreamClient, ``run_closed``, each record
    folded into a metrics registry. After ``warmup_s`` (connections opened,
    not measured), counts the requests and tokens that complete within the next
    ``seconds`` and the process CPU time spent meanwhile. Returns ``requests``
    (ok), ``errors``, ``rps``, ``tokens`` (output tokens of ok requests),
    ``cpu_s``, ``window_s``, ``cpu_us_per_token``, ``cpu_pct``,
    ``recv_lag_p99_ms`` (0 when the server sends no ``benchop_sent_ns``) and
    ``start_wall`` (``time.time()`` at the start of the window). As in the
    worker, the registry is folded every 0.1 s while requests run.

        stats = await measure_fixed_concurrency(server.url, "m", 32, 5.0, 64)
    """
    import numpy as np

    from benchop.loadgen.client import Ident, StreamClient, Target
    from benchop.loadgen.prompts import make_prompt
    from benchop.loadgen.records import OK, RequestRecord, new_registry, record_into

    reg = new_registry()
    window = {"on": False}
    counts = {"requests": 0, "errors": 0, "tokens": 0}
    marks: dict[str, float] = {}

    def sink(rec: RequestRecord) -> None:
        record_into(reg, rec)
        if window["on"]:
            if rec.outcome == OK:
                counts["requests"] += 1
                counts["tokens"] += rec.output_tokens
            else:
                counts["errors"] += 1

    def mark(name: str, on: bool) -> None:
        marks[name + "_t"] = time.perf_counter()
        marks[name + "_cpu"] = time.process_time()
        marks[name + "_wall"] = time.time()
        window["on"] = on

    async def fold() -> None:
        while True:
            await asyncio.sleep(0.1)
            reg.fold()

    loop = asyncio.get_running_loop()
    async with StreamClient(Target(url, model), request_timeout=60) as client:
        body = client.body(
            make_prompt(0, worker=0, attempt=1, index=0, n_tokens=prompt_words), output_tokens
        )
        ident = Ident(0, 1, 0)

        async def send(_: None, gate: SendGate | None) -> None:
            await client.send(body, ident=ident, input_words=prompt_words, sink=sink)

        deadline = _perf_ns() + int((warmup_s + seconds) * 1e9)
        loop.call_later(warmup_s, mark, "start", True)
        loop.call_later(warmup_s + seconds, mark, "end", False)
        loop.call_later(warmup_s, client.take_recv_lags)
        folder = asyncio.create_task(fold())
        try:
            await run_closed(concurrency, Budget(deadline_ns=deadline), lambda: None, send)
        finally:
            folder.cancel()
        lags = client.take_recv_lags()
    reg.fold()
    wall = marks["end_t"] - marks["start_t"]
    cpu = marks["end_cpu"] - marks["start_cpu"]
    tokens = counts["tokens"]
    p99 = float(np.percentile(lags, 99)) / 1e6 if lags.size else 0.0
    return {
        "requests": counts["requests"],
        "errors": counts["errors"],
        "rps": counts["requests"] / wall,
        "tokens": tokens,
        "cpu_s": cpu,
        "window_s": wall,
        "cpu_us_per_token": cpu / tokens * 1e6 if tokens else 0.0,
        "cpu_pct": 100.0 * cpu / wall,
        "recv_lag_p99_ms": p99,
        "start_wall": marks["start_wall"],
    }
