"""``benchop report``: one self-contained HTML file of a run's or an Experiment's results.

    benchop report benchop-results/mock-c8 --output-file report.html
    benchop report mock-c8 mock-c32 --output-file compare.html      # side by side
    benchop report my-sweep -n bench --output-file sweep.html         # from the cluster

RESULTS is a results directory (a bundle: docs/results.md), a name under
``./benchop-results/``, or a BenchmarkRun or Experiment in the cluster (its results
ConfigMap). Charts are Plotly figures; plotly.js is inlined once, so the file opens
offline and fetches nothing (docs/results.md says why Plotly). Percentiles are read from
whatever the bundle carries (``p50``, ``p95``, ``p99.9``, ...), not from a fixed list.

What it draws, per source:

- a run: latency CDFs (TTFT, ITL, E2E; from the histograms), TTFT and ITL percentiles,
  throughput, GPU power and energy per token over time (from timeseries.csv);
- an Experiment: its runs' CDFs, the throughput-latency curve across the sweep, goodput
  against the offered load, the Pareto frontier (throughput vs TTFT p99) and the best run
  per objective; an SLO search also its target goodput, its knee and its probes;
- two sources: the same charts with both overlaid, and a summary table with the change.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchop.bundle import Bundle

__all__ = ["add_arguments", "render", "run"]

LATENCIES = (("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E latency"))
_PCOL = re.compile(r"^(ttft|itl|e2e)_p([0-9.]+)_ms$")
CHART_CLASS = "benchop-chart"
"""Every chart's container carries this class (the browser test counts them)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("results", nargs="+", metavar="RESULTS",
      help="results directory, or run/experiment name (local ./benchop-results/NAME or cluster);"
      " two to compare")  # fmt: skip
    a("--output-file", type=Path, default=Path("report.html"), help="default report.html")
    a("-n", "--namespace", help="namespace of a cluster resource (default: kubeconfig's)")
    a("--server", metavar="URL", help="API server URL (no credentials)")
    a("--title", help="report title (default: the sources' names)")


# --------------------------------------------------------------------------- data


@dataclass
class RunData:
    """One run's results.json and its timeseries columns."""

    label: str
    doc: Mapping[str, Any]
    ts: dict[str, list[float | None]] = field(default_factory=dict)

    @property
    def results(self) -> Mapping[str, Any]:
        return self.doc.get("results") or {}

    def metric(self, name: str, key: str) -> float | None:
        m = (self.doc.get("metrics") or {}).get(name) or {}
        value = (m.get("percentiles") or {}).get(key, m.get(key))
        return float(value) if isinstance(value, int | float) else None

    def number(self, *path: str) -> float | None:
        obj: Any = self.results
        for key in path:
            obj = obj.get(key) if isinstance(obj, Mapping) else None
        return float(obj) if isinstance(obj, int | float) and not isinstance(obj, bool) else None


@dataclass
class Source:
    """A run or an Experiment to draw."""

    label: str
    runs: list[RunData]
    experiment: Mapping[str, Any] | None = None


def _columns(text: str | None) -> dict[str, list[float | None]]:
    if not text:
        return {}
    reader = csv.DictReader(io.StringIO(text))
    cols: dict[str, list[float | None]] = {name: [] for name in reader.fieldnames or ()}
    for row in reader:
        for name, value in row.items():
            try:
                cols[name].append(float(value) if value not in ("", None) else None)
            except ValueError:
                cols[name].append(None)
    return cols


def _run_label(doc: Mapping[str, Any], fallback: str) -> str:
    run = doc.get("run") or {}
    return str(run.get("name") or fallback)


def source_of(bundle: Bundle) -> Source:
    """The drawable data of a bundle."""
    if bundle.experiment is not None:
        meta = bundle.experiment.get("metadata") or {}
        runs = [
            RunData(_run_label(c.results or {}, c.where), c.results or {}, _columns(c.timeseries))
            for c in bundle.children
        ]
        return Source(str(meta.get("name") or bundle.where), runs, bundle.experiment)
    doc = bundle.results or {}
    label = _run_label(doc, bundle.where)
    return Source(label, [RunData(label, doc, _columns(bundle.timeseries))])


# --------------------------------------------------------------------------- charts


