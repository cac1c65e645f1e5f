"""Retry delays after API errors: capped exponential backoff with full jitter.

One rule for every retry of a Kubernetes API call the operator makes: kopf's own requests
(``settings.networking.error_backoffs``, event posts) and the operator's client
(``benchop.operator.k8s``, whose ``kopf.TemporaryError`` delays kopf sleeps before retrying
a handler). Attempt ``n`` (0-based) waits a uniformly random time in
``[0, min(cap, base * 2**n)]`` ("full jitter": retries of many runs after one outage spread
out instead of arriving together), and never less than the server's ``Retry-After`` (capped
at :data:`RETRY_AFTER_MAX_S`).

    >>> delay(0, rand=lambda: 1.0), delay(3, rand=lambda: 0.5), delay(9, rand=lambda: 1.0)
    (1.0, 4.0, 30.0)
    >>> delay(0, retry_after=2.0, rand=lambda: 0.0)
    2.0
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

BASE_S = 1.0
"""The first attempt's ceiling."""
CAP_S = 30.0
"""No attempt's ceiling is higher."""
RETRY_AFTER_MAX_S = 120.0
"""A ``Retry-After`` longer than this is taken as this (a broken proxy must not stall runs)."""


def delay(
    attempt: int,
    *,
    retry_after: float | None = None,
    base: float = BASE_S,
    cap: float = CAP_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry ``attempt`` (0 = the first retry); ``rand()`` in [0, 1)."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), 62))
    jittered = ceiling * rand()
    if retry_after is not None and retry_after > 0:
        return max(jittered, min(retry_after, RETRY_AFTER_MAX_S))
    return jittered


def retry_after_s(header: str | None) -> float | None:
    """A ``Retry-After`` header's seconds (delta-seconds only, as the apiserver sends it).

    >>> [retry_after_s(h) for h in ("3", " 1.5 ", "Wed, 21 Oct 2015 07:28:00 GMT", "-1", None)]
    [3.0, 1.5, None, None, None]
    """
    if not header:
        return None
    try:
        value = float(header.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


class Backoffs:
    """``attempts`` delays drawn afresh by :func:`delay` each time it is iterated: kopf's
    ``settings.networking.error_backoffs`` takes an iterable and iterates it once per request,
    so every request gets its own jitter.

    >>> list(Backoffs(3, rand=lambda: 1.0)), len(Backoffs(3))
    ([1.0, 2.0, 4.0], 3)
    """

    def __init__(
        self,
        attempts: int,
        *,
        base: float = BASE_S,
        cap: float = CAP_S,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.attempts = attempts
        self.base = base
        self.cap = cap
        self.rand = rand

    def __iter__(self) -> Iterator[float]:
        for n in range(self.attempts):
            yield delay(n, base=self.base, cap=self.cap, rand=self.rand)

    def __len__(self) -> int:
        return self.attempts

    def __repr__(self) -> str:
        return f"Backoffs({self.attempts}, base={self.base}, cap={self.cap})"
