"""benchop top's pure parts: the run -> target mapping and its arguments."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from benchop import top
from benchop.promstats.selector import GpuSelector

RUN = {
    "metadata": {"name": "llama", "namespace": "bench"},
    "spec": {
        "target": {"podSelector": {"matchLabels": {"app": "vllm"}}},
        "prometheus": {"url": "http://prom:9090"},
    },
    "status": {"startTime": "2026-11-23T19:00:00Z"},
}
PODS = [
    {"metadata": {"name": "vllm-1"}, "spec": {"nodeName": "gpu-b"}},
    {"metadata": {"name": "vllm-0"}, "spec": {"nodeName": "gpu-a"}},
    {"metadata": {"name": "vllm-2"}, "spec": {}},  # not scheduled yet
]


def test_run_target_from_run_and_pods() -> None:
    t = top.run_target(RUN, PODS, url=None, since=None)
    assert t.url == "http://prom:9090" and t.title == "bench/llama"
    assert t.selector == GpuSelector("bench", ("vllm-0", "vllm-1", "vllm-2"), ("gpu-a", "gpu-b"))
    assert t.since == datetime(2026, 11, 23, 19, tzinfo=UTC).timestamp()
    assert top.run_target(RUN, PODS, url="http://other:9090", since=None).url == (
        "http://other:9090"
    )
    no_prom = {**RUN, "spec": {"target": {}}}
    with pytest.raises(SystemExit, match=r"no spec\.prometheus\.url"):
        top.run_target(no_prom, PODS, url=None, since=None)


def test_arguments() -> None:
    parser = argparse.ArgumentParser()
    top.add_arguments(parser)
    args = parser.parse_args(["--prometheus", "http://p:9090", "--hostname", "a", "--once"])
    assert (args.hostname, args.once, args.interval, args.run) == (["a"], True, 2.0, None)
    assert parser.parse_args(["run1", "--interval", "500ms"]).interval == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["--interval", "2"])  # bare numbers are not durations
    with pytest.raises(SystemExit, match="needs --prometheus"):
        top.run(parser.parse_args(["--hostname", "a", "--once"]))
    with pytest.raises(SystemExit, match="give a RUN"):
        top.run(parser.parse_args(["--once"]))
