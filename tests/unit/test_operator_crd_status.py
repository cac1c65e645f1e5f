"""Everything the operator writes into .status survives the CRD's structural schema.

A real API server prunes fields its schema does not declare (the emulator does not), so a
status key missing from crds/ would silently vanish in a cluster. This walks a complete status
produced by the operator's own transitions and checks every key against the generated CRD.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from benchagent.wire import BaselineAck, GpuSample, MetricsSnapshot
from benchop.core import lifecycle as t
from benchop.core.gaterecords import GateOutcome, gate_record
from benchop.core.gpuwindow import gpu_from_status
from benchop.core.results import build_final_results, final_snapshots
from benchop.metrics import names
from benchop.operator.gpustats import with_prometheus
from benchop.operator.snapshots import live_status

CRD = Path(__file__).resolve().parents[2] / "crds" / "benchmarkruns.benchop.io.yaml"
NOW = "2024-05-01T12:00:00Z"


def status_schema() -> dict[str, Any]:
    doc = yaml.safe_load(CRD.read_text())
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return dict(schema)


def undeclared(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Paths the API server would prune (not declared, no preserve-unknown-fields)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if props is not None and key in props:
                out += undeclared(sub, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += undeclared(sub, extra, f"{path}.{key}")
            else:
                out.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += undeclared(item, schema["items"], f"{path}[{i}]")
    return out


def sample(uuid: str, t_s: float, energy_mj: int) -> GpuSample:
    return GpuSample(
        index=0, uuid=uuid, name="sim", timestamp_ns=int(t_s * 1e9), gpu_util_pct=50,
        mem_copy_util_pct=0, mem_used_bytes=100, mem_total_bytes=1000, power_w=100,
        power_limit_w=300, energy_mj=energy_mj, temperature_c=40, sm_clock_mhz=1, mem_clock_mhz=1,
    )  # fmt: skip


def full_status() -> dict[str, Any]:
    st = t.accepted({}, generation=1, now=NOW)
    assert st is not None
    for boundary, ts, energy in (("START", 10, 1000), ("END", 20, 9000)):
        ack = BaselineAck(
            request_id="x", run="ns.r", phase_id="profiling", boundary=boundary,  # type: ignore[arg-type]
            agent="a", node="n", success=True, samples=[sample("g0", ts, energy)],
        )  # fmt: skip
        rec = gate_record(GateOutcome(
            run="ns.r", phase_id="profiling", boundary=boundary, start_at_ns=1, baseline=True,  # type: ignore[arg-type]
            baseline_captured=True, agents=["a"], acks=[ack], closed_at_ns=ts * 10**9,
        ))  # fmt: skip
        st = t.gate_closed(st, generation=1, boundary=boundary, record=rec)
        assert st is not None
    snap = MetricsSnapshot(
        run="ns.r", worker=0, seq=1, state="COMPLETE", phase="done", time_ns=0, elapsed_s=1.0,
        n_pending=0, counters={names.REQUESTS: 1, names.REQUESTS_OK: 1},
    )  # fmt: skip
    live = live_status({0: snap}, phase="Profiling", workers_connected=1, now=NOW)
    live["gpu"] = {"source": "prometheus", "summary": {"gpus": 1}, "gpus": {"n/0": {}}}
    st = t.with_live(st, live)
    assert st is not None
    final = final_snapshots(1, [("pubsub", {0: snap})])
    assert final is not None
    gpu = gpu_from_status(st["gates"], output_tokens=10)
    prom = {"summary": {"energyWindowJ": 8.0}, "crossCheck": {"energyJ": {"baseline": 8.0}}}
    results = build_final_results(final, slo=None, gpu=with_prometheus(gpu, prom))
    assert results["gpu"]["prometheus"] == prom
    st = t.finished(
        st, generation=1, results=results, results_reason="PubSubComplete", succeeded=True,
        reason="Completed", message="1 of 1", now=NOW, prometheus_error="refused",
    )  # fmt: skip
    assert st is not None
    return st


def test_every_status_field_but_gates_is_declared_and_valid() -> None:
    schema = status_schema()
    st = full_status()
    assert [p for p in undeclared(st, schema, "status") if p != "status.gates"] == []
    # OpenAPI v3 schemas use draft-4 style (boolean exclusiveMinimum)
    jsonschema.Draft4Validator(schema).validate(st)


def test_status_gates_is_declared() -> None:
    assert undeclared(full_status(), status_schema(), "status") == []
