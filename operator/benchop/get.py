"""``benchop get``: results of runs and experiments, read from the cluster.

    benchop get runs [-n NS] [-A] [--experiment NAME]     # the kubectl get br -o wide view
    benchop get experiments [-n NS]                       # phase and counts of each
    benchop get experiment NAME [-n NS] [-o table|yaml|json]   # the sweep's comparison table

An experiment's comparison comes from its cached rollup (``status.metrics``) when that is of
the current version and decodes; otherwise it is computed from the child runs (see
:mod:`benchop.core.rollup`), and the output says which. Credentials: kubeconfig, else the
in-cluster service account; ``--server URL`` talks to that API server without credentials
(tests, ``kubectl proxy``). Exit codes: 0 ok, 1 not found, 2 API or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from rich.console import Console

from benchop.api.models import ExperimentMetrics, to_wire
from benchop.core.names import BENCHMARKRUN_PLURAL, EXPERIMENT_PLURAL, GROUP, VERSION
from benchop.core.rollup import Source, read_rollup
from benchop.core.selectors import experiment_selector
from benchop.report import (
    BENCHMARKRUN_COLUMNS,
    EXPERIMENT_COLUMNS,
    experiment_table,
    printer_table,
    search_table,
)

WHAT = {
    "runs": "runs",
    "run": "runs",
    "benchmarkruns": "runs",
    "br": "runs",
    "experiments": "experiments",
    "bexp": "experiments",
    "experiment": "experiment",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=sorted(WHAT), help="runs | experiments | experiment NAME")
    parser.add_argument("name", nargs="?", help="the experiment's name (for 'experiment')")
    parser.add_argument("-n", "--namespace", help="namespace (default: kubeconfig's, else default)")
    parser.add_argument(
        "-A", "--all-namespaces", action="store_true", help="runs of every namespace"
    )
    parser.add_argument("--experiment", metavar="NAME", help="only the runs of this experiment")
    parser.add_argument(
        "-o", "--output", choices=["table", "yaml", "json"], default="table", help="format"
    )
    parser.add_argument("--server", metavar="URL", help="API server URL (no credentials)")


# --------------------------------------------------------------------------- pure views

PIPE_WIDTH = 250
"""Console width when stdout is not a terminal and COLUMNS is unset (rich would use 80)."""


def stdout_console() -> Console:
    """The console for tables on stdout: the terminal's width; :data:`PIPE_WIDTH` when piped
    or redirected (rows stay whole in files and ``grep``), unless COLUMNS says otherwise."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPE_WIDTH)
    return console


def rollup_note(metrics: ExperimentMetrics, source: Source, total: int | None) -> str:
    """One line saying where the numbers came from and whether the table is capped."""
    where = (
        f"cached rollup (status.metrics, refreshed {metrics.refreshed_at})"
        if source == "cache"
        else "computed from the runs (no usable status.metrics)"
    )
    capped = ""
    if metrics.capped:
        capped = f"; capped: {len(metrics.runs)} of {total if total is not None else '?'} runs"
    return where + capped


def with_rollup(experiment: Mapping[str, Any], metrics: ExperimentMetrics) -> dict[str, Any]:
    """The experiment as YAML shows it: ``status.metrics`` replaced by the resolved rollup."""
    out = dict(experiment)
    out["status"] = {**(experiment.get("status") or {}), "metrics": to_wire(metrics)}
    return out


# --------------------------------------------------------------------------- cluster I/O