def _percentile_keys(runs: Iterable[RunData], metric: str) -> list[str]:
    keys: set[str] = set()
    for r in runs:
        m = (r.doc.get("metrics") or {}).get(metric) or {}
        keys.update((m.get("percentiles") or {}).keys())
    return sorted(keys, key=lambda k: float(k[1:]))


def _ts_percentiles(runs: Iterable[RunData], series: str) -> list[str]:
    found = set()
    for r in runs:
        for col in r.ts:
            m = _PCOL.match(col)
            if m and m.group(1) == series:
                found.add(m.group(2))
    return sorted(found, key=float)


def _pick(keys: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """The wanted percentiles that exist; else the lowest and the highest."""
    picked = [k for k in wanted if k in keys]
    if picked:
        return picked
    return list(dict.fromkeys([keys[0], keys[-1]])) if keys else []


def _cdf(doc: Mapping[str, Any], metric: str) -> tuple[list[float], list[float]]:
    hist = ((doc.get("histograms") or {}).get(metric) or {}).get("buckets") or []
    total = sum(n for _, _, n in hist)
    if not total:
        return [], []
    xs, ys = [float(hist[0][0])], [0.0]
    cum = 0
    for _lo, hi, n in hist:
        cum += n
        xs.append(float(hi))
        ys.append(cum / total)
    return xs, ys


class Charts:
    """Collects figures as HTML fragments (plotly.js is added once by :func:`render`)."""

    def __init__(self) -> None:
        import plotly.graph_objects as go
        import plotly.io as pio

        self.go = go
        self._pio = pio
        self.parts: list[str] = []
        self.count = 0

    def figure(self, **layout: Any) -> Any:
        fig = self.go.Figure()
        fig.update_layout(
            template="plotly_white",
            height=380,
            margin={"l": 60, "r": 30, "t": 50, "b": 50},
            legend={"orientation": "h", "y": -0.2},
            **layout,
        )
        return fig

    def add(self, fig: Any) -> None:
        self.count += 1
        div = self._pio.to_html(
            fig,
            include_plotlyjs=False,
            full_html=False,
            div_id=f"chart-{self.count}",
            config={
                "displaylogo": False,
                "responsive": True,
                "showSendToCloud": False,
            },
        )
        self.parts.append(f'<div class="{CHART_CLASS}">{div}</div>')

    def html(self, text: str) -> None:
        self.parts.append(text)


def _cdf_charts(ch: Charts, runs: Sequence[RunData]) -> None:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in LATENCIES])
    for i, r in enumerate(runs):
        for col, (metric, _) in enumerate(LATENCIES, start=1):
            xs, ys = _cdf(r.doc, metric)
            fig.add_trace(
                ch.go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    name=r.label,
                    legendgroup=r.label,
                    showlegend=col == 1,
                    line={"color": _color(i)},
                    hovertemplate="%{x:.3g} ms: %{y:.1%}<extra>"
                    + html.escape(r.label)
                    + "</extra>",
                ),
                row=1,
                col=col,
            )
            fig.update_xaxes(type="log", title_text="ms", row=1, col=col)
    fig.update_yaxes(tickformat=".0%")
    fig.update_yaxes(title_text="share of values", row=1, col=1)
    fig.update_layout(
        template="plotly_white",
        height=400,
        title="Latency CDFs",
        margin={"l": 60, "r": 30, "t": 70, "b": 50},
        legend={"orientation": "h", "y": -0.2},
    )
    ch.add(fig)


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


_DASH = ("solid", "dash", "dot", "dashdot")


def _time_chart(ch: Charts, runs: Sequence[RunData], series: str, title: str) -> None:
    keys = _pick(_ts_percentiles(runs, series), ["50", "99"])
    fig = ch.figure(title=title, xaxis_title="seconds since profiling start", yaxis_title="ms")
    for i, r in enumerate(runs):
        for j, k in enumerate(keys):
            ys = r.ts.get(f"{series}_p{k}_ms")
            if ys is None:
                continue
            fig.add_trace(
                ch.go.Scatter(
                    x=r.ts.get("t_s"),
                    y=ys,
                    mode="lines",
                    name=f"{r.label} p{k}",
                    line={"color": _color(i), "dash": _DASH[j % len(_DASH)]},
                )
            )
    ch.add(fig)


