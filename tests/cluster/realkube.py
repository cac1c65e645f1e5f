"""The real control plane of hack/kube-up.sh, driven the way a user drives a cluster.

Everything goes through the real ``kubectl`` and ``helm`` (pinned, in .tools/bin) with the admin
kubeconfig, except what a user would also read from files: the test kubelet's container logs
and the apiserver's audit log.

    cluster = RealKube.up()               # starts (or reuses) the control plane
    cluster.kubectl("get", "nodes")
    run = cluster.get("br", "r1", namespace="ns")
    cluster.wait_for(lambda: ..., timeout=60, what="the run to start")
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
SLOT = int(os.environ.get("BENCHOP_KUBE_SLOT", "0"))
"""Which control plane of hack/kube-up.sh (BENCHOP_KUBE_SLOT): its dir, ports and addresses."""
KUBE_DIR = Path(
    os.environ.get("BENCHOP_KUBE_DIR", "/tmp/benchop-kube" + (f"-{SLOT}" if SLOT else ""))
)
API_URL = f"https://127.0.0.1:{6443 + 100 * SLOT}"
HOST_IP = f"10.{244 + SLOT}.0.1"
"""The host's address on the pods' bridge: what a pod dials to reach a server on the host."""
BRIDGE = f"bnp{SLOT}"
"""The host's bridge of the pods' network (kube-up.sh): where their packets to the host arrive."""
PROJECT_IMAGE = "ghcr.io/benchop/benchop:0.1.0"
RELEASE = "benchop"
RELEASE_NS = "benchop-system"
E2E_NS = "benchop-e2e"
GPU_NODE = "benchop-gpu"
MOCK_URL = f"http://mock-llm.{E2E_NS}.svc:8000/v1"

T = TypeVar("T")


class KubeError(AssertionError):
    """A kubectl/helm call failed; carries the command and its output."""


@dataclass
class RealKube:
    """A running control plane; ``started`` says whether this process started it."""

    dir: Path
    started: bool
    release_since: float = 0.0
    """When this session installed the chart (a Unix time): what the operator did since."""

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{TOOLS_BIN}:{os.environ.get('PATH', '')}",
        }

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def is_up(kube_dir: Path = KUBE_DIR) -> bool:
        pid = kube_dir / "pids" / "kube-apiserver.pid"
        try:
            os.kill(int(pid.read_text()), 0)
        except (OSError, ValueError):
            return False
        return True

    @classmethod
    def up(cls, kube_dir: Path = KUBE_DIR, timeout: float = 600) -> RealKube:
        """Run hack/kube-up.sh. A running control plane is reused; otherwise the state a
        stopped one left (etcd data, pods) is purged first, so every run starts from nothing."""
        env = {**os.environ, "BENCHOP_KUBE_DIR": str(kube_dir)}
        started = not cls.is_up(kube_dir)
        if started:
            subprocess.run(
                ["bash", str(ROOT / "hack" / "kube-down.sh"), "--purge"],
                env=env,
                capture_output=True,
                timeout=180,
                check=True,
            )
        res = subprocess.run(
            ["bash", str(ROOT / "hack" / "kube-up.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if res.returncode != 0:
            raise KubeError(f"hack/kube-up.sh failed ({res.returncode}):\n{res.stderr[-6000:]}")
        return cls(dir=kube_dir, started=started)

    def down(self) -> None:
        """Stop the control plane and delete its state."""
        subprocess.run(
            ["bash", str(ROOT / "hack" / "kube-down.sh"), "--purge"],
            env={**os.environ, "BENCHOP_KUBE_DIR": str(self.dir)},
            capture_output=True,
            timeout=180,
            check=False,
        )

    # ------------------------------------------------------------------ commands

    def run(
        self,
        tool: str,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [tool, *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            output = res.stdout[-3000:] + res.stderr[-3000:]
            raise KubeError(f"{tool} {' '.join(args)} -> {res.returncode}\n{output}")
        return res

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, **kwargs)

    def helm(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, **kwargs)

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], *args: str) -> str:
        docs = manifest if isinstance(manifest, list) else [manifest]
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        return self.kubectl("apply", "-f", "-", *args, input=body).stdout

    def get(self, kind: str, name: str = "", *, namespace: str | None = None) -> Any:
        """``kubectl get KIND [NAME] -o json`` as a dict (a list's ``items`` without a name);
        None when the object does not exist."""
        ns = ["-n", namespace] if namespace else []
        res = self.kubectl("get", kind, *([name] if name else []), *ns, "-o", "json", check=False)
        if res.returncode != 0:
            if "NotFound" in res.stderr:
                return None
            raise KubeError(f"kubectl get {kind} {name}: {res.stderr}")
        out = json.loads(res.stdout)
        return out if name else out["items"]

    def condition(self, obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
        for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
            if cond.get("type") == type_:
                return dict(cond)
        return {}

    # ------------------------------------------------------------------ waiting

    @staticmethod
    def wait_for(predicate: Callable[[], T | None], *, timeout: float, what: str) -> T:
        """Poll ``predicate`` every 0.5 s until truthy; fail with ``what`` and the last value."""
        deadline = time.monotonic() + timeout
        last: T | None = None
        while True:
            last = predicate()
            if last:
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last!r}")
            time.sleep(0.5)

    def wait_ended(self, kind: str, name: str, namespace: str, timeout: float) -> dict[str, Any]:
        """Wait until the object's ``Succeeded`` condition is True or False; return it."""

        def ended() -> dict[str, Any] | None:
            obj = self.get(kind, name, namespace=namespace)
            status = self.condition(obj, "Succeeded").get("status")
            return dict(obj) if status in ("True", "False") else None

        return self.wait_for(ended, timeout=timeout, what=f"{kind}/{name} to end")

    # ------------------------------------------------------------------ files

    def container_logs(self, namespace: str, pod_prefix: str, container: str) -> str:
        """Every log of ``container`` in the pods whose name starts with ``pod_prefix``
        (all restarts, in the test kubelet's pod directories)."""
        out = []
        for pod_dir in sorted((self.dir / "kubelet" / "pods").glob(f"{namespace}_{pod_prefix}*")):
            for log in sorted((pod_dir / container).glob("*.log")):
                out.append(log.read_text(errors="replace"))
        return "".join(out)

    def audit_events(self, since: float = 0.0) -> Iterator[dict[str, Any]]:
        """The apiserver's audit events (JSON lines, rotated files first) received at or after
        ``since`` (a Unix time)."""
        audit = self.dir / "audit"
        for path in [*sorted(audit.glob("audit-*.log")), audit / "audit.log"]:
            with contextlib.suppress(FileNotFoundError), path.open() as f:
                for line in f:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    received = event["requestReceivedTimestamp"].replace("Z", "+00:00")
                    if datetime.fromisoformat(received).timestamp() >= since:
                        yield event


def namespace(cluster: RealKube, name: str, *, restricted: bool = True) -> str:
    """Create (or keep) a namespace; ``restricted`` enforces Pod Security "restricted" on it."""
    labels = (
        {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/warn": "restricted",
        }
        if restricted
        else {}
    )
    cluster.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )
    return name
