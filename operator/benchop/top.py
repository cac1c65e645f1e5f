"""``benchop top RUN``: a refreshing terminal table of a run's GPUs, from Prometheus.

One row per GPU: utilisation, memory used/total, power / limit, temperature,
SM clock and the energy drawn since the run started. The run (its
``spec.prometheus.url``, the target's pods and their nodes, its start time) is
read from the cluster with the kubernetes client (kubeconfig, else
in-cluster). ``--prometheus URL --hostname NODE`` needs no cluster: every GPU
of those nodes is shown. ``--once`` prints one table and exits (for scripts).

    benchop top llama8b-c32 -n bench
    benchop top --once --prometheus http://127.0.0.1:9090 --hostname gpu-node-1
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from benchop.api.durations import parse_duration
from benchop.api.models import LabelSelector
from benchop.core.names import BENCHMARKRUN_PLURAL, GROUP, VERSION
from benchop.core.selectors import label_selector
from benchop.promstats.query import PromClient, PrometheusUnavailable
from benchop.promstats.selector import GpuSelector
from benchop.promstats.shape import Gpu, gpus, parse_result

UTIL = "DCGM_FI_DEV_GPU_UTIL"
FB_USED = "DCGM_FI_DEV_FB_USED"
POWER = "DCGM_FI_DEV_POWER_USAGE"
TEMP = "DCGM_FI_DEV_GPU_TEMP"
SM_CLOCK = "DCGM_FI_DEV_SM_CLOCK"
ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
TOP_METRICS = (UTIL, FB_USED, POWER, TEMP, SM_CLOCK, ENERGY)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", metavar="RUN", help="BenchmarkRun name")
    parser.add_argument("-n", "--namespace", help="namespace of the run (default: kubeconfig's)")
    parser.add_argument(
        "--prometheus", metavar="URL", help="Prometheus base URL (default: the run's)"
    )
    parser.add_argument(
        "--hostname",
        action="append",
        default=[],
        metavar="NODE",
        help="show every GPU of this node (repeatable); with --prometheus, no cluster needed",
    )
    parser.add_argument("--once", action="store_true", help="print one table and exit")
    parser.add_argument("--interval", type=_duration, default=2.0, help="refresh (default 2s)")
    parser.add_argument(
        "--since",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="energy column start, this long ago (default: the run's start, else 1m)",
    )


@dataclass(frozen=True, slots=True)
class Target:
    """What top watches."""

    title: str
    url: str
    selector: GpuSelector
    since: float  # unix s: start of the energy column


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_target(
    run: dict[str, Any], pods: list[dict[str, Any]], *, url: str | None, since: float | None
) -> Target:
    """The Target of a BenchmarkRun body and its target's pod bodies (pure)."""
    meta, spec = run.get("metadata") or {}, run.get("spec") or {}
    prom_url = url or ((spec.get("prometheus") or {}).get("url"))
    if not prom_url:
        raise SystemExit(
            f"run {meta.get('name')} has no spec.prometheus.url: pass --prometheus URL"
        )
    start = _parse_time((run.get("status") or {}).get("startTime"))
    return Target(
        title=f"{meta.get('namespace')}/{meta.get('name')}",
        url=prom_url,
        selector=GpuSelector.from_pods(meta.get("namespace") or "default", pods),
        since=time.time() - since if since is not None else (start or time.time() - 60.0),
    )


def _cluster_target(args: argparse.Namespace) -> Target:  # pragma: no cover - needs a cluster
    """Read the run and its target's pods with the kubernetes client."""
    import kubernetes

    kube: Any = kubernetes  # the client is untyped
    try:
        kube.config.load_kube_config()
        _, active = kube.config.list_kube_config_contexts()
        default_ns = (active or {}).get("context", {}).get("namespace") or "default"
    except kube.config.ConfigException:
        try:
            kube.config.load_incluster_config()
        except kube.config.ConfigException as e:
            raise SystemExit(
                f"no kubeconfig and not in a cluster ({e}): use --prometheus URL --hostname NODE"
            ) from None
        default_ns = "default"
    namespace = args.namespace or default_ns
    try:
        run: dict[str, Any] = kube.client.CustomObjectsApi().get_namespaced_custom_object(
            GROUP, VERSION, namespace, BENCHMARKRUN_PLURAL, args.run
        )
    except kube.client.ApiException as e:
        raise SystemExit(f"cannot read benchmarkrun {namespace}/{args.run}: {e.reason}") from None
    pod_selector = ((run.get("spec") or {}).get("target") or {}).get("podSelector")
    if not pod_selector:
        raise SystemExit(f"run {namespace}/{args.run} has no spec.target.podSelector")
    pods = kube.client.CoreV1Api().list_namespaced_pod(
        namespace, label_selector=label_selector(LabelSelector.model_validate(pod_selector))
    )
    api = kube.client.ApiClient()
    bodies = [api.sanitize_for_serialization(p) for p in pods.items]
    return run_target(run, bodies, url=args.prometheus, since=args.since)


