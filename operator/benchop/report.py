"""Terminal tables of results, shared by ``benchop run`` and ``benchop get``.

``printer_row`` resolves the CRD's own printer columns against a resource
dict, so the local table shows exactly what ``kubectl get benchmarkruns -o
wide`` shows on a cluster (Age aside). ``results_table`` is the detailed view;
``experiment_table`` compares the runs of a sweep.

>>> printer_row({"status": {"phase": "Succeeded"}}, BENCHMARKRUN_COLUMNS[:1])
{'Phase': 'Succeeded'}
>>> fmt(999.7), fmt(0.01234), fmt(152234.0), fmt(None)
('1000', '0.0123', '152234', '-')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group
from rich.table import Table

from benchop.api.crdgen import BENCHMARKRUN_COLUMNS, EXPERIMENT_COLUMNS
from benchop.api.models import ExperimentMetrics, ExperimentSearch, LatencyStats, Results
from benchop.core.rollup import OBJECTIVES

__all__ = [
    "BENCHMARKRUN_COLUMNS",
    "EXPERIMENT_COLUMNS",
    "experiment_table",
    "fmt",
    "printer_row",
    "printer_table",
    "resolve",
    "results_table",
    "search_table",
]


def resolve(obj: Any, json_path: str) -> Any:
    """Value at a simple ``.a.b.c`` JSONPath (as printer columns use), or None."""
    for key in json_path.lstrip(".").split("."):
        if not isinstance(obj, Mapping) or key not in obj:
            return None
        obj = obj[key]
    return obj


def fmt(value: Any, digits: int = 3) -> str:
    """Short human form: floats to ``digits`` significant figures, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        short = f"{value:.{digits}g}"
        return f"{value:.0f}" if "e" in short and abs(value) >= 1 else short
    return str(value)


def printer_row(
    resource: Mapping[str, Any], columns: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """Column name -> formatted value for every non-date column."""
    return {
        c["name"]: fmt(resolve(resource, c["jsonPath"])) for c in columns if c["type"] != "date"
    }


def printer_table(
    resources: Sequence[Mapping[str, Any]],
    columns: Sequence[Mapping[str, Any]] = BENCHMARKRUN_COLUMNS,
    *,
    title: str | None = None,
) -> Table:
    """The ``kubectl get -o wide`` view of resources (NAME plus every printer column)."""
    table = Table(title=title)
    table.add_column("NAME", overflow="fold")  # narrow terminals fold cells, never cut them
    shown = [c for c in columns if c["type"] != "date"]
    for c in shown:
        table.add_column(
            c["name"].upper(),
            justify="left" if c["type"] == "string" else "right",
            overflow="fold",
        )
    for res in resources:
        row = printer_row(res, shown)
        table.add_row(str(resolve(res, ".metadata.name") or "-"), *row.values())
    return table


def results_table(results: Results, *, title: str = "Results (profiling phase)") -> Group:
    """Latency statistics, then throughput, goodput, GPU and client health of one run."""
    table = Table(title=title, title_justify="left")
    table.add_column("latency")
    series: list[tuple[str, LatencyStats | None]] = [
        ("TTFT ms", results.ttft_ms),
        ("ITL ms", results.itl_ms),
        ("TPOT ms", results.tpot_ms),
        ("E2E ms", results.e2e_ms),
    ]
    extra: list[str] = []  # spec.report.percentiles beyond the four, as the status has them
    for _, s in series:
        for key in (s.percentiles or {}) if s is not None else ():
            if key not in extra:
                extra.append(key)
    extra.sort(key=lambda k: float(k[1:]))
    cols = ("p50", "p90", "p95", "p99", *extra, "mean", "std", "min", "max")
    for col in (*cols, "count"):
        table.add_column(col, justify="right")
    for name, s in series:
        if s is None:
            table.add_row(name, *["-"] * (len(cols) + 1))
            continue
        pcts = {"p50": s.p50, "p90": s.p90, "p95": s.p95, "p99": s.p99, **(s.percentiles or {})}
        other = {"mean": s.mean, "std": s.std, "min": s.min, "max": s.max}
        table.add_row(name, *(fmt({**pcts, **other}.get(c)) for c in cols), str(s.count))
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    req = results.requests
    failed = ", ".join(f"{k}={v}" for k, v in sorted(req.by_reason.items())) or "none"
    facts.add_row("requests", f"{req.total} total, {req.ok} ok, {req.failed} failed ({failed})")
    tp = results.throughput
    facts.add_row(
        "throughput",
        f"{fmt(tp.rps)} req/s, {fmt(tp.output_tok_per_s)} output tok/s "
        f"over {fmt(results.duration_s)} s, {results.workers} worker(s)",
    )
    if results.goodput is not None:
        g = results.goodput
        facts.add_row("goodput", f"{fmt(g.ratio * 100)} % of requests met the SLO ({fmt(g.rps)}/s)")
    if results.gpu is not None:
        gpu = results.gpu
        missing = f"; missing agents: {', '.join(gpu.missing_agents)}" if gpu.missing_agents else ""
        facts.add_row(
            "gpu (SIMULATED)" if gpu.simulated else "gpu",
            f"{gpu.gpus} GPU(s): util {fmt(gpu.util_mean)} %, power {fmt(gpu.power_mean_w)} W, "
            f"energy {fmt(gpu.energy_j)} J, {fmt(gpu.joules_per_output_token)} J/token{missing}",
        )
    if results.client is not None:
        c = results.client
        verdict = f"SATURATED: {c.reason}" if c.saturated else "ok"
        connects = ""
        if c.connect_failures:
            connects = f", {c.connect_failures} of {c.connect_attempts} connects failed"
        facts.add_row(
            "client",
            f"cpu {fmt(c.cpu_pct)} %, receive lag p99 {fmt(c.recv_lag_p99_ms)} ms"
            + ("" if c.send_lag_p99_ms is None else f", send lag p99 {fmt(c.send_lag_p99_ms)} ms")
            + connects
            + f": {verdict}",
        )
    if results.tokens is not None:
        t = results.tokens
        text = (
            f"counts from {t.source} ({t.from_usage} of {req.ok} ok requests from the server's "
            f"usage); tokenizer: {t.tokenizer or 'none (word and chunk estimates)'}"
        )
        if t.tokens_per_chunk is not None and t.tokens_per_chunk > 1.05:
            text += f"; {fmt(t.tokens_per_chunk)} tokens per chunk (ITL is per chunk)"
        facts.add_row("tokens", text)
    if results.request is not None:
        r = results.request
        parts = ["streamed" if r.stream else "not streamed (TTFT = E2E)"]
        if r.finish_reasons:
            parts.append("finish " + ", ".join(f"{k}={v}" for k, v in r.finish_reasons.items()))
        if r.endpoints > 1:
            parts.append(f"{r.endpoints} URLs")
        if r.insecure_skip_verify:
            parts.append("TLS NOT VERIFIED (insecureSkipVerify)")
        facts.add_row("request", "; ".join(parts))
        for w in r.warnings:
            facts.add_row("warning", w)
    facts.add_row("source", results.source + ("" if results.complete else " (INCOMPLETE)"))
    return Group(table, facts)


# (header, row field)
ROW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("RPS", "rps"),
    ("TOK/S", "tokPerS"),
    ("TTFT-P50 ms", "ttftP50"),
    ("TTFT-P99 ms", "ttftP99"),
    ("ITL-P50 ms", "itlP50"),
    ("GOODPUT", "goodput"),
    ("GPU-UTIL %", "gpuUtil"),
    ("J/TOK", "joulesPerToken"),
)


