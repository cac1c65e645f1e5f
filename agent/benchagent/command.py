"""``benchop agent``: run the per-node GPU agent until SIGTERM.

benchop agent --gpu-backend auto --interval 1s --metrics-port 9400 --baseline-port 5557
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
from pathlib import Path

from benchagent.agent import AgentConfig, default_node_name, run_agent
from benchagent.gpu import BACKENDS, GpuBackendError
from benchagent.podresources import DEFAULT_SOCKET

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_interval(text: str) -> float:
    """``1s``, ``500ms``, ``0.5`` (seconds) or ``1m`` -> seconds, at least 50 ms."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 1s, 500ms)")
    value = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    if value < 0.05:
        raise argparse.ArgumentTypeError(
            f"--interval {text} is too short: the minimum is 50ms "
            "(NVML returns zeros or errors when polled faster)"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpu-backend",
        choices=BACKENDS,
        default="auto",
        help="nvml, simulated, or auto: NVML if it loads, else simulated with a loud "
        "warning, benchop_agent_simulated=1 and simulated=true in every baseline ack",
    )
    parser.add_argument(
        "--interval", type=parse_interval, default=1.0, help="sampling interval (>= 50ms)"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=9400, help="/metrics, /healthz, /readyz"
    )
    parser.add_argument("--baseline-port", type=int, default=5557, help="ZMQ baseline server")
    parser.add_argument(
        "--node-name",
        default=None,
        help="node name for labels and acks (default $NODE_NAME or hostname)",
    )
    parser.add_argument(
        "--pod-resources-socket",
        default=DEFAULT_SOCKET,
        help="kubelet pod-resources socket for GPU->pod labels ('' disables; absent = no labels)",
    )
    parser.add_argument(
        "--curve-secret-key",
        type=Path,
        default=None,
        help="CurveZMQ secret key file of the baseline server (enables CURVE)",
    )
    parser.add_argument(
        "--curve-public-keys",
        type=Path,
        default=None,
        help="directory of allowed coordinators' CurveZMQ public key files (*.key)",
    )
    parser.add_argument(
        "--simulated-gpus", type=int, default=8, help="GPUs of the simulated backend"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated backend")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(
        gpu_backend=args.gpu_backend,
        interval_s=args.interval,
        metrics_port=args.metrics_port,
        baseline_port=args.baseline_port,
        node_name=args.node_name or default_node_name(),
        pod_resources_socket=args.pod_resources_socket or None,
        curve_secret_key=args.curve_secret_key,
        curve_public_keys=args.curve_public_keys,
        simulated_gpus=args.simulated_gpus,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_args(args)
        asyncio.run(run_agent(config))
    except (GpuBackendError, ValueError, OSError) as e:
        log.error("benchop agent: %s", e)
        return 1
    return 0
