"""``benchop run`` of an Experiment with ``spec.search``: the SLO search on this machine.

The same pure steps as the operator (:mod:`benchop.core.search`): ask :func:`search_step` for
the next load, run that probe (a child BenchmarkRun built as the operator builds it, named
``<experiment>-<probe>``), record whether its goodput met the target, repeat until the search
ends; the status comes from the same :func:`search_plan` and rollup.

    pairs = await run_search(experiment, opts)
    status = search_status(experiment, [resource(run, outcome) for run, outcome in pairs])
"""

from __future__ import annotations

from typing import Any

from benchop.api.conditions import now_rfc3339
from benchop.api.models import BenchmarkRun, Experiment, to_wire
from benchop.core.children import build_child_run, child_phase
from benchop.core.lifecycle import experiment_progressed
from benchop.core.rollup import DEFAULT_CAP, rollup
from benchop.core.search import Load, probe_passed, probes_of, search_plan, search_step
from benchop.local.session import (
    LocalOptions,
    LocalOutcome,
    child_options,
    run_benchmark,
    shared_mock,
)
from benchop.report import fmt


def parent_body(exp: Experiment) -> dict[str, Any]:
    """The Experiment as the child builder reads it, with the defaults of a local run."""
    body = to_wire(exp)
    body["metadata"].setdefault("namespace", "default")
    body["metadata"].setdefault("uid", "local")
    body["metadata"].setdefault("name", "experiment")
    return body


def resource(run: BenchmarkRun, outcome: LocalOutcome) -> dict[str, Any]:
    """The run as the operator would have left it: its manifest with the final status."""
    doc = to_wire(run)
    doc["status"] = outcome.status
    return doc


async def run_search(
    exp: Experiment, opts: LocalOptions
) -> list[tuple[BenchmarkRun, LocalOutcome]]:
    """The probes in the order the search chose them, one at a time, on one mock server."""
    search = exp.spec.search
    assert search is not None
    body = parent_body(exp)
    name = body["metadata"]["name"]
    done: list[tuple[BenchmarkRun, LocalOutcome]] = []
    probes: dict[Load, bool | None] = {}
    target = exp.spec.template.target
    tok = exp.spec.template.workload.tokenizer  # the mock counts prompts as the workers do
    async with shared_mock(
        opts,
        needed=not target.endpoints,
        model=target.model,
        tokenizer=tok.file if tok else None,
    ) as opts:
        while (step := search_step(search, probes)).next is not None:
            index, value = len(done), step.next
            opts.console.rule(
                f"{name}: probe {index + 1} (at most {search.max_probes}): {search.path}={value}"
            )
            params, spec = exp.spec.probe(value)
            run = BenchmarkRun.model_validate(
                build_child_run(body, index=index, params=params, spec=spec)
            )
            outcome = await run_benchmark(run, child_options(opts, run, index, name, params))
            passed = probe_passed(resource(run, outcome), search)
            probes[value] = passed
            goodput = outcome.results.goodput if outcome.results is not None else None
            opts.console.print(
                f"{name}: {search.path}={value}: goodput "
                f"{fmt(goodput.ratio if goodput is not None else None)} "
                + ("met" if passed else "[red]missed[/red]")
                + f" the target {search.min_goodput:g}",
                highlight=False,
            )
            done.append((run, outcome))
        opts.console.print(f"{name}: {step.outcome}: {step.message}", highlight=False)
    return done


def search_status(exp: Experiment, children: list[dict[str, Any]]) -> dict[str, Any]:
    """The Experiment's status after the search, as the operator writes it."""
    search = exp.spec.search
    assert search is not None
    step = search_step(search, probes_of(children, search))
    plan = search_plan(step, [child_phase(c) for c in children])
    now = now_rfc3339()
    status = experiment_progressed({}, generation=exp.metadata.generation or 1, plan=plan, now=now)
    metrics = rollup(children, cap=DEFAULT_CAP, now=now, search=to_wire(search))
    status["metrics"] = to_wire(metrics)
    return status
