"""Sweep expansion on plain dicts: set a dotted camelCase path, list the points.

Pure helpers used by ``ExperimentSpec`` (validation and ``points()``); they
know nothing about the models::

    >>> set_path({"load": {"concurrency": 1}}, "load.concurrency", 8)
    {'load': {'concurrency': 8}}
    >>> sweep_points([("a", [1, 2]), ("b", ["x"])])
    [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from typing import Any


def set_path(doc: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` with ``path`` (``a.b.c``) set to ``value``.

    Missing or null intermediate objects are created.
    """
    out: dict[str, Any] = copy.deepcopy(dict(doc))
    node = out
    *parents, leaf = path.split(".")
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = copy.deepcopy(value)
    return out


def sweep_points(axes: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
    """The cartesian product of the axes as ``{path: value}`` dicts.

    The first axis varies slowest, values in the order given.
    """
    paths = [path for path, _ in axes]
    return [
        dict(zip(paths, combo, strict=True)) for combo in itertools.product(*(v for _, v in axes))
    ]
