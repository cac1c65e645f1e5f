"""Fixtures for integration tests: an emulated Kubernetes API and in-process kopf operators."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kube.harness import (
    Kube,
    OperatorFactory,
    kopf_tasks,
    run_operator,
    start_emulator,
    stop_operator,
)


@pytest.fixture
async def kube() -> AsyncIterator[Kube]:
    """A fresh emulator (our resources registered, namespace ``default`` created) + client."""
    async with start_emulator() as kube:
        yield kube


@pytest.fixture
async def operator_task(kube: Kube) -> AsyncIterator[OperatorFactory]:
    """Start kopf operators against ``kube``: ``task = operator_task(registry=reg, ...)``.

    Takes ``run_operator``'s keyword arguments. Every operator still running at teardown is
    stopped (``task.cancel()``); an operator that crashed fails the test here, and so does
    any kopf task left behind after the stop.
    """
    tasks: list[asyncio.Task[None]] = []

    def start(**kwargs: Any) -> asyncio.Task[None]:
        task = run_operator(kube.url, **kwargs)
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        await stop_operator(task)
    assert kopf_tasks() == [], "kopf left tasks running after the operator stopped"
