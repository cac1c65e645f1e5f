"""SendTrigger: a held write runs inside fire(), stamped; cancel() sends nothing; wait()."""

from __future__ import annotations

import asyncio
import time

from benchop.loadgen.trigger import SendTrigger

now = time.perf_counter_ns


async def test_hold_wait_fire_cancel() -> None:
    loop = asyncio.get_running_loop()
    t = SendTrigger(loop, 123)
    assert (t.scheduled_ns, t.delayed, t.sent_ns, t.fired.done()) == (123, False, 0, False)
    calls: list[tuple[bool, int]] = []
    t.hold(lambda: calls.append((t.fired.done(), t.sent_ns)))
    assert calls == [] and t.sent_ns == 0
    before = now()
    t.fire()  # the held write runs inside fire(), the trigger fired and stamped
    assert calls == [(True, t.sent_ns)] and before <= t.sent_ns <= now()
    assert t.fired.result() is True
    stamped = t.sent_ns
    t.fire()  # again: no second write, no restamp
    t.cancel()  # too late: stays fired
    assert len(calls) == 1 and t.sent_ns == stamped and t.fired.result() is True
    late: list[int] = []
    before = now()
    t.hold(lambda: late.append(t.sent_ns))  # already fired: restamped, written at once
    assert late == [t.sent_ns] and t.sent_ns >= before > stamped
    assert await t.wait() is True and t.sent_ns >= late[0]

    c = SendTrigger(loop, 0)
    never: list[int] = []
    c.hold(lambda: never.append(1))
    waiter = loop.create_task(c.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    c.cancel()  # the held write is dropped; waiters get False
    assert await waiter is False
    c.fire()  # too late: stays cancelled
    c.hold(lambda: never.append(2))
    assert never == [] and c.fired.result() is False and c.sent_ns == 0
    assert await c.wait() is False and c.sent_ns == 0

    w = SendTrigger(loop, 0)
    waiter = loop.create_task(w.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    w.fire()
    fired_at = w.sent_ns
    assert await waiter is True and w.sent_ns >= fired_at > 0  # restamped on resume
