"""BenchmarkRun and Experiment manifests generated from the committed CRD schemas (crds/).

:func:`manifests` draws specs with ``hypothesis-jsonschema`` from each CRD's
``openAPIV3Schema`` (made a JSON Schema: ``exclusiveMinimum`` as a number, objects closed
as kubectl's strict field validation closes them) and then, most of the time, breaks
them: a key dropped, a value replaced by any JSON value, an unknown field added, an odd
character put into a string, an integer written as a float or made too large. The CEL
rules are not in a JSON Schema, so many of the drawn specs break a rule as well.

:func:`model_verdict` is what the models (local mode, and the operator before Accepted)
say of a manifest; :func:`operator_verdict` adds the checks the operator makes when it
accepts a run or an Experiment. :data:`DOCUMENTED` lists where the API server and the model
are known to differ, each with the reason; ``test_fuzz_specs.py`` (models) and
``tests/cluster/test_16_fuzz_specs.py`` (the real API server) use them.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis_jsonschema._from_schema as _hjs
import yaml
from hypothesis import strategies as st
from hypothesis.internal.conjecture import utils as _cu
from hypothesis_jsonschema import from_schema
from pydantic import ValidationError

from benchop.api.models import (
    BenchmarkRun,
    Experiment,
    format_validation_error,
    load_manifest,
)


class _Many(_cu.many):
    """hypothesis-jsonschema 0.23.1 (its latest release) draws an object's keys with
    ``while elements.more():``, a method hypothesis has since replaced by iterating the
    ``many`` in a with-block; this is the old method on top of the new one's steps."""

    def more(self) -> bool:
        if self._depth is None:
            self.__enter__()
        if self._in_element:
            self._finish_element()
        if not self._decide():
            self._closed = True
            return False
        self.count += 1
        self._in_element = True
        self._rejected = False
        return True


if not hasattr(_cu.many, "more"):
    _hjs.cu = type("cu", (), {"many": _Many})  # only the module's own name: nothing global


ROOT = Path(__file__).resolve().parents[2]
PLURALS = {"BenchmarkRun": "benchmarkruns", "Experiment": "experiments"}
SPEC_CORPUS = Path(__file__).resolve().parent / "corpus" / "specs"


