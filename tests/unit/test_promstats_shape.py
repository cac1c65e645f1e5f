"""promstats pure core: kinds table, MetricValue math and formatting, selector, rollups."""

from __future__ import annotations

import json

import pytest

from benchop.api.models import GpuResults
from benchop.promstats import live
from benchop.promstats.kinds import (
    ALL_AGENT_METRICS,
    KINDS,
    MetricClass,
    UnknownMetricKind,
    kind_of,
    kinds_for,
    resolve_unit_hint,
)
from benchop.promstats.selector import GpuSelector, attribution, keep
from benchop.promstats.shape import (
    Series,
    fmt,
    gpus,
    numbers,
    parse_result,
    summary,
    window_energy,
)

ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
UTIL = "DCGM_FI_DEV_GPU_UTIL"


def lab(host: str = "n1", gpu: str = "0", **extra: str) -> dict[str, str]:
    return {"Hostname": host, "gpu": gpu, "UUID": f"GPU-{host}-{gpu}", "modelName": "H100"} | extra


# --------------------------------------------------------------------------- kinds


def test_unknown_metric_kind_raises_with_a_message() -> None:
    with pytest.raises(UnknownMetricKind, match=r"DCGM_FI_DEV_NOPE.*known: DCGM_FI_DEV_DEC_UTIL"):
        kind_of("DCGM_FI_DEV_NOPE")
    with pytest.raises(UnknownMetricKind):
        kinds_for([UTIL, "DCGM_FI_DEV_NOPE"])
    with pytest.raises(UnknownMetricKind):  # a series of an unknown metric in results, too
        gpus({"DCGM_FI_DEV_NOPE": [Series(lab(), ((1.0, 1.0),))]})


def test_unit_hints_table_then_convention() -> None:
    assert resolve_unit_hint("DCGM_FI_DEV_GPU_UTIL") == "percent"
    assert resolve_unit_hint("some_plugin_util") == "percent"
    assert resolve_unit_hint("X_GPU_TEMP") == "celsius"
    assert resolve_unit_hint("x_sm_clock") == "MHz"
    assert resolve_unit_hint("DCGM_FI_DEV_FB_USED") == "MiB"
    assert resolve_unit_hint("gpu_power") == "watts"
    assert resolve_unit_hint("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION") == "joules"  # table
    assert resolve_unit_hint("node_network_receive_bytes_total") == "bytes"
    assert resolve_unit_hint("mystery") == ""
    assert all(k.unit_hint for k in KINDS.values())
    assert set(ALL_AGENT_METRICS) <= set(KINDS)
    assert kind_of(ENERGY).cls is MetricClass.DIFF and kind_of(ENERGY).scale == 0.001
    assert kind_of("DCGM_FI_DEV_PCIE_REPLAY_COUNTER").cls is MetricClass.RATE
    # the capacity sources come along with the metric that needs them
    names = [k.name for k in kinds_for(["DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE"])]
    assert names == [
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_POWER_MGMT_LIMIT",
    ]


# --------------------------------------------------------------------------- shape


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0001, "0"),
        (2.0, "2"),
        (1.23456, "1.235"),
        (81559.0, "81559"),
        (1707243.844, "1707243.844"),
        (-3.5, "-3.5"),
        (float("nan"), "NaN"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
    ],
)
def test_fmt(value: float, text: str) -> None:
    assert fmt(value) == text


def test_gauge_stats_over_the_samples() -> None:
    n = numbers(kind_of(UTIL), [(10.0, 40.0), (11.0, 60.0), (12.0, 50.0)], 100.0)
    assert (n.current, n.min, n.max, n.avg, n.sum) == (50.0, 40.0, 60.0, 50.0, 150.0)
    assert (n.diff, n.rate, n.capacity, n.pct, n.span_s) == (10.0, 5.0, 100.0, 50.0, 2.0)
    mv = n.value("percent")
    assert mv.to_dict() == {
        "current": "50",
        "unit_hint": "percent",
        "capacity": "100",
        "pct": "50",
        "stats": {
            "min": "40",
            "max": "60",
            "avg": "50",
            "sum": "150",
            "diff": "10",
            "rate": "5",
        },
    }
    assert mv.to_legacy()["stats.max"] == "60"
    one = numbers(kind_of("DCGM_FI_DEV_GPU_TEMP"), [(1.0, 70.0)]).value("celsius")
    assert one.to_dict() == {
        "current": "70",
        "unit_hint": "celsius",
        "stats": {"min": "70", "max": "70", "avg": "70", "sum": "70"},
    }
    assert one.to_legacy()["capacity"] is None and one.to_legacy()["stats.rate"] is None


