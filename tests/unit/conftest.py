"""Fixtures shared by the unit tests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from loops import Runner

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
    uvloop = None  # type: ignore[assignment]


@pytest.fixture(
    params=[
        "asyncio",
        pytest.param(
            "uvloop", marks=pytest.mark.skipif(uvloop is None, reason="uvloop not installed")
        ),
    ]
)
def run(request: pytest.FixtureRequest) -> Runner[Any]:
    """Runs a coroutine to completion on a fresh loop of each kind: asyncio's default loop
    and uvloop (sync tests, so pytest-asyncio's own loop is not involved)."""
    return uvloop.run if request.param == "uvloop" else asyncio.run
