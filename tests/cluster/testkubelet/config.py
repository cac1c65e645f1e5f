"""The test kubelet's settings (filled from the command line by ``__main__``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .images import Image


@dataclass(frozen=True)
class NodeConfig:
    name: str
    gpus: int = 0
    index: int = 1  # 1-based: pod IPs <pod net>.<index>.x, kubelet API port base + index - 1


@dataclass(frozen=True)
class Config:
    state_dir: Path
    nodes: tuple[NodeConfig, ...]
    images: dict[str, Image]
    proxy_kubeconfig: Path
    bridge: str = "bnp0"
    host_ip: str = "10.244.0.1"
    pod_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/16"
    cluster_domain: str = "cluster.local"
    cpu: str = "16"
    memory: str = "64Gi"
    max_pods: int = 110
    backoff_base: float = 10.0
    backoff_max: float = 300.0
    heartbeat: float = 10.0
    status_every: float = 60.0
    volume_refresh: float = 60.0
    shutdown_grace: float = 10.0
    kubelet_port: int = 10250
    masks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def kubelet_dir(self) -> Path:
        return self.state_dir / "kubelet"

    def node_kubeconfig(self, node: str) -> Path:
        return self.state_dir / f"node-{node}.kubeconfig"
