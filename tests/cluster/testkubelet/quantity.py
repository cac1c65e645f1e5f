"""Kubernetes resource quantities (``500m``, ``1Gi``, ``2e3``) as exact fractions."""

from __future__ import annotations

import math
import re
from fractions import Fraction

_SUFFIXES = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
_RE = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?))$")


def parse_quantity(text: str | int | float) -> Fraction:
    """``parse_quantity("500m") == Fraction(1, 2)``; raises ValueError on malformed input."""
    if isinstance(text, int | float):
        return Fraction(text)
    m = _RE.match(text.strip())
    if not m:
        raise ValueError(f"invalid quantity {text!r}")
    number = Fraction(m.group(1))
    if m.group(2):
        return number * Fraction(10) ** int(m.group(2)[1:])
    return number * _SUFFIXES[m.group(3) or ""]


def ceil_div(value: Fraction, divisor: Fraction) -> int:
    """The downward API's rounding: ``ceil(value / divisor)``."""
    return math.ceil(value / divisor)
