"""API models: durations, camelCase round trip, strictness, semantic rules, sweeps, error text."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from benchop.api import models
from benchop.api.durations import Duration, format_duration, parse_duration
from benchop.api.models import (
    BenchmarkRun,
    BenchmarkRunSpec,
    Experiment,
    LoadSpec,
    PhaseBound,
    format_validation_error,
    load_manifest,
    to_wire,
)
from benchop.api.sweep import set_path, sweep_points
from benchop.api.workload import LengthDistribution

ROOT = Path(__file__).resolve().parents[2]


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / name).read_text())
    return doc


def error_text(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        load_manifest(data)
    return format_validation_error(info.value)


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("90s", 90.0),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("1m30s250ms", 90.25),
        ("0s100ms", 0.1),
        ("0.5s", 0.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert Duration(text).seconds == pytest.approx(seconds)
    assert Duration(text) == text


@pytest.mark.parametrize(
    "text", ["", "90", "0s", "0m0s", "0.0s", "-1s", "1d", "5us", "5 s", " 5s", ".5s", "s", "5S"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_parse_duration_rejects_overlong_and_non_strings() -> None:
    with pytest.raises(ValueError):
        parse_duration("1s" * 40)
    with pytest.raises(ValueError):
        parse_duration(90)  # type: ignore[arg-type]


def test_format_duration_round_trips() -> None:
    assert format_duration(90) == "1m30s"
    assert format_duration(5400.5) == "1h30m500ms"
    for seconds in (0.001, 1, 59.999, 3600, 86_400):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
    with pytest.raises(ValueError):
        format_duration(0)


def test_duration_fields_keep_the_wire_string() -> None:
    load = LoadSpec.model_validate({"concurrency": 2, "requestTimeout": "1h30m"})
    assert isinstance(load.request_timeout, Duration)
    assert load.request_timeout.seconds == 5400.0
    assert to_wire(load)["requestTimeout"] == "1h30m"
    assert LoadSpec(concurrency=1).request_timeout.seconds == 300.0


def test_duration_field_error_names_field_and_value() -> None:
    doc = example("run.yaml")
    doc["spec"]["phases"]["profiling"] = {"duration": "10 s"}
    text = error_text(doc)
    assert text.startswith("spec.phases.profiling.duration: invalid duration '10 s'")


# --------------------------------------------------------------------------- wire form


def _keys(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [k for k, v in node.items() for k in (k, *_keys(v))]
    if isinstance(node, list):
        return [k for item in node for k in _keys(item)]
    return []


@pytest.mark.parametrize("name", ["run.yaml", "experiment.yaml"])
def test_camel_case_round_trip(name: str) -> None:
    doc = example(name)
    obj = load_manifest(doc)
    wire = to_wire(obj)
    assert not [k for k in _keys(wire) if "_" in k], "snake_case leaked onto the wire"
    assert type(obj).model_validate(wire) == obj
    # Everything the user wrote survives unchanged; defaults are filled in.
    assert _contains(wire, doc)


def _contains(big: Any, small: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and _contains(big[k], v) for k, v in small.items()
        )
    return bool(big == small)


def test_python_names_are_accepted_too() -> None:
    load = LoadSpec(mode="rate", rate=5.0, max_in_flight=10, request_timeout=Duration("5s"))
    assert to_wire(load) == {
        "mode": "rate",
        "rate": 5.0,
        "arrival": "poisson",
        "workers": 1,
        "requestTimeout": "5s",
        "maxInFlight": 10,
        "maxFailureRatio": 0.5,
        "failureWindow": 50,
    }
    assert models.SloSpec.model_validate({"e2eMs": 900}).e2e_ms == 900
    assert to_wire(models.SloSpec(e2e_ms=900)) == {"e2eMs": 900.0}


def test_example_run_matches_the_brief() -> None:
    run = load_manifest(example("run.yaml"))
    assert isinstance(run, BenchmarkRun)
    spec = run.spec
    assert spec.target.url is None and spec.target.model == "mock-llm"
    assert (spec.workload.prompt_tokens, spec.workload.output_tokens) == (128, 64)
    assert (spec.load.mode, spec.load.concurrency, spec.load.workers) == ("concurrency", 8, 2)
    assert spec.phases.warmup == PhaseBound(requests=16)
    assert spec.phases.profiling.duration == "10s"
    assert spec.gates.baseline and spec.gates.timeout.seconds == 5.0
    assert spec.slo is not None and (spec.slo.ttft_ms, spec.slo.itl_ms) == (200, 50)


def test_example_experiment_points() -> None:
    exp = load_manifest(example("experiment.yaml"))
    assert isinstance(exp, Experiment)
    points = exp.spec.points()
    assert [p for p, _ in points] == [{"load.concurrency": c} for c in (1, 4, 16)]
    assert [s.load.concurrency for _, s in points] == [1, 4, 16]
    assert all(s.phases.profiling.requests == 50 for _, s in points)


# --------------------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("spec.load.concurrency", "8", "spec.load.concurrency: Input should be a valid integer"),
        ("spec.load.concurrency", True, "spec.load.concurrency: Input should be a valid integer"),
        ("spec.gates.baseline", "true", "spec.gates.baseline: Input should be a valid boolean"),
        ("spec.gates.baseline", 1, "spec.gates.baseline: Input should be a valid boolean"),
        ("spec.target.model", 7, "spec.target.model: Input should be a valid string"),
        ("spec.load.workers", 2.0, "spec.load.workers: Input should be a valid integer"),
        ("spec.workload.seed", 2**63, "spec.workload: seed: 9223372036854775808 does not fit"),
    ],
)
def test_specs_are_strict(path: str, value: Any, message: str) -> None:
    doc = set_path(example("run.yaml"), path, value)
    assert message in error_text(doc)


def test_specs_are_read_as_the_api_server_reads_them() -> None:
    """Proven on the real kube-apiserver by tests/cluster/test_16_fuzz_specs.py: a null field
    or map value is pruned, then defaulted."""
    doc = set_path(example("run.yaml"), "spec.load.requestTimeout", None)
    doc = set_path(doc, "spec.pod", {"nodeSelector": {"a": "b", "c": None}, "image": None})
    run = load_manifest(doc)
    assert isinstance(run, BenchmarkRun)
    assert run.spec.load.request_timeout == "300s"
    assert run.spec.pod is not None and run.spec.pod.node_selector == {"a": "b"}
    assert "spec.target.model: Field required" in error_text(
        set_path(example("run.yaml"), "spec.target.model", None)
    )
    # extraBody is free-form (x-kubernetes-preserve-unknown-fields): no schema for its values,
    # so the API server prunes none of them, and a null is sent as written
    doc = set_path(example("run.yaml"), "spec.request", {"extraBody": {"stop": None, "n": 1}})
    run = load_manifest(doc)
    assert isinstance(run, BenchmarkRun)
    assert run.spec.request.extra_body == {"stop": None, "n": 1}


def test_ints_are_accepted_for_floats() -> None:
    run = load_manifest(example("run.yaml"))
    assert isinstance(run, BenchmarkRun)
    spec = run.spec
    assert spec.slo is not None and isinstance(spec.slo.ttft_ms, float)


def test_unknown_spec_field_is_rejected() -> None:
    doc = set_path(example("run.yaml"), "spec.load.concurency", 8)
    assert error_text(doc) == "spec.load.concurency: Extra inputs are not permitted (got 8)"


def test_status_tolerates_unknown_fields() -> None:
    status = models.BenchmarkRunStatus.model_validate(
        {"phase": "Profiling", "futureField": 1, "live": {"rps": 3.5, "newThing": "x"}}
    )
    assert status.phase is models.Phase.PROFILING
    assert status.live is not None and status.live.rps == 3.5
    assert "futureField" not in to_wire(status)


# --------------------------------------------------------------------------- semantic rules


def test_format_validation_error_example_from_the_brief() -> None:
    doc = set_path(example("run.yaml"), "spec.load.concurrency", -3)
    assert error_text(doc) == (
        "spec.load.concurrency: Input should be greater than or equal to 1 (got -3)"
    )


@pytest.mark.parametrize(
    ("load", "message"),
    [
        ({"mode": "concurrency"}, "concurrency is required when mode is concurrency"),
        ({"mode": "rate"}, "rate is required when mode is rate"),
        ({"mode": "rate", "rate": 2, "concurrency": 3}, models.LOAD_RULES[2][1]),
        ({"concurrency": 3, "rate": 2}, "rate is only allowed when mode is rate"),
        ({"concurrency": 3, "maxInFlight": 2}, "maxInFlight is only allowed when mode is rate"),
    ],
)
def test_load_mode_rules(load: dict[str, Any], message: str) -> None:
    doc = set_path(example("run.yaml"), "spec.load", load)
    assert error_text(doc) == f"spec.load: {message}"


def test_load_modes_valid() -> None:
    assert LoadSpec.model_validate({"concurrency": 4}).mode == "concurrency"
    rate = LoadSpec.model_validate({"mode": "rate", "rate": 2.5, "maxInFlight": 100})
    assert (rate.rate, rate.max_in_flight, rate.arrival) == (2.5, 100, "poisson")


@pytest.mark.parametrize("bound", [{}, {"requests": 1, "duration": "1s"}])
def test_phase_bound_exactly_one(bound: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="exactly one of requests or duration"):
        PhaseBound.model_validate(bound)


def test_url_validation() -> None:
    ok = ["http://vllm.default.svc:8000/v1", "https://api.example.com", "http://127.0.0.1:8000"]
    for url in ok:
        assert models.TargetSpec(url=url, model="m").url == url
    for url in ["ftp://x/v1", "vllm:8000", "http://", "http:// spaced/v1", "http://a b"]:
        with pytest.raises(ValidationError, match="invalid URL"):
            models.TargetSpec(url=url, model="m")


def test_quantities() -> None:
    res = models.ResourceRequirements.model_validate(
        {
            "requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": 1},
            "limits": {"cpu": "0.5"},
        }
    )
    assert res.requests == {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": 1}
    for bad in (0.5, "lots", True, "1 Gi"):
        with pytest.raises(ValidationError, match="Kubernetes quantity"):
            models.ResourceRequirements.model_validate({"limits": {"cpu": bad}})


def test_label_selector_values_rule() -> None:
    req = models.LabelSelectorRequirement
    assert req.model_validate({"key": "a", "operator": "In", "values": ["x"]}).values == ["x"]
    assert req.model_validate({"key": "a", "operator": "Exists"}).values is None
    with pytest.raises(ValidationError, match="values must be non-empty"):
        req.model_validate({"key": "a", "operator": "NotIn", "values": []})
    with pytest.raises(ValidationError, match="values must be non-empty"):
        req.model_validate({"key": "a", "operator": "Exists", "values": ["x"]})


def test_load_manifest_rejects_unknown_kind() -> None:
    assert (
        error_text({"kind": "Pod"})
        == "kind: kind should be 'BenchmarkRun' or 'Experiment' (got \"Pod\")"
    )
    assert error_text({}).startswith("kind: ")


def test_wrong_api_version_is_rejected() -> None:
    doc = example("run.yaml")
    doc["apiVersion"] = "benchop.io/v1"
    assert error_text(doc).startswith("apiVersion: Input should be 'benchop.io/v1alpha1'")


def test_error_lists_every_problem_one_per_line() -> None:
    doc = example("run.yaml")
    doc["spec"]["workload"]["seed"] = -1
    del doc["spec"]["target"]["model"]
    assert error_text(doc).splitlines() == [
        "spec.target.model: Field required",
        "spec.workload.seed: Input should be greater than or equal to 0 (got -1)",
    ]


# --------------------------------------------------------------------------- experiments


def test_sweepable_paths() -> None:
    paths = models.SWEEPABLE_PATHS
    assert {"load.concurrency", "load.rate", "phases.profiling", "slo.e2eMs", "target"} <= set(
        paths
    )
    assert len(paths) == len(set(paths))
    assert not any("_" in p for p in paths)


def test_sweep_rejects_unknown_and_duplicate_paths() -> None:
    doc = example("experiment.yaml")
    doc["spec"]["sweep"] = [{"path": "load.concurency", "values": [1]}]
    assert error_text(doc).startswith("spec.sweep[0].path: path must name a field")
    doc["spec"]["sweep"] = [{"path": "load.concurrency", "values": [1]}] * 2
    assert "sweep paths must be unique" in error_text(doc)


def test_sweep_values_are_validated_against_the_template() -> None:
    doc = example("experiment.yaml")
    doc["spec"]["sweep"][0]["values"] = [1, "many"]
    assert error_text(doc) == (
        'spec.sweep: sweep[0].values[1]: load.concurrency="many" makes the template invalid: '
        'load.concurrency: Input should be a valid integer (got "many")'
    )


def test_points_are_the_cartesian_product() -> None:
    doc = example("experiment.yaml")
    doc["spec"]["sweep"].append({"path": "phases.profiling", "values": [{"duration": "5s"}]})
    doc["spec"]["sweep"].append({"path": "workload.promptTokens", "values": [64, 256]})
    exp = load_manifest(doc)
    assert isinstance(exp, Experiment)
    points = exp.spec.points()
    assert len(points) == 3 * 1 * 2
    params, spec = points[1]
    assert params == {
        "load.concurrency": 1,
        "phases.profiling": {"duration": "5s"},
        "workload.promptTokens": 256,
    }
    assert spec.phases.profiling == PhaseBound(duration=Duration("5s"))
    assert spec.workload.prompt_tokens == 256
    assert exp.spec.template.workload.prompt_tokens == 128, "template must not change"


def test_set_path_copies_and_creates() -> None:
    doc = {"a": {"b": 1}, "c": None}
    out = set_path(doc, "c.d", 2)
    assert out == {"a": {"b": 1}, "c": {"d": 2}}
    assert doc == {"a": {"b": 1}, "c": None}
    value = {"x": [1]}
    out = set_path(doc, "a.b", value)
    value["x"].append(2)
    assert out["a"]["b"] == {"x": [1]}


def test_sweep_points_order() -> None:
    assert sweep_points([("a", [1, 2]), ("b", ["x", "y"])]) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]


# --------------------------------------------------------------------------- statuses


def test_results_round_trip_and_defaults() -> None:
    results = models.Results(
        complete=False,
        source="live",
        duration_s=3.0,
        requests=models.RequestCounts(total=3, ok=2, failed=1),
        throughput=models.Throughput(rps=1.0, output_tok_per_s=10.0, input_tok_per_s=20.0),
        workers=1,
    )
    wire = to_wire(results)
    assert wire["version"] == models.RESULTS_VERSION == 1
    assert wire["requests"] == {"total": 3, "ok": 2, "failed": 1, "byReason": {}}
    assert "ttftMs" not in wire
    assert models.Results.model_validate(wire) == results


def test_experiment_status_round_trip() -> None:
    status = models.ExperimentStatus(
        phase=models.ExperimentPhase.RUNNING,
        counts=models.ExperimentCounts(total=3, running=1, pending=2),
        metrics=models.ExperimentMetrics(
            refreshed_at="2024-05-01T12:00:00Z",
            runs=[models.ExperimentRunRow(name="e-0", params={"load.concurrency": 1}, rps=3.0)],
            best={"rps": "e-0"},
        ),
    )
    wire = to_wire(status)
    assert wire["metrics"]["runs"][0] == {
        "name": "e-0",
        "params": {"load.concurrency": 1},
        "rps": 3.0,
    }
    assert wire["metrics"]["version"] == models.METRICS_VERSION
    assert models.ExperimentStatus.model_validate(copy.deepcopy(wire)) == status


def test_spec_default_objects_are_filled() -> None:
    spec = BenchmarkRunSpec.model_validate(
        {
            "target": {"model": "m"},
            "load": {"concurrency": 1},
            "phases": {"profiling": {"requests": 1}},
        }
    )
    # lengths unset: the synthetic defaults (a dataset's rows may set output lengths instead)
    assert spec.workload.prompt_tokens is None and spec.workload.output_tokens is None
    assert spec.workload.prompt == LengthDistribution(distribution="fixed", mean=512)
    assert spec.workload.output is None
    assert spec.gates.baseline is True and spec.gates.timeout == "5s"
    assert spec.load.request_timeout == "300s" and spec.load.arrival == "poisson"
