"""The fine timers' contract, for both kinds: one armed time at a time; a time past fires at
once, none fires early; ``arm`` replaces and ``disarm`` cancels what was armed, even when it
had already come due; nothing fires after ``close``. Then which kind ``fine_timer`` picks.
Each under asyncio's default loop and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
from loops import Runner

from benchop.loadgen.timers import FineTimer, ThreadTimer, TimerFd, fine_timer

MS = 1_000_000
HANG_S = 5.0
now = time.perf_counter_ns
LINUX = sys.platform == "linux"


@pytest.fixture(
    params=["thread", pytest.param("timerfd", marks=pytest.mark.skipif(not LINUX, reason="Linux"))]
)
def kind(request: pytest.FixtureRequest) -> type[ThreadTimer] | type[TimerFd]:
    return ThreadTimer if request.param == "thread" else TimerFd


class Calls:
    """A callback that notes when it ran; ``wait()`` until it did."""

    def __init__(self) -> None:
        self.at: list[int] = []
        self.ran = asyncio.Event()

    def __call__(self) -> None:
        self.at.append(now())
        self.ran.set()

    async def wait(self) -> int:
        await asyncio.wait_for(self.ran.wait(), HANG_S)
        return self.at[0]


def hog(ns: int) -> None:
    """Keep the loop from running callbacks for ``ns`` (a helper thread runs meanwhile)."""
    end = now() + ns
    while now() < end:
        pass


async def settle(until_ns: int) -> None:
    """Let the loop run until ``until_ns`` (a callback due by then has had its chance)."""
    await asyncio.sleep(max(until_ns - now(), 0) / 1e9 + 0.005)


Kind = type[ThreadTimer] | type[TimerFd]


def with_timer(
    run: Runner[Any], kind: Kind, body: Callable[[FineTimer], Coroutine[Any, Any, None]]
) -> None:
    """``body(timer)`` for a timer of ``kind`` on a ``run`` loop, closing the timer after."""

    async def main() -> None:
        timer = kind(asyncio.get_running_loop())
        try:
            await body(timer)
        finally:
            timer.close()

    run(main())


def test_a_time_past_fires_at_once(run: Runner[Any], kind: Kind) -> None:
    async def body(timer: FineTimer) -> None:
        for t_ns in (now() - 10 * MS, now() - 1, 0):  # 0 too: it is a time, not "disarm"
            calls = Calls()
            timer.arm(t_ns, calls)
            await calls.wait()
            assert len(calls.at) == 1

    with_timer(run, kind, body)


def test_no_call_before_its_time(run: Runner[Any], kind: Kind) -> None:
    async def body(timer: FineTimer) -> None:
        for _ in range(5):
            calls, target = Calls(), now() + 3 * MS
            timer.arm(target, calls)
            assert await calls.wait() >= target

    with_timer(run, kind, body)


@pytest.mark.parametrize("first_ms", [5, 30], ids=["earlier-first", "later-first"])
def test_arm_replaces_what_was_armed(run: Runner[Any], kind: Kind, first_ms: int) -> None:
    async def body(timer: FineTimer) -> None:
        first, second = Calls(), Calls()
        start = now()
        timer.arm(start + first_ms * MS, first)
        timer.arm(start + 15 * MS, second)
        assert await second.wait() >= start + 15 * MS  # the replacing time
        await settle(start + 45 * MS)  # past both times
        assert first.at == [] and len(second.at) == 1

    with_timer(run, kind, body)


def test_a_replaced_arm_that_had_come_due_does_not_fire(run: Runner[Any], kind: Kind) -> None:
    """A time already past comes due at once; re-armed before the loop ran its callback,
    only the new time fires, at its time (the timerfd's expiry count is reset; the thread's
    hand-off is of an older generation)."""

    async def body(timer: FineTimer) -> None:
        stale, calls = Calls(), Calls()
        timer.arm(now() - 10 * MS, stale)
        hog(2 * MS)  # the thread, if any, has handed the past time to the loop
        target = now() + 10 * MS
        timer.arm(target, calls)
        assert await calls.wait() >= target
        await settle(target)
        assert stale.at == []

    with_timer(run, kind, body)


def test_disarm_cancels_even_a_time_that_had_come_due(run: Runner[Any], kind: Kind) -> None:
    async def body(timer: FineTimer) -> None:
        later, due = Calls(), Calls()
        timer.arm(now() + 5 * MS, later)
        timer.disarm()
        timer.arm(now() - MS, due)
        hog(2 * MS)
        timer.disarm()
        await settle(now() + 20 * MS)
        assert later.at == due.at == []
        calls = Calls()
        timer.arm(now() + MS, calls)  # armed again after a disarm: fires
        await calls.wait()

    with_timer(run, kind, body)


def test_nothing_fires_after_close(run: Runner[Any], kind: Kind) -> None:
    async def main() -> None:
        timer = kind(asyncio.get_running_loop())
        calls = Calls()
        timer.arm(now() + 5 * MS, calls)
        timer.close()
        await settle(now() + 20 * MS)
        assert calls.at == []

    run(main())


def test_the_thread_timer_ends_its_thread_on_close(run: Runner[Any]) -> None:
    async def main() -> threading.Thread:
        before = set(threading.enumerate())
        timer = ThreadTimer(asyncio.get_running_loop())
        (thread,) = set(threading.enumerate()) - before
        timer.arm(now() + 60_000 * MS, Calls())
        timer.close()
        return thread

    thread = run(main())
    thread.join(HANG_S)
    assert not thread.is_alive()


class LoopRecorder:
    """Stands in for the loop given to ``TimerFd``: notes its reader calls and whether the fd
    was still open (uvloop's loop takes no attribute patches)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.events: list[tuple[str, int, bool]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    def _note(self, what: str, fd: int) -> None:
        try:
            os.fstat(fd)
            self.events.append((what, fd, True))
        except OSError:
            self.events.append((what, fd, False))

    def add_reader(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        self._note("add_reader", fd)
        self._loop.add_reader(fd, callback, *args)

    def remove_reader(self, fd: int) -> bool:
        self._note("remove_reader", fd)
        return self._loop.remove_reader(fd)


@pytest.mark.skipif(not LINUX, reason="timerfd is Linux-only")
def test_timerfd_close_removes_the_reader_then_closes_the_fd(run: Runner[Any]) -> None:
    async def main() -> None:
        loop = LoopRecorder(asyncio.get_running_loop())
        tfd = TimerFd(cast(asyncio.AbstractEventLoop, loop))
        tfd.close()
        ((added, fd, _), (removed, fd2, open_then)) = loop.events
        assert (added, removed, fd2) == ("add_reader", "remove_reader", fd)
        assert open_then  # the reader goes while the fd is still open
        with pytest.raises(OSError):
            os.fstat(fd)

    run(main())


def test_fine_timer_picks_timerfd_on_linux_else_the_thread(run: Runner[Any]) -> None:
    async def main() -> type:
        timer = fine_timer(asyncio.get_running_loop())
        try:
            calls = Calls()
            timer.arm(now() + MS, calls)
            await calls.wait()
        finally:
            timer.close()
        return type(timer)

    kind = run(main())
    monotonic = time.get_clock_info("perf_counter").implementation.endswith("(CLOCK_MONOTONIC)")
    assert kind is (TimerFd if LINUX and monotonic else ThreadTimer)


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
    """A loop without ``add_reader`` gets the thread timer; the timerfd created before
    ``add_reader`` failed is closed, not leaked (one fd per ``OpenLoop.run``)."""
    before = open_timerfds()
    timer = fine_timer(cast(asyncio.AbstractEventLoop, NoReaderLoop()))
    try:
        assert isinstance(timer, ThreadTimer)
        assert open_timerfds() == before
    finally:
        timer.close()