def crd_spec_schema(kind: str) -> dict[str, Any]:
    """``openAPIV3Schema.properties.spec`` of the committed CRD of ``kind``."""
    crd = yaml.safe_load((ROOT / "crds" / f"{PLURALS[kind]}.benchop.io.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]


def to_jsonschema(node: Any, *, small: bool = True) -> Any:
    """An OpenAPI v3 CRD schema as a JSON Schema a generator understands.

    ``exclusiveMinimum: true`` + ``minimum`` becomes a numeric ``exclusiveMinimum``; an
    object with ``properties`` gets ``additionalProperties: false`` (kubectl and the test's
    client ask for strict field validation); ``x-kubernetes-*`` keys are dropped. With
    ``small``, lists and maps are bounded (at most 3 entries) to keep examples fast: a
    subset of the valid specs, all still valid.
    """
    if isinstance(node, list):
        return [to_jsonschema(n, small=small) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default"):
            continue
        if key == "properties":
            out[key] = {k: to_jsonschema(v, small=small) for k, v in value.items()}
        else:
            out[key] = to_jsonschema(value, small=small)
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if small and out.get("type") == "array":
        out["maxItems"] = min(out.get("maxItems", 3), 3)
    if small and out.get("type") == "object" and "additionalProperties" in node:
        out["maxProperties"] = 3
    return out


@functools.cache
def spec_strategy(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Specs valid by the CRD's schema (not necessarily by its CEL rules)."""
    return from_schema(to_jsonschema(crd_spec_schema(kind)))


JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 3),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=6), inner, max_size=2)
    ),
    max_leaves=4,
)
ODD_CHARS = st.sampled_from(
    ["\x0b", "\x1c", "\u00a0", "\u2028", "\u3000", "\x85", "é", "\t", " ", "\n"]
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


@st.composite
def broken_spec(draw: st.DrawFn, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with one change that may make it invalid (or may not: a dropped optional key)."""
    doc = copy.deepcopy(spec)
    # deepest first: hypothesis favours the first choice, and a dropped top-level key tests
    # little beyond "Field required"
    paths = sorted((p for p in _paths(doc) if p), key=len, reverse=True)
    if not paths:
        return doc
    path = draw(st.sampled_from(paths))
    parent, last = _get(doc, path[:-1]), path[-1]
    value = parent[last]
    how = draw(st.sampled_from(["char", "number", "replace", "unknown", "drop"]))
    if how == "drop":
        del parent[last]
    elif how == "replace":
        parent[last] = draw(JSON)
    elif how == "unknown" and isinstance(value, dict):
        value[draw(st.sampled_from(["extra", "Model", "url2"]))] = draw(JSON)
    elif how == "char" and isinstance(value, str):
        i = draw(st.integers(0, len(value)))
        parent[last] = value[:i] + draw(ODD_CHARS) + value[i:]
    elif how == "number" and type(value) is int:
        parent[last] = draw(
            st.sampled_from([float(value), value + 0.5, 2**63, 2**64, -(2**63) - 1])
        )
    else:
        parent[last] = draw(JSON)
    return doc


def _run_rules(spec: dict[str, Any], draw: st.DrawFn) -> None:
    """Make a schema-valid run spec satisfy the CRD's CEL rules too (most drawn ones break
    one: a mode without its field, a phase with both bounds)."""
    load = spec.get("load")
    if isinstance(load, dict):
        mode = load.get("mode", "concurrency")
        keep = {"concurrency": ("concurrency",), "rate": ("rate", "maxInFlight")}[mode]
        for key in ("concurrency", "rate", "maxInFlight"):
            if key not in keep:
                load.pop(key, None)
        if mode == "concurrency":
            load.setdefault("concurrency", draw(st.integers(1, 64)))
        else:
            load.setdefault("rate", draw(st.floats(0.1, 100)))
    for bound in (spec.get("phases") or {}).values():
        if isinstance(bound, dict) and ("requests" in bound) == ("duration" in bound):
            bound.pop("duration", None)
            bound["requests"] = draw(st.integers(1, 100))
    for expr in ((spec.get("target") or {}).get("podSelector") or {}).get("matchExpressions", []):
        if expr.get("operator") in ("In", "NotIn"):
            expr["values"] = expr.get("values") or ["a"]
        else:
            expr.pop("values", None)


def _search_rules(spec: dict[str, Any]) -> None:
    """Make a drawn SLO search satisfy the Experiment's CEL rules: the template has an slo,
    the searched field matches the template's load mode, a probe runs at a time, and the
    range is ordered."""
    template = spec["template"]
    template.setdefault("slo", {"ttftMs": 100.0})
    mode = template["load"].get("mode", "concurrency")
    search = spec["search"]
    search.pop("rate" if mode == "concurrency" else "concurrency", None)
    default = {"min": 1, "max": 8} if mode == "concurrency" else {"min": 1.0, "max": 8.0}
    bounds = search.setdefault(mode, default)
    if bounds.get("min", 1) > bounds.get("max", 0):
        bounds["min"], bounds["max"] = bounds.get("max", 1), bounds.get("min", 1)
    if mode == "rate":
        bounds.setdefault("resolution", 0.5)
    for key in ("maxParallel", "failurePolicy", "maxFailures"):
        spec.pop(key, None)


@st.composite
def valid_spec(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A spec valid by the schema and, most of the time, by the CEL rules too."""
    spec = draw(spec_strategy(kind))
    if draw(st.integers(0, 4)) == 4:  # not 0: hypothesis draws its simplest choice often
        return spec
    if kind == "BenchmarkRun":
        _run_rules(spec, draw)
        return spec
    _run_rules(spec["template"], draw)
    if "search" in spec and "sweep" not in spec:
        _search_rules(spec)
        return spec
    spec.pop("search", None)
    axes = {}
    for axis in spec.get("sweep") or [{"path": "workload.seed", "values": [0, 1]}]:
        path = draw(
            st.sampled_from(["load.workers", "workload.seed", "target.model", axis["path"]])
        )
        values = {
            "load.workers": st.lists(st.integers(1, 4), min_size=1, max_size=3),
            "workload.seed": st.lists(st.integers(0, 9), min_size=1, max_size=3),
            "target.model": st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=3),
        }.get(path)
        axes[path] = {"path": path, "values": axis["values"] if values is None else draw(values)}
    spec["sweep"] = list(axes.values())
    return spec