def experiment_table(metrics: ExperimentMetrics, *, title: str | None = None) -> Table:
    """The comparison of a sweep: one row per run, swept params first, best values marked ``*``.

    >>> console.print(experiment_table(metrics, title="sweep"))
    """
    table = Table(title=title, caption="* best run per objective (Succeeded runs only)")
    params = list(dict.fromkeys(k for row in metrics.runs for k in row.params))
    table.add_column("NAME", overflow="fold")  # fold, never "moc…": the name identifies the row
    for p in params:
        table.add_column(p.upper(), justify="right", overflow="fold")
    table.add_column("PHASE", overflow="fold")
    for header, _ in ROW_COLUMNS:
        table.add_column(header, justify="right", overflow="fold")
    for row in metrics.runs:
        values = row.model_dump(by_alias=True)
        cells = [row.name, *(fmt(row.params.get(p)) for p in params), fmt(values["phase"])]
        for _, field in ROW_COLUMNS:
            mark = "*" if field in OBJECTIVES and metrics.best.get(field) == row.name else ""
            cells.append(fmt(values[field]) + mark)
        table.add_row(*cells)
    return table


def search_table(search: ExperimentSearch, *, title: str | None = None) -> Table:
    """An SLO search: each probe in the order run (load, goodput, whether it met the target),
    the knee and the limit marked; the caption says how the search ended.

    >>> console.print(search_table(metrics.search, title="knee"))
    """
    knee = "-" if search.knee is None else fmt(search.knee)
    table = Table(
        title=title or f"SLO search: knee {search.path}={knee} ({search.outcome})",
        caption=f"{search.outcome}: {search.message}",
    )
    table.add_column("#", justify="right")
    table.add_column("NAME", overflow="fold")
    table.add_column(search.path.upper(), justify="right")
    table.add_column("PHASE", overflow="fold")
    table.add_column("GOODPUT", justify="right")
    table.add_column(f"GOODPUT >= {search.min_goodput:g}", overflow="fold")
    table.add_column("", overflow="fold")
    for i, probe in enumerate(search.probes):
        met = {True: "met", False: "missed", None: "-"}[probe.passed]
        mark = (
            "knee"
            if probe.run == search.knee_run
            else "limit"
            if probe.run == search.limit_run
            else ""
        )
        table.add_row(
            str(i + 1), probe.run, fmt(probe.value), fmt(probe.phase), fmt(probe.goodput), met, mark
        )
    return table
