"""Log-linear histogram buckets (HDR-like, about two significant digits).

A value ``v >= 0`` falls into bucket ``key(v) = 64 * e + (v >> e)`` with
``e = max(0, v.bit_length() - 7)``: values below 128 get a bucket each, larger
values share a bucket with the others of the same top 7 bits. A bucket
``[lo, lo + w)`` has width ``w = 2**e`` and ``lo >= 64 * w``, so its midpoint
is within ``REL_ERROR = 1/128`` (0.78 %) of every value in it. Negative values
use ``-key(-v)``. Keys are stable, so histograms of different workers merge by
adding counts per key.

>>> import numpy as np
>>> keys(np.array([5, 1000, 1007]))
array([  5, 317, 317])
>>> midpoint(317)
1003.5
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SUB_BITS = 7
HALF = 1 << (SUB_BITS - 1)  # 64: sub-buckets per power of two beyond the linear range
REL_ERROR = 1.0 / (2 * HALF)  # |midpoint(key(v)) - v| <= REL_ERROR * |v|

IntArray = npt.NDArray[np.int64]


def _keys_nonneg(a: IntArray) -> IntArray:
    """Keys of non-negative values (vectorised)."""
    e = np.frexp(a.astype(np.float64))[1].astype(np.int64) - SUB_BITS
    np.maximum(e, 0, out=e)
    # float64 rounding can push a value just below 2**k into the next exponent.
    e -= ((a >> e) < HALF) & (e > 0)
    return (e << (SUB_BITS - 1)) + (a >> e)


def keys(values: IntArray) -> IntArray:
    """Bucket key of each value."""
    a = np.asarray(values, dtype=np.int64)
    if a.size and int(a.min()) < 0:
        neg = a < 0
        out = _keys_nonneg(np.abs(a))
        out[neg] = -out[neg]
        return out
    return _keys_nonneg(a)


def bounds(key: int) -> tuple[int, int]:
    """The values ``[lo, hi]`` (inclusive) of a bucket."""
    if key < 0:
        lo, hi = bounds(-key)
        return -hi, -lo
    if key < 2 * HALF:
        return key, key
    e = (key >> (SUB_BITS - 1)) - 1
    lo = (HALF + (key & (HALF - 1))) << e
    return lo, lo + (1 << e) - 1


def midpoint(key: int) -> float:
    """The value a bucket stands for in estimates: the middle of its bounds."""
    lo, hi = bounds(key)
    return (lo + hi) / 2