def _throughput_chart(ch: Charts, runs: Sequence[RunData]) -> None:
    fig = ch.figure(
        title="Throughput over time",
        xaxis_title="seconds since profiling start",
        yaxis={"title": {"text": "output tokens/s"}},
        yaxis2={"title": {"text": "requests/s"}, "overlaying": "y", "side": "right"},
    )
    for i, r in enumerate(runs):
        t = r.ts.get("t_s")
        fig.add_trace(
            ch.go.Scatter(
                x=t,
                y=r.ts.get("output_tok_per_s"),
                mode="lines",
                name=f"{r.label} tok/s",
                line={"color": _color(i)},
            )
        )
        fig.add_trace(
            ch.go.Scatter(
                x=t,
                y=r.ts.get("rps"),
                mode="lines",
                name=f"{r.label} req/s",
                yaxis="y2",
                line={"color": _color(i), "dash": "dot"},
            )
        )
    ch.add(fig)


def _present(values: Sequence[float | None] | None) -> list[float]:
    return [x for x in values or [] if x is not None]


def _has(values: Sequence[float | None] | None) -> bool:
    return bool(values) and any(v is not None for v in values or ())


def _gpu_charts(ch: Charts, runs: Sequence[RunData]) -> None:
    with_gpu = [r for r in runs if _has(r.ts.get("gpu_power_w"))]
    if not with_gpu:
        ch.html(
            '<p class="note">No GPU samples over time in these results (local mode has '
            "them from its agent).</p>"
        )
    else:
        fig = ch.figure(
            title="GPU power over time",
            xaxis_title="seconds since profiling start",
            yaxis={"title": {"text": "W"}},
            yaxis2={"title": {"text": "utilisation %"}, "overlaying": "y", "side": "right"},
        )
        for i, r in enumerate(with_gpu):
            t = r.ts.get("t_s")
            fig.add_trace(
                ch.go.Scatter(
                    x=t,
                    y=r.ts["gpu_power_w"],
                    mode="lines",
                    name=f"{r.label} W",
                    line={"color": _color(i)},
                )
            )
            fig.add_trace(
                ch.go.Scatter(
                    x=t,
                    y=r.ts.get("gpu_util_pct"),
                    mode="lines",
                    yaxis="y2",
                    name=f"{r.label} util %",
                    line={"color": _color(i), "dash": "dot"},
                )
            )
        ch.add(fig)
    # energy per token: over time (power / token rate) where sampled, and each run's window J
    fig = ch.figure(
        title="GPU energy per output token",
        xaxis_title="seconds since profiling start",
        yaxis_title="J per output token",
    )
    drawn = False
    for i, r in enumerate(runs):
        power, rate = r.ts.get("gpu_power_w") or [], r.ts.get("output_tok_per_s") or []
        jpt = [p / q if p is not None and q else None for p, q in zip(power, rate, strict=False)]
        if _has(jpt):
            fig.add_trace(
                ch.go.Scatter(
                    x=r.ts.get("t_s"),
                    y=jpt,
                    mode="lines",
                    name=f"{r.label} per second",
                    line={"color": _color(i)},
                )
            )
            drawn = True
        window = r.number("gpu", "joulesPerOutputToken")
        span = _present(r.ts.get("t_s"))
        if window is not None and span:
            fig.add_trace(
                ch.go.Scatter(
                    x=[min(span), max(span)],
                    y=[window, window],
                    mode="lines",
                    name=f"{r.label} profiling window (baselines)",
                    line={"color": _color(i), "dash": "dash"},
                )
            )
            drawn = True
    if drawn:
        ch.add(fig)
    else:
        ch.html('<p class="note">No GPU energy in these results.</p>')


def _params_text(doc: Mapping[str, Any]) -> str:
    params = (doc.get("run") or {}).get("params") or {}
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items())


def _load_value(r: RunData) -> float | None:
    """The offered load of a run: its first swept value, else the spec's concurrency/rate."""
    params = (r.doc.get("run") or {}).get("params") or {}
    for value in params.values():
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    load = (r.doc.get("spec") or {}).get("load") or {}
    value = load.get("concurrency", load.get("rate"))
    return float(value) if isinstance(value, int | float) else None


def _load_axis(runs: Sequence[RunData]) -> str:
    for r in runs:
        params = (r.doc.get("run") or {}).get("params") or {}
        if params:
            return str(next(iter(params)))
    return "load"


