"""``benchop run FILE``: BenchmarkRuns and Experiments, locally, without a cluster.

    benchop run examples/run.yaml                  # mock server, simulated GPUs
    benchop run examples/run.yaml --output-file status.yaml
    benchop run examples/run.yaml -o yaml          # the resource with its status on stdout
    benchop run examples/experiment.yaml           # the sweep, one run after another
    benchop run examples/slo-search.yaml           # an SLO search, probe after probe
    benchop run examples/dataset-run.yaml          # prompts from examples/data/chat.jsonl
    benchop run several.yaml                       # `---` separated resources, in file order
    benchop run examples/run.yaml --results-dir out/c8

Prints the ``kubectl get benchmarkruns -o wide`` row(s) and the detailed results of each
resource (``-o yaml|json``: the resources with the status the operator would have written
instead); ``--output-file`` also writes them to a file (YAML). Exit code 0 when every resource
succeeded, 1 when one failed, 2 for a usage error: a file that is not valid YAML (file:line), a
document that is not a valid BenchmarkRun or Experiment (the message names the field), or an
``--output-file`` whose directory does not exist, or an unusable results directory — all
refused before anything runs.

Every run writes its results bundle (results.json, timeseries.csv, records.jsonl;
docs/results.md) to ``--results-dir``, by default ``./benchop-results/<name>/``; with several
resources in the file, ``--results-dir`` holds one sub-directory per resource. An Experiment's
bundle is ``experiment.json`` and one run bundle per child, in ``<dir>/<child>/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from benchop.api.conditions import now_rfc3339
from benchop.api.models import (
    BenchmarkRun,
    Experiment,
    ExperimentMetrics,
    Results,
    to_wire,
)
from benchop.bundle import check_results_dir, clear_bundle, write_json
from benchop.core.bundle import EXPERIMENT_FILE
from benchop.core.children import build_child_run, child_phase, plan_sweep, should_stop
from benchop.core.lifecycle import experiment_progressed
from benchop.core.rollup import DEFAULT_CAP, rollup
from benchop.local.manifests import Manifest, ManifestError, load_manifests
from benchop.local.search import parent_body, resource, run_search, search_status
from benchop.local.session import (
    LocalOptions,
    LocalOutcome,
    child_options,
    run_benchmark,
    shared_mock,
)
from benchop.mockserver import MockConfig
from benchop.report import (
    BENCHMARKRUN_COLUMNS,
    experiment_table,
    printer_table,
    results_table,
    search_table,
)

FORMATS = ("table", "yaml", "json")
DEFAULT_RESULTS_ROOT = Path("benchop-results")
LOCAL_MOCK_CAPACITY = 8
"""The built-in mock server's capacity in local runs (``--mock-capacity``): a sweep saturates
and an SLO search finds a knee, as against a real server (``benchop mock-server``: unlimited)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("file", type=Path, help="BenchmarkRun and Experiment manifests (YAML; `---` between several)")
    a("-o", "--output", choices=FORMATS, default="table",
      help="stdout: result tables (default), or the resources with their final status as "
      "yaml or json (progress stays on stderr)")  # fmt: skip
    a("--output-file", type=Path, metavar="PATH",
      help="also write the resources with their final status to PATH (YAML); its directory "
      "must exist")  # fmt: skip
    a("--results-dir", type=Path, metavar="DIR",
      help="results bundle directory (default ./benchop-results/<name>/; with several "
      "resources, one sub-directory each)")  # fmt: skip
    a("--work-dir", type=Path, metavar="DIR",
      help="keep the workers' own files here (logs, checkpoints, final snapshots; default: a "
      "temporary directory, removed after the run)")  # fmt: skip
    a("--gpu-backend", choices=["auto", "nvml", "simulated"], default="auto",
      help="GPU reader of the local agent; auto falls back to simulated, loudly")  # fmt: skip
    a("--gpus", type=int, default=1, help="simulated GPUs of the local agent (default 1)")
    a("--no-agent", action="store_true", help="run without the local agent (no GPU numbers)")
    a("--no-live", action="store_true", help="no live progress display")
    a("--mock-ttft", type=float, default=0.02, help="mock server time to first token, s")
    a("--mock-itl", type=float, default=0.005, help="mock server inter-token latency, s")
    a("--mock-capacity", type=int, default=LOCAL_MOCK_CAPACITY,
      help="streams the mock server serves at full speed; beyond, every stream slows in "
      "proportion, like a server with a full batch (0: unlimited; default %(default)s)",
    )  # fmt: skip
    a("--secrets-dir", type=Path, default=os.environ.get("BENCHOP_SECRETS_DIR") or None,
      help="the spec's Secrets as DIR/<secret>/<key> files (env BENCHOP_SECRETS_DIR)")  # fmt: skip


