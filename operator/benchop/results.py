"""``benchop results NAME``: a run's or an Experiment's results bundle, printed or saved.

    benchop results mock-c8                      # results.json of ./benchop-results/mock-c8/
    benchop results mock-c8 -o csv               # its timeseries.csv
    benchop results benchop-results/sweep -o yaml
    benchop results my-run -n bench -o json --output-file my-run.json   # from the cluster

NAME is a results directory, a name under ``./benchop-results/``, or else a BenchmarkRun or
Experiment in the cluster (kubeconfig, or ``--server``): its results ConfigMap, named in
``status.output.configMap`` (an Experiment: each child run's). ``-o`` is the format:
``json`` (results.json), ``yaml`` (the same as YAML), ``csv`` (timeseries.csv). An
Experiment gives ``{"experiment": ..., "runs": [results.json, ...]}`` and a CSV with a
leading ``run`` column. Exit codes: 0 ok, 1 not found (or no results yet), 2 usage, API or
config error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from benchop.bundle import Bundle, is_bundle, read_bundle
from benchop.core.bundle import RESULTS_FILE, TIMESERIES_FILE
from benchop.core.names import BENCHMARKRUN_PLURAL, EXPERIMENT_PLURAL
from benchop.core.selectors import experiment_selector

DEFAULT_ROOT = Path("benchop-results")


class SourceError(Exception):
    """NAME could not be resolved to results; ``code`` is the exit code to use."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("name", metavar="NAME", help="results directory, or run/experiment name")
    a("-o", "--output", choices=["json", "yaml", "csv"], default="json",
      help="format: json (results.json), yaml, csv (timeseries.csv); default json")  # fmt: skip
    a("--output-file", type=Path, help="write here instead of stdout")
    a("-n", "--namespace", help="namespace of a cluster resource (default: kubeconfig's)")
    a("--server", metavar="URL", help="API server URL (no credentials)")


def load(name: str, *, namespace: str | None = None, server: str | None = None) -> Bundle:
    """The bundle NAME stands for: a directory, ``./benchop-results/NAME``, or the cluster."""
    for path in (Path(name), DEFAULT_ROOT / name):
        if path.is_dir():
            if not is_bundle(path):
                raise SourceError(f"{path} holds no benchop results")
            try:
                return read_bundle(path)
            except (OSError, ValueError) as exc:
                raise SourceError(f"{path}: {exc}", 2) from None
    try:
        return _from_cluster(name, namespace, server)
    except SourceError:
        raise
    except Exception as e:  # config or API failure: one line, not a traceback
        raise SourceError(
            f"no results directory {name} (nor {DEFAULT_ROOT / name}), and the cluster: "
            f"{type(e).__name__}: {str(e).strip()[:500]}",
            2,
        ) from None


def _configmap_bundle(cluster: Any, namespace: str, run: dict[str, Any]) -> Bundle | None:
    """The run's bundle from the ConfigMap ``status.output.configMap`` names, or None."""
    output = (run.get("status") or {}).get("output") or {}
    cm = output.get("configMap")
    if not cm:
        return None
    data = cluster.configmap_data(namespace, cm)
    if data is None or RESULTS_FILE not in data:
        return None
    return Bundle(
        f"{namespace}/{cm}", json.loads(data[RESULTS_FILE]), data.get(TIMESERIES_FILE) or None, None
    )


def _from_cluster(name: str, namespace: str | None, server: str | None) -> Bundle:
    from benchop.get import Cluster

    cluster = Cluster(server)
    ns = namespace or cluster.namespace
    run = cluster.get(BENCHMARKRUN_PLURAL, ns, name)
    if run is not None:
        found = _configmap_bundle(cluster, ns, run)
        if found is None:
            raise SourceError(f'run "{name}" in {ns} has no results bundle (yet)')
        return found
    exp = cluster.get(EXPERIMENT_PLURAL, ns, name)
    if exp is None:
        raise SourceError(
            f'no results directory "{name}" (nor {DEFAULT_ROOT / name}), and no BenchmarkRun '
            f"or Experiment {name} in {ns}"
        )
    children = cluster.list(BENCHMARKRUN_PLURAL, ns, labels=experiment_selector(name))
    order = {
        r.get("name"): i
        for i, r in enumerate(((exp.get("status") or {}).get("metrics") or {}).get("runs") or [])
    }
    children.sort(key=lambda c: (order.get(c["metadata"]["name"], 1 << 30), c["metadata"]["name"]))
    bundles = [b for c in children if (b := _configmap_bundle(cluster, ns, c)) is not None]
    return Bundle(f"{ns}/{name}", None, None, None, exp, tuple(bundles))


# --------------------------------------------------------------------------- formats


def as_document(bundle: Bundle) -> dict[str, Any]:
    """What ``-o json|yaml`` prints: results.json, or an Experiment with its runs'."""
    if bundle.experiment is None:
        return bundle.results or {}
    return {
        "experiment": bundle.experiment,
        "runs": [c.results for c in bundle.children],
    }


def as_csv(bundle: Bundle) -> str:
    """What ``-o csv`` prints: timeseries.csv, or every child's with a leading ``run`` column."""
    if bundle.experiment is None:
        return bundle.timeseries or ""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header_done = False
    for child in bundle.children:
        reader = csv.reader(io.StringIO(child.timeseries or ""))
        header = next(reader, None)
        if header is None:
            continue
        if not header_done:
            writer.writerow(["run", *header])
            header_done = True
        run = ((child.results or {}).get("run") or {}).get("name", "")
        for row in reader:
            writer.writerow([run, *row])
    return out.getvalue()


def run(args: argparse.Namespace) -> int:
    out_file: Path | None = args.output_file
    if out_file is not None and not out_file.parent.is_dir():
        print(f"benchop results: directory {out_file.parent} does not exist", file=sys.stderr)
        return 2
    try:
        bundle = load(args.name, namespace=args.namespace, server=args.server)
    except SourceError as exc:
        print(f"benchop results: {exc}", file=sys.stderr)
        return exc.code
    if args.output == "csv":
        text = as_csv(bundle)
        if not text:
            print(f"benchop results: {bundle.where} has no timeseries", file=sys.stderr)
            return 1
    elif args.output == "yaml":
        text = yaml.safe_dump(as_document(bundle), sort_keys=False)
    else:
        text = json.dumps(as_document(bundle), indent=1) + "\n"
    if out_file is None:
        sys.stdout.write(text)
    else:
        out_file.write_text(text)
        print(f"{args.output} written to {out_file}", file=sys.stderr)
    return 0
