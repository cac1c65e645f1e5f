"""RBAC, proven: the operator pod calls the apiserver with its own service-account token, so
the chart's rules are what it gets. Checked against what it actually did in the tests before
this one (the apiserver's audit log): nothing it used is missing (no 403, none in its log), and
nothing granted goes unused unless listed below with the reason."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

import pytest
from realkube import RELEASE_NS, RealKube

pytestmark = pytest.mark.cluster

OPERATOR_SA = f"system:serviceaccount:{RELEASE_NS}:benchop-operator"

REFUSED = re.compile(r"HTTP 403|APIForbiddenError|403, message=")
"""A call of the operator the apiserver refused, as its log says it (benchop's API client,
kopf's errors, aiohttp's): not a quota's "forbidden" the operator reports about a run."""

GRANTED_BUT_NOT_EXERCISED: dict[tuple[str, str, str], str] = {
    ("benchop.io", "benchmarkruns/finalizers", "update"): "checked by the admission plugin "
    "OwnerReferencesPermissionEnforcement when a child with blockOwnerDeletion is created; "
    "never a request of its own (a 403 on the child's create says it is missing)",
    ("benchop.io", "experiments/finalizers", "update"): "the same, for child BenchmarkRuns",
    ("benchop.io", "benchmarkruns", "get"): "the status writer re-reads a run after a 409 (a "
    "concurrent writer, e.g. an older operator still stopping); no run's status write conflicts "
    "in the e2e now that kopf writes nothing to runs",
    ("benchop.io", "benchmarkruns", "patch"): "runs carry no finalizer or kopf annotation; "
    "kopf patches a run only to remove the finalizer an earlier operator version put on it",
    ("", "configmaps", "patch"): "the results ConfigMap is merge-patched only when it exists "
    "already: an operator restarted after writing it and before the run's terminal status",
}
"""(apiGroup, resource, verb) the chart grants that the e2e does not exercise, and why."""


def used_by_operator(events: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], set[int]]:
    used: dict[tuple[str, str, str], set[int]] = {}
    for e in events:
        ref = e.get("objectRef")
        if e["user"]["username"] != OPERATOR_SA or not ref:
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        key = (ref.get("apiGroup", ""), resource, e["verb"])
        used.setdefault(key, set()).add(int(e.get("responseStatus", {}).get("code", 0)))
    return used


def granted(cluster: RealKube) -> set[tuple[str, str, str]]:
    out: set[tuple[str, str, str]] = set()
    roles = [cluster.get("clusterrole", "benchop-operator")]
    roles += [
        r
        for r in cluster.get("roles", namespace=RELEASE_NS)
        if r["metadata"]["name"] == "benchop-operator"
    ]
    for role in roles:
        for rule in role.get("rules") or []:
            for group in rule.get("apiGroups", [""]):
                for resource in rule.get("resources", []):
                    for verb in rule["verbs"]:
                        out.add((group, resource, verb))
    return out


def test_operator_was_never_forbidden(release: RealKube) -> None:
    used = used_by_operator(release.audit_events(release.release_since))
    assert used, "no request by the operator's service account in the audit log"
    forbidden = sorted(k for k, codes in used.items() if 403 in codes)
    assert forbidden == [], f"the operator was refused: {forbidden}"
    log = release.container_logs(RELEASE_NS, "benchop-operator-", "operator")
    assert log, "no operator log found"
    refused = [line for line in log.splitlines() if REFUSED.search(line)]
    assert refused == [], refused[:10]


def test_every_granted_verb_is_used_or_explained(release: RealKube) -> None:
    used = set(used_by_operator(release.audit_events(release.release_since)))
    # `watch` is audited as its own verb; a list of a collection as `list`.
    unused = sorted(granted(release) - used - set(GRANTED_BUT_NOT_EXERCISED))
    assert unused == [], f"granted but never used by the operator in the e2e: {unused}"
    stale = sorted(k for k in GRANTED_BUT_NOT_EXERCISED if k in used)
    assert stale == [], f"listed as not exercised but used: {stale}"


def test_operator_watches_only_load_generator_pods_and_jobs(release: RealKube) -> None:
    # The apiserver filters: the operator's LISTs and WATCHes of pods and Jobs carry the
    # load-generator label selector; a LIST is one request (pages can expire: main.py).
    calls = [
        e
        for e in release.audit_events(release.release_since)
        if e["user"]["username"] == OPERATOR_SA
        and e["verb"] in ("list", "watch")
        and (e.get("objectRef") or {}).get("resource") in ("pods", "jobs")
        and (e.get("objectRef") or {}).get("namespace") != RELEASE_NS  # agent pods
    ]
    assert calls
    unfiltered = [e["requestURI"] for e in calls if "labelSelector=" not in e["requestURI"]]
    assert unfiltered == []
    watches = [unquote(e["requestURI"]) for e in calls if e["verb"] == "watch"]
    assert watches
    assert all("labelSelector=app.kubernetes.io/component=loadgen" in u for u in watches), watches
    lists = [unquote(e["requestURI"]) for e in calls if e["verb"] == "list"]
    assert lists and not any("continue=" in u for u in lists), lists
