"""Generated CRDs: fresh, structural, columns resolve, examples valid, bad specs rejected."""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from benchop.api import crdgen, models
from benchop.api.models import format_validation_error, load_manifest, to_wire

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests" / "unit" / "invalid").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
CRDS = {"BenchmarkRun": crdgen.benchmarkrun_crd(), "Experiment": crdgen.experiment_crd()}


def openapi_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def to_jsonschema(node: Any) -> Any:
    """OpenAPI v3 (as the API server reads it) -> JSON Schema 2020-12.

    ``minimum`` + ``exclusiveMinimum: true`` becomes ``exclusiveMinimum: n``;
    objects with properties get ``additionalProperties: false`` to emulate
    kubectl's strict field validation (the API server would otherwise prune
    unknown fields silently). ``x-kubernetes-*`` keys are ignored by jsonschema.
    """
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if k != "properties"}
    if "properties" in node:
        out["properties"] = {k: to_jsonschema(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if out.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    return out


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """What a schema-validating API server would say, one ``path: message`` per error."""
    schema = to_jsonschema(openapi_schema(doc["kind"]))
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for err in validator.iter_errors(doc):
        parts = list(err.absolute_path)
        if err.validator == "required":
            parts += [p for p in err.validator_value if p not in err.instance][:1]
        out.append(f"{_path(parts)}: {err.message}")
    return out


def schema_node(kind: str, path: str) -> dict[str, Any]:
    """The schema node at a dotted path like ``spec.sweep[0]``."""
    node = openapi_schema(kind)
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        node = node["items"] if index else node["properties"][name]
    return node


def resolve(doc: Any, json_path: str) -> Any:
    """A tiny JSONPath for printer columns: ``.a.b.c`` only."""
    assert re.fullmatch(r"(\.[A-Za-z0-9]+)+", json_path), json_path
    for key in json_path.split(".")[1:]:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("directory", ["crds", "charts/benchop/crds"])
def test_committed_crds_equal_a_fresh_render(directory: str) -> None:
    for name, text in crdgen.render_crds().items():
        path = ROOT / directory / name
        assert path.exists(), f"{path} missing: run python hack/gen_crds.py"
        assert path.read_text() == text, f"{path} is stale: run python hack/gen_crds.py"


def test_render_is_deterministic() -> None:
    assert crdgen.render_crds() == crdgen.render_crds()


def test_gen_crds_check_names_stale_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("gen_crds", ROOT / "hack" / "gen_crds.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.ROOT, gen.TARGET_DIRS = tmp_path, (tmp_path / "crds",)  # type: ignore[attr-defined]
    assert gen.main(["--check"]) == 1
    assert "stale: crds/benchmarkruns.benchop.io.yaml" in capsys.readouterr().err
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    (tmp_path / "crds" / "experiments.benchop.io.yaml").write_text("# edited\n")
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "experiments.benchop.io.yaml" in err and "benchmarkruns" not in err


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_crd_is_structural_and_a_valid_k8s_object(kind: str) -> None:
    crd = CRDS[kind]
    assert crdgen.check_structural(openapi_schema(kind)) == []
    kubernetes_validate.validate(crd, "1.30.0", strict=True)
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["group"] == "benchop.io"
    assert crd["spec"]["names"]["categories"] == ["benchop"]
    jsonschema.Draft202012Validator.check_schema(to_jsonschema(openapi_schema(kind)))


def test_crd_names() -> None:
    br, exp = CRDS["BenchmarkRun"], CRDS["Experiment"]
    assert br["metadata"]["name"] == "benchmarkruns.benchop.io"
    assert br["spec"]["names"]["shortNames"] == ["br"]
    assert exp["metadata"]["name"] == "experiments.benchop.io"
    assert exp["spec"]["names"]["shortNames"] == ["bexp"]


def test_schema_carries_constraints() -> None:
    spec = openapi_schema("BenchmarkRun")["properties"]["spec"]
    load = spec["properties"]["load"]
    assert spec["required"] == ["target", "load", "phases"]
    assert load["properties"]["concurrency"] == {
        "type": "integer",
        "description": load["properties"]["concurrency"]["description"],
        "minimum": 1,
    }
    rate = load["properties"]["rate"]
    assert (rate["minimum"], rate["exclusiveMinimum"]) == (0, True)
    assert load["properties"]["mode"]["enum"] == ["concurrency", "rate"]
    assert load["properties"]["mode"]["default"] == "concurrency"
    assert "pattern" in load["properties"]["requestTimeout"]
    assert spec["properties"]["target"]["required"] == ["model"]
    status = openapi_schema("BenchmarkRun")["properties"]["status"]["properties"]
    assert status["live"]["properties"]["gpu"] == {
        "type": "object",
        "description": status["live"]["properties"]["gpu"]["description"],
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert status["conditions"]["x-kubernetes-list-type"] == "map"


def test_every_cel_rule_of_the_models_is_in_the_crds() -> None:
    text = "".join(crdgen.render_crds().values())
    rules = [*models.LOAD_RULES, models.PHASE_BOUND_RULE, models.SWEEP_PATH_RULE]
    rules.append((models.SELECTOR_VALUES_RULE, models.SELECTOR_VALUES_MESSAGE))
    for rule, message in rules:
        assert yaml.safe_dump(rule, width=100_000).removesuffix("\n...\n") in text
        assert message in text


def _unbounded_lists_above_rules(node: Any, path: str, lists: tuple[str, ...]) -> list[str]:
    """Rules under a list without maxItems, as ``rule path <- list path`` lines."""
    if not isinstance(node, dict):
        return []
    found = [f"{path} <- {lst}" for lst in lists] if node.get("x-kubernetes-validations") else []
    if node.get("type") == "array" and "maxItems" not in node:
        lists = (*lists, path)
    for key, child in (node.get("properties") or {}).items():
        found += _unbounded_lists_above_rules(child, f"{path}.{key}", lists)
    found += _unbounded_lists_above_rules(node.get("items"), f"{path}[]", lists)
    found += _unbounded_lists_above_rules(node.get("additionalProperties"), f"{path}{{}}", lists)
    return found


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_cel_rule_inside_a_list_has_the_list_bounded(kind: str) -> None:
    # kube-apiserver multiplies a rule's cost by the longest list it could meet (3 MiB of
    # request without maxItems) and refuses the whole CRD over budget: proven on the real
    # apiserver by the cluster tests, caught here in a unit test.
    assert _unbounded_lists_above_rules(openapi_schema(kind), kind, ()) == []


def test_no_union_without_structural_form() -> None:
    with pytest.raises(crdgen.SchemaError, match="union"):
        crdgen._inline({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, {}, "x")


# --------------------------------------------------------------------------- printer columns


def realistic_run() -> dict[str, Any]:
    """A finished BenchmarkRun as the operator would write it, built from the models."""
    stats = models.LatencyStats(
        count=1200, mean=61.0, std=9.5, min=40.1, max=180.2, p50=58.3, p90=75.0, p99=130.9
    )
    itl = models.LatencyStats(
        count=75000, mean=9.1, std=1.2, min=5.0, max=40.0, p50=8.8, p90=10.5, p99=15.0
    )
    results = models.Results(
        complete=True,
        source="pubsub",
        duration_s=10.02,
        requests=models.RequestCounts(total=1201, ok=1200, failed=1, by_reason={"timeout": 1}),
        throughput=models.Throughput(rps=119.8, output_tok_per_s=7668.0, input_tok_per_s=15300.2),
        ttft_ms=stats,
        itl_ms=itl,
        tpot_ms=itl,
        e2e_ms=stats,
        goodput=models.Goodput(ratio=0.97, rps=116.2, slo=models.SloSpec(ttft_ms=200, itl_ms=50)),
        gpu=models.GpuResults(
            util_mean=71.5,
            power_mean_w=310.0,
            energy_j=3106.2,
            joules_per_output_token=0.0405,
            mem_peak_bytes=70_000_000_000,
            gpus=1,
            simulated=True,
            agents=["node-a"],
        ),
        client=models.ClientStats(cpu_pct=35.0, recv_lag_p99_ms=0.4),
        workers=2,
    )
    status = models.BenchmarkRunStatus(
        phase=models.Phase.SUCCEEDED,
        observed_generation=1,
        start_time="2024-05-01T12:00:00Z",
        completion_time="2024-05-01T12:00:30Z",
        results=results,
    )
    doc = yaml.safe_load((ROOT / "examples" / "run.yaml").read_text())
    run = models.BenchmarkRun.model_validate({**doc, "status": to_wire(status)})
    wire = to_wire(run)
    wire["metadata"]["creationTimestamp"] = "2024-05-01T11:59:58Z"
    return wire


def realistic_experiment() -> dict[str, Any]:
    """The SLO-search example while it runs (the Knee column is a search's)."""
    doc = yaml.safe_load((ROOT / "examples" / "slo-search.yaml").read_text())
    probe = models.SearchProbe(run="mock-slo-search-0", value=4, goodput=1.0, passed=True)
    search = models.ExperimentSearch(
        path="load.concurrency",
        min_goodput=0.9,
        outcome="Searching",
        knee=4,
        knee_run="mock-slo-search-0",
        probes=[probe],
    )
    status = models.ExperimentStatus(
        phase=models.ExperimentPhase.RUNNING,
        counts=models.ExperimentCounts(total=2, pending=0, running=1, succeeded=1, failed=0),
        metrics=models.ExperimentMetrics(search=search),
    )
    wire = to_wire(models.Experiment.model_validate({**doc, "status": to_wire(status)}))
    wire["metadata"]["creationTimestamp"] = "2024-05-01T11:59:58Z"
    return wire


PY_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "date": str,
    "integer": int,
    "number": (int, float),
}


@pytest.mark.parametrize(
    ("kind", "doc"),
    [("BenchmarkRun", realistic_run()), ("Experiment", realistic_experiment())],
)
def test_every_printer_column_resolves(kind: str, doc: dict[str, Any]) -> None:
    assert schema_errors(doc) == []
    columns = CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    for col in columns:
        value = resolve(doc, col["jsonPath"])
        assert value is not None, f"{col['name']}: {col['jsonPath']} resolves to nothing"
        assert isinstance(value, PY_TYPES[col["type"]]), (col, value)


def test_printer_columns_as_designed() -> None:
    cols = CRDS["BenchmarkRun"]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in cols] == [
        "Phase", "Concurrency", "RPS", "TTFT-P50", "TTFT-P99", "ITL-P50", "Tok/s", "GPU-Util",
        "J/Tok", "Age",
    ]  # fmt: skip
    wide = {c["name"] for c in cols if c.get("priority") == 1}
    assert wide == {"TTFT-P99", "GPU-Util", "J/Tok"}
    exp_cols = CRDS["Experiment"]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in exp_cols] == ["Phase", "Runs", "Succeeded", "Failed", "Knee", "Age"]


def test_resolver_misses_are_none() -> None:
    assert resolve({"a": {"b": 1}}, ".a.c") is None
    assert resolve({"a": 1}, ".a.b") is None


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert schema_errors(doc) == []
    load_manifest(doc)


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "run.yaml",
        "experiment.yaml",
        "slo-search.yaml",
        "dataset-run.yaml",
        "lengths-run.yaml",
    }


# --------------------------------------------------------------------------- invalid corpus


def test_invalid_corpus_is_large_enough() -> None:
    assert len(INVALID) >= 22


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_naming_the_field(path: Path) -> None:
    text = path.read_text()
    expect = re.search(r"^# expect: (.+)$", text, re.M)
    assert expect, f"{path.name}: needs a '# expect: <field path>' comment"
    fragment = expect.group(1).strip()
    cel = re.search(r"^# cel: (.+)$", text, re.M)
    doc = yaml.safe_load(text)

    # The models reject every file (local mode and the operator's Accepted check).
    with pytest.raises(ValidationError) as info:
        load_manifest(doc)
    model_message = format_validation_error(info.value)
    assert fragment in model_message, model_message

    # The API server rejects it too: by the schema where a schema can say it ...
    errors = schema_errors(copy.deepcopy(doc))
    if re.search(r"^# model-only: .+$", text, re.M):
        # ... except where neither can read the field (a free-form object): the API server
        # accepts it, and the operator's validation (Accepted=False InvalidSpec) refuses it
        assert errors == [], f"{path.name}: the schema rejects it: drop '# model-only:'"
        assert False not in _cel_results(doc, fragment), f"{path.name}: a CEL rule rejects it"
        return
    if not cel:
        assert errors, f"{path.name}: the schema accepts it; add a CEL rule and '# cel:'"
        assert any(fragment in e for e in errors), errors
        return
    # ... otherwise by a CEL rule on the named object, with the model's message.
    assert errors == [], f"{path.name}: the schema rejects it already; drop '# cel:' ({errors})"
    node = schema_node(doc["kind"], fragment)
    rules = node.get("x-kubernetes-validations", [])
    matching = [r for r in rules if cel.group(1).strip() in r["rule"]]
    assert matching, f"no CEL rule containing {cel.group(1)!r} at {fragment}: {rules}"
    assert any(r["message"] in model_message for r in matching), (matching, model_message)


# --------------------------------------------------------------------------- CEL, evaluated


def _defaulted(node: dict[str, Any], value: Any) -> Any:
    """Apply the schema's leaf defaults to one object, as the API server does before CEL."""
    if not isinstance(value, dict):
        return value
    props = node.get("properties", {})
    out = {k: v["default"] for k, v in props.items() if "default" in v}
    out.update({k: _defaulted(props.get(k, {}), v) for k, v in value.items()})
    return out


def _value_at(doc: Any, path: str) -> Any:
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        doc = doc[int(index)] if index else doc[name]
    return doc


def _cel_results(doc: dict[str, Any], path: str) -> list[bool]:
    celpy = pytest.importorskip("celpy", reason="cel-python not installed")
    env = celpy.Environment()
    node = schema_node(doc["kind"], path)
    value = celpy.json_to_cel(_defaulted(node, _value_at(doc, path)))
    rules = node.get("x-kubernetes-validations", [])
    return [bool(env.program(env.compile(r["rule"])).evaluate({"self": value})) for r in rules]


@pytest.mark.parametrize(
    "path",
    [p for p in INVALID if "\n# cel: " in p.read_text()],
    ids=lambda p: p.stem,
)
def test_cel_rule_rejects_the_invalid_manifest(path: Path) -> None:
    text = path.read_text()
    fragment = re.search(r"^# expect: (.+)$", text, re.M)
    assert fragment
    assert False in _cel_results(yaml.safe_load(text), fragment.group(1).strip())


@pytest.mark.parametrize(
    "path",
    [
        "spec.target",
        "spec.target.headers[0]",
        "spec.target.headers[1]",
        "spec.target.headers[0].valueFrom.secretKeyRef",
        "spec.target.tls",
        "spec.target.tls.caSecretRef",
        "spec.request",
    ],
)
def test_cel_rules_accept_the_request_example(path: str) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "run-gateway.yaml").read_text())
    results = _cel_results(doc, path)
    assert results and all(results), (path, results)


