"""Go-style durations on the wire: ``"500ms"``, ``"90s"``, ``"2m"``, ``"1h30m"``.

A :class:`Duration` is a ``str`` (so the wire form is exactly what the user
wrote) that also knows its length in seconds::

    >>> Duration("1h30m").seconds
    5400.0

Accepted: one or more ``<number><unit>`` parts, number a decimal (``1.5h``),
unit one of ``ms``, ``s``, ``m``, ``h``; the total must be > 0. Rejected:
bare numbers (``90``, also as YAML ints), negative values, other units
(``us``, ``d``), spaces, and zero. The CRD uses :data:`PATTERN`, which
encodes the same rules (including "not zero"), so the API server and the
models agree.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

_PART = r"[0-9]+(\.[0-9]+)?(ms|s|m|h)"
# At least one part whose number has a non-zero digit, so "0s" and "0m0s" fail.
_NONZERO = r"([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)(ms|s|m|h)"
PATTERN = rf"^({_PART})*{_NONZERO}({_PART})*$"
"""The regular expression (RE2 / Python compatible) a duration string matches."""

MAX_LENGTH = 64
"""Longest accepted duration string (keeps API-server validation cost bounded)."""

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PARTS = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_WHOLE = re.compile(PATTERN)


def parse_duration(text: str) -> float:
    """Return the seconds in a Go-style duration, or raise ``ValueError``.

    >>> parse_duration("500ms")
    0.5
    """
    if not isinstance(text, str) or len(text) > MAX_LENGTH or not _WHOLE.fullmatch(text):
        raise ValueError(
            f"invalid duration {text!r}: expected a positive duration such as "
            "'500ms', '90s', '2m' or '1h30m' (units ms, s, m, h; no bare numbers; at most "
            f"{MAX_LENGTH} characters)"
        )
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _PARTS.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest exact Go-style string for whole milliseconds (``90.0`` -> ``"1m30s"``)."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise ValueError(f"duration must be > 0, got {seconds!r} s")
    out = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


class Duration(str):
    """A validated duration string; ``.seconds`` is its length as a float."""

    __slots__ = ("seconds",)
    seconds: float

    def __new__(cls, text: str) -> Duration:
        seconds = parse_duration(text)
        self = super().__new__(cls, text)
        self.seconds = seconds
        return self

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(strict=True),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "pattern": PATTERN, "maxLength": MAX_LENGTH}