def test_energy_diff_is_joules_and_rate_is_mean_power() -> None:
    # mJ counter: 400 W for 1 s, then 600 W for 2 s, scraped at t = 0, 1, 3
    pts = [(0.0, 5_000_000.0), (1.0, 5_400_000.0), (3.0, 6_600_000.0)]
    n = numbers(kind_of(ENERGY), pts)
    assert n.current == 6600.0  # J
    assert n.diff == pytest.approx(1600.0) and n.sum == n.diff
    assert n.rate == pytest.approx(1600.0 / 3)  # mean power, W
    assert (n.min, n.max) == (pytest.approx(400.0), pytest.approx(600.0))
    assert n.pct is None and n.capacity is None
    mv = n.value("joules").to_dict()
    assert mv["stats"]["diff"] == "1600" and mv["stats"]["rate"] == "533.333"


def test_counter_reset_and_rate_class() -> None:
    kind = kind_of("DCGM_FI_DEV_PCIE_REPLAY_COUNTER")
    n = numbers(kind, [(0.0, 10.0), (2.0, 14.0), (4.0, 3.0)], capacity=4.0)
    assert n.diff == 7.0  # +4, then a restart from 0 to 3
    assert n.rate == pytest.approx(1.75) and n.pct == pytest.approx(43.75)
    assert (n.min, n.max) == (1.5, 2.0)
    single = numbers(kind, [(0.0, 10.0)])
    assert single.rate is None and single.diff is None and single.current == 10.0


def test_parse_result_matrix_and_vector() -> None:
    matrix = [{"metric": lab(), "values": [[2, "3"], [1, "NaN"]]}]
    vector = [{"metric": lab(gpu="1"), "value": [5.5, "+Inf"]}]
    (m,) = parse_result(matrix)
    assert m.points[0][0] == 1.0 and m.points[1] == (2.0, 3.0)
    (v,) = parse_result(vector)
    assert v.points == ((5.5, float("inf")),)


def test_gpus_group_capacity_and_split_series() -> None:
    fb_used = [Series(lab(gpu="0"), ((1.0, 1000.0), (2.0, 3000.0)))]
    fb_free = [Series(lab(gpu="0"), ((1.0, 7000.0), (2.0, 5000.0)))]
    power = [
        Series(lab(gpu="0"), ((1.0, 350.0),)),
        # GPU 10 sorts after 2 (numeric); its pod label changed mid-window: two series, merged
        Series(lab(gpu="10"), ((1.0, 100.0),)),
        Series(lab(gpu="10", pod="vllm-1", namespace="m"), ((2.0, 300.0),)),
        Series(lab(gpu="2"), ((1.0, 100.0),)),
    ]
    limit = [Series(lab(gpu="0"), ((2.0, 700.0),))]
    out = gpus(
        {
            "DCGM_FI_DEV_FB_USED": fb_used,
            "DCGM_FI_DEV_FB_FREE": fb_free,
            "DCGM_FI_DEV_POWER_USAGE": power,
            "DCGM_FI_DEV_POWER_MGMT_LIMIT": limit,
        }
    )
    assert [g.key for g in out] == ["n1/0", "n1/2", "n1/10"]
    g0, g2, g10 = out
    assert g0.uuid == "GPU-n1-0" and g0.pod is None and g0.model == "H100"
    fb = g0.values(["DCGM_FI_DEV_FB_USED"])["fb_used"]
    assert (fb["current"], fb["capacity"], fb["pct"]) == ("3000", "8000", "37.5")
    pw = g0.values()["power"]
    assert (pw["capacity"], pw["pct"], pw["unit_hint"]) == ("700", "50", "watts")
    assert "capacity" not in g2.values()["power"]  # no limit exported for GPU 2: absent
    assert g10.pod == "m/vllm-1"  # labels of the latest series
    assert g10.numbers["DCGM_FI_DEV_POWER_USAGE"].avg == 200.0  # both halves merged


def test_summary_rolls_up_all_gpus() -> None:
    def energy(host: str, gpu: str, w: float) -> Series:
        return Series(lab(host, gpu), ((0.0, 1e9), (2.0, 1e9 + 2000 * w)))

    by_metric = {
        ENERGY: [energy("a", "0", 300), energy("b", "0", 500)],
        UTIL: [
            Series(lab("a", "0"), ((0.0, 20.0), (2.0, 40.0))),
            Series(lab("b", "0"), ((0.0, 80.0), (2.0, 80.0))),
        ],
        "DCGM_FI_DEV_FB_USED": [Series(lab("a", "0"), ((0.0, 10.0), (1.0, 30.0)))],
    }
    s = summary(gpus(by_metric), window=(-0.5, 2.5))
    assert s == {
        "gpus": 2,
        "energyJ": 1600.0,
        "powerMeanW": 800.0,
        "coveredS": 2.0,
        "energyWindowJ": 2400.0,  # both edges (0.5 s < 1.1 x 2 s) filled at 800 W
        "utilMean": 55.0,
        "memPeakBytes": 30 * 1024 * 1024,
    }