def bundle_dirs(results_dir: Path | None, manifests: list[Manifest]) -> list[Path]:
    """Each resource's bundle directory: ``--results-dir`` itself for one resource, else a
    sub-directory per resource named after it (``./benchop-results/<name>`` without it)."""
    names = [m.metadata.name or f"doc-{i}" for i, m in enumerate(manifests)]
    if results_dir is None:
        return [DEFAULT_RESULTS_ROOT / n for n in names]
    if len(manifests) == 1:
        return [results_dir]
    return [results_dir / n for n in names]


def check_output_file(path: Path | None) -> str | None:
    """Why ``path`` cannot take the output (checked before the run, not after), or None."""
    if path is None:
        return None
    parent = path.parent
    if path.is_dir():
        return f"--output-file {path}: is a directory"
    if not parent.is_dir():
        return f"--output-file {path}: directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"--output-file {path}: not writable"
    return None


async def _run_experiment(
    exp: Experiment, opts: LocalOptions
) -> list[tuple[BenchmarkRun, LocalOutcome]]:
    """The sweep in order, one run at a time, children built as the operator builds them,
    against one mock server (unless the template has a URL)."""
    body = parent_body(exp)
    name = body["metadata"]["name"]
    done: list[tuple[BenchmarkRun, LocalOutcome]] = []
    failures = 0
    points = exp.spec.points()
    template = exp.spec.template
    needed = any(not s.target.endpoints for _, s in points)
    tok = template.workload.tokenizer  # the mock counts prompts as the workers do
    async with shared_mock(
        opts, needed=needed, model=template.target.model, tokenizer=tok.file if tok else None
    ) as opts:
        for i, (params, spec) in enumerate(points):
            label = ", ".join(f"{k}={v}" for k, v in params.items())
            opts.console.rule(f"{name}: run {i + 1}/{len(points)} ({label})")
            child = build_child_run(body, index=i, params=params, spec=spec)
            run = BenchmarkRun.model_validate(child)
            outcome = await run_benchmark(run, child_options(opts, run, i, name, params))
            done.append((run, outcome))
            failures += not outcome.succeeded
            if should_stop(exp.spec, failures):
                opts.console.print(f"[red]{name}: sweep stopped after {failures} failure(s)[/red]")
                break
    return done


def _experiment_status(exp: Experiment, children: list[dict[str, Any]]) -> dict[str, Any]:
    total = len(exp.spec.points())
    plan = plan_sweep(exp.spec, {i: child_phase(c) for i, c in enumerate(children)}, total)
    if not plan.finished:  # stopped early by the failure policy: nothing else will run
        plan = replace(plan, finished=True, reason="Aborted")
    now = now_rfc3339()
    status = experiment_progressed({}, generation=exp.metadata.generation or 1, plan=plan, now=now)
    status["metrics"] = to_wire(rollup(children, cap=DEFAULT_CAP, now=now))
    return status


def _report(out: Console, manifest: Manifest, docs: list[dict[str, Any]]) -> None:
    """The tables of one resource: results or the comparison, then the runs' printer rows."""
    if isinstance(manifest, BenchmarkRun):
        run_doc = docs[0]
        results = (run_doc.get("status") or {}).get("results")
        if results is not None:
            name = run_doc["metadata"].get("name") or "local-run"
            out.print(
                results_table(Results.model_validate(results), title=f"{name}: results (profiling)")
            )
        runs = docs
    else:
        exp_doc, *runs = docs
        metrics = ExperimentMetrics.model_validate(exp_doc["status"]["metrics"])
        out.print(experiment_table(metrics, title=f"{exp_doc['metadata'].get('name')}: comparison"))
        if metrics.search is not None:
            out.print(search_table(metrics.search))
    out.print(printer_table(runs, BENCHMARKRUN_COLUMNS, title="kubectl get benchmarkruns -o wide"))
    for doc in docs:
        cond = _condition(doc, "Succeeded")
        if cond and cond.get("status") == "False":
            name = doc["metadata"].get("name")
            out.print(
                f"[red]{name} failed: {cond['reason']}: {cond['message']}[/red]", highlight=False
            )


