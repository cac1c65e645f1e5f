"""When an open-loop request leaves: its :class:`SendTrigger`.

The open loop (:class:`~benchop.loadgen.load.OpenLoop`) makes one per arrival and fires it
at the send time; the request's task hands it the write (:meth:`SendTrigger.hold`, on a
connection reserved ahead, ``benchop.loadgen.http``) or waits for it
(:meth:`SendTrigger.wait`, while still connecting); the client reads when the request left
and how late (``sent_ns - scheduled_ns``).

    trigger = SendTrigger(loop, scheduled_ns=t)
    trigger.hold(write)   # the write runs inside fire()
    trigger.fire()        # or cancel(): nothing is sent
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

__all__ = ["SendTrigger"]

log = logging.getLogger(__name__)
_perf_ns = time.perf_counter_ns


class SendTrigger:
    """When an open-loop request leaves.

    The request's task starts up to 10 ms before its send time, reserves a connection and
    hands the trigger its write (:meth:`hold`). Whoever fires the trigger at the send time,
    the fine timer's callback or a read that finds the time has come (:meth:`OpenLoop.poll`),
    writes the bytes there and then, not a task a loop iteration later.
    """

    __slots__ = ("_write", "delayed", "fired", "scheduled_ns", "sent_ns")

    def __init__(self, loop: asyncio.AbstractEventLoop, scheduled_ns: int) -> None:
        #: The send time (``perf_counter_ns``); for a delayed arrival, when its slot freed.
        self.scheduled_ns = scheduled_ns
        #: The arrival waited for a slot under ``max_in_flight``.
        self.delayed = False
        #: When the request left (its write, or the firing while it still connected);
        #: 0 until then.
        self.sent_ns = 0
        #: True once fired; False if it never will be (the phase stopped): nothing is sent.
        self.fired: asyncio.Future[bool] = loop.create_future()
        self._write: Callable[[], None] | None = None

    def hold(self, write: Callable[[], None]) -> None:
        """Call ``write`` when the trigger fires, in the firer's callback (now if fired)."""
        fired = self.fired
        if not fired.done():
            self._write = write
        elif not fired.cancelled() and fired.result():
            self.sent_ns = _perf_ns()
            write()

    async def wait(self) -> bool:
        """For a request with nothing to hold: True once fired (it starts now, which is
        its ``sent_ns``), False if the trigger will never fire."""
        if await self.fired:
            self.sent_ns = _perf_ns()
            return True
        return False

    def fire(self) -> None:
        """Fire and run the held write; a write that raises is logged (the request's own
        code must fail it), never raised into the firer."""
        if self.fired.done():
            return
        self.sent_ns = _perf_ns()
        self.fired.set_result(True)
        write, self._write = self._write, None
        if write is not None:
            try:
                write()
            except Exception:
                log.exception("an open-loop request's write raised")

    def cancel(self) -> None:
        """The request will not be sent."""
        self._write = None
        if not self.fired.done():
            self.fired.set_result(False)