@pytest.mark.parametrize(
    "path", ["spec.load", "spec.phases.warmup", "spec.phases.profiling", "spec.sweep[0]"]
)
def test_cel_rules_accept_the_examples(path: str) -> None:
    name = "experiment.yaml" if "sweep" in path else "run.yaml"
    doc = yaml.safe_load((ROOT / "examples" / name).read_text())
    results = _cel_results(doc, path)
    assert results and all(results)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("experiment.yaml", "spec"),
        ("slo-search.yaml", "spec"),
        ("slo-search.yaml", "spec.search"),
        ("slo-search.yaml", "spec.search.concurrency"),
    ],
)
def test_cel_rules_accept_the_experiment_examples(name: str, path: str) -> None:
    doc = yaml.safe_load((ROOT / "examples" / name).read_text())
    results = _cel_results(doc, path)
    assert results and all(results)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("dataset-run.yaml", "spec.workload"),
        ("dataset-run.yaml", "spec.workload.dataset"),
        ("lengths-run.yaml", "spec.workload"),
        ("lengths-run.yaml", "spec.workload.promptLength"),
        ("lengths-run.yaml", "spec.workload.outputLength"),
    ],
)
def test_cel_rules_accept_the_workload_examples(name: str, path: str) -> None:
    doc = yaml.safe_load((ROOT / "examples" / name).read_text())
    results = _cel_results(doc, path)
    assert results and all(results)


def test_benchmarkrun_spec_is_immutable_by_a_transition_rule() -> None:
    celpy = pytest.importorskip("celpy", reason="cel-python not installed")
    rules = schema_node("BenchmarkRun", "spec")["x-kubernetes-validations"]
    rule = next(r for r in rules if "oldSelf" in r["rule"])
    assert "immutable" in rule["message"]
    env = celpy.Environment()
    program = env.program(env.compile(rule["rule"]))
    spec = yaml.safe_load((ROOT / "examples" / "run.yaml").read_text())["spec"]
    edited = copy.deepcopy(spec)
    edited["load"]["workers"] = 5
    same = {"self": celpy.json_to_cel(spec), "oldSelf": celpy.json_to_cel(copy.deepcopy(spec))}
    assert bool(program.evaluate(same)) is True
    changed = {"self": celpy.json_to_cel(edited), "oldSelf": celpy.json_to_cel(spec)}
    assert bool(program.evaluate(changed)) is False
    # An Experiment's template stays editable (its sweep may grow): no transition rule.
    exp_rules = schema_node("Experiment", "spec").get("x-kubernetes-validations", [])
    assert not any("oldSelf" in r["rule"] for r in exp_rules)
