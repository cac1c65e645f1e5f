"""``OperatorSettings``: everything ``benchop operator`` is told by its flags, in one dataclass.

It lives in kopf's ``memo`` (``memo.settings``), never in a module-level singleton, so tests run
several operators with different settings in one process.

    settings = OperatorSettings(namespaces=("default",), gate_port=0, snapshot_port=0)
"""

from __future__ import annotations

from dataclasses import dataclass

from benchop.operator.policy import HostAllowlist, RunPolicy

DEFAULT_IMAGE = "ghcr.io/benchop/benchop:0.1.0"
DEFAULT_AGENT_SELECTOR = "app.kubernetes.io/component=agent,app.kubernetes.io/name=benchop"
SNAPSHOT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Default ``--snapshot-max-message-bytes``: a larger snapshot is dropped by ZMQ (with its
sender's connection). A COMPLETE carries a worker's raw values, 8 bytes each: 256 MiB holds
about 30 million latencies."""


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """The operator's configuration: the flags of ``benchop operator`` (docs/operator.md; the
    chart renders them in charts/benchop/templates/operator-deployment.yaml).

    Ports may be 0 (the OS picks one; tests read the bound endpoint back). ``bind_host`` is
    where the ZMQ ports listen (all interfaces in a pod, loopback in tests).
    """

    namespaces: tuple[str, ...] = ()  # empty: every namespace (clusterwide)
    # False: BenchmarkRuns are left to another controller (no gate or snapshot port is bound);
    # the Experiment integration tests run the operator so and play the run controller.
    reconcile_runs: bool = True
    gate_port: int = 5555
    snapshot_port: int = 5556
    live_interval_s: float = 5.0
    refresh_interval_s: float = 10.0
    health_port: int = 8080
    agent_selector: str = DEFAULT_AGENT_SELECTOR
    agent_port: int = 5557
    agent_namespace: str | None = None  # None: agents are looked up in every namespace
    image: str = DEFAULT_IMAGE
    # What a run may ask beyond the schema (benchop.operator.policy, docs/install.md): other
    # worker images in spec.pod.image, hosts of spec.target.url / spec.prometheus.url
    # (CIDRs and hostname patterns; empty = any host).
    allowed_images: tuple[str, ...] = ()
    allowed_targets: tuple[str, ...] = ()
    allowed_prometheus: tuple[str, ...] = ()
    # Where runs without spec.target.url send their load (the chart's mock server, for trying
    # the operator out); None: such runs are refused, naming spec.target.url.
    default_target_url: str | None = None
    operator_service: str = "benchop-operator.benchop.svc"
    # CurveZMQ on the gate, snapshot and baseline ports: the Secret holding the release's keys
    # (benchop.operator.curvekeys; made when missing) in curve_namespace. None: plain ZMQ.
    curve_secret: str | None = None
    curve_namespace: str | None = None  # None: $POD_NAMESPACE
    gate_timeout_s: float | None = None  # upper bound on every run's spec.gates.timeout
    peering: str | None = None  # kopf peering object name; None = standalone
    bind_host: str = "0.0.0.0"
    snapshot_max_message_bytes: int = SNAPSHOT_MAX_MESSAGE_BYTES  # larger snapshots are dropped
    # Endpoints the workers dial; default tcp://<operator_service>:<port>.
    gate_endpoint: str | None = None
    snapshot_endpoint: str | None = None
    # A run that is not terminal after this long (since startTime) is failed by the watchdog,
    # unless spec.activeDeadlineSeconds says otherwise (then that plus a grace).
    default_deadline_s: float = 6 * 3600.0
    deadline_grace_s: float = 60.0
    # Pods unschedulable or failing to pull their image, or a Job failing to create its pods
    # (quota, LimitRange, admission), for this long fail the run (other stuck states,
    # OOMKilled and a crash loop past the backoff, fail it at once).
    stuck_after_s: float = 60.0
    # How long to wait for COMPLETE snapshots after the Job completed before falling back.
    complete_wait_s: float = 5.0
    # kopf timeouts (seconds).
    watch_server_timeout: int = 300  # timeoutSeconds: the apiserver takes an integer only
    watch_client_timeout: float = 330.0
    request_timeout: float = 30.0
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.refresh_interval_s > 0:
            raise ValueError(f"refresh_interval_s must be > 0, got {self.refresh_interval_s}")
        if self.snapshot_max_message_bytes < 1:
            raise ValueError(
                f"snapshot_max_message_bytes must be >= 1, got {self.snapshot_max_message_bytes}"
            )
        if not self.live_interval_s >= 0:
            raise ValueError(f"live_interval_s must be >= 0, got {self.live_interval_s}")
        self.policy()  # a bad allowlist entry is an error at start-up

    def policy(self) -> RunPolicy:
        """The allowlists every run is checked against (:mod:`benchop.operator.policy`)."""
        return RunPolicy(
            image=self.image,
            allowed_images=self.allowed_images,
            targets=HostAllowlist.parse(self.allowed_targets),
            prometheus=HostAllowlist.parse(self.allowed_prometheus),
        )

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def worker_gate_endpoint(self, bound: str) -> str:
        """What workers dial for gates: explicit, else the Service; the bound one for port 0."""
        if self.gate_endpoint:
            return self.gate_endpoint
        return f"tcp://{self.operator_service}:{self.gate_port}" if self.gate_port else bound

    def worker_snapshot_endpoint(self, bound: str) -> str:
        """What workers publish to: explicit, else the Service; the bound one for port 0."""
        if self.snapshot_endpoint:
            return self.snapshot_endpoint
        if self.snapshot_port:
            return f"tcp://{self.operator_service}:{self.snapshot_port}"
        return bound
