"""kopf keeps its per-object memory only for Experiments (benchop.operator.main.Memories):
the runs, Jobs, pods and events of 10,000 runs in progress are not remembered by kopf."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from benchop.operator.main import Memories


def body(kind: str, uid: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"uid": uid, "name": uid, "namespace": "ns"}}


@pytest.mark.parametrize("kind", ["BenchmarkRun", "Job", "Pod", "Event", None])
async def test_event_only_kinds_are_not_remembered(kind: str | None) -> None:
    memories = Memories()
    memo = kopf.Memo(services="shared")
    raw = body(kind, "u1") if kind else {"metadata": {"uid": "u1"}}
    first = await memories.recall(raw, memobase=memo, noticed_by_listing=True)
    assert first.memo.services == "shared"  # the handler still gets the operator's memo
    assert first.noticed_by_listing
    assert list(memories.iter_all_memories()) == []
    assert await memories.recall(raw, memobase=memo) is not first


async def test_experiments_are_remembered_until_forgotten() -> None:
    memories = Memories()
    raw = body("Experiment", "e1")
    first = await memories.recall(raw, memobase=kopf.Memo())
    assert await memories.recall(raw) is first
    assert list(memories.iter_all_memories()) == [first]
    await memories.forget(raw)
    assert list(memories.iter_all_memories()) == []


async def test_an_ephemeral_recall_stays_ephemeral() -> None:
    memories = Memories()
    await memories.recall(body("Experiment", "e1"), ephemeral=True)  # admission's way
    assert list(memories.iter_all_memories()) == []
