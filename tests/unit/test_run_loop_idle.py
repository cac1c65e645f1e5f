"""A run's next pass: a tick once workers publish, else at its next time-based check."""

from __future__ import annotations

import time

from benchop.api.models import BenchmarkRunSpec
from benchop.operator.handlers import runs
from benchop.operator.pods import PodView
from benchop.operator.scheduler import Scheduler
from benchop.operator.settings import OperatorSettings

SPEC = BenchmarkRunSpec.model_validate(
    {
        "target": {"url": "http://m:8000/v1", "model": "m"},
        "load": {"mode": "concurrency", "concurrency": 2, "workers": 2},
        "phases": {"profiling": {"requests": 10}},
    }
)
SETTINGS = OperatorSettings(stuck_after_s=60.0, default_deadline_s=3600.0)


def context(**fields: object) -> runs.RunContext:
    ctx = runs.RunContext("ns.r.uid", "ns", "r", "uid", 1, SPEC, None)  # type: ignore[arg-type]
    for key, value in fields.items():
        setattr(ctx, key, value)
    return ctx


def idle(ctx: runs.RunContext, now: float) -> float:
    services = runs.Services(settings=SETTINGS, api=None, snapshots=None, gates=None)  # type: ignore[arg-type]
    return runs._idle_s(services, ctx, now, 1.0)


async def _never(key: str) -> float | None:
    raise AssertionError(f"no pass expected ({key})")


def pending(name: str, reason: str | None) -> PodView:
    return PodView(name, 0, "Pending", False, 0, reason, "", None)


def test_a_waiting_run_sleeps_until_its_next_check() -> None:
    now = 1000.0
    started = time.time()
    # nothing due before the resync
    assert idle(context(next_resync=now + 60, started_at=started), now) == 60.0
    # a pod stuck pulling its image: until its grace ends
    stuck = context(
        next_resync=now + 60,
        started_at=started,
        pods={"p": pending("p", "ImagePullFailed")},
        stuck_since={"p": now - 50},
    )
    assert idle(stuck, now) == 10.0
    # refused pod creation: until stuck_after from the first refusal
    assert idle(context(next_resync=now + 60, refused_since=now - 30.5), now) == 29.5
    # the watchdog's deadline (an hour after the start)
    late = context(next_resync=now + 60, started_at=started - 3600 + 5)
    assert 4.0 < idle(late, now) <= 5.0
    # never less than a tick, even when something is overdue
    assert idle(context(next_resync=now - 5), now) == 1.0


async def test_a_run_whose_workers_publish_ticks_and_the_first_snapshot_wakes_it() -> None:
    ctx = context(next_resync=1060.0)
    woken: list[str] = []
    ctx.scheduler = Scheduler(lambda key: _never(key))
    ctx.scheduler.wake = woken.append  # type: ignore[method-assign]
    in_progress = {ctx.key: ctx}
    assert not runs.admit_snapshot(in_progress, "ns.other.uid")  # not a run in progress here
    assert woken == []
    assert runs.admit_snapshot(in_progress, ctx.key)
    assert woken == [ctx.key] and ctx.snapshot_seen
    assert runs.admit_snapshot(in_progress, ctx.key)  # later snapshots wake nothing
    assert woken == [ctx.key]
    assert idle(ctx, 1000.0) == 1.0
    assert idle(context(next_resync=1060.0, job_complete_at=999.0), 1000.0) == 1.0


def test_a_run_reading_its_workload_configmaps_wakes_for_the_next_read() -> None:
    doc = SPEC.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["workload"] = {"dataset": {"configMap": {"name": "rows", "key": "chat.jsonl"}}}
    spec = BenchmarkRunSpec.model_validate(doc)
    ctx = context(next_resync=1060.0, next_source_check=1005.0, spec=spec)
    assert idle(ctx, 1000.0) == 5.0
