"""SLO-search Experiments through kopf against the emulator.

As in test_experiment_sweep.py the operator runs with ``reconcile_runs=False`` and the test
plays the BenchmarkRun controller: it finishes each probe with a goodput that a server of known
capacity would give (every request meets the SLO up to the capacity, half of them beyond).
"""

from __future__ import annotations

from typing import Any

from kube.harness import BENCHMARKRUNS, EXPERIMENTS, Kube, OperatorFactory, wait_for
from test_experiment_sweep import (
    TEMPLATE,
    children,
    cond,
    created_runs,
    exp_status,
    results,
    start_operator,
    status_in,
)

from benchop.core.rollup import DEFAULT_CAP, rollup

CAPACITY = 5


def search_experiment(name: str, **search: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "template": {**TEMPLATE, "slo": {"itlMs": 10}},
            "search": {
                "concurrency": {"min": 1, "max": 32},
                "minGoodput": 0.9,
                **search,
            },
        },
    }


async def play_probes(kube: Kube, name: str, goodput: Any) -> list[int]:
    """Finish each probe as it appears (``goodput(concurrency)``, None: the run fails) until
    the experiment ends; the concurrencies probed, in order."""
    loads: list[int] = []
    while True:
        done = exp_status(kube, name).get("phase") in ("Succeeded", "Failed")
        made = created_runs(kube)
        if done and len(made) == len(loads):
            return loads
        if len(made) == len(loads):
            await wait_for(
                lambda: (
                    len(created_runs(kube)) > len(loads)
                    or exp_status(kube, name).get("phase") in ("Succeeded", "Failed")
                )
            )
            continue
        run = await kube.client.get(BENCHMARKRUNS, made[len(loads)])
        c = run["spec"]["load"]["concurrency"]
        # one probe at a time: every earlier one has ended before this one was created
        for other in await children(kube):
            if other["metadata"]["name"] != run["metadata"]["name"]:
                assert (other.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        loads.append(c)
        await kube.client.patch_status(BENCHMARKRUNS, made[len(loads) - 1], {"phase": "Profiling"})
        ratio = goodput(c)
        if ratio is None:
            status: dict[str, Any] = {"phase": "Failed"}
        else:
            res = results(c)
            res["goodput"]["ratio"] = ratio
            status = {"phase": "Succeeded", "results": res}
        await kube.client.patch_status(BENCHMARKRUNS, made[len(loads) - 1], status)


async def test_search_finds_the_knee_one_probe_at_a_time(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    start_operator(kube, operator_task, refresh_interval_s=0.2)
    await kube.client.create(EXPERIMENTS, search_experiment("kn"))
    loads = await play_probes(kube, "kn", lambda c: 1.0 if c <= CAPACITY else 0.5)
    assert loads == [1, 2, 4, 8, 6, 5]  # bracketing x2 from min, then bisection
    assert created_runs(kube) == [f"kn-{i}" for i in range(6)]
    st = await wait_for(lambda: status_in(kube, "kn", "Succeeded"))
    assert (cond(st, "Succeeded")["status"], cond(st, "Succeeded")["reason"]) == (
        "True",
        "KneeFound",
    )
    assert cond(st, "Failed")["status"] == "False"
    assert "knee load.concurrency=5" in cond(st, "Succeeded")["message"]
    assert st["counts"] == {"total": 6, "pending": 0, "running": 0, "succeeded": 6, "failed": 0}

    def searched() -> dict[str, Any] | None:
        blob = (exp_status(kube, "kn").get("metrics") or {}).get("search")
        return blob if blob and blob.get("outcome") == "KneeFound" else None

    search = await wait_for(searched)
    assert (search["knee"], search["kneeRun"], search["limit"], search["limitRun"]) == (
        5,
        "kn-5",
        6,
        "kn-4",
    )
    assert [(p["run"], p["value"], p["passed"]) for p in search["probes"]] == [
        (f"kn-{i}", c, c <= CAPACITY) for i, c in enumerate(loads)
    ]
    # the refresher's rollup is the pure one over the children, rows in load order
    body = await kube.client.get(EXPERIMENTS, "kn")
    expected = rollup(
        await children(kube),
        cap=DEFAULT_CAP,
        now=body["status"]["metrics"]["refreshedAt"],
        search=body["spec"]["search"],
    )
    assert (
        body["status"]["metrics"]["search"]
        == expected.model_dump(mode="json", by_alias=True, exclude_none=True)["search"]
    )
    assert [r["params"]["load.concurrency"] for r in body["status"]["metrics"]["runs"]] == sorted(
        loads
    )


async def test_a_search_whose_minimum_misses_fails_with_failed_true(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    start_operator(kube, operator_task, refresh_interval_s=0.2)
    await kube.client.create(EXPERIMENTS, search_experiment("low", maxProbes=3))
    loads = await play_probes(kube, "low", lambda c: None)  # the first probe's run fails
    assert loads == [1]
    st = await wait_for(lambda: status_in(kube, "low", "Failed"))
    failed = cond(st, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "BelowMin")
    assert "load.concurrency=1 (the minimum) missed goodput >= 0.9" in failed["message"]


async def test_the_probe_bound_ends_the_search(kube: Kube, operator_task: OperatorFactory) -> None:
    start_operator(kube, operator_task, refresh_interval_s=0.2)
    await kube.client.create(EXPERIMENTS, search_experiment("few", maxProbes=3))
    loads = await play_probes(kube, "few", lambda c: 1.0)
    assert loads == [1, 2, 4]
    st = await wait_for(lambda: status_in(kube, "few", "Succeeded"))
    assert cond(st, "Succeeded")["reason"] == "ProbeLimit"
    assert "maxProbes (3) used: knee load.concurrency=4" in cond(st, "Succeeded")["message"]


async def test_a_search_without_a_url_is_refused(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    start_operator(kube, operator_task, refresh_interval_s=0.2)
    body = search_experiment("nourl")
    body["spec"]["template"] = {**body["spec"]["template"], "target": {"model": "m"}}
    await kube.client.create(EXPERIMENTS, body)
    st = await wait_for(lambda: status_in(kube, "nourl", "Failed"))
    assert cond(st, "Accepted")["reason"] == "InvalidSpec"
    assert cond(st, "Failed")["status"] == "True"
    assert "spec.template.target.url: required in a cluster" in cond(st, "Accepted")["message"]
    assert created_runs(kube) == []
