"""The kubelet's back-off for container restarts and image pulls (client-go flowcontrol.Backoff).

A crashed container is restarted at once the first time; each further crash waits ``base``,
``2*base``, ... up to ``cap``. A failed image pull (``first_at_once=False``) always waits:
``base``, ``2*base``, ... An entry idle for longer than ``2*cap`` (a container that ran fine for
10 minutes with the defaults) starts over. No jitter: tests may shorten ``base`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """``b = Backoff(10, 300); b.next(t)`` -> 0, 10, 20, 40, ... seconds to wait after a failure
    at time ``t`` (monotonic seconds)."""

    base: float
    cap: float
    first_at_once: bool = True
    _current: float = 0.0
    _last: float | None = None

    def next(self, now: float) -> float:
        """Record a failure at ``now``; return how long to wait before the next attempt."""
        if self._last is None or now - self._last > 2 * self.cap:
            self._current = self.base
            if self.first_at_once:
                delay = 0.0
            else:
                delay = self._current
                self._current = min(self._current * 2, self.cap)
        else:
            delay = self._current
            self._current = min(self._current * 2, self.cap)
        self._last = now + delay
        return delay

    def reset(self) -> None:
        self._current = 0.0
        self._last = None
