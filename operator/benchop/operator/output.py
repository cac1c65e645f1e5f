"""The operator's part of a run's results bundle (docs/results.md): ``status.output``.

When a run's final results are built (:mod:`benchop.operator.handlers.runs`), before the
terminal status is written:

1. ``results.json`` and ``timeseries.csv`` are built from the same final snapshots
   (:mod:`benchop.core.bundle`) and written to the ConfigMap ``<run>-results`` (created, or
   merge-patched when it exists: a restarted operator rewrites the same data), sized below
   Kubernetes' object limit (coarser timeseries rows for long runs);
2. with ``spec.output.pvc``, the collect Job ``<run>-collect`` is created: it mounts the
   claim the workers wrote their checkpoints to and that ConfigMap, and writes the whole
   bundle next to the workers' directories (records.jsonl merged; timeseries.csv at one row
   per second). The operator cannot do it itself: it cannot mount a run's claim.

The returned ``status.output`` names both; a refused write (RBAC, a quota, a bad name) is
``status.output.error``, never a failed run: the results are in ``status.results`` anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from benchop.api.models import BenchmarkRun, to_wire
from benchop.core import bundle
from benchop.core.gaterecords import profiling_window
from benchop.core.names import collect_job_name, owner_reference, results_configmap_name
from benchop.core.results import Final, MergedMetrics
from benchop.metrics.timeline import merge_rows
from benchop.operator import builders
from benchop.operator.k8s import CONFIGMAP, JOB, ApiError, Conflict, KubeApi, controller_uid

log = logging.getLogger(__name__)


async def write_output(
    api: KubeApi,
    body: Mapping[str, Any],
    run: BenchmarkRun,
    *,
    run_key: str,
    image: str,
    final: Final,
    merged: MergedMetrics,
    results: Mapping[str, Any],
    gates: Mapping[str, Any],
    verdict: tuple[str, str, str],
) -> dict[str, Any]:
    """Write the run's results ConfigMap (and create its collect Job); ``status.output``.

    ``verdict``: (phase, reason, message) the terminal status will carry.
    """
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    phase, reason, message = verdict
    doc = bundle.results_document(
        merged,
        results=results,
        run={"name": name, "namespace": namespace, "uid": meta.get("uid")},
        spec=to_wire(run.spec),
        status={"phase": phase, "reason": reason, "message": message},
        percentiles=bundle.percentiles_for(run.spec.report),
    )
    window = profiling_window(gates)
    rows = merge_rows(s.timeline for s in final.snapshots)
    path = builders.bundle_path(run, run_key)
    pvc = run.spec.output.pvc if run.spec.output else None
    records: dict[str, Any] = (
        {"omitted": "per-request records are kept only with spec.output.pvc"}
        if pvc is None
        else {"claimName": pvc.claim_name, "path": f"{path}/{bundle.RECORDS_FILE}"}
    )
    files, interval = bundle.configmap_files(
        doc, rows, start_s=window[0] if window else None, records=records
    )
    cm_name = results_configmap_name(name)
    output: dict[str, Any] = {"configMap": cm_name, "timeseriesIntervalS": interval}
    owner = owner_reference(body)
    cm = builders.build_results_configmap(
        run, name=cm_name, namespace=namespace, owner=owner, files=files
    )
    try:
        await _create_or_replace_data(api, namespace, cm)
    except ApiError as e:
        log.warning("run %s: results ConfigMap %s not written: %s", run_key, cm_name, e)
        return {"error": f"results ConfigMap {cm_name}: {e}"[:500]}
    if pvc is None or path is None:
        return output
    job_name = collect_job_name(name)
    output.update({"claimName": pvc.claim_name, "path": path, "collectJob": job_name})
    job = builders.build_collect_job(
        run,
        name=job_name,
        namespace=namespace,
        owner=owner,
        image=image,
        run_key=run_key,
        config_map=cm_name,
    )
    try:
        await api.create(JOB, namespace, job)
    except ApiError as e:
        log.warning("run %s: collect Job %s not created: %s", run_key, job_name, e)
        output["error"] = f"collect Job {job_name}: {e}"[:500]
    return output


async def _create_or_replace_data(api: KubeApi, namespace: str, cm: dict[str, Any]) -> None:
    """Create the ConfigMap; when it exists, merge-patch its data (one call, no read). One of
    an older incarnation of the run (garbage collection pending) is waited for, as
    :meth:`KubeApi.create` does."""
    name = cm["metadata"]["name"]
    try:
        await api.create_only(CONFIGMAP, namespace, cm)
        return
    except Conflict:
        pass
    patched = await api.patch(CONFIGMAP, namespace, name, {"data": cm["data"]}, None)
    if patched is not None and controller_uid(patched) != controller_uid(cm):
        raise kopf.TemporaryError(
            f"ConfigMap {name} belongs to an older run of the same name (waiting for GC)",
            delay=2.0,
        )