@st.composite
def manifests(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """Whole manifests of ``kind``: a valid spec, then (3 times in 5) one change."""
    spec = draw(valid_spec(kind))
    if draw(st.integers(0, 4)) < 3:
        spec = draw(broken_spec(spec))
    return {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "fuzz"},
        "spec": spec,
    }


# --------------------------------------------------------------------------- verdicts


def model_verdict(doc: dict[str, Any]) -> tuple[bool, str]:
    """(accepted, the model's message): only ``ValidationError`` may come out of the model."""
    try:
        model = load_manifest(doc)
    except ValidationError as e:
        return False, format_validation_error(e)
    assert isinstance(model, BenchmarkRun | Experiment)
    return True, ""


def operator_verdict(doc: dict[str, Any]) -> tuple[bool, str]:
    """The model's verdict, then the operator's own checks at Accepted time (and, for a run,
    the child manifests it would create): what a cluster user sees in ``Accepted``."""
    from benchop.operator import builders
    from benchop.operator.handlers.experiments import validate_spec
    from benchop.operator.handlers.runs import InvalidRun, check_operator_rules

    ok, message = model_verdict(doc)
    if not ok:
        return ok, message
    model = load_manifest(doc)
    if isinstance(model, Experiment):
        result = validate_spec(doc["spec"])
        return (False, result) if isinstance(result, str) else (True, "")
    try:
        check_operator_rules(model)
    except InvalidRun as e:
        return False, str(e)
    owner = {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "name": "fuzz",
        "uid": "00000000-0000-0000-0000-000000000000",
        "controller": True,
    }
    builders.build_spec_configmap(model, name="fuzz-spec", namespace="default", owner=owner)
    builders.build_loadgen_job(
        model,
        name="fuzz-loadgen",
        namespace="default",
        owner=owner,
        image="benchop:fuzz",
        gate_endpoint="tcp://op:5555",
        snapshot_endpoint="tcp://op:5556",
        run_key="default.fuzz",
    )
    return True, ""


Known = Callable[[dict[str, Any], str], bool]


def _sweep_value_invalid(doc: dict[str, Any], message: str) -> bool:
    return doc.get("kind") == "Experiment" and "makes the template invalid" in message


def _integral_float(doc: dict[str, Any], message: str) -> bool:
    return "Input should be a valid integer (got " in message and any(
        type(v) is float and v.is_integer() for v in _leaves(doc.get("spec"))
    )


def _leaves(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [x for v in node.values() for x in _leaves(v)]
    if isinstance(node, list):
        return [x for v in node for x in _leaves(v)]
    return [node]


DOCUMENTED: dict[str, tuple[Known, str]] = {
    "integral-float": (
        _integral_float,
        "An integer written as an integral float (1.0): kube-apiserver's schema check takes it "
        "as an integer and stores 1, but its CEL evaluation refuses the float64 ('invalid "
        "data, expected int, got float64'), so the server admits 1.0 outside the objects that "
        "carry CEL rules (workload, pod, gates) and refuses it inside them (load, phases, "
        "sweep, matchExpressions). The strict model refuses 1.0 everywhere: a manifest local "
        "mode accepts is admitted by the server.",
    ),
    "sweep-value-invalid": (
        _sweep_value_invalid,
        "An Experiment's sweep values are free JSON in the CRD (x-kubernetes-preserve-unknown-"
        "fields: a value may be a number, a string or an object, depending on the path); the "
        "model puts each value into the template and refuses one that makes it invalid. The "
        "API server admits the Experiment; the operator sets Accepted=False (InvalidSpec) "
        "naming sweep[i].values[j].",
    ),
}
"""Model refuses, API server admits: the cases that are known and why (the operator reports
them in Accepted=False). The reverse (the API server refuses what the model accepts) has no
documented case."""


def documented(doc: dict[str, Any], message: str) -> str | None:
    """The name of the documented disagreement this model refusal is, if any."""
    for name, (match, _) in DOCUMENTED.items():
        if match(doc, message):
            return name
    return None


def sweep_size(doc: dict[str, Any]) -> int:
    sweep = (doc.get("spec") or {}).get("sweep") or []
    return math.prod(len(a.get("values") or []) for a in sweep if isinstance(a, dict))
