"""Fixtures of the fuzz tests: one harness (event loop, servers) per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fuzztargets import Harness, harness


@pytest.fixture(scope="module")
def fuzz() -> Iterator[Harness]:
    with harness() as h:
        yield h
