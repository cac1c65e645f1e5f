"""Kubernetes label and field selectors: parse once, match many (pure, no I/O).

Label selectors follow the apimachinery string syntax::

    sel = parse_label_selector("app=vllm,tier!=db,env in (a,b),zone notin (x),gpu,!spot")
    sel.matches({"app": "vllm", "env": "a", "gpu": ""})   # True

Field selectors support ``=``, ``==`` and ``!=`` on a fixed set of fields (the
ones the API server supports for every resource plus ``spec.nodeName`` and
``status.phase`` for pods, ``involvedObject.*``, ``reason`` and ``type`` for events). Unknown fields
raise ``SelectorError`` like the API server's "field label not supported".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Operator = Literal["=", "!=", "in", "notin", "exists", "!"]

FIELDS = frozenset(
    {
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "status.phase",
        "involvedObject.kind",
        "involvedObject.name",
        "involvedObject.namespace",
        "involvedObject.uid",
        "reason",
        "type",
    }
)

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_EQUALITY = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


class SelectorError(ValueError):
    """The selector string cannot be parsed (the API server answers 400)."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "=":
                return present and value in self.values
            case "!=":
                return not present or value not in self.values
            case "in":
                return present and value in self.values
            case "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case "!":
                return not present


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, values: Mapping[str, str]) -> bool:
        return all(req.matches(values) for req in self.requirements)


def _split(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def parse_label_selector(text: str | None) -> Selector:
    """Parse ``a=b,c!=d,e in (f,g),h notin (i),j,!k``; empty or None selects everything."""
    requirements: list[Requirement] = []
    for part in _split(text or ""):
        if m := _SET.match(part):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            requirements.append(Requirement(m.group(1), m.group(2), values))  # type: ignore[arg-type]
        elif m := _EQUALITY.match(part):
            op: Operator = "!=" if m.group(2) == "!=" else "="
            requirements.append(Requirement(m.group(1), op, frozenset({m.group(3)})))
        elif m := _EXISTS.match(part):
            requirements.append(Requirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")
    return Selector(tuple(requirements))


def parse_field_selector(text: str | None) -> Selector:
    """Parse ``metadata.name=x,status.phase!=Running``; only ``FIELDS`` are allowed."""
    requirements: list[Requirement] = []
    for part in _split(text or ""):
        m = _EQUALITY.match(part)
        if m is None:
            raise SelectorError(f"invalid field selector: {part!r}")
        if m.group(1) not in FIELDS:
            raise SelectorError(f"field label not supported: {m.group(1)}")
        op: Operator = "!=" if m.group(2) == "!=" else "="
        requirements.append(Requirement(m.group(1), op, frozenset({m.group(3)})))
    return Selector(tuple(requirements))


def field_values(obj: Mapping[str, Any]) -> dict[str, str]:
    """The selectable fields of an object; absent fields read as "" (as in the API server)."""
    result: dict[str, str] = {}
    for path in FIELDS:
        node: Any = obj
        for key in path.split("."):
            node = node.get(key) if isinstance(node, Mapping) else None
        result[path] = "" if node is None else str(node)
    return result
