"""``python -m testkubelet --dir STATE --node benchop-gpu --gpus 2 --node benchop-cpu``.

Needs (from hack/kube-up.sh): root; the bridge with the host IP; in STATE,
``node-<NODE>.kubeconfig`` for every node and ``kube-proxy.kubeconfig`` (or ``admin.kubeconfig``)
for the Service/EndpointSlice watch. See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

from .config import Config, NodeConfig
from .images import Image
from .kubelet import run

PROJECT_REPO = "ghcr.io/benchop/benchop"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class _GpusAction(argparse.Action):
    """``--gpus N`` applies to the ``--node`` given just before it."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        nodes = getattr(namespace, "node", None) or []
        if not nodes:
            parser.error("--gpus must follow a --node")
        namespace.gpus = {**(getattr(namespace, "gpus", None) or {}), nodes[-1]: int(values)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m testkubelet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a(
        "--dir",
        type=Path,
        default=Path(os.environ.get("BENCHOP_KUBE_DIR", "/tmp/benchop-kube")),
        help="control-plane state dir (default $BENCHOP_KUBE_DIR or /tmp/benchop-kube)",
    )
    a(
        "--node",
        action="append",
        required=True,
        metavar="NAME[:GPUS]",
        help="a Node to register (repeatable); GPUS: its nvidia.com/gpu capacity",
    )
    a(
        "--gpus",
        action=_GpusAction,
        default={},
        metavar="N",
        help="nvidia.com/gpu capacity of the preceding --node (also labels it "
        "nvidia.com/gpu.present=true)",
    )
    a(
        "--image-repo",
        action="append",
        default=None,
        metavar="REPO",
        help=f"repository run as the project image, any tag (default {PROJECT_REPO}; repeatable)",
    )
    a(
        "--image",
        action="append",
        default=[],
        metavar="REPO=COMMAND",
        help="another runnable 'image': its ENTRYPOINT is this local command (runs as root)",
    )
    a(
        "--image-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ENV of the project image (e.g. PYTHONPATH of a worktree)",
    )
    a("--benchop", help="the project's entrypoint (default: `benchop` next to this Python)")
    a("--bridge", default="bnp0")
    a("--host-ip", default="10.244.0.1")
    a("--pod-cidr", default="10.244.0.0/16")
    a("--service-cidr", default="10.96.0.0/16")
    a("--cluster-domain", default="cluster.local")
    a("--cpu", default="16", help="cpu capacity of each node")
    a("--memory", default="64Gi", help="memory capacity of each node")
    a("--max-pods", type=int, default=110)
    a(
        "--backoff-base",
        type=float,
        default=10.0,
        help="crash-loop and image-pull back-off: first delay, s (kubelet: 10)",
    )
    a("--backoff-max", type=float, default=300.0, help="back-off cap, s (kubelet: 300)")
    a("--heartbeat", type=float, default=10.0, help="Lease renewal period, s")
    a("--status-every", type=float, default=60.0, help="Node status update period, s")
    a(
        "--volume-refresh",
        type=float,
        default=60.0,
        help="re-read ConfigMaps/Secrets of mounted volumes every N s",
    )
    a(
        "--shutdown-grace",
        type=float,
        default=10.0,
        help="grace period cap when the kubelet itself stops",
    )
    a(
        "--kubelet-port",
        type=int,
        default=10250,
        help="first kubelet API port (logs); node i uses port+i; 0 disables",
    )
    a(
        "--proxy-kubeconfig",
        type=Path,
        help="credentials for the Service/EndpointSlice watch (default: DIR/kube-proxy.kubeconfig "
        "if present, else DIR/admin.kubeconfig)",
    )
    a("--log-level", default="INFO")
    return p.parse_args(argv)


def _root_masks(paths: list[str], state_dir: Path) -> dict[str, list[str]]:
    """Hide /root (0700 here, and private) and the state dir (CA key, admin credentials) from
    containers, bind back the top-level /root entries the interpreter lives in; give containers
    their own empty /run (as images have), where ``/var/run/secrets/...`` mount points can be
    made without touching the host."""
    keep = sorted(
        {
            "/root/" + Path(p).relative_to("/root").parts[0]
            for p in paths
            if Path(p).is_relative_to("/root") and p != "/root"
        }
    )
    return {"/root": keep, "/run": [], str(state_dir.resolve()): []}


def _nodes(specs: list[str], gpus: dict[str, int]) -> tuple[NodeConfig, ...]:
    out = []
    for i, spec in enumerate(specs):
        name, _, count = spec.partition(":")
        out.append(NodeConfig(name, int(count) if count else gpus.get(spec, 0), i + 1))
    return tuple(out)


def build_config(ns: argparse.Namespace) -> Config:
    here = os.path.dirname(os.path.realpath(sys.executable))
    benchop = ns.benchop or shutil.which("benchop", path=f"{here}:{os.environ.get('PATH', '')}")
    if not benchop:
        raise SystemExit("cannot find `benchop` (pass --benchop)")
    benchop = os.path.abspath(benchop)
    path_env = f"{os.path.dirname(benchop)}:{SYSTEM_PATH}"
    base_env = {
        "PATH": path_env,
        "LANG": "C.UTF-8",
        "HOME": "/tmp",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PIP_NO_CACHE_DIR": "1",
    }
    for item in ns.image_env:
        k, _, v = item.partition("=")
        base_env[k] = v
    images = {
        repo: Image(
            repository=repo,
            entrypoint=(benchop,),
            cmd=("--help",),
            env=base_env,
            workdir="/tmp",
            uid=65532,
            gid=65532,
        )
        for repo in (ns.image_repo or [PROJECT_REPO])
    }
    for item in ns.image:
        repo, _, command = item.partition("=")
        images[repo] = Image(
            repository=repo, entrypoint=tuple(shlex.split(command)), env=base_env, workdir="/tmp"
        )
    proxy_kc = ns.proxy_kubeconfig
    if proxy_kc is None:
        proxy_kc = ns.dir / "kube-proxy.kubeconfig"
        if not proxy_kc.exists():
            proxy_kc = ns.dir / "admin.kubeconfig"
    interpreter = [
        sys.prefix,
        sys.base_prefix,
        os.path.realpath(sys.executable),
        os.path.realpath(benchop),
    ]
    return Config(
        state_dir=ns.dir,
        nodes=_nodes(ns.node, ns.gpus),
        images=images,
        proxy_kubeconfig=proxy_kc,
        bridge=ns.bridge,
        host_ip=ns.host_ip,
        pod_cidr=ns.pod_cidr,
        service_cidr=ns.service_cidr,
        cluster_domain=ns.cluster_domain,
        cpu=ns.cpu,
        memory=ns.memory,
        max_pods=ns.max_pods,
        backoff_base=ns.backoff_base,
        backoff_max=ns.backoff_max,
        heartbeat=ns.heartbeat,
        status_every=ns.status_every,
        volume_refresh=ns.volume_refresh,
        shutdown_grace=ns.shutdown_grace,
        kubelet_port=ns.kubelet_port,
        masks=_root_masks(interpreter, ns.dir),
    )


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    logging.basicConfig(
        level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if os.geteuid() != 0:
        raise SystemExit("the test kubelet needs root (namespaces, mounts, veths)")
    asyncio.run(run(build_config(ns)))


if __name__ == "__main__":
    main()
