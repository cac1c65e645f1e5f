"""`benchop report` opened in a real browser: headless Chromium loads the file:// page of the
results of the example run, dataset run, Experiment and SLO search, logs no console
error, fetches nothing, and draws every chart (each Plotly plot has its traces as SVG paths); a
screenshot is taken and checked.

``BENCHOP_SCREENSHOT=docs/img/report.png`` also saves the run report's screenshot there (the
README's picture; see README "Results and reports").
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, need_chromium

ROOT = Path(__file__).resolve().parents[2]

CHARTS_JS = """
return Array.from(document.querySelectorAll('.benchop-chart')).map(c => {
  const plot = c.querySelector('.js-plotly-plot');
  if (!plot) return {plot: false};
  const paths = Array.from(plot.querySelectorAll('g.trace path'))
    .filter(p => (p.getAttribute('d') || '').length > 10);
  return {plot: true, data: (plot.data || []).length,
          traces: plot.querySelectorAll('g.trace').length, paths: paths.length,
          svg: plot.querySelectorAll('svg.main-svg').length,
          title: (plot.layout && plot.layout.title && plot.layout.title.text) || ''};
});
"""
DRAWN_JS = """
const charts = document.querySelectorAll('.benchop-chart');
return charts.length > 0 && Array.from(charts).every(
  c => c.querySelector('.js-plotly-plot g.trace'));
"""


def benchop(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "benchop", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need_chromium()
    tmp = tmp_path_factory.mktemp("bundles")
    run, exp, slo, data = tmp / "run", tmp / "exp", tmp / "slo", tmp / "dataset"
    examples = {run: "run", exp: "experiment", slo: "slo-search", data: "dataset-run"}

    def example(out: Path) -> None:
        manifest = ROOT / "examples" / f"{examples[out]}.yaml"
        benchop("run", str(manifest), "--no-live", "--results-dir", str(out))

    # the four at once: each run waits on its mock server's delays far more than it computes
    with ThreadPoolExecutor(len(examples)) as pool:
        list(pool.map(example, examples))
    return {
        "run": run,
        "exp": exp,
        "child": exp / "mock-concurrency-sweep-2",
        "slo": slo,
        "dataset": data,
    }


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def open_report(
    html: Path, profile: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bytes, dict[str, Any]]:
    """Load the report; (charts, console errors, screenshot PNG, page facts)."""
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium(profile) as page:
        page.get(html.as_uri())
        WebDriverWait(page, 60).until(lambda d: d.execute_script(DRAWN_JS))
        charts = page.execute_script(CHARTS_JS)
        errors = [e for e in page.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        facts = page.execute_script(
            "return {fetched: performance.getEntriesByType('resource').map(e => e.name),"
            " declared: document.querySelector('.meta').textContent}"
        )
        shot = page.get_screenshot_as_png()
    return charts, errors, shot, facts


def check(html: Path, profile: Path, expected: int) -> tuple[list[dict[str, Any]], bytes]:
    charts, errors, shot, facts = open_report(html, profile)
    assert errors == [], errors
    assert facts["fetched"] == [], "the report fetched something"
    assert len(charts) == expected and f"{expected} charts" in facts["declared"]
    for chart in charts:  # every chart drawn: a plot, its traces in the SVG, with lines/points
        assert chart["plot"] and chart["svg"] >= 1, chart
        assert chart["data"] >= 1 and chart["traces"] >= chart["data"], chart
        assert chart["paths"] >= 1, chart
    assert png_size(shot) == (1280, 900)
    assert 20_000 < len(shot) < 1_000_000, len(shot)
    return charts, shot


def test_run_report_draws_every_chart(bundles: dict[str, Path], tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    benchop("report", str(bundles["run"]), "--output-file", str(html))
    text = html.read_text()
    assert "<script src" not in text and text.count("Plotly.newPlot") == 6
    charts, shot = check(html, tmp_path / "profile", expected=6)
    titles = " | ".join(c["title"] for c in charts)
    for title in ("TTFT over time", "Throughput over time", "GPU power over time",
                  "GPU energy per output token"):  # fmt: skip
        assert title in titles
    cdf = charts[0]
    assert cdf["data"] == 3  # TTFT, ITL, E2E of one run
    (tmp_path / "report.png").write_bytes(shot)
    if target := os.environ.get("BENCHOP_SCREENSHOT"):
        shutil.copyfile(tmp_path / "report.png", ROOT / target)


def test_experiment_report_draws_the_sweep(bundles: dict[str, Path], tmp_path: Path) -> None:
    html = tmp_path / "sweep.html"
    benchop("report", str(bundles["exp"]), "--output-file", str(html))
    charts, _ = check(html, tmp_path / "profile", expected=5)
    titles = [c["title"] for c in charts]
    assert titles[1:4] == [
        "Throughput vs latency across the sweep",
        "Goodput vs load",
        "Pareto frontier: throughput vs TTFT p99",
    ]
    assert charts[0]["data"] == 3 * 3  # three runs' CDFs
    assert "best run per objective" in html.read_text()


def test_two_runs_side_by_side(bundles: dict[str, Path], tmp_path: Path) -> None:
    html = tmp_path / "compare.html"
    benchop("report", str(bundles["run"]), str(bundles["child"]), "--output-file", str(html))
    charts, _ = check(html, tmp_path / "profile", expected=6)
    assert charts[0]["data"] == 2 * 3
    assert "<tr class='change'>" in html.read_text()


def test_slo_search_report_draws_the_knee(bundles: dict[str, Path], tmp_path: Path) -> None:
    html = tmp_path / "slo.html"
    benchop("report", str(bundles["slo"]), "--output-file", str(html))
    # the example takes no GPU baselines: no energy-per-token chart
    charts, _ = check(html, tmp_path / "profile", expected=4)
    goodput = charts[2]
    assert goodput["title"] == "Goodput vs load"
    text = html.read_text()
    assert "SLO search on load.concurrency" in text and "knee " in text


def test_dataset_run_report_draws_every_chart(bundles: dict[str, Path], tmp_path: Path) -> None:
    html = tmp_path / "dataset.html"
    benchop("report", str(bundles["dataset"]), "--output-file", str(html))
    charts, _ = check(html, tmp_path / "profile", expected=6)
    assert charts[0]["data"] == 3
