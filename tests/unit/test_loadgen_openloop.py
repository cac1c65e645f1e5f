"""OpenLoop's timing paths: the coarse event-loop timer, the fine timer (Linux timerfd in the
loop, or the helper thread) whose on-time callback opens the reserved arrivals'
:class:`SendGate` (a held write runs inside the opener's callback), ``poll()`` opening a gate
whose time has come between two reads, the in-flight cap (``_done`` opens the delayed head),
``Budget.stop()`` (queued gates dropped, admissions rolled back) and failing sends; each under
asyncio's default loop and uvloop. Then ``_TimerFd`` and ``_FineTimer`` directly.

No assertion bounds precision (benchmarks under hack/ measure that): the one timing bound is
that a gate never opens (and a send never starts) more than ``_LEAD_MAX_NS`` before its
scheduled time, which holds by construction (the fine timer and ``poll()`` open at most the
learned lead early, the event loop never earlier). Other time limits are generous
``wait_for`` timeouts that only catch a hang; a few tests spread their events tens of ms
apart so that their order does not depend on a ms-precise wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import pytest

from benchop.loadgen import load
from benchop.loadgen.load import (
    _AHEAD_NS,
    _LEAD_MAX_NS,
    Budget,
    OpenLoop,
    SendGate,
    _FineTimer,
    _TimerFd,
    arrival_offsets,
)

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
    uvloop = None  # type: ignore[assignment]

R = TypeVar("R")
Runner = Callable[[Coroutine[Any, Any, R]], R]
MS = 1_000_000
HANG_S = 5.0  # generous: only catches a schedule that never returns
HELD_NS = 3_000 * MS  # a fine wait pushed this far never fires within a test
now = time.perf_counter_ns  # the clock load.py schedules on
LINUX = sys.platform == "linux"
NO_TIMERFD = "timerfd is Linux-only (elsewhere _fine_timer always picks the helper thread)"


# --- fixtures: event loop x fine timer ----------------------------------------------------


@pytest.fixture(
    params=[
        "asyncio",
        pytest.param(
            "uvloop", marks=pytest.mark.skipif(uvloop is None, reason="uvloop not installed")
        ),
    ]
)
def run(request: pytest.FixtureRequest) -> Runner[Any]:
    """Runs a coroutine to completion on a fresh loop of the parametrized kind (sync tests,
    so pytest-asyncio's own loop is not involved)."""
    if request.param == "uvloop":
        return uvloop.run
    return asyncio.run


@dataclass
class TimerSpy:
    kind: type[_FineTimer] | type[_TimerFd]
    made: list[_FineTimer | _TimerFd] = field(default_factory=list)
    armed: list[int] = field(default_factory=list)  # each wait_until's target time
    futures: list[asyncio.Future[bool | None]] = field(default_factory=list)
    overlaps: int = 0  # wait_until while the previous wait was still pending (a re-arm)
    #: test hook: maps a wait's target time to the one actually armed (may have side effects)
    hook: Callable[[int], int] | None = None

    @property
    def waits(self) -> int:
        return len(self.armed)


@pytest.fixture(
    params=[
        "thread",
        pytest.param("timerfd", marks=pytest.mark.skipif(not LINUX, reason=NO_TIMERFD)),
    ]
)
def timers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> TimerSpy:
    """Makes ``OpenLoop.run`` use the parametrized fine timer, and watches its waits."""
    spy = TimerSpy(_FineTimer if request.param == "thread" else _TimerFd)

    def factory(loop: asyncio.AbstractEventLoop) -> _FineTimer | _TimerFd:
        timer = spy.kind(loop)
        real = timer.wait_until

        def wait_until(t_ns: int, on_time: Callable[[], bool]) -> asyncio.Future[bool | None]:
            if spy.futures and not spy.futures[-1].done():
                spy.overlaps += 1
            spy.armed.append(t_ns)
            if spy.hook is not None:
                t_ns = spy.hook(t_ns)
            spy.futures.append(real(t_ns, on_time))
            return spy.futures[-1]

        timer.wait_until = wait_until  # type: ignore[method-assign]
        spy.made.append(timer)
        return timer

    monkeypatch.setattr(load, "_fine_timer", factory)
    return spy


@dataclass
class Opened:
    gate: SendGate
    at_ns: int  # gate.sent_ns as open() stamped it (a later wait() or hold() restamps it)
    by: str  # "timer" (the fine timer's callback), "poll", "done" (a slot freed), "run"


@dataclass
class PathSpy:
    """Who opens the gates and who marks heads delayed, through spies on ``SendGate.open``,
    ``OpenLoop._on_time`` / ``poll`` / ``_done`` / ``_open_due`` / ``_wait`` and
    ``load._fire``."""

    opened: list[Opened] = field(default_factory=list)  # in the order opened
    delayed_by: Counter[str] = field(default_factory=Counter)  # heads marked delayed
    on_time: int = 0  # OpenLoop._on_time calls: fine waits that came due
    fired: int = 0  # load._fire calls (the timers' loop callbacks)
    coarse_waits: int = 0  # run()'s event-loop waits before an arrival's fine part
    drain_waits: int = 0  # run()'s waits for the queue to empty
    max_queued: int = 0  # the most reserved arrivals seen by _open_due
    opening: SendGate | None = None  # the gate inside SendGate.open, if any
    on_delay: Callable[[], None] | None = None  # test hook: a head was just marked delayed
    callers: list[str] = field(default_factory=list)

    @property
    def opened_by(self) -> Counter[str]:
        return Counter(o.by for o in self.opened)

    def caller(self) -> str:
        return self.callers[-1] if self.callers else "run"


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> PathSpy:
    spy = PathSpy()
    gate_open, open_due, wait = SendGate.open, OpenLoop._open_due, OpenLoop._wait
    fire = load._fire

    def as_caller(name: str, real: Callable[..., Any], count: str | None = None) -> Any:
        def spied(self: Any, *args: Any) -> Any:
            if count is not None:
                setattr(spy, count, getattr(spy, count) + 1)
            spy.callers.append(name)
            try:
                return real(self, *args)
            finally:
                spy.callers.pop()

        return spied

    def spy_open(self: SendGate) -> None:
        first = not self.opened.done()
        outer, spy.opening = spy.opening, self
        try:
            gate_open(self)
        finally:
            spy.opening = outer
            if first:
                spy.opened.append(Opened(self, self.sent_ns, spy.caller()))

    def spy_open_due(self: OpenLoop[Any]) -> None:
        spy.max_queued = max(spy.max_queued, len(self._queue))
        before = self.delayed
        open_due(self)
        if self.delayed > before:
            spy.delayed_by[spy.caller()] += self.delayed - before
            if spy.on_delay is not None:
                spy.on_delay()

    async def spy_wait(self: OpenLoop[Any], delay_s: float | None) -> None:
        if delay_s is None:
            spy.drain_waits += 1
        else:
            spy.coarse_waits += 1
        await wait(self, delay_s)

    def spy_fire(fut: asyncio.Future[bool | None], on_time: Callable[[], bool]) -> None:
        spy.fired += 1
        fire(fut, on_time)

    monkeypatch.setattr(SendGate, "open", spy_open)
    monkeypatch.setattr(OpenLoop, "_open_due", spy_open_due)
    monkeypatch.setattr(OpenLoop, "_wait", spy_wait)
    monkeypatch.setattr(OpenLoop, "_on_time", as_caller("timer", OpenLoop._on_time, "on_time"))
    monkeypatch.setattr(OpenLoop, "poll", as_caller("poll", OpenLoop.poll))
    monkeypatch.setattr(OpenLoop, "_done", as_caller("done", OpenLoop._done))
    monkeypatch.setattr(load, "_fire", spy_fire)
    return spy


# --- helpers ------------------------------------------------------------------------------


@dataclass
class Sent:
    item: int
    scheduled_ns: int  # gate.scheduled_ns once open (a delayed arrival's: when its slot freed)
    delayed: bool
    sent_ns: int  # gate.sent_ns: when wait() returned True
    gate: SendGate


@dataclass
class Recorder:
    """A ``send`` as the HTTP client's without an idle connection: ``await gate.wait()``,
    then records the send (nothing if the gate closed unopened); holds ``hold_s`` (and until
    ``gates[item]`` is set) and raises for ``fail`` items (``fail_early``: before its gate
    opens)."""

    hold_s: float = 0.0
    fail: Callable[[int], bool] = lambda item: False
    fail_early: bool = False
    gates: dict[int, asyncio.Event] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    reserved: dict[int, SendGate] = field(default_factory=dict)  # every task's gate
    scheduled: dict[int, int] = field(default_factory=dict)  # gate.scheduled_ns at the start
    dropped: list[int] = field(default_factory=list)  # wait() gave False
    finished: dict[int, int] = field(default_factory=dict)  # when each send returned
    in_flight: int = 0
    max_in_flight: int = 0
    max_loop_in_flight: int = 0
    openloop: OpenLoop[int] | None = None

    async def __call__(self, item: int, gate: SendGate | None) -> None:
        assert gate is not None  # the open loop always passes one
        self.reserved[item] = gate
        self.scheduled[item] = gate.scheduled_ns
        try:
            if self.fail_early and self.fail(item):
                raise SendFailed(item)
            if not await gate.wait():
                self.dropped.append(item)
                return
            self.sent.append(Sent(item, gate.scheduled_ns, gate.delayed, gate.sent_ns, gate))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.openloop is not None:
                self.max_loop_in_flight = max(self.max_loop_in_flight, self.openloop.in_flight)
            try:
                if self.fail(item):
                    raise SendFailed(item)
                if self.hold_s:
                    await asyncio.sleep(self.hold_s)
                if item in self.gates:
                    await self.gates[item].wait()
            finally:
                self.in_flight -= 1
        finally:
            self.finished[item] = now()


class SendFailed(Exception):
    pass


@dataclass
class Write:
    item: int
    at_ns: int
    in_open: bool  # called inside this gate's SendGate.open (the opener's callback)
    opened: bool | None  # gate.opened's result when called (None: not done)
    sent_ns: int


@dataclass
class Holder:
    """A ``send`` as the HTTP client's with an idle connection: hands its gate the write
    (``hold``) and waits for ``opened``; notes the order of events."""

    paths: PathSpy
    fail_write: Callable[[int], bool] = lambda item: False
    events: list[tuple[str, int]] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    gates: dict[int, SendGate] = field(default_factory=dict)
    tasks: dict[int, asyncio.Task[Any]] = field(default_factory=dict)

    async def __call__(self, item: int, gate: SendGate | None) -> None:
        assert gate is not None
        self.gates[item] = gate
        self.tasks[item] = cast("asyncio.Task[Any]", asyncio.current_task())
        self.events.append(("hold", item))

        def write() -> None:
            opened = gate.opened.result() if gate.opened.done() else None
            in_open = self.paths.opening is gate
            self.writes.append(Write(item, now(), in_open, opened, gate.sent_ns))
            self.events.append(("write", item))
            if self.fail_write(item):
                raise WriteFailed(item)

        gate.hold(write)
        sent = await gate.opened
        self.events.append(("resumed" if sent else "dropped", item))


class WriteFailed(Exception):
    pass


def make(
    offsets: Iterable[int],
    budget: Budget,
    rec: Callable[[int, SendGate | None], Coroutine[Any, Any, None]],
    max_in_flight: int | None = None,
) -> OpenLoop[int]:
    ol = OpenLoop(
        iter(offsets), budget, itertools.count().__next__, rec, max_in_flight=max_in_flight
    )
    if isinstance(rec, Recorder):
        rec.openloop = ol
    return ol


def assert_closed(timer: _FineTimer | _TimerFd) -> None:
    """``run()`` closed its fine timer: the fd is gone, or the helper thread ended."""
    if isinstance(timer, _TimerFd):
        with pytest.raises(OSError):
            os.fstat(timer._fd)
    else:
        timer._thread.join(HANG_S)
        assert not timer._thread.is_alive()


def early_sends(rec: Recorder) -> list[tuple[int, int]]:
    """(item, ns early) of sends that started more than ``_LEAD_MAX_NS`` before schedule."""
    return [
        (s.item, s.scheduled_ns - s.sent_ns)
        for s in rec.sent
        if s.sent_ns < s.scheduled_ns - _LEAD_MAX_NS
    ]


def early_opens(paths: PathSpy) -> list[tuple[int, int]]:
    """(index, ns early) of gates opened more than ``_LEAD_MAX_NS`` before schedule."""
    return [
        (k, o.gate.scheduled_ns - o.at_ns)
        for k, o in enumerate(paths.opened)
        if o.at_ns < o.gate.scheduled_ns - _LEAD_MAX_NS
    ]


def assert_opened_in_order(paths: PathSpy, rec: Recorder, n: int) -> None:
    """Items 0..n-1 each sent once, their gates opened in item order (the send order: a
    ``wait()`` sender may resume a loop iteration later, so ``rec.sent`` may not be)."""
    assert sorted(s.item for s in rec.sent) == list(range(n))
    assert [o.gate for o in paths.opened] == [rec.reserved[k] for k in range(n)]
    assert all(s.gate is rec.reserved[s.item] for s in rec.sent)
    assert early_opens(paths) == []


# --- 1, 2: on-schedule sends, the coarse and fine timers, poll() ---------------------------


def test_constant_schedule_sends_each_item_once_in_order(
    run: Runner[Any], timers: TimerSpy, paths: PathSpy
) -> None:
    # two arrivals already past at t0, one at t0, then 30 at 2 ms gaps (infinite iterator,
    # ended by the request budget)
    head = [-3 * MS, -1 * MS, 0]
    n = len(head) + 30
    expected = [*head, *itertools.islice(arrival_offsets(500.0, "constant", 0, 0.002), 30)]
    assert expected[3:5] == [2 * MS, 4 * MS]

    async def main() -> tuple[int, OpenLoop[int], Budget, Recorder]:
        rec, budget = Recorder(), Budget(requests=n)
        ol = make(itertools.chain(head, arrival_offsets(500.0, "constant", 0, 0.002)), budget, rec)
        t0 = now()
        await asyncio.wait_for(ol.run(t0), HANG_S)
        assert_closed(timers.made[0])
        return t0, ol, budget, rec

    t0, ol, budget, rec = run(main())
    assert_opened_in_order(paths, rec, n)
    assert [o.gate.scheduled_ns for o in paths.opened] == [t0 + off for off in expected]
    assert [s.delayed for s in rec.sent] == [False] * n
    assert rec.dropped == []
    assert ol.sent == budget.admitted == n and ol.delayed == 0 and ol.in_flight == 0
    assert budget.closed and not budget.stopped
    assert early_sends(rec) == []
    assert 0 <= ol._lead_ns <= _LEAD_MAX_NS
    assert [type(t) for t in timers.made] == [timers.kind]
    # the past arrivals open as run() reserves them; the 2 ms gaps go through the fine
    # timer's callback; nothing polls and there is no cap
    assert paths.opened_by["run"] >= len(head)
    assert paths.opened_by["timer"] >= 1
    assert paths.opened_by["poll"] == paths.opened_by["done"] == 0
    assert sum(paths.delayed_by.values()) == 0
    assert 1 <= paths.on_time <= paths.fired <= timers.waits
    assert not ol._queue and ol._draining


@pytest.mark.parametrize(
    ("first_ns", "gap_ns", "fine_ns"),
    [
        # each arrival: the coarse loop timer to t - _AHEAD_NS, then the fine timer
        (2 * _AHEAD_NS, _AHEAD_NS + 5 * MS, _AHEAD_NS),
        # all within _AHEAD_NS of t0: reserved at once, no coarse wait (_AHEAD_NS raised so that
        # the first is due long after all are reserved, whatever a slow machine's stalls)
        (200 * MS, 40_000, 1_000 * MS),
    ],
    ids=["coarse-then-fine", "close-arrivals-reserved-at-once"],
)
def test_coarse_and_fine_timers_and_the_on_time_callback(
    run: Runner[Any],
    timers: TimerSpy,
    paths: PathSpy,
    monkeypatch: pytest.MonkeyPatch,
    first_ns: int,
    gap_ns: int,
    fine_ns: int,
) -> None:
    monkeypatch.setattr(load, "_AHEAD_NS", fine_ns)
    n = 20
    offsets = [first_ns + gap_ns * k for k in range(n)]
    coarse = fine_ns == _AHEAD_NS

    async def main() -> tuple[int, OpenLoop[int], Recorder]:
        rec = Recorder()
        ol = make(offsets, Budget(), rec)
        t0 = now()
        await asyncio.wait_for(ol.run(t0), HANG_S)
        assert_closed(timers.made[0])
        return t0, ol, rec

    t0, ol, rec = run(main())
    assert_opened_in_order(paths, rec, n)
    assert [s.scheduled_ns for s in sorted(rec.sent, key=lambda s: s.item)] == [
        t0 + off for off in offsets
    ]
    assert not any(s.delayed for s in rec.sent) and ol.sent == n and ol.delayed == 0
    assert early_sends(rec) == []
    # the gates were opened from the fine timer's loop callback
    assert paths.opened_by["timer"] >= 1
    assert paths.opened_by["poll"] == paths.opened_by["done"] == 0
    assert 1 <= paths.on_time <= paths.fired <= timers.waits
    if coarse:
        assert 1 <= paths.coarse_waits <= n
    else:
        assert paths.coarse_waits == 0
        assert paths.max_queued == n  # all reserved (their tasks started) before the first
        assert paths.opened_by["run"] == 0  # ... was due
        assert paths.drain_waits == 1  # run() then waited, woken when the queue emptied
        # each head's time armed once: the stale wait of a head opened by an earlier wait's
        # callback in the same pass does not arm another for the next head
        assert len(set(timers.armed)) == timers.waits <= n


def test_close_arrivals_are_reserved_and_their_held_writes_run_inside_open(
    run: Runner[Any], timers: TimerSpy, paths: PathSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five arrivals within 0.2 ms: each task starts (and hands its gate the write) before
    the first is due; the opener then calls each write inside ``SendGate.open``, in order,
    before the task resumes. ``_AHEAD_NS`` is raised so that all are reserved at once."""
    monkeypatch.setattr(load, "_AHEAD_NS", 1_000 * MS)
    n = 5
    offsets = [100 * MS + k * 50_000 for k in range(n)]

    async def main() -> tuple[int, OpenLoop[int], Holder]:
        holder = Holder(paths)
        ol = make(offsets, Budget(), holder)
        t0 = now()
        await asyncio.wait_for(ol.run(t0), HANG_S)
        assert_closed(timers.made[0])
        return t0, ol, holder

    t0, ol, holder = run(main())
    ev = holder.events
    first_write = ev.index(("write", 0))
    assert sorted(ev[:first_write]) == [("hold", k) for k in range(n)]  # all held first
    assert [w.item for w in holder.writes] == list(range(n))
    for w in holder.writes:
        assert w.in_open and w.opened is True  # in the opener's callback, once open
        assert ev.index(("write", w.item)) < ev.index(("resumed", w.item))
        gate = holder.gates[w.item]
        assert gate.scheduled_ns == t0 + offsets[w.item] and not gate.delayed
        assert w.sent_ns == gate.sent_ns > 0  # stamped by open(), not restamped
        assert gate.sent_ns >= gate.scheduled_ns - _LEAD_MAX_NS
        assert w.at_ns >= gate.sent_ns
    assert [o.gate for o in paths.opened] == [holder.gates[k] for k in range(n)]
    assert paths.max_queued == n and paths.opened_by["run"] == 0
    assert paths.opened_by["timer"] >= 1
    assert all(t.done() and t.exception() is None for t in holder.tasks.values())
    assert ol.sent == n and ol.in_flight == 0


@dataclass
class Poll:
    head: SendGate | None  # the queue's head when poll() was called
    t_ns: int  # just before the call
    after_ns: int  # just after it
    before: int  # ol.sent before and after
    after: int


def test_poll_opens_a_gate_whose_time_has_come_without_the_fine_timer(
    run: Runner[Any], timers: TimerSpy, paths: PathSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every fine wait is armed 3 s late (it never fires in the test); a loop callback calls
    ``ol.poll()`` about every ms: a poll before the head's time opens nothing, one after it
    opens the head there and then, and re-arms the fine timer for the next head."""
    monkeypatch.setattr(load, "_AHEAD_NS", 1_000 * MS)  # reserved at once: polls meet heads
    n = 4
    offsets = [(10 + 5 * k) * MS for k in range(n)]
    timers.hook = lambda t_ns: t_ns + HELD_NS
    polls: list[Poll] = []

    async def main() -> tuple[OpenLoop[int], Recorder]:
        loop = asyncio.get_running_loop()
        rec = Recorder()
        ol = make(offsets, Budget(), rec)

        def poller() -> None:
            head = ol._queue[0][0] if ol._queue else None
            before, t = ol.sent, now()
            ol.poll()
            polls.append(Poll(head, t, now(), before, ol.sent))
            if ol.sent < n:
                loop.call_later(0.001, poller)

        loop.call_soon(poller)
        await asyncio.wait_for(ol.run(), 2.0)  # < HELD_NS: the fine timer fired none
        if timers.kind is _TimerFd:
            assert_closed(timers.made[0])
        return ol, rec

    ol, rec = run(main())
    assert_opened_in_order(paths, rec, n)
    assert early_sends(rec) == []
    assert paths.opened_by == {"poll": n}
    assert paths.on_time == 0
    assert ol.sent == n and ol.delayed == 0
    assert any(p.head is not None and p.after == p.before for p in polls)  # too early: none
    for p in polls:
        if p.head is None:
            assert p.after == p.before
            continue
        if p.after > p.before:  # it opened the head (and any due behind it)
            assert p.head.opened.done() and p.head.opened.result() is True
            assert p.after_ns >= p.head.scheduled_ns - _LEAD_MAX_NS
        if p.t_ns >= p.head.scheduled_ns:  # past its time: poll must open it
            assert p.after > p.before
    # the head and each next one armed once (3 s late); a poll that opened the head re-armed
    # the timer while the superseded wait was pending, which the timerfd cancels
    assert timers.waits == len(set(timers.armed)) and 1 <= timers.waits <= n
    assert timers.overlaps == timers.waits - 1
    if timers.kind is _TimerFd:
        assert all(f.cancelled() for f in timers.futures[:-1])
    assert not any(f.done() and not f.cancelled() for f in timers.futures)


def test_stale_fine_waits_do_not_multiply(
    run: Runner[Any], timers: TimerSpy, paths: PathSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy loop: a callback blocks from 3 ms before each head's time to just after it,
    then polls, so the head is opened by ``poll()`` while its fine wait has come due (the
    helper thread's ``_fire`` is queued behind the callback; the timerfd is re-armed before
    the loop reads it). The stale wait must not arm a second wait for the next head, or
    the helper thread's waits would grow with every such poll for the rest of the phase."""
    monkeypatch.setattr(load, "_AHEAD_NS", 1_000 * MS)  # reserved at once: the queue stays
    n = 8
    offsets = [(20 + 10 * k) * MS for k in range(n)]

    async def main() -> OpenLoop[int]:
        loop = asyncio.get_running_loop()
        rec = Recorder()
        ol = make(offsets, Budget(), rec)
        t0 = now()

        def block(k: int) -> None:
            while now() < t0 + offsets[k] + 300_000:
                pass
            ol.poll()
            if k + 1 < n:
                loop.call_later(max(t0 + offsets[k + 1] - 3 * MS - now(), 0) / 1e9, block, k + 1)

        loop.call_later((t0 + offsets[0] - 3 * MS - now()) / 1e9, block, 0)
        await asyncio.wait_for(ol.run(t0), HANG_S)
        assert_closed(timers.made[0])
        return ol

    ol = run(main())
    assert ol.sent == n
    assert paths.opened_by["poll"] >= 1  # the construction worked at least once
    assert timers.waits == len(set(timers.armed)) <= n  # each head's time armed once


# --- 3: Budget.stop() ---------------------------------------------------------------------


@dataclass
class StopAt:
    """``Budget.stop()`` that notes how many gates had been opened when it ran."""

    budget: Budget
    ol: OpenLoop[int] | None = None
    sent_at_stop: int | None = None

    def __call__(self) -> None:
        assert self.ol is not None
        self.sent_at_stop = self.ol.sent
        self.budget.stop()


def assert_stopped_cleanly(stop: StopAt, ol: OpenLoop[int], rec: Recorder) -> None:
    assert stop.sent_at_stop is not None, "stop() never ran"
    assert ol.sent == stop.sent_at_stop  # nothing opened after the stop
    assert len(rec.sent) == ol.sent  # every opened send ran
    assert sorted(s.item for s in rec.sent) == list(range(ol.sent))
    # every reserved arrival not sent had its gate closed unopened: its send returned
    assert sorted(rec.dropped) == sorted(set(rec.reserved) - {s.item for s in rec.sent})
    for item in rec.dropped:
        gate = rec.reserved[item]
        assert gate.opened.result() is False and gate.sent_ns == 0
    assert set(rec.finished) == set(rec.reserved)  # every task ended, none hangs
    assert stop.budget.admitted == ol.sent  # the admitted-but-unsent arrivals rolled back
    assert stop.budget.stopped and stop.budget.closed
    assert ol.in_flight == 0 and not ol._queue
    assert not any(s.delayed for s in rec.sent)


def test_stop_during_the_schedule(run: Runner[Any], timers: TimerSpy) -> None:
    # ten arrivals 5 ms apart, then one a minute away; stop() at 20 ms from a loop timer
    offsets = [k * 5 * MS for k in range(10)] + [60_000 * MS]

    async def main() -> tuple[StopAt, OpenLoop[int], Recorder]:
        rec, budget = Recorder(), Budget()
        ol = make(offsets, budget, rec)
        stop = StopAt(budget, ol)
        asyncio.get_running_loop().call_later(0.02, stop)
        await asyncio.wait_for(ol.run(), HANG_S)  # returns: stop() woke the wait
        assert_closed(timers.made[0])
        return stop, ol, rec

    stop, ol, rec = run(main())
    assert_stopped_cleanly(stop, ol, rec)
    assert 1 <= ol.sent <= 10
    assert early_sends(rec) == []


def test_stop_during_a_coarse_wait(run: Runner[Any], timers: TimerSpy, paths: PathSpy) -> None:
    async def main() -> tuple[StopAt, OpenLoop[int], Recorder]:
        rec, budget = Recorder(), Budget()
        ol = make([0, 60_000 * MS, 60_001 * MS], budget, rec)
        stop = StopAt(budget, ol)
        asyncio.get_running_loop().call_later(0.02, stop)
        await asyncio.wait_for(ol.run(), HANG_S)
        assert_closed(timers.made[0])
        return stop, ol, rec

    stop, ol, rec = run(main())
    assert_stopped_cleanly(stop, ol, rec)
    assert ol.sent == 1  # the second arrival was admitted, then rolled back
    assert rec.reserved.keys() == {0}  # ... and never reserved
    assert paths.opened_by == {"run": 1}  # the first was due when reserved
    assert paths.coarse_waits == 1 and paths.drain_waits == 0
    assert timers.waits == 0  # no arrival was ever waiting at the head


@pytest.mark.parametrize("draining", [False, True], ids=["scheduling", "draining"])
def test_stop_while_the_head_waits(
    run: Runner[Any],
    timers: TimerSpy,
    paths: PathSpy,
    draining: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The head's fine wait is held for 3 s (longer than the hang timeout) and ``stop()`` is
    called right after it is armed: it must wake ``run()`` (in a coarse wait for a later
    arrival, or waiting for the queue to empty), which drops the reserved gates; the fine
    timer's callback never ran. ``_AHEAD_NS`` is raised to 1 s and the arrivals are 200 ms
    apart, so that a stall of the machine cannot make the second one due when reserved."""
    monkeypatch.setattr(load, "_AHEAD_NS", 1_000 * MS)
    offsets = [0, 200 * MS, 400 * MS]  # within _AHEAD_NS of t0: reserved at once
    if not draining:
        offsets += [1_200 * MS + k * MS for k in range(5)]  # a coarse wait of ~200 ms
    held: list[int] = []

    async def main() -> tuple[StopAt, OpenLoop[int], Recorder]:
        loop = asyncio.get_running_loop()
        rec, budget = Recorder(), Budget()
        ol = make(offsets, budget, rec)
        stop = StopAt(budget, ol)

        def hold_first(t_ns: int) -> int:
            if held:
                return t_ns
            held.append(t_ns)
            loop.call_soon(stop)
            return t_ns + HELD_NS

        timers.hook = hold_first
        await asyncio.wait_for(ol.run(), 2.0)  # would take 3 s if stop() did not wake it
        return stop, ol, rec

    stop, ol, rec = run(main())
    assert held, "no fine wait was armed"
    assert_stopped_cleanly(stop, ol, rec)
    assert ol.sent == 1  # the first, due as run() reserved it
    assert paths.opened_by == {"run": 1}
    assert sorted(rec.dropped) == [1, 2]  # the held head and the one behind it
    assert rec.reserved[1].scheduled_ns - ol._lead_ns == held[0]
    assert paths.on_time == 0  # the held wait never fired
    assert timers.waits == 1
    if draining:
        assert paths.drain_waits == 1 and paths.coarse_waits == 0
    else:  # the fourth arrival was admitted, then rolled back in its coarse wait
        assert paths.drain_waits == 0 and paths.coarse_waits == 1
        assert 3 not in rec.reserved


@pytest.mark.parametrize("coarse_pending", [False, True], ids=["draining", "coarse-wait"])
def test_stop_drops_the_queued_gates(
    run: Runner[Any],
    timers: TimerSpy,
    paths: PathSpy,
    monkeypatch: pytest.MonkeyPatch,
    coarse_pending: bool,
) -> None:
    """Four arrivals reserved for 0.5 s later (``_AHEAD_NS`` raised), their tasks holding a
    write: ``stop()`` at 30 ms closes their gates unopened (``opened`` is False, no write,
    each task returns on its own) and rolls back their admissions, and that of an arrival
    still in its coarse wait, so that ``admitted == sent``."""
    monkeypatch.setattr(load, "_AHEAD_NS", 1_000 * MS)
    offsets = [0] + [500 * MS + k * 50_000 for k in range(4)]
    if coarse_pending:
        offsets.append(60_000 * MS)

    async def main() -> tuple[StopAt, OpenLoop[int], Holder]:
        holder, budget = Holder(paths), Budget()
        ol = make(offsets, budget, holder)
        stop = StopAt(budget, ol)
        asyncio.get_running_loop().call_later(0.03, stop)
        await asyncio.wait_for(ol.run(), HANG_S)
        assert_closed(timers.made[0])
        return stop, ol, holder

    stop, ol, holder = run(main())
    assert stop.sent_at_stop == ol.sent == 1
    assert stop.budget.admitted == ol.sent  # 4 dropped (+1 in its coarse wait) rolled back
    assert [w.item for w in holder.writes] == [0]
    assert holder.gates.keys() == set(range(5))
    for item in range(1, 5):
        gate, task = holder.gates[item], holder.tasks[item]
        assert gate.opened.result() is False and gate.sent_ns == 0
        assert ("dropped", item) in holder.events and ("write", item) not in holder.events
        assert task.done() and not task.cancelled() and task.exception() is None
    assert holder.tasks[0].done() and not holder.tasks[0].cancelled()
    # (the helper thread's wait may still fire after run() returned: it opens nothing)
    assert paths.opened_by == {"run": 1}
    assert paths.coarse_waits == int(coarse_pending)
    assert paths.drain_waits == int(not coarse_pending)
    assert ol.in_flight == 0 and not ol._queue


def test_stop_while_waiting_for_a_slot(run: Runner[Any], timers: TimerSpy) -> None:
    """At ``max_in_flight=1`` the second arrival waits for the first send, which lasts until
    after ``stop()``: the waiting arrival is dropped (rolled back), not sent."""

    async def main() -> tuple[StopAt, OpenLoop[int], Recorder]:
        released = asyncio.Event()
        rec, budget = Recorder(gates={0: released}), Budget()
        ol = make([0, MS, 2 * MS], budget, rec, max_in_flight=1)
        stop = StopAt(budget, ol)

        def stop_then_release() -> None:
            stop()
            released.set()

        asyncio.get_running_loop().call_later(0.02, stop_then_release)
        await asyncio.wait_for(ol.run(), HANG_S)
        assert_closed(timers.made[0])
        return stop, ol, rec

    stop, ol, rec = run(main())
    assert_stopped_cleanly(stop, ol, rec)
    assert ol.sent == 1
    assert ol.delayed == 1  # it did wait for a slot, though it was dropped, never sent
    assert rec.reserved[1].delayed and sorted(rec.dropped) == [1, 2]


# --- 4: max_in_flight ---------------------------------------------------------------------


def test_cap_delays_arrivals_while_a_send_is_in_flight(
    run: Runner[Any], timers: TimerSpy, paths: PathSpy
) -> None:
    # every send holds 20 ms, arrivals come 1.9 ms apart: the second one comes due (normally
    # through the fine timer, whose callback marks it delayed at the cap) while the first is
    # in flight; each later one is due, behind a delayed head, when the slot frees
    n, gap = 6, 1_900_000
    offsets = [k * gap for k in range(n)]

    async def main() -> tuple[OpenLoop[int], Budget, Recorder]:
        rec, budget = Recorder(hold_s=0.02), Budget()
        ol = make(offsets, budget, rec, max_in_flight=1)
        await asyncio.wait_for(ol.run(), HANG_S)
        assert_closed(timers.made[0])
        return ol, budget, rec

    ol, budget, rec = run(main())
    assert_opened_in_order(paths, rec, n)
    t0 = rec.scheduled[0]  # offset 0
    assert rec.max_in_flight == 1 and rec.max_loop_in_flight == 1
    sent = sorted(rec.sent, key=lambda s: s.item)
    assert [s.delayed for s in sent] == [False] + [True] * (n - 1)
    assert ol.delayed == n - 1 and ol.sent == budget.admitted == n
    for s, off in zip(sent[1:], offsets[1:], strict=True):
        # a delayed send's lag is measured from the slot freeing, after its arrival's time
        # (the 20 ms hold ends after the last arrival's) and after the previous send ended
        assert rec.scheduled[s.item] == t0 + off
        assert t0 + off <= rec.finished[s.item - 1] <= s.scheduled_ns <= s.sent_ns
    # the first opened as reserved, every later one by _done when its slot freed
    assert paths.opened_by == {"run": 1, "done": n - 1}
    assert paths.delayed_by["done"] == n - 2  # each freed slot taken, the next head waits
    assert sum(paths.delayed_by.values()) == n - 1
    assert early_sends(rec) == []


def test_cap_on_time_callback_marks_the_head_delayed_and_done_opens_it(
    run: Runner[Any], timers: TimerSpy, paths: PathSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first send lasts until the second arrival's on-time callback has marked it delayed
    at the cap. ``_AHEAD_NS`` is raised so that the 50 ms wait is all fine timer: whether the
    wait reaches it does not depend on a ms-precise coarse wake-up."""
    monkeypatch.setattr(load, "_AHEAD_NS", 1_000 * MS)
    offsets = [0, 50 * MS, 50 * MS, 50 * MS]
    n = len(offsets)

    async def main() -> tuple[OpenLoop[int], Recorder]:
        delayed = asyncio.Event()
        paths.on_delay = delayed.set
        rec = Recorder(gates={0: delayed})
        ol = make(offsets, Budget(), rec, max_in_flight=1)
        await asyncio.wait_for(ol.run(), HANG_S)
        assert_closed(timers.made[0])
        return ol, rec

    ol, rec = run(main())
    t0 = rec.scheduled[0]
    assert paths.delayed_by == {"timer": 1, "done": n - 2}
    assert paths.opened_by == {"run": 1, "done": n - 1}
    assert (paths.on_time, paths.coarse_waits) == (1, 0)
    assert timers.waits == 1  # delayed heads wait for _done, not for the fine timer
    assert_opened_in_order(paths, rec, n)
    sent = sorted(rec.sent, key=lambda s: s.item)
    assert [s.delayed for s in sent] == [False] + [True] * (n - 1)
    assert ol.delayed == n - 1 and ol.sent == n
    assert rec.max_in_flight == 1 and rec.max_loop_in_flight == 1
    for s, off in zip(sent[1:], offsets[1:], strict=True):
        assert t0 + off - _LEAD_MAX_NS <= s.scheduled_ns <= s.sent_ns


def test_cap_done_opens_the_delayed_head_when_the_slot_frees(
    run: Runner[Any], timers: TimerSpy, paths: PathSpy
) -> None:
    """At ``max_in_flight=1`` the first send lasts until 40 ms; the second arrival (10 ms)
    is marked delayed, then opened by ``_done`` as the first task ends, its
    ``scheduled_ns`` reset to that moment (its send lag then excludes the cap's delay)."""
    released_at: list[int] = []

    async def main() -> tuple[int, OpenLoop[int], Recorder]:
        loop = asyncio.get_running_loop()
        released = asyncio.Event()
        rec = Recorder(gates={0: released})
        ol = make([0, 10 * MS], Budget(), rec, max_in_flight=1)

        def release() -> None:
            released_at.append(now())
            released.set()

        t0 = now()
        loop.call_later(0.04, release)
        await asyncio.wait_for(ol.run(t0), HANG_S)
        assert_closed(timers.made[0])
        return t0, ol, rec

    t0, ol, rec = run(main())
    gate = rec.reserved[1]
    assert rec.scheduled[1] == t0 + 10 * MS  # as reserved
    assert gate.delayed and ol.delayed == 1 and ol.sent == 2
    # reset when the slot freed: after the release, after the first send returned
    assert t0 + 10 * MS < released_at[0] <= rec.finished[0] <= gate.scheduled_ns
    assert [o.gate for o in paths.opened] == [rec.reserved[0], gate]
    assert [o.by for o in paths.opened] == ["run", "done"]
    assert gate.scheduled_ns <= paths.opened[1].at_ns <= gate.sent_ns
    assert sum(paths.delayed_by.values()) == 1 and paths.delayed_by["done"] == 0
    assert [s.item for s in rec.sent if s.delayed] == [1]


def test_open_due_in_order_at_the_cap_and_when_stopped(run: Runner[Any]) -> None:
    """``_open_due`` / ``poll`` / ``_done`` directly, on gates reserved by hand (no run(),
    so no fine timer is armed)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        rec, budget = Recorder(hold_s=60.0), Budget()
        ol = make([], budget, rec, max_in_flight=1)

        def reserve(item: int, t_ns: int) -> tuple[SendGate, asyncio.Task[None]]:
            gate = SendGate(loop, t_ns)
            task = loop.create_task(rec(item, gate))
            ol._queue.append((gate, task))
            return gate, task

        t = now()
        (g0, t0), (g1, t1), (g2, _) = reserve(0, t), reserve(1, t), reserve(2, t + 60_000 * MS)
        await asyncio.sleep(0)  # the tasks start: each waits at its gate
        assert rec.reserved == {0: g0, 1: g1, 2: g2} and ol.sent == 0
        ol.poll()  # g0 opens; g1 is due too but finds the cap: delayed
        assert g0.opened.result() is True and g0.sent_ns > 0
        assert not g1.opened.done() and g1.delayed and not g2.delayed
        assert ol.sent == 1 and ol.in_flight == 1 and ol.delayed == 1
        assert ol._tasks == {t0}
        ol.poll()  # a delayed head is left to _done
        ol._open_due()  # still at the cap: counted once
        assert ol.delayed == 1 and not g1.opened.done() and ol.sent == 1
        await asyncio.sleep(0)  # t0 resumes: sent
        assert [s.item for s in rec.sent] == [0]
        lead = ol._lead_ns
        t0.cancel()
        await asyncio.wait([t0])  # _done (registered first) ran: the slot freed, g1 opened
        assert ol._lead_ns == lead  # a delayed gate's lag teaches the lead nothing
        assert ol._tasks == {t1}
        assert g1.opened.result() is True and ol.sent == 2 and ol.delayed == 1
        assert g1.sent_ns >= g1.scheduled_ns >= t  # reset to when the slot freed
        assert not g2.opened.done() and ol._queue[0][0] is g2  # not due
        ol.poll()
        assert not g2.opened.done() and ol.sent == 2
        await asyncio.sleep(0)  # t1 resumes: sent
        assert [s.item for s in rec.sent] == [0, 1]
        t1.cancel()
        await asyncio.wait([t1])
        g3, _ = reserve(3, t)  # due, behind g2 (not due): waits, in order
        ol._open_due()
        assert not g3.opened.done()
        budget.stop()
        g2.scheduled_ns = t  # due now, under the cap, but stopped
        ol._open_due()
        ol.poll()
        assert not g2.opened.done() and not g3.opened.done() and ol.sent == 2
        assert ol._drop_queue() == 2
        assert g2.opened.result() is False and g3.opened.result() is False
        await asyncio.wait(list(ol._tasks))
        assert ol.in_flight == 0
        assert sorted(rec.dropped) == [2, 3] and [s.item for s in rec.sent] == [0, 1]

    run(main())


def test_open_due_learns_the_lead_within_bounds(
    run: Runner[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each on-time open moves the lead by lag / 8, clamped to ``[0, _LEAD_MAX_NS]``; a lag
    of ``_LEAD_MAX_NS`` or more (a stall, not wake-up latency) teaches it nothing. On a
    fake clock, so the lags are exact."""
    clock = [10**12]
    monkeypatch.setattr(load, "_perf_ns", lambda: clock[0])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        rec = Recorder()
        ol = make([], Budget(), rec)

        def open_with_lag(lag_ns: int) -> None:
            gate = SendGate(loop, clock[0] - lag_ns)
            ol._queue.append((gate, loop.create_task(rec(len(rec.reserved), gate))))
            ol._open_due()
            assert gate.opened.result() is True and gate.sent_ns == clock[0]

        ol._lead_ns = _LEAD_MAX_NS - 1_000
        open_with_lag(400_000)  # +50 us: clamped
        assert ol._lead_ns == _LEAD_MAX_NS
        ol._lead_ns = 1_000
        open_with_lag(10 * MS)  # far too late to be wake-up latency
        assert ol._lead_ns == 1_000
        open_with_lag(80_000)
        assert ol._lead_ns == 11_000
        open_with_lag(-10_000)  # opened 10 us early (within the lead): the lead shrinks
        assert ol._lead_ns == 9_750
        await asyncio.wait(list(ol._tasks))
        assert ol.sent == 4 and ol.in_flight == 0

    run(main())


def test_send_gate_hold_wait_open_cancel(run: Runner[Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        g = SendGate(loop, 123)
        assert (g.scheduled_ns, g.delayed, g.sent_ns, g.opened.done()) == (123, False, 0, False)
        calls: list[tuple[bool, int]] = []
        g.hold(lambda: calls.append((g.opened.done(), g.sent_ns)))
        assert calls == [] and g.sent_ns == 0
        before = now()
        g.open()  # the held write runs inside open(), the gate open and stamped
        assert calls == [(True, g.sent_ns)] and before <= g.sent_ns <= now()
        assert g.opened.result() is True
        stamped = g.sent_ns
        g.open()  # again: no second write, no restamp
        g.cancel()  # too late: stays open
        assert len(calls) == 1 and g.sent_ns == stamped and g.opened.result() is True
        late: list[int] = []
        before = now()
        g.hold(lambda: late.append(g.sent_ns))  # already open: restamped, written at once
        assert late == [g.sent_ns] and g.sent_ns >= before > stamped
        assert await g.wait() is True and g.sent_ns >= late[0]

        c = SendGate(loop, 0)
        never: list[int] = []
        c.hold(lambda: never.append(1))
        waiter = loop.create_task(c.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        c.cancel()  # the held write is dropped; waiters get False
        assert await waiter is False
        c.open()  # too late: stays closed
        c.hold(lambda: never.append(2))
        assert never == [] and c.opened.result() is False and c.sent_ns == 0
        assert await c.wait() is False and c.sent_ns == 0

        w = SendGate(loop, 0)
        waiter = loop.create_task(w.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        w.open()
        opened_at = w.sent_ns
        assert await waiter is True and w.sent_ns >= opened_at > 0  # restamped on resume

    run(main())


# --- 5: _TimerFd and _FineTimer directly ----------------------------------------------------


timerfd_only = pytest.mark.skipif(not LINUX, reason=NO_TIMERFD)


@dataclass
class OnTime:
    """An ``on_time`` callback that notes when it ran and returns ``value``."""

    value: bool = True
    at: list[int] = field(default_factory=list)

    def __call__(self) -> bool:
        self.at.append(now())
        return self.value


@timerfd_only
def test_timerfd_past_time_fires_at_once_with_on_time_result(run: Runner[Any]) -> None:
    async def main() -> None:
        tfd = _TimerFd(asyncio.get_running_loop())
        try:
            yes, no, zero = OnTime(True), OnTime(False), OnTime(True)
            assert await asyncio.wait_for(tfd.wait_until(now() - 10 * MS, yes), HANG_S) is True
            assert await asyncio.wait_for(tfd.wait_until(now() - 1, no), HANG_S) is False
            assert await asyncio.wait_for(tfd.wait_until(0, zero), HANG_S) is True  # not disarm
            assert (len(yes.at), len(no.at), len(zero.at)) == (1, 1, 1)
        finally:
            tfd.close()

    run(main())


@timerfd_only
def test_timerfd_fires_no_earlier_than_its_time(run: Runner[Any]) -> None:
    async def main() -> None:
        tfd = _TimerFd(asyncio.get_running_loop())
        try:
            for _ in range(5):
                on = OnTime()
                target = now() + 3 * MS
                assert await asyncio.wait_for(tfd.wait_until(target, on), HANG_S) is True
                assert on.at[0] >= target
        finally:
            tfd.close()

    run(main())


@timerfd_only
@pytest.mark.parametrize("first_ms", [5, 30], ids=["earlier-first", "later-first"])
def test_timerfd_rearm_cancels_the_pending_wait(run: Runner[Any], first_ms: int) -> None:
    """One wait at a time: each ``wait_until`` re-arms the timer and cancels the pending
    future, whose ``on_time`` never runs (OpenLoop re-arms while a wait is pending when
    ``poll()`` opened the head first: see the poll test's ``timers.overlaps``)."""

    async def main() -> None:
        tfd = _TimerFd(asyncio.get_running_loop())
        try:
            on1, on2 = OnTime(), OnTime(False)
            start = now()
            f1 = tfd.wait_until(start + first_ms * MS, on1)
            t2 = start + 15 * MS
            f2 = tfd.wait_until(t2, on2)
            assert await asyncio.wait_for(f2, HANG_S) is False
            assert on2.at[0] >= t2  # the re-armed time, not the superseded one
            await asyncio.sleep((start + 45 * MS - now()) / 1e9)  # past both times
            assert f1.cancelled() and on1.at == []
            assert len(on2.at) == 1
        finally:
            tfd.close()

    run(main())


@timerfd_only
def test_timerfd_rearm_clears_an_expiry_not_yet_read(run: Runner[Any]) -> None:
    """A wait in the past expires at once; re-armed before the loop reads the fd, the stale
    expiry must not fire the new wait early (timerfd_settime resets the count and
    ``_ready`` ignores the EAGAIN); a spurious ``_ready`` call is ignored too."""

    async def main() -> None:
        tfd = _TimerFd(asyncio.get_running_loop())
        try:
            stale, on = OnTime(), OnTime()
            f1 = tfd.wait_until(now() - 10 * MS, stale)
            target = now() + 10 * MS
            f2 = tfd.wait_until(target, on)
            tfd._ready()  # nothing to read yet: a no-op
            assert not f2.done() and on.at == []
            assert await asyncio.wait_for(f2, HANG_S) is True
            assert on.at[0] >= target
            assert f1.cancelled() and stale.at == []
        finally:
            tfd.close()

    run(main())


class LoopRecorder:
    """Stands in for the loop given to ``_TimerFd``: notes its reader calls (uvloop's loop
    takes no attribute patches, and its ``remove_reader`` returns None)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, events: list[tuple[str, int]]) -> None:
        self._loop, self._events = loop, events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    def add_reader(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        self._events.append(("add_reader", fd))
        self._loop.add_reader(fd, callback, *args)

    def remove_reader(self, fd: int) -> bool:
        self._events.append(("remove_reader", fd))
        return self._loop.remove_reader(fd)


@timerfd_only
def test_timerfd_close_removes_the_reader_then_closes_the_fd(
    run: Runner[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        events: list[tuple[str, int]] = []
        tfd = _TimerFd(cast(asyncio.AbstractEventLoop, LoopRecorder(loop, events)))
        fd = tfd._fd
        os.fstat(fd)  # open
        pending = tfd.wait_until(now() + 60_000 * MS, OnTime())
        real_close = os.close

        def spy_close(f: int) -> None:
            events.append(("close", f))
            real_close(f)

        monkeypatch.setattr(os, "close", spy_close)
        try:
            tfd.close()
        finally:
            monkeypatch.setattr(os, "close", real_close)
        # the reader goes while the fd is still open (epoll/libuv must not poll a closed fd)
        assert events == [("add_reader", fd), ("remove_reader", fd), ("close", fd)]
        with pytest.raises(OSError):
            os.fstat(fd)
        if isinstance(loop, asyncio.SelectorEventLoop):  # its remove_reader says if it was set
            assert loop.remove_reader(fd) is False
        await asyncio.sleep(0.005)
        assert not pending.done()  # a wait pending at close is dropped, not resolved

    run(main())


def test_fine_timer_picks_timerfd_on_linux_else_the_thread(run: Runner[Any]) -> None:
    async def main() -> type:
        timer = load._fine_timer(asyncio.get_running_loop())
        try:
            on = OnTime()
            assert await asyncio.wait_for(timer.wait_until(now() + MS, on), HANG_S) is True
            assert len(on.at) == 1
        finally:
            timer.close()
        return type(timer)

    kind = run(main())
    monotonic = time.get_clock_info("perf_counter").implementation.endswith("(CLOCK_MONOTONIC)")
    assert kind is (_TimerFd if LINUX and monotonic else _FineTimer)


def open_timerfds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd, gone by now
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[timerfd]"
    return n


class NoReaderLoop:
    """A loop without ``add_reader`` (as asyncio's base and proactor loops)."""

    def add_reader(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        raise NotImplementedError


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc/self/fd")
def test_fine_timer_falls_back_to_the_thread_without_leaking_the_timerfd() -> None:
    """``_fine_timer`` catches NotImplementedError from a loop without ``add_reader`` and
    falls back to the helper thread; the timerfd created before ``add_reader`` failed must
    be closed, not leaked (one fd per ``OpenLoop.run``)."""
    before = open_timerfds()
    timer = load._fine_timer(cast(asyncio.AbstractEventLoop, NoReaderLoop()))
    try:
        assert isinstance(timer, _FineTimer)
        assert open_timerfds() == before
    finally:
        timer.close()


def test_thread_timer_resolves_every_wait_with_on_time_result(run: Runner[Any]) -> None:
    """Unlike the timerfd, the helper thread queues waits: each resolves, in order."""

    async def main() -> None:
        timer = _FineTimer(asyncio.get_running_loop())
        try:
            start = now()
            ons = [OnTime(k % 2 == 0) for k in range(4)]
            targets = [start - MS, start + 2 * MS, start + 4 * MS, start + 6 * MS]
            futs = [timer.wait_until(t, on) for t, on in zip(targets, ons, strict=True)]
            results = await asyncio.wait_for(asyncio.gather(*futs), HANG_S)
            assert results == [True, False, True, False]
            assert all(on.at[0] >= t for on, t in zip(ons, targets, strict=True))
            assert [on.at[0] for on in ons] == sorted(on.at[0] for on in ons)
        finally:
            timer.close()
        timer._thread.join(HANG_S)
        assert not timer._thread.is_alive()

    run(main())


def test_fire_runs_on_time_only_for_a_pending_future(run: Runner[Any]) -> None:
    """A fine wait already resolved, or cancelled (a timerfd re-arm), must not run its
    on-time callback when the timer then comes due."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handled: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: handled.append(ctx))
        pending, on = loop.create_future(), OnTime(False)
        load._fire(pending, on)
        assert pending.result() is False and len(on.at) == 1
        load._resolve(pending)  # already done: left alone
        assert pending.result() is False
        stopped, cancelled, late = loop.create_future(), loop.create_future(), OnTime()
        load._resolve(stopped)
        cancelled.cancel()
        for fut in (stopped, cancelled):
            load._fire(fut, late)
        assert late.at == []
        assert stopped.result() is None and cancelled.cancelled()
        # through the loop, as the timers call it
        fut, on = loop.create_future(), OnTime()
        load._resolve(fut)
        loop.call_soon(load._fire, fut, on)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert on.at == [] and handled == []

    run(main())


# --- 6: a failing send or write -----------------------------------------------------------


@pytest.mark.parametrize("early", [False, True], ids=["after-its-gate", "before-its-gate"])
@pytest.mark.parametrize("max_in_flight", [None, 1], ids=["uncapped", "cap-1"])
def test_a_raising_send_is_logged_and_the_schedule_goes_on(
    run: Runner[Any],
    timers: TimerSpy,
    caplog: pytest.LogCaptureFixture,
    max_in_flight: int | None,
    early: bool,
) -> None:
    """A send raising once sent, or before its gate opened (its task ended while reserved:
    the gate still opens in turn and counts as sent): logged when the task is reaped."""
    caplog.set_level(logging.ERROR, logger=load.__name__)
    n = 12
    offsets = [k * MS for k in range(n)]
    failing = [k for k in range(n) if k % 3 == 1]
    unhandled: list[dict[str, Any]] = []

    async def main() -> tuple[OpenLoop[int], Budget, Recorder]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
        rec, budget = Recorder(fail=lambda item: item in failing, fail_early=early), Budget()
        ol = make(offsets, budget, rec, max_in_flight=max_in_flight)
        await asyncio.wait_for(ol.run(), HANG_S)  # does not raise
        gc.collect()  # an unretrieved task exception would be reported here
        await asyncio.sleep(0)
        return ol, budget, rec

    ol, budget, rec = run(main())
    sent = sorted(s.item for s in rec.sent)
    assert sent == [k for k in range(n) if not (early and k in failing)]
    assert ol.sent == budget.admitted == n and ol.in_flight == 0 and not ol._queue
    assert set(rec.finished) == set(range(n))
    failed = [r for r in caplog.records if r.getMessage() == "a send task raised"]
    assert sorted(r.exc_info[1].args for r in failed if r.exc_info and r.exc_info[1]) == [
        (k,) for k in failing
    ]
    assert all(r.levelno == logging.ERROR for r in failed)
    assert unhandled == []


def test_a_raising_write_does_not_stall_the_gates_behind_it(
    run: Runner[Any],
    paths: PathSpy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``SendGate.open`` logs a held write that raises (the request's own code fails it) and
    the pass goes on: the gates behind it open and ``run()`` ends."""
    monkeypatch.setattr(load, "_AHEAD_NS", 1_000 * MS)  # all three reserved at once
    offsets = [20 * MS + k * 50_000 for k in range(3)]
    unhandled: list[dict[str, Any]] = []

    async def main() -> tuple[OpenLoop[int], Holder]:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: unhandled.append(ctx))
        holder = Holder(paths, fail_write=lambda item: item == 1)
        ol = make(offsets, Budget(), holder)
        await asyncio.wait_for(ol.run(), HANG_S)  # 20 ms of schedule
        return ol, holder

    ol, holder = run(main())
    assert [w.item for w in holder.writes] == [0, 1, 2]
    assert holder.gates[2].opened.result() is True
    assert ol.sent == 3
    assert unhandled == []
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "an open-loop request's write raised"
    ]
