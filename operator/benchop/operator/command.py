"""``benchop operator``: run the kopf operator.

The flags are documented in docs/operator.md; the chart passes them
(charts/benchop/templates/operator-deployment.yaml).

    benchop operator --namespace team-a --namespace team-b --gate-port 5555 \\
        --operator-service benchop-operator.benchop.svc --image ghcr.io/benchop/benchop:0.1.0

No ``--namespace`` watches every namespace (clusterwide). Liveness: kopf's probes serve
``/healthz`` on ``--health-port``. Peering is off unless ``--peering NAME`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket

from benchop.api.durations import parse_duration
from benchop.operator.policy import HostAllowlist
from benchop.operator.settings import DEFAULT_AGENT_SELECTOR, DEFAULT_IMAGE, OperatorSettings

MIN_INTERVAL_S = 0.1
"""--live-interval and --refresh-interval below this would turn the per-run live patches or the
rollup refresher into a busy loop against the API server."""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _interval(text: str) -> float:
    """A duration of at least :data:`MIN_INTERVAL_S`, checked at parse time (argparse's
    message names the flag: ``argument --refresh-interval: must be at least 100ms, ...``)."""
    seconds = _duration(text)
    if not seconds >= MIN_INTERVAL_S:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_INTERVAL_S * 1000:g}ms, got {text!r}"
        )
    return seconds


_UNITS = {"": 1, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def _bytes(text: str) -> int:
    """A positive byte count: ``1048576``, ``512Ki``, ``256Mi``, ``1Gi``."""
    t = text.strip()
    digits = t.rstrip("KkMmGgIi")
    unit = t[len(digits) :].lower()
    if unit not in _UNITS or not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"expected a byte count like 256Mi, got {text!r}")
    return int(digits) * _UNITS[unit]


def _host_entry(text: str) -> str:
    """One allowlist entry (CIDR, IP, hostname or ``*.domain``), checked at parse time."""
    try:
        HostAllowlist.parse([text])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = OperatorSettings()
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="namespace to watch (repeatable); none = every namespace",
    )
    p.add_argument("--gate-port", type=int, default=d.gate_port, help="ZMQ ROUTER port for gates")
    p.add_argument(
        "--snapshot-port", type=int, default=d.snapshot_port, help="ZMQ SUB port for snapshots"
    )
    p.add_argument(
        "--live-interval",
        type=_interval,
        default=d.live_interval_s,
        metavar="DURATION",
        help="minimum time between two status.live patches of one run (default 5s)",
    )
    p.add_argument(
        "--refresh-interval",
        type=_interval,
        default=d.refresh_interval_s,
        metavar="DURATION",
        help="Experiment rollup refresh interval (default 10s)",
    )
    p.add_argument(
        "--snapshot-max-message-bytes",
        type=_bytes,
        default=d.snapshot_max_message_bytes,
        metavar="BYTES",
        help="largest snapshot accepted on --snapshot-port (e.g. 256Mi, the default); a larger "
        "one is dropped with its sender's connection",
    )
    p.add_argument("--health-port", type=int, default=d.health_port, help="/healthz port")
    p.add_argument(
        "--agent-selector", default=DEFAULT_AGENT_SELECTOR, help="label selector of agent pods"
    )
    p.add_argument(
        "--agent-namespace",
        default=None,
        help="namespace of the agent pods (default: $POD_NAMESPACE, else every namespace)",
    )
    p.add_argument("--agent-port", type=int, default=d.agent_port, help="agents' baseline port")
    p.add_argument("--image", default=DEFAULT_IMAGE, help="load-generator image")
    p.add_argument(
        "--allowed-image",
        action="append",
        default=[],
        metavar="IMAGE",
        help="another image a run may name in spec.pod.image (repeatable); by default a run "
        "may name only --image",
    )
    p.add_argument(
        "--allowed-target",
        action="append",
        type=_host_entry,
        default=[],
        metavar="CIDR|HOST",
        help="allowed host of spec.target.url (repeatable): a CIDR for literal IPs, a hostname "
        "or '*.domain' for names (never resolved); none = any host",
    )
    p.add_argument(
        "--allowed-prometheus",
        action="append",
        type=_host_entry,
        default=[],
        metavar="CIDR|HOST",
        help="allowed host of spec.prometheus.url, which the operator itself queries "
        "(repeatable, as --allowed-target); none = any host",
    )
    p.add_argument(
        "--default-target-url",
        default=None,
        metavar="URL",
        help="target of runs without spec.target.url (e.g. the chart's mock server); "
        "default: such runs are refused",
    )
    p.add_argument(
        "--operator-service",
        default=d.operator_service,
        help="DNS name the workers dial for gates and snapshots",
    )
    p.add_argument(
        "--gate-timeout",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="upper bound on every run's spec.gates.timeout (how long a gate waits for agents)",
    )
    p.add_argument(
        "--stuck-after",
        type=_interval,
        default=d.stuck_after_s,
        metavar="DURATION",
        help="how long worker pods may stay unschedulable or unable to pull their image, or "
        "their Job unable to create them, before the run fails (default 60s; raise it where a "
        "cluster autoscaler adds nodes for the workers)",
    )
    p.add_argument(
        "--peering",
        nargs="?",
        const="benchop",
        default=None,
        metavar="NAME",
        help="enable kopf peering (object NAME, default 'benchop'); off by default",
    )
    p.add_argument(
        "--curve-secret",
        default=None,
        metavar="NAME",
        help="CurveZMQ on the gate, snapshot and agent ports, keys in this Secret of the "
        "operator's namespace ($POD_NAMESPACE), made on first start when missing; none = "
        "plain ZMQ",
    )
    p.add_argument("--bind-host", default=d.bind_host, help="address the ZMQ ports bind to")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    return OperatorSettings(
        namespaces=tuple(args.namespace),
        gate_port=args.gate_port,
        snapshot_port=args.snapshot_port,
        live_interval_s=args.live_interval,
        refresh_interval_s=args.refresh_interval,
        health_port=args.health_port,
        agent_selector=args.agent_selector,
        agent_port=args.agent_port,
        agent_namespace=args.agent_namespace or os.environ.get("POD_NAMESPACE"),
        image=args.image,
        allowed_images=tuple(args.allowed_image),
        allowed_targets=tuple(args.allowed_target),
        allowed_prometheus=tuple(args.allowed_prometheus),
        default_target_url=args.default_target_url,
        operator_service=args.operator_service,
        gate_timeout_s=args.gate_timeout,
        stuck_after_s=args.stuck_after,
        peering=args.peering,
        bind_host=args.bind_host,
        curve_secret=args.curve_secret,
        curve_namespace=os.environ.get("POD_NAMESPACE"),
        snapshot_max_message_bytes=args.snapshot_max_message_bytes,
    )


def run(args: argparse.Namespace) -> int:
    import kopf

    import benchop.operator.main  # registers the handlers

    settings = settings_from_args(args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(
        kopf.operator(
            clusterwide=settings.clusterwide,
            namespaces=list(settings.namespaces),
            standalone=settings.peering is None,
            peering_name=settings.peering,
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
            memo=kopf.Memo(settings=settings),
            memories=benchop.operator.main.Memories(),
            # kopf would ask getpass for a user name, which a container's uid may not have.
            identity=f"benchop@{os.environ.get('POD_NAME') or socket.gethostname()}",  # type: ignore[arg-type]
        )
    )
    return 0
