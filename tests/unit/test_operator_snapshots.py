"""The operator's snapshot collector, its live view and the gate timeout bound."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import msgspec
from test_results import snap

from benchagent.transport import Publisher
from benchagent.wire import MetricsSnapshot
from benchop.operator.gatebridge import gate_timeout_s
from benchop.operator.settings import OperatorSettings
from benchop.operator.snapshots import SnapshotCollector, live_status


def test_live_status_is_bounded_and_camel_case() -> None:
    live = live_status(
        {0: snap(0, "LIVE"), 1: snap(1, "LIVE")}, phase="Profiling", workers_connected=2, now="t"
    )
    assert live["requests"] == 20 and live["rps"] == 10.0 and live["workersConnected"] == 2
    assert live["ttftP50Ms"] > 0 and live["phase"] == "Profiling"
    assert len(json.dumps(live)) < 1000


def test_gate_timeout_flag_is_an_upper_bound_on_the_spec() -> None:
    assert gate_timeout_s(30.0, 10.0) == 10.0  # --gate-timeout=10s caps a 30s spec
    assert gate_timeout_s(5.0, 10.0) == 5.0  # the spec's (or the CRD default's) shorter one
    assert gate_timeout_s(5.0, None) == 5.0  # no flag: the spec


async def _until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


async def test_collector_keeps_only_accepted_runs_and_bounds_message_size() -> None:
    in_progress = {"ns.a"}
    collector = SnapshotCollector(
        "127.0.0.1", 0, accept=in_progress.__contains__, max_message_bytes=1 << 20
    )
    assert collector._sub._sock.maxmsgsize == 1 << 20
    collector.start()
    pub = Publisher(collector.endpoint)
    seq = 0

    def of(run: str, state: str = "LIVE") -> MetricsSnapshot:
        return msgspec.structs.replace(snap(0, state), run=run, seq=seq)

    def both_sent() -> bool:
        nonlocal seq
        seq += 1
        pub.publish(of("ns.stranger"))
        pub.publish(of("ns.a"))
        return bool(collector.latest("ns.a")) and collector.rejected > 0

    try:
        await _until(both_sent)
        assert collector.latest("ns.stranger") == {} and collector.complete("ns.stranger") == {}
        in_progress.discard("ns.a")  # the run was released: a late snapshot is not kept again
        collector.forget("ns.a")
        rejected = collector.rejected
        seq += 1
        assert pub.publish(of("ns.a", "COMPLETE"))
        await _until(lambda: collector.rejected > rejected)
        assert collector.latest("ns.a") == {} and collector.complete("ns.a") == {}
    finally:
        pub.close()
        collector.close()


def test_collector_default_max_message_size_is_the_settings_default() -> None:
    collector = SnapshotCollector("127.0.0.1", 0)
    try:
        assert collector._sub._sock.maxmsgsize == OperatorSettings().snapshot_max_message_bytes
        assert OperatorSettings().snapshot_max_message_bytes == 256 * 1024 * 1024
    finally:
        collector.close()
