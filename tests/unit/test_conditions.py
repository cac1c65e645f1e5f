"""set_condition / get_condition: pure, metav1.Condition semantics."""

from __future__ import annotations

import copy
import re

from benchop.api import conditions as c
from benchop.api.models import Condition

T0 = "2024-05-01T12:00:00Z"
T1 = "2024-05-01T12:05:00Z"


def test_new_condition_is_appended() -> None:
    conds = c.set_condition(
        [],
        type=c.ACCEPTED,
        status=c.TRUE,
        reason="Valid",
        message="ok",
        observed_generation=3,
        now=T0,
    )
    assert conds == [
        {
            "type": "Accepted",
            "status": "True",
            "reason": "Valid",
            "message": "ok",
            "lastTransitionTime": T0,
            "observedGeneration": 3,
        }
    ]
    Condition.model_validate(conds[0])


def test_same_status_keeps_transition_time_and_updates_the_rest() -> None:
    first = c.set_condition(
        [], type=c.PROFILING, status=c.TRUE, reason="A", message="m1", observed_generation=1, now=T0
    )
    second = c.set_condition(
        first,
        type=c.PROFILING,
        status=c.TRUE,
        reason="B",
        message="m2",
        observed_generation=2,
        now=T1,
    )
    assert second[0]["lastTransitionTime"] == T0
    assert (second[0]["reason"], second[0]["message"], second[0]["observedGeneration"]) == (
        "B",
        "m2",
        2,
    )


def test_status_change_sets_new_transition_time() -> None:
    first = c.set_condition([], type=c.SUCCEEDED, status=c.UNKNOWN, reason="Running", now=T0)
    second = c.set_condition(
        first, type=c.SUCCEEDED, status=c.FALSE, reason="Failed", message="x", now=T1
    )
    assert second[0]["lastTransitionTime"] == T1
    assert second[0]["status"] == "False"


def test_returns_a_new_list_and_leaves_input_alone() -> None:
    conds = c.set_condition([], type=c.ACCEPTED, status=c.TRUE, reason="Valid", now=T0)
    conds = c.set_condition(conds, type=c.WORKERS_READY, status=c.FALSE, reason="Starting", now=T0)
    before = copy.deepcopy(conds)
    after = c.set_condition(conds, type=c.ACCEPTED, status=c.FALSE, reason="InvalidSpec", now=T1)
    assert conds == before
    assert after is not conds
    assert all(a is not b for a, b in zip(after, conds, strict=True))
    assert [x["type"] for x in after] == ["Accepted", "WorkersReady"], "order is kept"
    assert after[1] == conds[1]


def test_duplicates_collapse_to_one() -> None:
    dup = [
        {
            "type": "Accepted",
            "status": "True",
            "reason": "a",
            "message": "",
            "lastTransitionTime": T0,
        },
        {
            "type": "Accepted",
            "status": "False",
            "reason": "b",
            "message": "",
            "lastTransitionTime": T0,
        },
    ]
    out = c.set_condition(dup, type=c.ACCEPTED, status=c.TRUE, reason="c", now=T1)
    assert len(out) == 1 and out[0]["lastTransitionTime"] == T0


def test_default_now_is_rfc3339_utc() -> None:
    conds = c.set_condition(None, type=c.TELEMETRY_DEGRADED, status=c.TRUE, reason="Simulated")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", conds[0]["lastTransitionTime"])
    assert "observedGeneration" not in conds[0]


def test_get_condition_and_is_true() -> None:
    conds = c.set_condition([], type=c.RESULTS_AVAILABLE, status=c.TRUE, reason="PubSub", now=T0)
    got = c.get_condition(conds, c.RESULTS_AVAILABLE)
    assert got is not None and got["reason"] == "PubSub"
    got["reason"] = "changed"
    assert conds[0]["reason"] == "PubSub", "get_condition returns a copy"
    assert c.get_condition(conds, c.SUCCEEDED) is None
    assert c.get_condition(None, c.SUCCEEDED) is None
    assert c.is_true(conds, c.RESULTS_AVAILABLE)
    assert not c.is_true(conds, c.SUCCEEDED)


def test_condition_types_are_documented() -> None:
    assert len(c.CONDITION_TYPES) == len(set(c.CONDITION_TYPES)) == 9
    doc = c.__doc__ or ""
    for name in c.CONDITION_TYPES:
        assert f"``{name}``" in doc
