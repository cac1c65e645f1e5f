"""The type of the ``run`` fixture (tests/unit/conftest.py): runs a coroutine on a fresh loop."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

R = TypeVar("R")
Runner = Callable[[Coroutine[Any, Any, R]], R]