def test_window_energy_extrapolates_like_increase() -> None:
    kind = kind_of(ENERGY)
    n = numbers(kind, [(10.0, 0.0), (11.0, 400_000.0), (12.0, 800_000.0)])  # 400 W, 1 s scrapes
    assert window_energy(n, 10.0, 12.0) == 800.0  # samples on the edges: nothing to fill
    assert window_energy(n, 9.5, 12.9) == pytest.approx(800.0 + 400 * 1.4)  # scrapes just missed
    # the series started 5 s into the window: fill half an interval there, not 5 s
    assert window_energy(n, 5.0, 12.0) == pytest.approx(800.0 + 400 * 0.5)
    assert window_energy(numbers(kind, [(1.0, 5.0)]), 0.0, 2.0) == 0.0


def test_live_block_is_bounded() -> None:
    """64 GPUs x every agent metric: the status block keeps 8 GPUs, about 1.2 KB each."""
    real = {
        "UUID": "GPU-8a1e6e3c-0b7e-4c1e-9d0f-6f1c2b3a4d5e",
        "modelName": "NVIDIA H100 80GB HBM3",
    }
    by_metric = {
        name: [
            Series(
                lab(f"gpu-node-{i // 8}", str(i % 8)) | real,
                ((0.0, 1e6 + i), (1.0, 1e6 + 500.123 * i)),
            )
            for i in range(64)
        ]
        for name in ALL_AGENT_METRICS
    }
    gpu_list = gpus(by_metric)
    block, truncated = live.gpu_block(gpu_list, live.LIVE_METRICS, live.LIVE_MAX_GPUS)
    assert truncated and len(block) == 8
    assert set(block["gpu-node-0/0"]["metrics"]) == {
        "gpu_util",
        "fb_used",
        "power",
        "temp",
        "energy",
    }
    assert len(json.dumps(block)) < 12 * 1024


# --------------------------------------------------------------------------- selector


def test_matchers_escape_and_batch() -> None:
    sel = GpuSelector(namespace="models", pods=("vllm-0", "vllm-1"), nodes=("b.x", "a"))
    assert sel.matchers() == '{Hostname=~"a|b\\\\.x"}'
    assert GpuSelector(namespace="m", pods=('p"q',)).matchers() == '{namespace="m",pod=~"p\\"q"}'
    assert GpuSelector(pods=("p",)).matchers() == '{pod=~"p"}'
    # only RE2 metacharacters are escaped (then the backslash, for the string literal)
    odd = GpuSelector(nodes=("gpu-node-1", "a|b", "x\\y")).matchers()
    assert odd == '{Hostname=~"a\\\\|b|gpu-node-1|x\\\\\\\\y"}'
    with pytest.raises(ValueError, match="selects nothing"):
        GpuSelector().matchers()


def test_keep_by_pod_where_attributed_else_by_node() -> None:
    sel = GpuSelector(namespace="models", pods=("vllm-0",), nodes=("a", "b"))
    rows = [
        lab("a", "0", pod="vllm-0", namespace="models"),
        lab("a", "1", pod="vllm-0", namespace="other"),  # same pod name, other namespace
        lab("a", "2", pod="x", namespace="models"),
        lab("a", "3"),  # unassigned on an attributed node
        lab("b", "0"),
        lab("b", "1"),
    ]
    modes = attribution(rows)
    assert modes == {"a": "pod", "b": "node"}
    kept = [f"{r['Hostname']}/{r['gpu']}" for r in rows if keep(r, sel, modes)]
    assert kept == ["a/0", "b/0", "b/1"]
    nodes_only = GpuSelector(nodes=("a",))
    assert all(keep(r, nodes_only, modes) for r in rows)


# --------------------------------------------------------------------------- cross-check


def test_cross_check_reports_both_and_difference() -> None:
    baseline = GpuResults(energy_j=1000.0, power_mean_w=500.0, util_mean=None, gpus=2)
    prom = {"summary": {"energyWindowJ": 1010.0, "powerMeanW": 490.0, "utilMean": 50.0}}
    out = live.cross_check(baseline, prom)
    assert out["energyJ"] == {
        "baseline": 1000.0,
        "prometheus": 1010.0,
        "diff": 10.0,
        "diffPct": 1.0,
    }
    assert out["powerMeanW"]["diff"] == -10.0
    assert out["utilMean"] == {"baseline": None, "prometheus": 50.0, "diff": None, "diffPct": None}
    down = live.cross_check(baseline, {"error": "cannot connect"})
    assert down["energyJ"]["prometheus"] is None and "cannot connect" in down["note"]
    assert live.cross_check(None, prom)["energyJ"]["baseline"] is None
