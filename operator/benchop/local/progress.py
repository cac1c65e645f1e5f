"""The live progress view of a local run (rich), built from the workers' latest snapshots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text

from benchagent.wire import MetricsSnapshot
from benchop.metrics import names
from benchop.metrics.stats import summarize
from benchop.report import fmt


def _ttft_p50_ms(snap: MetricsSnapshot) -> float | None:
    s = snap.series.get(names.TTFT)
    if s is None or s.count == 0:
        return None
    return summarize(s).p50 / 1e6


def progress_view(
    run: str,
    phase: str,
    latest: Mapping[int, MetricsSnapshot],
    workers: int,
    events: Sequence[str],
) -> Group:
    """Phase, one row per worker (phase, requests, errors, req/s, TTFT p50), recent events."""
    table = Table(title=f"{run}: {phase}", title_justify="left")
    for col in (
        "worker",
        "state",
        "phase",
        "requests",
        "errors",
        "req/s",
        "TTFT p50 ms",
        "inflight",
    ):
        table.add_column(col, justify="left" if col in ("state", "phase") else "right")
    for w in range(workers):
        snap = latest.get(w)
        if snap is None:
            table.add_row(str(w), "starting", "-", "-", "-", "-", "-", "-")
            continue
        c = snap.counters
        done = c.get(names.REQUESTS, 0)
        rps = c.get(names.REQUESTS_OK, 0) / snap.elapsed_s if snap.elapsed_s > 0 else None
        table.add_row(
            str(w),
            snap.state,
            snap.phase,
            str(done),
            str(c.get(names.REQUESTS_FAILED, 0)),
            fmt(rps),
            fmt(_ttft_p50_ms(snap)),
            str(snap.n_pending),
        )
    return Group(table, *(Text(e, style="dim") for e in events[-6:]))
