"""When a worker gives up: too many of its last requests failed (``load.maxFailureRatio``).

The window holds the outcomes of the worker's last ``load.failureWindow`` finished requests,
warmup and profiling alike (``cancelled`` ones, stopped by the worker itself, do not count).
It is exceeded once more than ``maxFailureRatio * failureWindow`` of them failed, so a dead
or broken target ends the run after about half a window of requests (the default ratio),
not after the whole phase, and a ratio of 1 never ends it.

>>> w = FailureWindow(ratio=0.5, size=4)
>>> [w.add(o) for o in ("ok", "timeout", "http_5xx", "timeout")]
[False, False, False, True]
>>> w.describe()[:58]
'3 of the last 4 requests failed (http_5xx: 1, timeout: 2);'
"""

from __future__ import annotations

from collections import Counter, deque

from benchop.loadgen.records import OK

__all__ = ["FailureWindow"]

_IGNORED = "cancelled"


class FailureWindow:
    """The outcomes of the last ``size`` requests; see the module doc."""

    __slots__ = (
        "_limit",
        "_outcomes",
        "_ratio",
        "_reasons",
        "_size",
        "exceeded",
        "failed",
        "last_error",
    )

    def __init__(self, *, ratio: float, size: int) -> None:
        self._ratio = ratio
        self._size = size
        self._limit = ratio * size
        self._outcomes: deque[str] = deque(maxlen=size)
        self._reasons: Counter[str] = Counter()
        #: Failed requests in the window.
        self.failed = 0
        #: True once the window was exceeded (stays True).
        self.exceeded = False
        #: The error of the last failed request.
        self.last_error: str | None = None

    def add(self, outcome: str, error: str | None = None) -> bool:
        """Account one finished request; True the first time the window is exceeded."""
        if outcome == _IGNORED:
            return False
        q = self._outcomes
        if len(q) == self._size:
            old = q[0]
            if old != OK:
                self.failed -= 1
                self._reasons[old] -= 1
        q.append(outcome)
        if outcome != OK:
            self.failed += 1
            self._reasons[outcome] += 1
            self.last_error = error
            if not self.exceeded and self.failed > self._limit:
                self.exceeded = True
                return True
        return False

    def describe(self) -> str:
        """What the window holds, for the run's failure message."""
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self._reasons.items()) if v > 0)
        last = f"; the last: {self.last_error[:300]}" if self.last_error else ""
        return (
            f"{self.failed} of the last {len(self._outcomes)} requests failed ({reasons}); "
            f"load.maxFailureRatio is {self._ratio:g} over load.failureWindow {self._size}{last}"
        )