def _target(args: argparse.Namespace) -> Target:
    if args.hostname:
        if not args.prometheus:
            raise SystemExit("--hostname needs --prometheus URL")
        return Target(
            title=",".join(args.hostname),
            url=args.prometheus,
            selector=GpuSelector(nodes=tuple(args.hostname)),
            since=time.time() - (args.since if args.since is not None else 60.0),
        )
    if not args.run:
        raise SystemExit("give a RUN, or --prometheus URL --hostname NODE")
    return _cluster_target(args)


class Top:
    """Fetches the rows: one batched query per metric, plus the energy at ``since`` once.

    Node-level selection (``--hostname``) is not narrowed by pod: it shows every GPU.
    """

    def __init__(self, target: Target, *, timeout_s: float = 3.0) -> None:
        self.target = target
        self.client = PromClient(target.url, timeout_s=timeout_s)
        self._energy_at_since: dict[str, float] | None = None

    def fetch(self, lookback_s: float) -> list[Gpu]:
        if self._energy_at_since is None:
            self._energy_at_since = self._energy_baseline()
        by_metric = self.client.current(TOP_METRICS, self.target.selector, lookback_s=lookback_s)
        rows = gpus(by_metric)
        for g in rows:  # a GPU Prometheus never saw before: count from now on
            if ENERGY in g.numbers:
                self._energy_at_since.setdefault(g.key, g.numbers[ENERGY].current)
        return rows

    def _energy_baseline(self) -> dict[str, float]:
        """Each GPU's energy counter (J) at ``since``, or at its first sample after it: the
        counter only grows, so that is its minimum over ``[since, now]`` (a counter reset
        inside the window would make the column too large)."""
        range_ms = max(1, round((time.time() - self.target.since) * 1000))
        # min by GPU: a GPU whose pod label changed in the window has two series
        window = f"{ENERGY}{self.target.selector.matchers()}[{range_ms}ms]"
        promql = f"min by (Hostname, gpu) (min_over_time({window}))"
        return {
            f"{s.labels.get('Hostname', '')}/{s.labels.get('gpu', '')}": s.points[-1][1] / 1000
            for s in parse_result(self.client.query(promql))
        }

    def table(self, rows: list[Gpu], error: str | None = None) -> Table:
        since = datetime.fromtimestamp(self.target.since, UTC).strftime("%H:%M:%S")
        table = Table(
            title=f"benchop top {self.target.title} - {len(rows)} GPUs - {self.target.url}",
            caption=error or _models(rows),
            caption_justify="left",
        )
        table.add_column("GPU")
        table.add_column("Pod")
        table.add_column("Util %", justify="right")
        table.add_column("Mem GiB", justify="right")
        table.add_column("Power W", justify="right")
        table.add_column("Temp C", justify="right")
        table.add_column("SM MHz", justify="right")
        table.add_column(f"Energy J since {since}Z", justify="right")
        base = self._energy_at_since or {}
        for g in rows:
            n = g.numbers
            util, fb, pw = n.get(UTIL), n.get(FB_USED), n.get(POWER)
            energy = n.get(ENERGY)
            table.add_row(
                g.key,
                g.pod or "-",
                _num(util.current if util else None, 0),
                _pair(fb.current / 1024 if fb else None, _div(fb.capacity if fb else None)),
                _pair(pw.current if pw else None, pw.capacity if pw else None, digits=0),
                _num(n[TEMP].current if TEMP in n else None, 0),
                _num(n[SM_CLOCK].current if SM_CLOCK in n else None, 0),
                _num(energy.current - base[g.key] if energy and g.key in base else None, 1),
            )
        return table


def _div(mib: float | None) -> float | None:
    return None if mib is None else mib / 1024


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pair(x: float | None, cap: float | None, *, digits: int = 1) -> str:
    return f"{_num(x, digits)} / {_num(cap, digits)}"


def _models(rows: list[Gpu]) -> str:
    return ", ".join(sorted({g.model for g in rows})) or "no GPU series"


def run(args: argparse.Namespace) -> int:
    target = _target(args)
    top = Top(target)
    lookback = max(10.0, 3 * args.interval)
    console = Console()
    if args.once:
        try:
            rows = top.fetch(lookback)
        except PrometheusUnavailable as e:
            print(f"benchop top: {e}", file=sys.stderr)
            return 1
        console.print(top.table(rows))
        return 0 if rows else 1
    with Live(top.table([]), console=console, auto_refresh=False) as live:
        try:
            while True:
                try:
                    live.update(top.table(top.fetch(lookback)), refresh=True)
                except PrometheusUnavailable as e:
                    live.update(top.table([], error=str(e)), refresh=True)
                time.sleep(args.interval)
        except KeyboardInterrupt:
            pass
    return 0
