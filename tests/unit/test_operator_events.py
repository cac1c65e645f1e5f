"""The Warning events the operator posts on runs (kubectl describe br lists them)."""

from __future__ import annotations

from datetime import UTC, datetime

from benchop.operator.events import MAX_MESSAGE, warning_event

NOW = datetime(2026, 12, 6, 20, 0, 0, tzinfo=UTC)


def test_a_warning_event_names_the_run_its_reason_and_message() -> None:
    assert warning_event("ns", "r1", "u-1", "TargetUnreachable", "refused", now=NOW) == {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": "ns", "generateName": "r1."},
        "involvedObject": {
            "apiVersion": "benchop.io/v1alpha1",
            "kind": "BenchmarkRun",
            "namespace": "ns",
            "name": "r1",
            "uid": "u-1",
        },
        "type": "Warning",
        "reason": "TargetUnreachable",
        "message": "refused",
        "source": {"component": "benchop-operator"},
        "reportingComponent": "benchop-operator",
        "reportingInstance": "benchop-operator",
        "action": "Reconcile",
        "firstTimestamp": "2026-12-06T20:00:00+00:00",
        "lastTimestamp": "2026-12-06T20:00:00+00:00",
        "count": 1,
    }


def test_a_long_message_keeps_its_start_and_end() -> None:
    message = "s" * 600 + "m" * 2000 + "e" * 600
    cut = warning_event("ns", "r", "u", "X", message, now=NOW)["message"]
    assert len(cut) <= MAX_MESSAGE and cut.startswith("s" * 500) and cut.endswith("e" * 500)
    assert "..." in cut
