"""The one label-selector renderer and the selectors built with it."""

from __future__ import annotations

from benchop.api.models import LabelSelector
from benchop.core.selectors import (
    experiment_selector,
    experiments_selector,
    label_selector,
    run_selector,
)


def test_label_selector_strings() -> None:
    assert label_selector(None) == ""
    assert label_selector(LabelSelector(match_labels={"b": "2", "a": "1"})) == "a=1,b=2"
    sel = LabelSelector.model_validate(
        {
            "matchLabels": {"app": "vllm"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "t", "operator": "NotIn", "values": ["x", "y"]},
                {"key": "gpu", "operator": "Exists"},
                {"key": "cpu", "operator": "DoesNotExist"},
            ],
        }
    )
    assert label_selector(sel) == "app=vllm,tier in (a,b),t notin (x,y),gpu,!cpu"


def test_selectors_of_runs_and_experiments() -> None:
    assert run_selector("r1") == "benchop.io/run=r1"
    assert experiment_selector("sweep") == "benchop.io/experiment=sweep"
    assert experiments_selector(["b", "a", "b"]) == "benchop.io/experiment in (a,b)"
    long = "x" * 80  # label values are bounded as the labels themselves are
    assert experiment_selector(long) == experiments_selector([long]).replace(" in (", "=")[:-1]