def pareto(points: Sequence[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points (throughput, latency, name) no other point beats on both: more throughput
    and less latency. Sorted by throughput.

    >>> [n for _, _, n in pareto([(10, 5, "a"), (20, 9, "b"), (15, 12, "c"), (5, 4, "d")])]
    ['d', 'a', 'b']
    """
    front: list[tuple[float, float, str]] = []
    best = math.inf
    for p in sorted(points, key=lambda p: (-p[0], p[1])):
        if p[1] < best:
            front.append(p)
            best = p[1]
    return sorted(front)


def _experiment_charts(ch: Charts, sources: Sequence[Source]) -> None:
    ttft_keys = _pick(
        _percentile_keys([r for s in sources for r in s.runs], "ttft_ms"), ["p50", "p99"]
    )
    # throughput-latency curve across the sweep
    fig = ch.figure(
        title="Throughput vs latency across the sweep",
        xaxis_title="output tokens/s",
        yaxis_title="TTFT ms",
    )
    for i, s in enumerate(sources):
        runs = [r for r in s.runs if r.number("throughput", "outputTokPerS") is not None]
        runs.sort(key=lambda r: _load_value(r) or 0.0)
        for j, k in enumerate(ttft_keys):
            fig.add_trace(
                ch.go.Scatter(
                    x=[r.number("throughput", "outputTokPerS") for r in runs],
                    y=[r.metric("ttft_ms", k) for r in runs],
                    text=[_params_text(r.doc) for r in runs],
                    mode="lines+markers+text",
                    textposition="top center",
                    name=f"{s.label} TTFT {k}",
                    line={"color": _color(i), "dash": _DASH[j % len(_DASH)]},
                )
            )
    ch.add(fig)
    # goodput vs load
    axis = _load_axis([r for s in sources for r in s.runs])
    fig = ch.figure(
        title="Goodput vs load",
        xaxis_title=axis,
        yaxis={"title": {"text": "share meeting the SLO"}, "tickformat": ".0%", "range": [0, 1.05]},
        yaxis2={"title": {"text": "good requests/s"}, "overlaying": "y", "side": "right"},
    )
    for i, s in enumerate(sources):
        runs = sorted(
            (r for r in s.runs if _load_value(r) is not None), key=lambda r: _load_value(r) or 0.0
        )
        x = [_load_value(r) for r in runs]
        fig.add_trace(
            ch.go.Scatter(
                x=x,
                y=[r.number("goodput", "ratio") for r in runs],
                mode="lines+markers",
                name=f"{s.label} goodput",
                line={"color": _color(i)},
            )
        )
        fig.add_trace(
            ch.go.Scatter(
                x=x,
                y=[r.number("goodput", "rps") for r in runs],
                mode="lines+markers",
                yaxis="y2",
                name=f"{s.label} good req/s",
                line={"color": _color(i), "dash": "dot"},
            )
        )
        search = _search(s)
        if search and x:
            target = search.get("minGoodput")
            if isinstance(target, int | float):
                fig.add_trace(
                    ch.go.Scatter(
                        x=[min(v for v in x if v is not None), max(v for v in x if v is not None)],
                        y=[target, target],
                        mode="lines",
                        name=f"{s.label} target goodput",
                        line={"color": "#888", "dash": "dash"},
                    )
                )
            knee = search.get("knee")
            if isinstance(knee, int | float):
                at = next((r for r in runs if _load_value(r) == float(knee)), None)
                fig.add_trace(
                    ch.go.Scatter(
                        x=[knee],
                        y=[at.number("goodput", "ratio") if at is not None else target],
                        mode="markers+text",
                        text=[f"knee {knee:g}"],
                        textposition="bottom center",
                        name=f"{s.label} knee",
                        marker={"color": _color(i), "size": 16, "symbol": "star"},
                    )
                )
    ch.add(fig)
    # Pareto frontier
    high = ttft_keys[-1] if ttft_keys else "p99"
    fig = ch.figure(
        title=f"Pareto frontier: throughput vs TTFT {high}",
        xaxis_title="output tokens/s",
        yaxis_title=f"TTFT {high} ms",
    )
    for i, s in enumerate(sources):
        pts = [
            (tp, lat, r.label)
            for r in s.runs
            if (tp := r.number("throughput", "outputTokPerS")) is not None
            and (lat := r.metric("ttft_ms", high)) is not None
        ]
        fig.add_trace(
            ch.go.Scatter(
                x=[p[0] for p in pts],
                y=[p[1] for p in pts],
                text=[p[2] for p in pts],
                mode="markers",
                name=f"{s.label} runs",
                marker={"color": _color(i), "size": 9, "opacity": 0.5},
            )
        )
        front = pareto(pts)
        fig.add_trace(
            ch.go.Scatter(
                x=[p[0] for p in front],
                y=[p[1] for p in front],
                text=[p[2] for p in front],
                mode="lines+markers",
                line={"color": _color(i)},
                name=f"{s.label} frontier",
            )
        )
    ch.add(fig)
    # energy per token per run
    fig = ch.figure(title="GPU energy per output token by run", yaxis_title="J per output token")
    drawn = False
    for i, s in enumerate(sources):
        runs = [r for r in s.runs if r.number("gpu", "joulesPerOutputToken") is not None]
        if runs:
            drawn = True
            fig.add_trace(
                ch.go.Bar(
                    x=[r.label for r in runs],
                    y=[r.number("gpu", "joulesPerOutputToken") for r in runs],
                    name=s.label,
                    marker={"color": _color(i)},
                )
            )
    if drawn:
        ch.add(fig)


# --------------------------------------------------------------------------- tables


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if unit == "%":
        return f"{x:.1%}"
    return f"{x:.4g}{unit}"


SUMMARY: tuple[tuple[str, str, str], ...] = (
    ("requests", "requests ok", ""),
    ("rps", "req/s", ""),
    ("tok", "output tok/s", ""),
    ("ttft50", "TTFT p50 ms", ""),
    ("ttfthi", "TTFT p99 ms", ""),
    ("itl50", "ITL p50 ms", ""),
    ("e2e50", "E2E p50 ms", ""),
    ("goodput", "goodput", "%"),
    ("jpt", "J / output token", ""),
)


def _summary_values(r: RunData) -> dict[str, float | None]:
    ttft_keys = _percentile_keys([r], "ttft_ms")
    hi = "p99" if "p99" in ttft_keys else (ttft_keys[-1] if ttft_keys else "p99")
    return {
        "requests": r.number("requests", "ok"),
        "rps": r.number("throughput", "rps"),
        "tok": r.number("throughput", "outputTokPerS"),
        "ttft50": r.metric("ttft_ms", "p50"),
        "ttfthi": r.metric("ttft_ms", hi),
        "itl50": r.metric("itl_ms", "p50"),
        "e2e50": r.metric("e2e_ms", "p50"),
        "goodput": r.number("goodput", "ratio"),
        "jpt": r.number("gpu", "joulesPerOutputToken"),
    }


def _summary_table(sources: Sequence[Source]) -> str:
    runs = [r for s in sources for r in s.runs]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in SUMMARY)
    rows = []
    values = [_summary_values(r) for r in runs]
    for r, v in zip(runs, values, strict=True):
        cells = "".join(f"<td>{_fmt(v[k], unit)}</td>" for k, _, unit in SUMMARY)
        rows.append(f"<tr><th>{html.escape(r.label)}</th>{cells}</tr>")
    if len(sources) == 2 and len(sources[0].runs) == len(sources[1].runs) == 1:
        a, b = values
        cells = "".join(f"<td>{_change(a[k], b[k])}</td>" for k, _, _ in SUMMARY)
        rows.append(f"<tr class='change'><th>change</th>{cells}</tr>")
    return f"<table class='summary'><tr><th>run</th>{head}</tr>{''.join(rows)}</table>"


def _change(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return "-"
    return f"{(b - a) / abs(a):+.1%}"


def _search(source: Source) -> Mapping[str, Any]:
    """An SLO search's ``status.metrics.search`` (empty for a sweep)."""
    metrics = ((source.experiment or {}).get("status") or {}).get("metrics") or {}
    search = metrics.get("search")
    return search if isinstance(search, Mapping) else {}


def _search_table(source: Source) -> str:
    search = _search(source)
    if not search:
        return ""
    e = html.escape
    head = (
        f"<h3>{e(source.label)}: SLO search on {e(str(search.get('path')))} "
        f"(goodput &ge; {e(str(search.get('minGoodput')))})</h3>"
        f"<p>{e(str(search.get('outcome')))}: {e(str(search.get('message') or ''))}</p>"
    )
    rows = "".join(
        f"<tr><td>{e(str(p.get('run')))}</td><td>{e(str(p.get('value')))}</td>"
        f"<td>{_fmt(p.get('goodput'), '%')}</td><td>{e(str(p.get('passed')))}</td></tr>"
        for p in search.get("probes") or []
        if isinstance(p, Mapping)
    )
    return (
        f"{head}<table class='search'><tr><th>probe</th><th>load</th><th>goodput</th>"
        f"<th>passed</th></tr>{rows}</table>"
    )


def _best_table(source: Source) -> str:
    metrics = ((source.experiment or {}).get("status") or {}).get("metrics") or {}
    best: Mapping[str, str] = metrics.get("best") or {}
    if not best:
        return ""
    rows = "".join(
        f"<tr><th>{html.escape(obj)}</th><td>{html.escape(name)}</td></tr>"
        for obj, name in best.items()
    )
    return (
        f"<h3>{html.escape(source.label)}: best run per objective</h3>"
        f"<table class='best'><tr><th>objective</th><th>run</th></tr>{rows}</table>"
    )


# --------------------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:1.5em;margin-bottom:0} .meta{color:#666;margin-top:4px}
table{border-collapse:collapse;margin:12px 0} th,td{border:1px solid #ddd;padding:4px 8px;
text-align:right} th{background:#f6f6f6} tr.change td{font-weight:bold}
.benchop-chart{margin:8px 0 24px 0} .note{color:#666;font-style:italic}
"""


def render(bundles: Sequence[Bundle], *, title: str | None = None) -> str:
    """The report of one or two bundles as one self-contained HTML page."""
    from plotly.offline import get_plotlyjs

    sources = [source_of(b) for b in bundles]
    ch = Charts()
    names = " vs ".join(s.label for s in sources)
    ch.html(f"<h2>Summary</h2>{_summary_table(sources)}")
    runs_of_runs = [r for s in sources if s.experiment is None for r in s.runs]
    all_runs = [r for s in sources for r in s.runs]
    ch.html("<h2>Latency distribution</h2>")
    _cdf_charts(ch, all_runs)
    experiments = [s for s in sources if s.experiment is not None]
    if experiments:
        ch.html("<h2>Sweep</h2>")
        _experiment_charts(ch, experiments)
        for s in experiments:
            ch.html(_search_table(s) + _best_table(s))
    if runs_of_runs:
        ch.html("<h2>Over time</h2>")
        _time_chart(ch, runs_of_runs, "ttft", "TTFT over time")
        _time_chart(ch, runs_of_runs, "itl", "Inter-token latency over time")
        _throughput_chart(ch, runs_of_runs)
        ch.html("<h2>GPU</h2>")
        _gpu_charts(ch, runs_of_runs)
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = ", ".join(html.escape(b.where) for b in bundles)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title or names)} - benchop report</title>"
        f"<style>{_CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script>"
        "</head><body>"
        f"<h1>{html.escape(title or names)}</h1>"
        f"<p class='meta'>benchop report, {created}; from {where}; "
        f"{ch.count} charts</p>" + "".join(ch.parts) + "</body></html>"
    )


def run(args: argparse.Namespace) -> int:
    from benchop.results import SourceError, load

    try:
        import plotly  # noqa: F401
    except ImportError:
        print("benchop report: needs plotly: pip install 'benchop[report]'", file=sys.stderr)
        return 2
    if len(args.results) > 2:
        print("benchop report: at most two RESULTS (to compare)", file=sys.stderr)
        return 2
    out: Path = args.output_file
    if not out.parent.is_dir():
        print(f"benchop report: directory {out.parent} does not exist", file=sys.stderr)
        return 2
    try:
        bundles = [load(r, namespace=args.namespace, server=args.server) for r in args.results]
    except SourceError as exc:
        print(f"benchop report: {exc}", file=sys.stderr)
        return exc.code
    text = render(bundles, title=args.title)
    out.write_text(text)
    print(f"report written to {out} ({len(text.encode()) / 1e6:.1f} MB)", file=sys.stderr)
    return 0
