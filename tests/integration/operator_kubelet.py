"""The test plays the kubelet and the Job controller for the operator's integration tests.

Kubernetes runs no Jobs here. :class:`Kubelet` reads the Job (and spec ConfigMap) the operator
created in the emulator and runs each worker as a local ``python -m benchop loadgen`` process
with the Job's command-line and env (the results dir and termination log moved into tmp_path);
it creates the worker pods in the emulator and reports them Running, then Succeeded with the
termination message the worker wrote, and marks the Job Complete (or Failed) — what the kubelet
and the Job controller would report. Agents are in-process ``benchagent.Agent``\\ s registered as
pods on the target's node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kube.harness import CONFIGMAPS, JOBS, PODS, SECRETS, Kube, wait_for

from benchop.core.names import SECRETS_DIR, loadgen_job_name
from benchop.operator import builders

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
AGENT_LABELS = {"app.kubernetes.io/component": "agent", "app.kubernetes.io/name": "benchop"}


@dataclass
class WorkerProc:
    index: int
    pod: str
    results: Path
    termination: Path
    args: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)


class Kubelet:
    """Runs one run's Job as local processes and mirrors them as pods in the emulator."""

    def __init__(self, kube: Kube, tmp: Path, *, node: str = "worker-node") -> None:
        self.kube = kube
        self.tmp = tmp
        self.node = node
        self.workers: list[WorkerProc] = []
        self.job_name = ""
        self.namespace = "default"
        self.replaced = 0  # pods replaced so far (their names end in -r1, -r2, ...)

    async def read_job(
        self,
        run: str,
        namespace: str = "default",
        timeout: float = 20,  # noqa: ASYNC109
    ) -> Any:
        job_name = loadgen_job_name(run)
        job = await wait_for(
            lambda: self.kube.emulator.read(JOBS, job_name, namespace),
            timeout,
            message=f"Job {job_name} created",
        )
        return job

    async def start(
        self, run: str, namespace: str = "default", env: dict[str, str] | None = None
    ) -> None:
        """Create the pods of the run's Job and start one worker process per index.

        ``env`` overrides the Job's env (e.g. a snapshot endpoint nobody listens on).
        """
        job = await self.read_job(run, namespace)
        self.job_name, self.namespace = job["metadata"]["name"], namespace
        pod_spec = job["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        cm_name = pod_spec["volumes"][0]["configMap"]["name"]
        cm = self.kube.emulator.read(CONFIGMAPS, cm_name, namespace)
        assert cm is not None, "the spec ConfigMap exists before the Job's pods start"
        spec_file = self.tmp / f"{run}-spec.json"
        spec_file.write_text(cm["data"][builders.SPEC_KEY])
        env_base = self._env(container["env"], namespace)
        secrets_dir = self._secret_volumes(pod_spec, namespace, self.tmp / f"{run}-secrets")
        for index in range(job["spec"]["completions"]):
            results = self.tmp / f"{run}-worker-{index}"
            results.mkdir()
            term = self.tmp / f"{run}-termination-{index}"
            args = list(container["args"])
            args[args.index("--spec") + 1] = str(spec_file)
            args[args.index("--results-dir") + 1] = str(results)
            args[args.index("--termination-log") + 1] = str(term)
            if "--secrets-dir" in args:
                args[args.index("--secrets-dir") + 1] = str(secrets_dir)
            proc_env = {
                **os.environ,
                **env_base,
                "BENCHOP_SPEC_FILE": str(spec_file),
                "JOB_COMPLETION_INDEX": str(index),
                **(env or {}),
            }
            w = WorkerProc(index, f"{self.job_name}-{index}", results, term, args, proc_env)
            self.workers.append(w)
            await self._create_pod(w)
        for w in self.workers:
            await self.launch(w)

    def _secret(self, name: str, key: str, namespace: str) -> bytes | None:
        """A Secret's key as the kubelet reads it (``stringData`` as the API server would have
        merged it into ``data``); None when the Secret or the key is missing."""
        secret = self.kube.emulator.read(SECRETS, name, namespace)
        if secret is None:
            return None
        if key in (secret.get("stringData") or {}):
            return str(secret["stringData"][key]).encode()
        if key not in (secret.get("data") or {}):
            return None
        return base64.b64decode(secret["data"][key])

    def _env(self, env: list[dict[str, Any]], namespace: str) -> dict[str, str]:
        """The container's env as the kubelet resolves it: values, and secretKeyRefs read from
        the emulator's Secrets (a missing one fails, as CreateContainerConfigError would)."""
        out = {}
        for e in env:
            if "value" in e:
                out[e["name"]] = e["value"]
            elif (ref := (e.get("valueFrom") or {}).get("secretKeyRef")) is not None:
                value = self._secret(ref["name"], ref["key"], namespace)
                assert value is not None, f"secret {ref['name']}/{ref['key']} not found"
                out[e["name"]] = value.decode()
        return out

    def _secret_volumes(self, pod_spec: dict[str, Any], namespace: str, root: Path) -> Path:
        """Secret volumes written under ``root`` where the container mounts them below
        SECRETS_DIR (optional ones without their Secret or key are left out)."""
        mounts = {m["name"]: m["mountPath"] for m in pod_spec["containers"][0]["volumeMounts"]}
        for volume in pod_spec["volumes"]:
            src = volume.get("secret")
            if src is None:
                continue
            where = root / Path(mounts[volume["name"]]).relative_to(SECRETS_DIR)
            for item in src.get("items") or []:
                value = self._secret(src["secretName"], item["key"], namespace)
                if value is None:
                    assert src.get("optional"), f"secret {src['secretName']} not found"
                    continue
                where.mkdir(parents=True, exist_ok=True)
                (where / item["path"]).write_bytes(value)
        return root

    async def _create_pod(self, w: WorkerProc) -> None:
        job = await self.read_job(self.job_name.removesuffix("-loadgen"), self.namespace)
        pod_spec = job["spec"]["template"]["spec"]
        meta = job["spec"]["template"]["metadata"]
        w.env["BENCHOP_POD_UID"] = f"uid-{w.pod}"  # the downward API's metadata.uid
        await self.kube.client.create(
            PODS,
            {
                "metadata": {
                    "name": w.pod,
                    "labels": {**meta["labels"], INDEX_KEY: str(w.index)},
                    "annotations": {**meta["annotations"], INDEX_KEY: str(w.index)},
                },
                "spec": {**pod_spec, "nodeName": self.node},
            },
            self.namespace,
        )

    async def replace(self, index: int) -> WorkerProc:
        """Delete worker ``index``'s pod (SIGTERM: it drains and publishes its interrupted
        COMPLETE) and start its replacement at once, as the Job controller does: a new pod
        with a new uid and an empty results dir. Returns the old worker (still draining)."""
        old = self.workers[index]
        assert old.proc is not None
        old.proc.send_signal(signal.SIGTERM)
        self.replaced += 1
        pod = f"{self.job_name}-{index}-r{self.replaced}"
        new = WorkerProc(
            index,
            pod,
            self.tmp / f"{pod}-results",
            self.tmp / f"{pod}-termination",
            list(old.args),
            dict(old.env),
        )
        new.results.mkdir()
        new.args[new.args.index("--results-dir") + 1] = str(new.results)
        new.args[new.args.index("--termination-log") + 1] = str(new.termination)
        self.workers[index] = new
        await self._create_pod(new)
        await self.launch(new)
        return old

    async def reap(self, old: WorkerProc) -> int:
        """Wait for a replaced worker to exit, then remove its pod (a deleted pod is gone)."""
        assert old.proc is not None
        code = await old.proc.wait()
        await self.kube.client.delete(PODS, old.pod, self.namespace)
        return code

    async def launch(self, w: WorkerProc) -> None:
        """Start (or restart, in the same pod and results dir) one worker; report Running."""
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchop",
            *w.args,
            env=w.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=open(self.tmp / f"{w.pod}.log", "ab"),  # noqa: SIM115, ASYNC230
        )
        await self.pod_status(
            w,
            {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "containerStatuses": [
                    {
                        "name": "loadgen",
                        "ready": True,
                        "restartCount": w.restarts,
                        "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}},
                    }
                ],
            },
        )

    async def kill(self, index: int) -> None:
        """SIGKILL a worker (as an OOM or a node problem would)."""
        w = self.workers[index]
        assert w.proc is not None
        w.proc.send_signal(signal.SIGKILL)
        w.exit_codes.append(await w.proc.wait())
        w.restarts += 1

    async def pod_status(self, w: WorkerProc, status: dict[str, Any]) -> None:
        await self.kube.client.patch_status(PODS, w.pod, status, self.namespace)

    async def wait_all(self, timeout: float = 40) -> list[int]:  # noqa: ASYNC109
        """Wait for every worker to exit; report each pod Succeeded/Failed with its message."""
        codes = []
        async with asyncio.timeout(timeout):
            for w in self.workers:
                assert w.proc is not None
                code = await w.proc.wait()
                w.exit_codes.append(code)
                codes.append(code)
                message = w.termination.read_text() if w.termination.exists() else ""
                await self.pod_status(
                    w,
                    {
                        "phase": "Succeeded" if code == 0 else "Failed",
                        "containerStatuses": [
                            {
                                "name": "loadgen",
                                "ready": False,
                                "restartCount": w.restarts,
                                "state": {"terminated": {"exitCode": code, "message": message}},
                            }
                        ],
                    },
                )
        return codes

    async def job_condition(self, type_: str, reason: str = "", message: str = "") -> None:
        cond = {"type": type_, "status": "True", "reason": reason, "message": message}
        status: dict[str, Any] = {"conditions": [cond]}
        if type_ == "Complete":
            status["succeeded"] = len(self.workers)
        await self.kube.client.patch_status(JOBS, self.job_name, status, self.namespace)

    async def stop(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.kill()
                with contextlib.suppress(Exception):
                    await w.proc.wait()


async def add_pod(
    kube: Kube,
    name: str,
    *,
    labels: dict[str, str],
    node: str,
    ip: str,
    namespace: str = "default",
) -> None:
    """A Running pod on ``node`` with ``ip`` (a target model-server pod or an agent pod)."""
    await kube.client.create(
        PODS,
        {
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
        },
        namespace,
    )
    await kube.client.patch_status(PODS, name, {"phase": "Running", "podIP": ip}, namespace)