class Cluster:
    """The few reads ``get`` makes, through the kubernetes client (sync; fine for a CLI)."""

    def __init__(self, server: str | None) -> None:
        import kubernetes

        k8s: Any = kubernetes  # the client is untyped
        self.namespace = "default"
        if server:
            config = k8s.client.Configuration()
            config.host = server.rstrip("/")
            api_client = k8s.client.ApiClient(config)
        else:
            try:
                k8s.config.load_kube_config()
                _, active = k8s.config.list_kube_config_contexts()
                self.namespace = (active or {}).get("context", {}).get("namespace") or "default"
            except (k8s.config.ConfigException, FileNotFoundError, TypeError) as e:
                try:
                    k8s.config.load_incluster_config()
                except k8s.config.ConfigException:
                    raise RuntimeError(
                        f"no usable kubeconfig ({e}) and not running in a cluster; "
                        "set KUBECONFIG or pass --server URL"
                    ) from None
                try:
                    with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                        self.namespace = f.read().strip() or "default"
                except OSError:
                    pass
            api_client = k8s.client.ApiClient()
        self.api = k8s.client.CustomObjectsApi(api_client)
        self.core = k8s.client.CoreV1Api(api_client)
        self.ApiException = k8s.client.exceptions.ApiException

    def list(
        self, plural: str, namespace: str | None, *, labels: str | None = None
    ) -> list[dict[str, Any]]:
        kwargs = {"label_selector": labels} if labels else {}
        if namespace is None:
            body = self.api.list_cluster_custom_object(GROUP, VERSION, plural, **kwargs)
        else:
            body = self.api.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, **kwargs
            )
        items: list[dict[str, Any]] = body.get("items") or []
        return items

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = self.api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name
            )
        except self.ApiException as e:
            if e.status == 404:
                return None
            raise
        return body

    def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's ``data`` (None when there is no such ConfigMap)."""
        try:
            cm = self.core.read_namespaced_config_map(name, namespace)
        except self.ApiException as e:
            if e.status == 404:
                return None
            raise
        return dict(cm.data or {})


def _rollup(cluster: Cluster, exp: Mapping[str, Any]) -> tuple[ExperimentMetrics, Source]:
    namespace = exp["metadata"]["namespace"]

    async def list_children(e: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        selector = experiment_selector(e["metadata"]["name"])
        return cluster.list(BENCHMARKRUN_PLURAL, namespace, labels=selector)

    return asyncio.run(read_rollup(exp, list_children))


def _get_experiment(cluster: Cluster, args: argparse.Namespace, out: Console) -> int:
    namespace = args.namespace or cluster.namespace
    exp = cluster.get(EXPERIMENT_PLURAL, namespace, args.name)
    if exp is None:
        print(f'benchop get: experiment "{args.name}" not found in {namespace}', file=sys.stderr)
        return 1
    metrics, source = _rollup(cluster, exp)
    status = exp.get("status") or {}
    total = (status.get("counts") or {}).get("total")
    note = rollup_note(metrics, source, total)
    if args.output == "yaml":
        print(f"# rollup: {note}")
        print(yaml.safe_dump(with_rollup(exp, metrics), sort_keys=False), end="")
        return 0
    if args.output == "json":
        print(f"rollup: {note}", file=sys.stderr)  # JSON has no comments
        print(json.dumps(with_rollup(exp, metrics), indent=2))
        return 0
    counts = status.get("counts") or {}
    succeeded: dict[str, Any] = next(
        (c for c in status.get("conditions") or () if c.get("type") == "Succeeded"), {}
    )
    out.print(
        f"[bold]{namespace}/{args.name}[/bold]  phase {status.get('phase') or '-'}  "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    if succeeded:
        out.print(f"Succeeded={succeeded.get('status')} {succeeded.get('reason')}: "
                  f"{succeeded.get('message')}", markup=False)  # fmt: skip
    out.print(experiment_table(metrics, title=args.name))
    if metrics.search is not None:
        out.print(search_table(metrics.search))
    out.print(note, markup=False)
    return 0


def run(args: argparse.Namespace) -> int:
    what = WHAT[args.what]
    if what == "experiment" and not args.name:
        print("benchop get experiment: NAME is required", file=sys.stderr)
        return 2
    out = stdout_console()
    try:
        cluster = Cluster(args.server)
        if what == "experiment":
            return _get_experiment(cluster, args, out)
        namespace = None if args.all_namespaces else (args.namespace or cluster.namespace)
        if what == "runs":
            labels = experiment_selector(args.experiment) if args.experiment else None
            items = cluster.list(BENCHMARKRUN_PLURAL, namespace, labels=labels)
            columns = BENCHMARKRUN_COLUMNS
        else:
            items = cluster.list(EXPERIMENT_PLURAL, namespace)
            columns = EXPERIMENT_COLUMNS
    except Exception as e:  # any config or API failure: one line, not a traceback
        print(f"benchop get: {type(e).__name__}: {str(e).strip()[:500]}", file=sys.stderr)
        return 2
    if args.output == "yaml":
        print(yaml.safe_dump({"items": items}, sort_keys=False), end="")
        return 0
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2))
        return 0
    items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
    out.print(printer_table(items, columns, title=f"{what} in {namespace or 'all namespaces'}"))
    return 0
