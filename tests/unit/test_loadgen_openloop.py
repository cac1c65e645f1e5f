"""OpenLoop as its senders see it: which triggers fire, when, in what order, how many.

Each scenario runs under asyncio's default loop and uvloop, with each kind of fine timer
(the Linux timerfd and the helper thread), given to the open loop through ``timer=`` and
watched (``Timers``): every armed time is noted, and a test may hold an arm back.

No assertion bounds precision (benchmarks under hack/ measure that): the one timing bound is
that a trigger never fires more than ``LEAD_MAX_NS`` before its scheduled time, which holds by
construction (the fine timer and ``poll()`` fire at most the learned lead early, the event loop
never earlier). Other time limits are generous ``wait_for`` timeouts that only catch a hang;
a few tests spread their events tens of ms apart so that their order does not depend on a
ms-precise wake-up.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from loops import Runner

from benchop.loadgen.load import (
    AHEAD_NS,
    LEAD_MAX_NS,
    Budget,
    OpenLoop,
    arrival_offsets,
    learn_lead,
)
from benchop.loadgen.timers import FineTimer, ThreadTimer, TimerFd
from benchop.loadgen.trigger import SendTrigger

MS = 1_000_000
HANG_S = 5.0  # generous: only catches a schedule that never returns
HELD_NS = 3_000 * MS  # an arm pushed this far never fires within a test
now = time.perf_counter_ns  # the clock the open loop schedules on


@dataclass
class Timers:
    """``OpenLoop(timer=...)``: makes the real timer of ``kind``, noting what the loop asks of
    it. ``hold(t_ns)`` True arms that time ``HELD_NS`` late instead (it never fires)."""

    kind: type[ThreadTimer] | type[TimerFd]
    arms: list[int] = field(default_factory=list)
    fired: int = 0  # callbacks the timer ran
    closed: int = 0
    hold: Callable[[int], bool] = lambda t_ns: False

    def __call__(self, loop: asyncio.AbstractEventLoop) -> FineTimer:
        return WatchedTimer(self, self.kind(loop))


@dataclass
class WatchedTimer:
    timers: Timers
    real: FineTimer

    def arm(self, t_ns: int, callback: Callable[[], None]) -> None:
        self.timers.arms.append(t_ns)

        def fired() -> None:
            self.timers.fired += 1
            callback()

        self.real.arm(t_ns + HELD_NS if self.timers.hold(t_ns) else t_ns, fired)

    def disarm(self) -> None:
        self.real.disarm()

    def close(self) -> None:
        self.timers.closed += 1
        self.real.close()


@pytest.fixture(
    params=[
        "thread",
        pytest.param("timerfd", marks=pytest.mark.skipif(sys.platform != "linux", reason="Linux")),
    ]
)
def timers(request: pytest.FixtureRequest) -> Timers:
    return Timers(ThreadTimer if request.param == "thread" else TimerFd)


@dataclass
class Sent:
    item: int
    scheduled_ns: int  # once fired (a delayed arrival's: when its slot freed)
    delayed: bool
    fired_ns: int  # trigger.sent_ns as fire() stamped it


@dataclass
class Recorder:
    """A ``send`` that notes when its trigger fired (a held write, run by the firer) and then,
    as the HTTP client's without an idle connection, ``await trigger.wait()``; holds
    ``hold_s`` (and until ``release[item]`` is set), and raises for ``fail`` items
    (``fail_early``: before its trigger fires)."""

    hold_s: float = 0.0
    fail: Callable[[int], bool] = lambda item: False
    fail_early: bool = False
    release: dict[int, asyncio.Event] = field(default_factory=dict)
    started: dict[int, int] = field(default_factory=dict)  # when each task started
    reserved: dict[int, SendTrigger] = field(default_factory=dict)
    scheduled: dict[int, int] = field(default_factory=dict)  # scheduled_ns at the start
    fired: list[int] = field(default_factory=list)  # items in the order their triggers fired
    sent: list[Sent] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)  # wait() gave False
    finished: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0

    async def __call__(self, item: int, trigger: SendTrigger | None) -> None:
        assert trigger is not None  # the open loop always passes one
        self.started[item] = now()
        self.reserved[item] = trigger
        self.scheduled[item] = trigger.scheduled_ns
        stamps: list[int] = []

        def note() -> None:
            self.fired.append(item)
            stamps.append(trigger.sent_ns)

        trigger.hold(note)
        try:
            if self.fail_early and self.fail(item):
                raise SendFailed(item)
            if not await trigger.wait():
                self.dropped.append(item)
                return
            self.sent.append(Sent(item, trigger.scheduled_ns, trigger.delayed, stamps[0]))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.fail(item):
                    raise SendFailed(item)
                if self.hold_s:
                    await asyncio.sleep(self.hold_s)
                if item in self.release:
                    await self.release[item].wait()
            finally:
                self.in_flight -= 1
        finally:
            self.finished[item] = now()

    def by_item(self) -> list[Sent]:
        return sorted(self.sent, key=lambda s: s.item)


class SendFailed(Exception):
    pass


@dataclass
class Holder:
    """A ``send`` as the HTTP client's with an idle connection: hands its trigger the write
    (``hold``) and waits for ``fired``; notes the order of events and what each write saw."""

    fail_write: Callable[[int], bool] = lambda item: False
    events: list[tuple[str, int]] = field(default_factory=list)
    writes: list[tuple[int, bool, int]] = field(default_factory=list)  # item, fired, sent_ns
    triggers: dict[int, SendTrigger] = field(default_factory=dict)
    tasks: dict[int, asyncio.Task[Any]] = field(default_factory=dict)

    async def __call__(self, item: int, trigger: SendTrigger | None) -> None:
        assert trigger is not None
        self.triggers[item] = trigger
        self.tasks[item] = asyncio.current_task()  # type: ignore[assignment]
        self.events.append(("hold", item))

        def write() -> None:
            fired = trigger.fired.done() and trigger.fired.result()
            self.writes.append((item, fired, trigger.sent_ns))
            self.events.append(("write", item))
            if self.fail_write(item):
                raise WriteFailed(item)

        trigger.hold(write)
        sent = await trigger.fired
        self.events.append(("resumed" if sent else "dropped", item))


class WriteFailed(Exception):
    pass


Sender = Callable[[int, SendTrigger | None], Coroutine[Any, Any, None]]


def make(
    offsets: Iterable[int], budget: Budget, send: Sender, timers: Timers, **kw: Any
) -> OpenLoop[int]:
    return OpenLoop(iter(offsets), budget, itertools.count().__next__, send, timer=timers, **kw)


def early(sent: Iterable[Sent]) -> list[tuple[int, int]]:
    """(item, ns early) of triggers fired more than ``LEAD_MAX_NS`` before their time."""
    return [
        (s.item, s.scheduled_ns - s.fired_ns)
        for s in sent
        if s.fired_ns < s.scheduled_ns - LEAD_MAX_NS
    ]


def assert_in_order(rec: Recorder, n: int) -> None:
    """Items 0..n-1 each sent once, fired in item order, none early."""
    assert sorted(s.item for s in rec.sent) == list(range(n))
    assert rec.fired == list(range(n))
    assert early(rec.sent) == []


async def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_S
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.001)


# --- on schedule: the coarse and fine timers, poll() -------------------------------------


def test_constant_schedule_sends_each_item_once_in_order(run: Runner[Any], timers: Timers) -> None:
    # two arrivals already past at t0, one at t0, then 30 at 2 ms gaps (an infinite
    # iterator, ended by the request budget)
    head = [-3 * MS, -1 * MS, 0]
    n = len(head) + 30
    expected = [*head, *itertools.islice(arrival_offsets(500.0, "constant", 0, 0.002), 30)]
    assert expected[3:5] == [2 * MS, 4 * MS]

    async def main() -> tuple[int, OpenLoop[int], Budget, Recorder]:
        rec, budget = Recorder(), Budget(requests=n)
        offsets = itertools.chain(head, arrival_offsets(500.0, "constant", 0, 0.002))
        ol = make(offsets, budget, rec, timers)
        t0 = now()
        await asyncio.wait_for(ol.run(t0), HANG_S)
        return t0, ol, budget, rec

    t0, ol, budget, rec = run(main())
    assert_in_order(rec, n)
    assert [rec.scheduled[k] for k in range(n)] == [t0 + off for off in expected]
    assert not any(s.delayed for s in rec.sent) and rec.dropped == []
    assert ol.sent == budget.admitted == n and ol.delayed == 0 and ol.in_flight == 0
    assert budget.closed and not budget.stopped
    assert 0 <= ol.lead_ns <= LEAD_MAX_NS
    assert timers.fired >= 1  # the 2 ms gaps went through the fine timer
    assert timers.closed == 1  # run() closed its timer


@pytest.mark.parametrize(
    ("first_ns", "gap_ns", "ahead_ns"),
    [
        # each arrival: the coarse loop timer to t - AHEAD_NS, then the fine timer
        (2 * AHEAD_NS, AHEAD_NS + 5 * MS, AHEAD_NS),
        # all within ahead_ns of t0: reserved at once (ahead_ns raised so that the first is
        # due long after all are reserved, whatever a slow machine's stalls)
        (200 * MS, 40_000, 1_000 * MS),
    ],
    ids=["coarse-then-fine", "close-arrivals-reserved-at-once"],
)
def test_coarse_and_fine_timers(
    run: Runner[Any], timers: Timers, first_ns: int, gap_ns: int, ahead_ns: int
) -> None:
    n = 20
    offsets = [first_ns + gap_ns * k for k in range(n)]

    async def main() -> tuple[int, OpenLoop[int], Recorder]:
        rec = Recorder()
        ol = make(offsets, Budget(), rec, timers, ahead_ns=ahead_ns)
        t0 = now()
        await asyncio.wait_for(ol.run(t0), HANG_S)
        return t0, ol, rec

    t0, ol, rec = run(main())
    assert_in_order(rec, n)
    assert [s.scheduled_ns for s in rec.by_item()] == [t0 + off for off in offsets]
    assert not any(s.delayed for s in rec.sent) and ol.sent == n and ol.delayed == 0
    assert timers.fired >= 1
    if ahead_ns > AHEAD_NS:
        assert max(rec.started.values()) < t0 + offsets[0]  # every task started first
        assert len(set(timers.arms)) == len(timers.arms) <= n  # each head's time armed once


def test_close_arrivals_hold_their_writes_and_fire_runs_them_in_order(
    run: Runner[Any], timers: Timers
) -> None:
    """Five arrivals within 0.2 ms: each task starts (and hands its trigger the write) before
    the first is due; the firer then runs each write, in order, fired and stamped, before the
    task resumes."""
    n = 5
    offsets = [100 * MS + k * 50_000 for k in range(n)]

    async def main() -> tuple[int, OpenLoop[int], Holder]:
        holder = Holder()
        ol = make(offsets, Budget(), holder, timers, ahead_ns=1_000 * MS)
        t0 = now()
        await asyncio.wait_for(ol.run(t0), HANG_S)
        return t0, ol, holder

    t0, ol, holder = run(main())
    ev = holder.events
    assert sorted(ev[: ev.index(("write", 0))]) == [("hold", k) for k in range(n)]
    assert [item for item, _, _ in holder.writes] == list(range(n))
    for item, fired, sent_ns in holder.writes:
        trigger = holder.triggers[item]
        assert fired and sent_ns == trigger.sent_ns > 0  # stamped by fire(), not restamped
        assert ev.index(("write", item)) < ev.index(("resumed", item))
        assert trigger.scheduled_ns == t0 + offsets[item] and not trigger.delayed
        assert trigger.sent_ns >= trigger.scheduled_ns - LEAD_MAX_NS
    assert all(t.done() and t.exception() is None for t in holder.tasks.values())
    assert ol.sent == n and ol.in_flight == 0


@dataclass
class Poll:
    head: SendTrigger | None  # the first trigger not fired yet when poll() was called
    t_ns: int  # just before the call
    after_ns: int  # just after it
    before: int  # ol.sent before and after
    after: int


def test_poll_fires_a_trigger_whose_time_has_come_without_the_fine_timer(
    run: Runner[Any], timers: Timers
) -> None:
    """Every arm is held (the timer fires nothing); a loop callback calls ``ol.poll()`` about
    every ms: a poll before the head's time fires nothing, one after it fires the head there
    and then, and arms the timer for the next head. The first is due 200 ms after the start,
    so that polls before its time happen even on a starved machine."""
    n = 4
    offsets = [(200 + 5 * k) * MS for k in range(n)]
    timers.hold = lambda t_ns: True
    polls: list[Poll] = []

    async def main() -> tuple[OpenLoop[int], Recorder]:
        loop = asyncio.get_running_loop()
        rec = Recorder()
        ol = make(offsets, Budget(), rec, timers, ahead_ns=1_000 * MS)

        def poller() -> None:
            waiting = [rec.reserved[k] for k in sorted(rec.reserved)]
            head = next((t for t in waiting if not t.fired.done()), None)
            before, t = ol.sent, now()
            ol.poll()
            polls.append(Poll(head, t, now(), before, ol.sent))
            if ol.sent < n:
                loop.call_later(0.001, poller)

        loop.call_soon(poller)
        await asyncio.wait_for(ol.run(), 2.0)  # < HELD_NS: the timer fired none
        return ol, rec

    ol, rec = run(main())
    assert_in_order(rec, n)
    assert timers.fired == 0 and ol.sent == n and ol.delayed == 0
    assert any(p.head is not None and p.after == p.before for p in polls)  # too early: none
    for p in polls:
        if p.head is None:
            assert p.after == p.before
            continue
        if p.after > p.before:  # it fired the head (and any due behind it)
            assert p.head.fired.done() and p.head.fired.result() is True
            assert p.after_ns >= p.head.scheduled_ns - LEAD_MAX_NS
        if p.t_ns >= p.head.scheduled_ns:  # past its time: poll must fire it
            assert p.after > p.before
    assert 1 <= len(timers.arms) == len(set(timers.arms)) <= n  # each head's time armed once


def test_a_busy_loop_polling_does_not_multiply_the_armed_times(
    run: Runner[Any], timers: Timers
) -> None:
    """A callback blocks from 3 ms before each head's time to just after it, then polls, so
    the head fires in poll() while its armed time has come (the helper thread's callback is
    queued behind the blocker; the timerfd is re-armed before the loop reads it). The stale
    arm must not arm a second time for the next head."""
    n = 8
    offsets = [(20 + 10 * k) * MS for k in range(n)]
    polled: list[int] = []

    async def main() -> OpenLoop[int]:
        loop = asyncio.get_running_loop()
        ol = make(offsets, Budget(), Recorder(), timers, ahead_ns=1_000 * MS)
        t0 = now()

        def block(k: int) -> None:
            while now() < t0 + offsets[k] + 300_000:
                pass
            before = ol.sent
            ol.poll()
            polled.append(ol.sent - before)
            if k + 1 < n:
                loop.call_later(max(t0 + offsets[k + 1] - 3 * MS - now(), 0) / 1e9, block, k + 1)

        loop.call_later((t0 + offsets[0] - 3 * MS - now()) / 1e9, block, 0)
        await asyncio.wait_for(ol.run(t0), HANG_S)
        return ol

    ol = run(main())
    assert ol.sent == n
    assert sum(polled) >= 1  # the construction worked at least once
    assert len(timers.arms) == len(set(timers.arms)) <= n


# --- Budget.stop() --------------------------------------------------------------------------


@dataclass
class StopAt:
    """``Budget.stop()`` that notes how many triggers had fired when it ran."""

    budget: Budget
    ol: OpenLoop[int] | None = None
    sent_at_stop: int | None = None

    def __call__(self) -> None:
        assert self.ol is not None
        self.sent_at_stop = self.ol.sent
        self.budget.stop()


def assert_stopped_cleanly(stop: StopAt, ol: OpenLoop[int], rec: Recorder) -> None:
    assert stop.sent_at_stop is not None, "stop() never ran"
    assert ol.sent == stop.sent_at_stop == len(rec.sent)  # nothing fired after the stop
    assert sorted(s.item for s in rec.sent) == list(range(ol.sent))
    # every reserved arrival not sent had its trigger cancelled: its send returned
    assert sorted(rec.dropped) == sorted(set(rec.reserved) - {s.item for s in rec.sent})
    for item in rec.dropped:
        assert rec.reserved[item].fired.result() is False and rec.reserved[item].sent_ns == 0
    assert set(rec.finished) == set(rec.reserved)  # every task ended, none hangs
    assert stop.budget.admitted == ol.sent  # the admitted-but-unsent arrivals rolled back
    assert stop.budget.stopped and stop.budget.closed and ol.in_flight == 0
    assert not any(s.delayed for s in rec.sent) and early(rec.sent) == []


def start(
    offsets: Iterable[int], send: Sender, timers: Timers, stop_s: float | None = None, **kw: Any
) -> tuple[OpenLoop[int], StopAt]:
    """An open loop whose budget a ``StopAt`` stops (after ``stop_s``, when given)."""
    budget = Budget()
    ol = make(offsets, budget, send, timers, **kw)
    stop = StopAt(budget, ol)
    if stop_s is not None:
        asyncio.get_running_loop().call_later(stop_s, stop)
    return ol, stop


def test_stop_during_the_schedule(run: Runner[Any], timers: Timers) -> None:
    # ten arrivals 5 ms apart, then one a minute away; stop() at 20 ms
    offsets = [k * 5 * MS for k in range(10)] + [60_000 * MS]

    async def main() -> tuple[StopAt, OpenLoop[int], Recorder]:
        rec = Recorder()
        ol, stop = start(offsets, rec, timers, stop_s=0.02)
        await asyncio.wait_for(ol.run(), HANG_S)  # returns: stop() woke its wait
        return stop, ol, rec

    stop, ol, rec = run(main())
    assert_stopped_cleanly(stop, ol, rec)
    assert 1 <= ol.sent <= 10 and timers.closed == 1


def test_stop_during_a_coarse_wait(run: Runner[Any], timers: Timers) -> None:
    async def main() -> tuple[StopAt, OpenLoop[int], Recorder]:
        rec = Recorder()
        ol, stop = start([0, 60_000 * MS, 60_001 * MS], rec, timers, stop_s=0.02)
        await asyncio.wait_for(ol.run(), HANG_S)
        return stop, ol, rec

    stop, ol, rec = run(main())
    assert_stopped_cleanly(stop, ol, rec)
    assert ol.sent == 1  # the first was due when reserved
    assert rec.reserved.keys() == {0}  # the second was admitted, then rolled back
    assert timers.arms == []  # no arrival ever waited at the head


@pytest.mark.parametrize("draining", [False, True], ids=["scheduling", "draining"])
def test_stop_while_the_head_waits(run: Runner[Any], timers: Timers, draining: bool) -> None:
    """The head's arm is held and ``stop()`` is called right after it: it must wake ``run()``
    (in a coarse wait for a later arrival, or waiting for the queue to empty), which cancels
    the reserved triggers. The arrivals are 200 ms apart so that a stall of the machine cannot
    make the second one due when reserved."""
    offsets = [0, 200 * MS, 400 * MS]  # within ahead_ns of t0: reserved at once
    if not draining:
        offsets += [1_200 * MS + k * MS for k in range(5)]  # a coarse wait of ~200 ms
    held: list[int] = []

    async def main() -> tuple[StopAt, OpenLoop[int], Recorder]:
        loop = asyncio.get_running_loop()
        rec = Recorder()
        ol, stop = start(offsets, rec, timers, ahead_ns=1_000 * MS)

        def hold_first(t_ns: int) -> bool:
            if held:
                return False
            held.append(t_ns)
            loop.call_soon(stop)
            return True

        timers.hold = hold_first
        await asyncio.wait_for(ol.run(), 2.0)  # would take 3 s if stop() did not wake it
        return stop, ol, rec

    stop, ol, rec = run(main())
    assert held, "no time was armed"
    assert_stopped_cleanly(stop, ol, rec)
    assert ol.sent == 1  # the first, due as run() reserved it
    assert sorted(rec.dropped) == [1, 2]  # the held head and the one behind it
    assert held == [rec.reserved[1].scheduled_ns - ol.lead_ns] == timers.arms
    assert timers.fired == 0
    assert draining or 3 not in rec.reserved  # admitted in its coarse wait, rolled back


@pytest.mark.parametrize("coarse_pending", [False, True], ids=["draining", "coarse-wait"])
def test_stop_cancels_the_queued_triggers(
    run: Runner[Any], timers: Timers, coarse_pending: bool
) -> None:
    """Four arrivals reserved for 0.5 s later, their tasks holding a write: ``stop()`` at 30 ms
    cancels their triggers (``fired`` is False, no write, each task returns on its own) and
    rolls back their admissions, and that of an arrival still in its coarse wait."""
    offsets = [0] + [500 * MS + k * 50_000 for k in range(4)]
    if coarse_pending:
        offsets.append(60_000 * MS)

    async def main() -> tuple[StopAt, OpenLoop[int], Holder]:
        holder = Holder()
        ol, stop = start(offsets, holder, timers, stop_s=0.03, ahead_ns=1_000 * MS)
        await asyncio.wait_for(ol.run(), HANG_S)
        return stop, ol, holder

    stop, ol, holder = run(main())
    assert stop.sent_at_stop == ol.sent == stop.budget.admitted == 1
    assert [item for item, _, _ in holder.writes] == [0]
    assert holder.triggers.keys() == set(range(5))
    for item in range(1, 5):
        trigger, task = holder.triggers[item], holder.tasks[item]
        assert trigger.fired.result() is False and trigger.sent_ns == 0
        assert ("dropped", item) in holder.events and ("write", item) not in holder.events
        assert task.done() and not task.cancelled() and task.exception() is None
    assert holder.tasks[0].done() and not holder.tasks[0].cancelled()
    assert ol.in_flight == 0


def test_stop_while_waiting_for_a_slot(run: Runner[Any], timers: Timers) -> None:
    """At ``max_in_flight=1`` the second arrival waits for the first send, which lasts until
    after ``stop()``: the waiting arrival is dropped (rolled back), not sent."""

    async def main() -> tuple[StopAt, OpenLoop[int], Recorder]:
        released = asyncio.Event()
        rec = Recorder(release={0: released})
        ol, stop = start([0, MS, 2 * MS], rec, timers, max_in_flight=1)

        async def stop_then_release() -> None:
            await until(lambda: 1 in rec.reserved and rec.reserved[1].delayed)
            stop()
            released.set()

        stopper = asyncio.create_task(stop_then_release())
        await asyncio.wait_for(ol.run(), HANG_S)
        await stopper
        return stop, ol, rec

    stop, ol, rec = run(main())
    assert_stopped_cleanly(stop, ol, rec)
    assert ol.sent == 1
    assert ol.delayed == 1  # it did wait for a slot, though it was dropped, never sent
    assert rec.reserved[1].delayed and sorted(rec.dropped) == [1, 2]


# --- max_in_flight --------------------------------------------------------------------------


def test_cap_delays_arrivals_while_a_send_is_in_flight(run: Runner[Any], timers: Timers) -> None:
    # every send holds 20 ms, arrivals come 1.9 ms apart: the second comes due while the
    # first is in flight; each later one is due, behind a delayed head, when the slot frees
    n, gap = 6, 1_900_000
    offsets = [k * gap for k in range(n)]

    async def main() -> tuple[OpenLoop[int], Budget, Recorder]:
        rec, budget = Recorder(hold_s=0.02), Budget()
        ol = make(offsets, budget, rec, timers, max_in_flight=1)
        await asyncio.wait_for(ol.run(), HANG_S)
        return ol, budget, rec

    ol, budget, rec = run(main())
    assert_in_order(rec, n)
    t0 = rec.scheduled[0]  # offset 0
    assert rec.max_in_flight == 1
    sent = rec.by_item()
    assert [s.delayed for s in sent] == [False] + [True] * (n - 1)
    assert ol.delayed == n - 1 and ol.sent == budget.admitted == n
    for s, off in zip(sent[1:], offsets[1:], strict=True):
        # a delayed send's lag counts from the slot freeing, after its arrival's time (the
        # 20 ms hold ends after the last arrival's) and after the previous send ended
        assert rec.scheduled[s.item] == t0 + off
        assert t0 + off <= rec.finished[s.item - 1] <= s.scheduled_ns <= s.fired_ns


def test_cap_the_head_marked_delayed_when_due_fires_when_the_slot_frees(
    run: Runner[Any], timers: Timers
) -> None:
    """The first send lasts until the second arrival, due 50 ms later through the fine timer,
    has been marked delayed at the cap; then each freed slot fires the next. ``ahead_ns`` is
    raised so that the 50 ms wait is all fine timer."""
    offsets = [0, 50 * MS, 50 * MS, 50 * MS]
    n = len(offsets)

    async def main() -> tuple[OpenLoop[int], Recorder]:
        marked = asyncio.Event()
        rec = Recorder(release={0: marked})
        ol = make(offsets, Budget(), rec, timers, max_in_flight=1, ahead_ns=1_000 * MS)

        async def mark_when_delayed() -> None:
            await until(lambda: 1 in rec.reserved and rec.reserved[1].delayed)
            marked.set()

        watcher = asyncio.create_task(mark_when_delayed())
        await asyncio.wait_for(ol.run(), HANG_S)
        await watcher
        return ol, rec

    ol, rec = run(main())
    assert_in_order(rec, n)
    t0 = rec.scheduled[0]
    sent = rec.by_item()
    assert [s.delayed for s in sent] == [False] + [True] * (n - 1)
    assert ol.delayed == n - 1 and ol.sent == n and rec.max_in_flight == 1
    for s, off in zip(sent[1:], offsets[1:], strict=True):
        assert t0 + off - LEAD_MAX_NS <= s.scheduled_ns <= s.fired_ns
    # one armed time, which marked the head delayed; delayed heads wait for a slot, not a time
    assert len(timers.arms) == 1 and timers.fired == 1


def test_cap_a_freed_slot_fires_the_delayed_head_and_its_lag_counts_from_then(
    run: Runner[Any], timers: Timers
) -> None:
    """At ``max_in_flight=1`` the first send lasts until 40 ms; the second arrival (10 ms) is
    marked delayed, then fired as the first send ends, its ``scheduled_ns`` reset to that
    moment (its send lag then excludes the cap's delay)."""
    released_at: list[int] = []

    async def main() -> tuple[int, OpenLoop[int], Recorder]:
        loop = asyncio.get_running_loop()
        released = asyncio.Event()
        rec = Recorder(release={0: released})
        ol = make([0, 10 * MS], Budget(), rec, timers, max_in_flight=1)

        def release() -> None:
            released_at.append(now())
            released.set()

        t0 = now()
        loop.call_later(0.04, release)
        await asyncio.wait_for(ol.run(t0), HANG_S)
        return t0, ol, rec

    t0, ol, rec = run(main())
    trigger = rec.reserved[1]
    assert rec.scheduled[1] == t0 + 10 * MS  # as reserved
    assert trigger.delayed and ol.delayed == 1 and ol.sent == 2 and rec.fired == [0, 1]
    # reset when the slot freed: after the release, after the first send returned
    assert t0 + 10 * MS < released_at[0] <= rec.finished[0] <= trigger.scheduled_ns
    assert trigger.scheduled_ns <= rec.sent[-1].fired_ns <= trigger.sent_ns


def test_the_lead_is_learned_within_bounds() -> None:
    """Each on-time send moves the lead by lag / 8, within ``[0, LEAD_MAX_NS]``; a lag of
    ``LEAD_MAX_NS`` or more either way (a stall, not wake-up latency) teaches nothing."""
    assert learn_lead(LEAD_MAX_NS - 1_000, 400_000) == LEAD_MAX_NS  # +50 us: clamped
    assert learn_lead(1_000, 10 * MS) == 1_000  # far too late to be wake-up latency
    assert learn_lead(1_000, LEAD_MAX_NS) == learn_lead(1_000, -LEAD_MAX_NS) == 1_000
    assert learn_lead(1_000, 80_000) == 11_000
    assert learn_lead(11_000, -10_000) == 9_750  # fired 10 us early: the lead shrinks
    assert learn_lead(0, -8_000) == 0


# --- a failing send or write ----------------------------------------------------------------


@pytest.mark.parametrize("early_fail", [False, True], ids=["after-its-trigger", "before"])
@pytest.mark.parametrize("max_in_flight", [None, 1], ids=["uncapped", "cap-1"])
def test_a_raising_send_is_logged_and_the_schedule_goes_on(
    run: Runner[Any],
    timers: Timers,
    caplog: pytest.LogCaptureFixture,
    max_in_flight: int | None,
    early_fail: bool,
) -> None:
    """A send raising once sent, or before its trigger fired (its task ended while reserved:
    the trigger still fires in turn and counts as sent): logged when the task is reaped."""
    caplog.set_level(logging.ERROR)
    n = 12
    failing = [k for k in range(n) if k % 3 == 1]
    unhandled: list[dict[str, Any]] = []

    async def main() -> tuple[OpenLoop[int], Budget, Recorder]:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: unhandled.append(ctx))
        rec, budget = Recorder(fail=lambda item: item in failing, fail_early=early_fail), Budget()
        ol = make([k * MS for k in range(n)], budget, rec, timers, max_in_flight=max_in_flight)
        await asyncio.wait_for(ol.run(), HANG_S)  # does not raise
        gc.collect()  # an unretrieved task exception would be reported here
        await asyncio.sleep(0)
        return ol, budget, rec

    ol, budget, rec = run(main())
    assert sorted(s.item for s in rec.sent) == [
        k for k in range(n) if not (early_fail and k in failing)
    ]
    assert ol.sent == budget.admitted == n and ol.in_flight == 0
    assert set(rec.finished) == set(range(n))
    failed = [r for r in caplog.records if r.getMessage() == "a send task raised"]
    assert sorted(r.exc_info[1].args for r in failed if r.exc_info and r.exc_info[1]) == [
        (k,) for k in failing
    ]
    assert unhandled == []


def test_a_raising_write_does_not_stall_the_triggers_behind_it(
    run: Runner[Any], timers: Timers, caplog: pytest.LogCaptureFixture
) -> None:
    """``SendTrigger.fire`` logs a held write that raises (the request's own code fails it) and
    the pass goes on: the triggers behind it fire and ``run()`` ends."""
    offsets = [20 * MS + k * 50_000 for k in range(3)]
    unhandled: list[dict[str, Any]] = []

    async def main() -> tuple[OpenLoop[int], Holder]:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: unhandled.append(ctx))
        holder = Holder(fail_write=lambda item: item == 1)
        ol = make(offsets, Budget(), holder, timers, ahead_ns=1_000 * MS)
        await asyncio.wait_for(ol.run(), HANG_S)
        return ol, holder

    ol, holder = run(main())
    assert [item for item, _, _ in holder.writes] == [0, 1, 2]
    assert holder.triggers[2].fired.result() is True and ol.sent == 3
    assert unhandled == []
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "an open-loop request's write raised"
    ]
