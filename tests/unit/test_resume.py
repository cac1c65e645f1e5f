"""benchop.core.resume: the coordinator's answer to a starting worker, and what a base means."""

from __future__ import annotations

import itertools

from benchagent.wire import MetricsSnapshot
from benchop.core.resume import decide, indices, point


def snap(
    state: str, *, phase: str = "profiling", inc: str = "uid-a", **kw: object
) -> MetricsSnapshot:
    return MetricsSnapshot(
        run="ns.r.1",
        worker=1,
        seq=1,
        state=state,  # type: ignore[arg-type]
        phase=phase,
        time_ns=0,
        elapsed_s=kw.pop("elapsed_s", 2.5),  # type: ignore[arg-type]
        n_pending=0,
        counters={"requests_total": 17},
        incarnation=inc,
        attempt=kw.pop("attempt", 1),  # type: ignore[arg-type]
    )


def test_an_earlier_pod_still_publishing_makes_the_new_one_wait() -> None:
    draining = snap("DRAINING")
    assert decide("uid-b", latest=draining, latest_age_s=1.0, complete=None) == ("wait", None)
    # its COMPLETE arrived: that is the base
    done = snap("COMPLETE")
    assert decide("uid-b", latest=done, latest_age_s=0.1, complete=done) == ("ready", done)


def test_an_earlier_pod_silent_for_the_silence_bound_is_gone() -> None:
    live, base = snap("LIVE"), snap("COMPLETE", inc="uid-0")
    assert decide("uid-b", latest=live, latest_age_s=10.0, complete=base) == ("ready", base)
    assert decide("uid-b", latest=live, latest_age_s=9.9, complete=base) == ("wait", None)


def test_a_container_restart_in_the_same_pod_never_waits_for_itself() -> None:
    own = snap("LIVE", inc="uid-b")
    assert decide("uid-b", latest=own, latest_age_s=0.5, complete=None) == ("ready", None)


def test_a_restarted_operator_waits_for_snapshots_before_saying_nothing() -> None:
    assert decide("uid-b", latest=None, latest_age_s=None, complete=None, listening_s=3.0) == (
        "wait",
        None,
    )
    assert decide("uid-b", latest=None, latest_age_s=None, complete=None, listening_s=11.0) == (
        "ready",
        None,
    )


def test_the_resume_point_of_a_base() -> None:
    p = point(snap("COMPLETE", attempt=3, elapsed_s=4.0))
    assert (p.warmup_done, p.start_passed, p.requests, p.elapsed_s, p.attempt) == (
        True,
        True,
        17,
        4.0,
        3,
    )
    at_gate = point(snap("COMPLETE", phase="gate"))
    assert (at_gate.warmup_done, at_gate.start_passed, at_gate.requests) == (True, False, 0)
    in_warmup = point(snap("COMPLETE", phase="warmup"))
    assert not in_warmup.warmup_done and in_warmup.requests == 0
    assert not point(None).warmup_done


def test_a_resumed_worker_sends_the_missing_indices_first_then_the_next() -> None:
    def first(n: int, below: int, done: set[int]) -> list[int]:
        return list(itertools.islice(indices(below, done), n))

    assert first(3, 0, set()) == [0, 1, 2]  # a fresh worker
    # records 0..4 and 6 in the checkpoint: 5 was in flight when the attempt died
    assert first(3, 0, {0, 1, 2, 3, 4, 6}) == [5, 7, 8]
    # a base of 10 requests, then records 10, 12 of this pod
    assert first(3, 10, {10, 12}) == [11, 13, 14]
