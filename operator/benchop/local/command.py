"""``benchop run FILE``: a BenchmarkRun or an Experiment, locally, without a cluster.

    benchop run examples/run.yaml                  # mock server, simulated GPUs
    benchop run examples/run.yaml --output status.yaml
    benchop run examples/experiment.yaml           # the sweep, one run after another

Prints the ``kubectl get benchmarkruns -o wide`` row(s) and the detailed
results; ``--output`` writes the resource with the status the operator would
have written. Exit code 0 when every run succeeded, 1 when one failed, 2 for
a file that is not a valid BenchmarkRun or Experiment (the message names the
field).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console

from benchop.api.conditions import now_rfc3339
from benchop.api.models import (
    BenchmarkRun,
    Experiment,
    ExperimentMetrics,
    format_validation_error,
    load_manifest,
    to_wire,
)
from benchop.core.children import build_child_run, child_phase, plan_sweep, should_stop
from benchop.core.lifecycle import experiment_progressed
from benchop.core.rollup import DEFAULT_CAP, rollup
from benchop.local.session import LocalOptions, LocalOutcome, run_benchmark
from benchop.mockserver import MockConfig
from benchop.report import BENCHMARKRUN_COLUMNS, experiment_table, printer_table, results_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("file", type=Path, help="a BenchmarkRun or Experiment manifest (YAML)")
    a("--output", "-o", type=Path, help="write the resource with its final status here (YAML)")
    a("--results-dir", type=Path, help="keep worker records and snapshots here (default: temp)")
    a("--gpu-backend", choices=["auto", "nvml", "simulated"], default="auto",
      help="GPU reader of the local agent; auto falls back to simulated, loudly")  # fmt: skip
    a("--gpus", type=int, default=1, help="simulated GPUs of the local agent (default 1)")
    a("--no-agent", action="store_true", help="run without the local agent (no GPU numbers)")
    a("--no-live", action="store_true", help="no live progress display")
    a("--mock-ttft", type=float, default=0.02, help="mock server time to first token, s")
    a("--mock-itl", type=float, default=0.005, help="mock server inter-token latency, s")
    a("--secrets-dir", type=Path, default=os.environ.get("BENCHOP_SECRETS_DIR") or None,
      help="the spec's Secrets as DIR/<secret>/<key> files (env BENCHOP_SECRETS_DIR)")  # fmt: skip


def load_file(path: Path) -> BenchmarkRun | Experiment:
    """The manifest in ``path``; ValueError with a message naming the field otherwise."""
    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a BenchmarkRun or Experiment manifest (a mapping)")
    try:
        return load_manifest(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid manifest:\n{format_validation_error(exc)}") from None


def _resource(run: BenchmarkRun, outcome: LocalOutcome) -> dict[str, Any]:
    doc = to_wire(run)
    doc["status"] = outcome.status
    return doc


async def _run_experiment(
    exp: Experiment, opts: LocalOptions
) -> list[tuple[BenchmarkRun, LocalOutcome]]:
    """The sweep in order, one run at a time, children built as the operator builds them."""
    body = to_wire(exp)
    body["metadata"].setdefault("namespace", "default")
    body["metadata"].setdefault("uid", "local")
    name = body["metadata"].setdefault("name", "experiment")
    done: list[tuple[BenchmarkRun, LocalOutcome]] = []
    failures = 0
    points = exp.spec.points()
    for i, (params, spec) in enumerate(points):
        label = ", ".join(f"{k}={v}" for k, v in params.items())
        opts.console.rule(f"{name}: run {i + 1}/{len(points)} ({label})")
        run = BenchmarkRun.model_validate(build_child_run(body, index=i, params=params, spec=spec))
        outcome = await run_benchmark(run, replace(opts, results_dir=opts.results_dir / f"run-{i}"))
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


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Console(width=None if sys.stdout.isatty() else 250)  # piped: no 80-col "moc…"
    err = Console(stderr=True)
    try:
        manifest = load_file(args.file)
    except ValueError as exc:
        err.print(f"benchop run: {exc}", markup=False)
        return 2
    if args.gpus < 1:
        err.print("benchop run: --gpus must be >= 1")
        return 2
    tmp = None
    if args.results_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="benchop-")
        results_dir = Path(tmp.name)
    else:
        results_dir = args.results_dir
    opts = LocalOptions(
        results_dir=results_dir,
        gpu_backend=args.gpu_backend,
        gpus=args.gpus,
        agent=not args.no_agent,
        live=not args.no_live and err.is_terminal,
        mock=MockConfig(ttft=args.mock_ttft, itl=args.mock_itl),
        console=err,
        secrets_dir=Path(args.secrets_dir) if args.secrets_dir else None,
    )
    try:
        if isinstance(manifest, BenchmarkRun):
            pairs = [(manifest, asyncio.run(run_benchmark(manifest, opts)))]
        else:
            pairs = asyncio.run(_run_experiment(manifest, opts))
    except KeyboardInterrupt:
        err.print("benchop run: interrupted")
        return 130
    finally:
        if tmp is not None:
            tmp.cleanup()
    resources = [_resource(run, outcome) for run, outcome in pairs]
    if isinstance(manifest, BenchmarkRun) and pairs[0][1].results is not None:
        outcome = pairs[0][1]
        assert outcome.results is not None
        out.print(results_table(outcome.results, title=f"{outcome.name}: results (profiling)"))
    docs = resources
    if isinstance(manifest, Experiment):
        exp_doc = to_wire(manifest)
        exp_doc["status"] = _experiment_status(manifest, resources)
        metrics = ExperimentMetrics.model_validate(exp_doc["status"]["metrics"])
        out.print(experiment_table(metrics, title=f"{exp_doc['metadata'].get('name')}: comparison"))
        docs = [exp_doc, *resources]
    out.print(
        printer_table(resources, BENCHMARKRUN_COLUMNS, title="kubectl get benchmarkruns -o wide")
    )
    for _, outcome in pairs:
        if not outcome.succeeded:
            cond = next(x for x in outcome.status["conditions"] if x["type"] == "Succeeded")
            out.print(f"[red]{outcome.name} failed: {cond['reason']}: {cond['message']}[/red]")
    if args.output is not None:
        args.output.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        err.print(f"status written to {args.output}")
    return 0 if all(o.succeeded for _, o in pairs) else 1


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace()))