def _condition(doc: dict[str, Any], type_: str) -> dict[str, Any] | None:
    conds = (doc.get("status") or {}).get("conditions") or []
    return next((x for x in conds if x.get("type") == type_), None)


async def _run_one(manifest: Manifest, opts: LocalOptions) -> list[dict[str, Any]]:
    """Run one resource; its doc(s) with final status: ``[run]`` or ``[experiment, *runs]``."""
    if isinstance(manifest, BenchmarkRun):
        return [resource(manifest, await run_benchmark(manifest, opts))]
    exp_doc = to_wire(manifest)
    if manifest.spec.search is not None:
        resources = [resource(r, o) for r, o in await run_search(manifest, opts)]
        exp_doc["status"] = search_status(manifest, resources)
    else:
        resources = [resource(r, o) for r, o in await _run_experiment(manifest, opts)]
        exp_doc["status"] = _experiment_status(manifest, resources)
    return [exp_doc, *resources]


def _print_docs(fmt: str, docs: list[dict[str, Any]]) -> None:
    if fmt == "yaml":
        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    else:  # json: one object, or a List of several, as kubectl prints them
        body = docs[0] if len(docs) == 1 else {"apiVersion": "v1", "kind": "List", "items": docs}
        sys.stdout.write(json.dumps(body, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Console(width=None if sys.stdout.isatty() else 250)  # piped: no 80-col "moc…"
    err = Console(stderr=True)
    try:
        manifests = load_manifests(args.file)
    except ManifestError as exc:  # plain lines (rich would wrap paths): greppable, clickable
        print(f"benchop run: {exc}", file=sys.stderr)
        return 2
    problem = check_output_file(args.output_file)
    if problem is None and args.gpus < 1:
        problem = "--gpus must be >= 1"
    if problem is None and args.mock_capacity < 0:
        problem = "--mock-capacity must be >= 0 (0: unlimited)"
    if problem is not None:
        print(f"benchop run: {problem}", file=sys.stderr)
        return 2
    bundles = bundle_dirs(args.results_dir, manifests)
    for bundle_dir in bundles:
        try:
            check_results_dir(bundle_dir)
        except ValueError as exc:
            print(f"benchop run: {exc}", file=sys.stderr)
            return 2
    for bundle_dir in bundles:
        clear_bundle(bundle_dir)
    tmp = None
    if args.work_dir is None:  # the workers' own files
        tmp = tempfile.TemporaryDirectory(prefix="benchop-")
        scratch = Path(tmp.name)
    else:
        scratch = args.work_dir
        try:
            scratch.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"benchop run: --work-dir {scratch}: {exc.strerror}", file=sys.stderr)
            return 2
    opts = LocalOptions(
        results_dir=scratch,
        gpu_backend=args.gpu_backend,
        gpus=args.gpus,
        agent=not args.no_agent,
        live=not args.no_live and err.is_terminal,
        mock=MockConfig(ttft=args.mock_ttft, itl=args.mock_itl, capacity=args.mock_capacity),
        console=err,
        secrets_dir=Path(args.secrets_dir) if args.secrets_dir else None,
    )
    all_docs: list[dict[str, Any]] = []
    ok = True
    try:
        for i, manifest in enumerate(manifests):
            name = manifest.metadata.name or ""
            mine = replace(opts, bundle_dir=bundles[i])
            if len(manifests) > 1:  # each resource in its own directories
                err.rule(f"{i + 1}/{len(manifests)}: {manifest.kind} {name}")
                mine = replace(mine, results_dir=scratch / f"doc-{i}")
            docs = asyncio.run(_run_one(manifest, mine))
            if isinstance(manifest, Experiment):
                write_json(bundles[i] / EXPERIMENT_FILE, docs[0])
            ok = ok and docs[0]["status"].get("phase") == "Succeeded"
            all_docs += docs
            if args.output == "table":
                _report(out, manifest, docs)
    except KeyboardInterrupt:
        err.print("benchop run: interrupted")
        return 130
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.output != "table":
        _print_docs(args.output, all_docs)
    if args.output_file is not None:
        args.output_file.write_text(yaml.safe_dump_all(all_docs, sort_keys=False))
        print(f"status written to {args.output_file}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace()))
