"""Fine timers: call a function in the event loop at a ``perf_counter_ns`` time.

The event loop's own timers are precise to about a millisecond; an open loop sends on a
nanosecond schedule. A fine timer holds one armed time at a time:

- :meth:`FineTimer.arm` ``(t_ns, callback)`` replaces whatever was armed; a time already
  past fires at once;
- :meth:`FineTimer.disarm` cancels it;
- ``callback()`` runs as an event-loop callback, never for an arm that was replaced or
  disarmed, and never after :meth:`FineTimer.close`.

:class:`TimerFd` (Linux) is a timerfd the loop itself waits on, so the loop's ``epoll_wait``
wakes at the nanosecond time with no helper thread and no GIL hand-off in between.
:class:`ThreadTimer` (elsewhere, or a loop without ``add_reader``) is a helper thread that
sleeps until the time and hands the callback to the loop. :func:`fine_timer` picks.

    timer = fine_timer(asyncio.get_running_loop())
    timer.arm(time.perf_counter_ns() + 1_500_000, send)   # send() in 1.5 ms
    timer.close()
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["FineTimer", "ThreadTimer", "TimerFd", "fine_timer"]

log = logging.getLogger(__name__)
_perf_ns = time.perf_counter_ns

Callback = Callable[[], None]


class FineTimer(Protocol):
    """One armed time at a time (see the module doc)."""

    def arm(self, t_ns: int, callback: Callback) -> None: ...

    def disarm(self) -> None: ...

    def close(self) -> None: ...


class TimerFd:
    """Linux: a timerfd (through ctypes; ``os.timerfd_*`` needs Python 3.13) read by the loop."""

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
        self._callback: Callback | None = None
        try:
            loop.add_reader(fd, self._ready)
        except BaseException:  # e.g. a loop without add_reader: the caller falls back
            os.close(fd)
            raise

    def arm(self, t_ns: int, callback: Callback) -> None:
        self._callback = callback
        self._set(max(t_ns, 1))  # 0 would disarm the timer; a time in the past fires at once

    def disarm(self) -> None:
        self._callback = None
        self._set(0)

    def _set(self, t_ns: int) -> None:
        # Setting the time also resets an expiry the loop has not read yet: a replaced arm
        # never fires.
        self._spec.value_sec, self._spec.value_nsec = divmod(t_ns, 1_000_000_000)
        if self._settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def _ready(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiry count; clears readability
        except BlockingIOError:  # re-armed after it became readable: not due yet
            return
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()

    def close(self) -> None:
        self._callback = None
        self._loop.remove_reader(self._fd)  # before the fd goes: no poller may watch a closed fd
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


class ThreadTimer:
    """A helper thread that waits for the armed time and hands the callback to the loop.

    Every arm and disarm (in the loop) bumps a generation; the thread passes the generation
    it fired for along, and the loop runs the callback only if no arm or disarm came since.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._cond = threading.Condition()
        self._due = 0  # the armed time; 0: nothing to wait for
        self._generation = 0
        self._callback: Callback | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="benchop-arrivals", daemon=True)
        self._thread.start()

    def arm(self, t_ns: int, callback: Callback) -> None:
        with self._cond:
            self._generation += 1
            self._callback = callback
            self._due = max(t_ns, 1)
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._generation += 1
            self._callback = None
            self._due = 0

    def close(self) -> None:
        with self._cond:
            self._generation += 1
            self._callback = None
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._due:
                    self._cond.wait()
                    continue
                delay_ns = self._due - _perf_ns()
                if delay_ns > 0:
                    self._cond.wait(delay_ns / 1e9)
                    continue
                self._due = 0
                try:
                    self._loop.call_soon_threadsafe(self._fire, self._generation)
                except RuntimeError:  # the loop is closed
                    return

    def _fire(self, generation: int) -> None:
        if generation != self._generation:  # re-armed, disarmed or closed since
            return
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


def fine_timer(loop: asyncio.AbstractEventLoop) -> FineTimer:
    """A :class:`TimerFd` where Linux and the loop allow it, else a :class:`ThreadTimer`."""
    if sys.platform == "linux" and time.get_clock_info("perf_counter").implementation.endswith(
        "(CLOCK_MONOTONIC)"
    ):
        try:
            return TimerFd(loop)
        except (OSError, AttributeError, NotImplementedError) as exc:
            log.debug("no timerfd (%s): open-loop sends timed by a helper thread", exc)
    return ThreadTimer(loop)
