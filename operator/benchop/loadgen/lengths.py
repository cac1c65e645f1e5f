"""Token lengths drawn from a :class:`~benchop.api.workload.LengthDistribution`, seeded.

:func:`draw_lengths` is the pure rule: round to the nearest integer, then clamp to
``[max(min, 1), max]``. ``lognormal``'s ``mean``/``std`` are the lengths' own (in tokens):
the underlying normal has ``sigma**2 = ln(1 + std**2 / mean**2)`` and
``mu = ln(mean) - sigma**2 / 2``.

:class:`LengthStream` hands out one length per request from blocks drawn ahead (one numpy
call per :data:`BLOCK` requests, not one per request). Its generator is PCG64 seeded by
``SeedSequence(key)``: the key names the run's seed, what is drawn, the worker and the
attempt, so each worker has a stream of its own and a run is the same for the same seed.

    stream = LengthStream(dist, key=(seed, PROMPT, worker, attempt))
    n = stream.next()
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from benchop.api.workload import MAX_TOKENS, LengthDistribution

__all__ = ["BLOCK", "OUTPUT", "PREFIX", "PROMPT", "LengthStream", "draw_lengths", "rng_for"]

BLOCK = 1024
# what a stream draws (the second element of its key)
PROMPT = 1
OUTPUT = 2
PREFIX = 3


def rng_for(key: Sequence[int]) -> np.random.Generator:
    """A PCG64 generator for ``key`` (non-negative ints), the same on every host."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))


def draw_lengths(
    dist: LengthDistribution, rng: np.random.Generator, n: int
) -> npt.NDArray[np.int64]:
    """``n`` lengths from ``dist`` (see the module doc for the rules).

    >>> d = LengthDistribution(distribution="uniform", min=3, max=5)
    >>> sorted(set(draw_lengths(d, rng_for([0]), 100).tolist()))
    [3, 4, 5]
    """
    kind = dist.distribution
    if kind == "fixed":
        assert dist.mean is not None
        return np.full(n, dist.mean, dtype=np.int64)
    if kind == "uniform":
        assert dist.min is not None and dist.max is not None
        return rng.integers(dist.min, dist.max + 1, size=n, dtype=np.int64)
    assert dist.mean is not None and dist.std is not None
    if kind == "normal":
        x = rng.normal(dist.mean, dist.std, size=n)
    else:
        sigma2 = math.log1p((dist.std / dist.mean) ** 2)
        x = rng.lognormal(math.log(dist.mean) - sigma2 / 2, math.sqrt(sigma2), size=n)
    lo = max(dist.min or 1, 1)
    hi = dist.max if dist.max is not None else MAX_TOKENS
    return np.clip(np.rint(x), lo, hi).astype(np.int64)


class LengthStream:
    """One length per call of :meth:`next`, from blocks of :func:`draw_lengths`."""

    __slots__ = ("_block", "_dist", "_i", "_rng")

    def __init__(self, dist: LengthDistribution, key: Sequence[int]) -> None:
        self._dist = dist
        self._rng = rng_for(key)
        self._block: list[int] = []
        self._i = 0

    def fill(self) -> None:
        """Draw the next block now if the current one is used up (off the request path)."""
        if self._i >= len(self._block):
            self._block = draw_lengths(self._dist, self._rng, BLOCK).tolist()
            self._i = 0

    def next(self) -> int:
        i = self._i
        if i >= len(self._block):
            self._block = draw_lengths(self._dist, self._rng, BLOCK).tolist()
            i = 0
        self._i = i + 1
        return self._block[i]
