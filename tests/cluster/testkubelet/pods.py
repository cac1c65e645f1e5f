"""Running the pods bound to a node: one :class:`PodWorker` per pod, as the kubelet's pod workers.

A worker's life: sandbox (pod dir, IP, network namespace, hosts file) -> volumes (retried with
FailedMount events until they can be set up) -> init containers one by one -> the containers,
each supervised (image check, env, start through the shim, probes, exit, restart per
restartPolicy with crash-loop back-off) -> a terminal phase when nothing will restart. When the
pod gets a deletionTimestamp: preStop hooks, SIGTERM, the grace period, SIGKILL, teardown, a last
status, then DELETE with ``gracePeriodSeconds=0`` and a uid precondition — what a kubelet does.

Status: every change marks the worker dirty; one writer computes :func:`status.pod_status` and
PATCHes ``pods/status`` only when it differs from what it last wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from . import dns, env, probes, runtime, volumes
from .api import Api, ApiError, Informer
from .backoff import Backoff
from .config import Config
from .events import EventRecorder
from .images import Image, Images, pull_error
from .mountpoints import Mountpoints
from .network import IpPool, Network, NetworkError
from .proxy import ServiceProxy
from .status import ContainerRecord, now_iso, pod_status, terminated_state, without_times

log = logging.getLogger(__name__)

MIN_GRACE = 2.0  # kubelet minimumGracePeriodInSeconds
OBJECT_RETRIES = 5  # 403s while the Node authorizer's graph catches up with a new pod
TRANSIENT = (aiohttp.ClientError, OSError, TimeoutError)
"""The API server is unreachable (restarting, etcd down): try again."""


def transient(e: BaseException) -> bool:
    """An API failure that a retry may get past: no connection, a timeout, 429 or 5xx."""
    if isinstance(e, ApiError):
        return e.status == 429 or e.status >= 500
    return isinstance(e, TRANSIENT)


async def until_done(
    call: Callable[[], Awaitable[None]],
    what: str,
    *,
    give_up: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    base: float = 0.5,
    cap: float = 10.0,
) -> bool:
    """``await call()`` until it returns, retrying transient API failures (doubling the pause
    from ``base`` up to ``cap``) while not ``give_up()``. A write that must happen (a pod's last
    status, its final DELETE) must outlive an API server restart: a worker that gave up on it
    would leave the pod Running or Terminating in the API forever. True when it was done."""
    pause = base
    sleep = sleep or asyncio.sleep
    while not give_up():
        try:
            await call()
            return True
        except Exception as e:
            if not transient(e):
                raise
            log.warning("%s failed: %s; again in %.1fs", what, e, pause)
        await sleep(pause)
        pause = min(pause * 2, cap)
    return False


class HostsFiles:
    """The hosts files of all running pods, re-rendered when Services change."""

    def __init__(self, proxy: ServiceProxy, domain: str) -> None:
        self.proxy = proxy
        self.domain = domain
        self._files: dict[str, tuple[dict[str, Any], str, Path]] = {}
        proxy.on_change.append(self.refresh)

    def add(self, uid: str, pod: dict[str, Any], ip: str, path: Path) -> None:
        self._files[uid] = (pod, ip, path)
        dns.write_in_place(
            path, dns.render_hosts(pod, ip, self.proxy.records(), domain=self.domain)
        )
        path.chmod(0o644)

    def remove(self, uid: str) -> None:
        self._files.pop(uid, None)

    def refresh(self) -> None:
        records = self.proxy.records()
        for pod, ip, path in self._files.values():
            dns.write_in_place(path, dns.render_hosts(pod, ip, records, domain=self.domain))


@dataclass
class NodeContext:
    """What the pod workers of one node share."""

    cfg: Config
    node: str
    api: Api
    events: EventRecorder
    network: Network
    pool: IpPool
    proxy: ServiceProxy
    hosts: HostsFiles
    images: Images
    allocatable: dict[str, str]
    session: aiohttp.ClientSession
    mountpoints: Mountpoints
    paused: Callable[[], bool]  # the node's heartbeats are stopped: it acts as partitioned


def pod_ref(pod: dict[str, Any]) -> str:
    """kubelet ``format.Pod``: ``name_namespace(uid)``."""
    m = pod["metadata"]
    return f"{m['name']}_{m['namespace']}({m['uid']})"


def _is_sidecar(c: dict[str, Any]) -> bool:
    return c.get("restartPolicy") == "Always"


async def delete_pod_object(
    api: Api, ns: str, name: str, uid: str, *, give_up: Callable[[], bool] = lambda: False
) -> None:
    """The kubelet's final DELETE (``gracePeriodSeconds: 0``, this uid only), retried through
    API outages; 404/409 (gone, or another pod of that name now) end it."""
    path = f"/api/v1/namespaces/{ns}/pods/{name}"
    body = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "gracePeriodSeconds": 0,
        "preconditions": {"uid": uid},
    }

    async def delete() -> None:
        try:
            await api.delete(path, body)
            log.info("pod %s/%s deleted", ns, name)
        except ApiError as e:
            if transient(e):
                raise
            if e.status not in (404, 409):
                log.warning("pod %s/%s: delete failed: %s", ns, name, e)

    await until_done(delete, f"pod {ns}/{name}: delete", give_up=give_up)


class PodWorker:
    """Runs one pod; ``update(pod)`` with each new version, ``removed()`` when it is gone from
    the API, ``shutdown()`` when the kubelet stops."""

    def __init__(self, ctx: NodeContext, pod: dict[str, Any]) -> None:
        self.ctx = ctx
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.pod_dir = ctx.cfg.kubelet_dir / "pods" / f"{self.ns}_{self.name}_{self.uid}"
        spec = pod["spec"]
        self.host_network = bool(spec.get("hostNetwork"))
        self.policy: str = spec.get("restartPolicy", "Always")
        self.init_specs: list[dict[str, Any]] = list(spec.get("initContainers") or [])
        self.specs: list[dict[str, Any]] = list(spec["containers"])
        first = "PodInitializing" if self.init_specs else "ContainerCreating"
        self.init = [
            ContainerRecord.waiting(c["name"], c["image"], "PodInitializing")
            for c in self.init_specs
        ]
        self.regular = [ContainerRecord.waiting(c["name"], c["image"], first) for c in self.specs]
        self.instances: dict[str, runtime.Instance] = {}
        self.pod_ip: str | None = None
        self.start_time: str | None = (pod.get("status") or {}).get("startTime")
        self.sandbox_ready = False
        self.netns: str | None = None
        self._deleting = asyncio.Event()
        self._gone = False
        self._stopping = False  # kubelet shutdown: kill, clean up, write nothing
        self._dirty = asyncio.Event()
        self._status_lock = asyncio.Lock()
        self._last_status: dict[str, Any] | None = None
        self._last_rv = ""  # resourceVersion our last status write produced
        self._final = False  # a terminal status was written: every later one is terminal too
        self._conditions: list[dict[str, Any]] = list(
            (pod.get("status") or {}).get("conditions") or []
        )
        self._objects: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._tokens: dict[volumes.TokenKey, tuple[str, float]] = {}
        self._volume_files: dict[str, volumes.Files] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._torn_down = False
        self._restored_terminal = self._restore()

    # --- informer side -------------------------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self._deleting.set()
        if self._overwritten(pod):
            self._last_status = None  # write ours again, as the kubelet's status manager does
            self._mark()

    def _overwritten(self, pod: dict[str, Any]) -> bool:
        """Did someone else change what we wrote (the node controller marks the pods of an
        unreachable node not Ready)? Only versions newer than our last write count."""
        if self._last_status is None or not self._last_rv:
            return False
        rv = pod["metadata"].get("resourceVersion", "")
        if not (rv.isdigit() and self._last_rv.isdigit() and int(rv) > int(self._last_rv)):
            return False
        status = pod.get("status") or {}
        mine = {c["type"]: c for c in self._last_status["conditions"]}
        theirs = {c["type"]: c for c in status.get("conditions") or []}
        for t, c in mine.items():
            other = theirs.get(t) or {}
            if any(other.get(k) != c.get(k) for k in ("status", "reason", "message")):
                return True
        return status.get("phase") != self._last_status.get("phase")

    def removed(self) -> None:
        self._gone = True
        self._deleting.set()

    def shutdown(self) -> None:
        self._stopping = True
        self._deleting.set()

    # --- restart of the kubelet ----------------------------------------------------------------

    def _restore(self) -> bool:
        """Carry restart counts over from the API status after a kubelet restart. The previous
        containers are gone (their processes were killed): with restartPolicy Never a pod whose
        containers had run is Failed (ContainerStatusUnknown, 137); otherwise they run again,
        init containers first. Returns whether the pod is terminal already."""
        status = self.pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return True
        old = {
            cs["name"]: cs
            for cs in (status.get("initContainerStatuses") or [])
            + (status.get("containerStatuses") or [])
        }
        ran = False
        for rec in self.init + self.regular:
            cs = old.get(rec.name)
            if not cs:
                continue
            rec.restart_count = cs.get("restartCount", 0)
            state = cs.get("state") or {}
            if "running" in state:
                ran = True
                rec.last_state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated",
                        "startedAt": state["running"].get("startedAt"),
                        "finishedAt": now_iso(),
                    }
                }
                rec.container_id = cs.get("containerID")
            elif "terminated" in state:
                ran = True
                rec.last_state = {"terminated": state["terminated"]}
                rec.container_id = cs.get("containerID")
            elif (cs.get("lastState") or {}).get("terminated"):
                rec.last_state = cs["lastState"]
                rec.container_id = cs.get("containerID")
        if ran and self.policy == "Never":
            lost = {
                "terminated": {
                    "exitCode": 137,
                    "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was terminated",
                }
            }
            for rec in self.init + self.regular:
                rec.state, rec.last_state = rec.last_state or lost, {}
        return False

    # --- main ----------------------------------------------------------------------------------

    async def run(self) -> None:
        status_task = asyncio.create_task(self._status_loop())
        try:
            await self._run()
        except Exception:
            log.exception("pod %s/%s: worker failed", self.ns, self.name)
        finally:
            status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status_task
            await self._teardown()

    async def _run(self) -> None:
        if self._restored_terminal:  # nothing to run, nothing to report
            await self._teardown()
            await self._deletion_seen()
            if not (self._stopping or self._gone):
                await self._delete_object()
            return
        if self._never_rerun():  # restarted kubelet, restartPolicy Never: the pod has failed
            await self._flush_surely()
            await self._teardown()
            await self._deletion_seen()
            await self._finish_deletion()
            return
        lifecycle = asyncio.create_task(self._lifecycle())
        deleting = asyncio.create_task(self._deletion_seen())
        await asyncio.wait({lifecycle, deleting}, return_when=asyncio.FIRST_COMPLETED)
        if lifecycle.done() and not deleting.done():
            if lifecycle.exception() is not None:
                raise lifecycle.exception()  # type: ignore[misc]
            await self._teardown()  # terminal: nothing runs any more; the object stays
            await self._deletion_seen()
        else:
            lifecycle.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await lifecycle
            grace = self._grace()
            if self._stopping:
                grace = min(grace, self.ctx.cfg.shutdown_grace)
            await self._kill_all(grace, reason="Stopping container")
        deleting.cancel()
        await self._finish_deletion()

    async def _deletion_seen(self) -> None:
        """The pod is to go (deleted, vanished, kubelet stopping) — as far as a node that is
        connected to the API can tell: a node whose heartbeats are stopped acts as partitioned
        and learns it only once it is back."""
        await self._deleting.wait()
        await self._connected()

    async def _connected(self) -> None:
        # a file says whether the node is paused: nothing to await but the clock
        while self.ctx.paused() and not self._stopping:  # noqa: ASYNC110
            await asyncio.sleep(0.5)

    def _never_rerun(self) -> bool:
        return self.policy == "Never" and any(r.terminated for r in self.init + self.regular)

    async def _finish_deletion(self) -> None:
        if self._stopping or self._gone:
            return
        await self._flush_surely(terminal=True)
        await self._teardown()
        await self._delete_object()

    async def _flush_surely(self, *, terminal: bool = False) -> None:
        """A status that must be written (terminal, or the last one), through API outages."""
        await until_done(
            lambda: self._flush(terminal=terminal),
            f"pod {self.ns}/{self.name}: status",
            give_up=lambda: self._stopping or self._gone,
        )

    async def _delete_object(self) -> None:
        await delete_pod_object(
            self.ctx.api, self.ns, self.name, self.uid, give_up=lambda: self._stopping
        )

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return float(grace)

    async def _lifecycle(self) -> None:
        await self._setup_sandbox()
        await self._setup_volumes()
        sidecars: list[asyncio.Task[int]] = []
        for spec, rec in zip(self.init_specs, self.init, strict=True):
            if _is_sidecar(spec):
                started = asyncio.Event()
                sidecars.append(asyncio.create_task(self._supervise(spec, rec, started=started)))
                await started.wait()
                continue
            code = await self._supervise(spec, rec)
            if code != 0:  # restartPolicy Never: the pod has failed
                self._mark()
                return
        for rec in self.regular:
            if rec.state.get("waiting", {}).get("reason") == "PodInitializing":
                rec.state = {"waiting": {"reason": "ContainerCreating"}}
        self._mark()
        await asyncio.gather(
            *(self._supervise(s, r) for s, r in zip(self.specs, self.regular, strict=True))
        )
        for t in sidecars:
            t.cancel()
        if sidecars:
            await self._kill_all(self._grace(), reason="Stopping container")
        await self._flush_surely()

    # --- sandbox and volumes -------------------------------------------------------------------

    async def _setup_sandbox(self) -> None:
        loop = asyncio.get_running_loop()
        delay = Backoff(self.ctx.cfg.backoff_base, self.ctx.cfg.backoff_max, first_at_once=False)
        while True:
            try:
                await self._create_sandbox()
                return
            except (NetworkError, OSError) as e:
                self.ctx.events.emit(
                    self.pod,
                    "Warning",
                    "FailedCreatePodSandBox",
                    f"Failed to create pod sandbox: {e}",
                )
                await asyncio.sleep(delay.next(loop.time()))

    async def _create_sandbox(self) -> None:
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        self.pod_dir.chmod(0o755)
        prefer = (self.pod.get("status") or {}).get("podIP")
        if self.host_network:
            self.pod_ip = self.ctx.cfg.host_ip
        else:
            self.pod_ip = self.ctx.pool.allocate(self.uid, prefer=prefer)
            self.netns = await self.ctx.network.create_sandbox(self.uid, self.pod_ip)
        self.ctx.hosts.add(self.uid, self.pod, self.pod_ip, self.pod_dir / "_hosts")
        resolv = self.pod_dir / "_resolv.conf"
        dns.write_in_place(
            resolv, dns.render_resolv_conf(self.ns, domain=self.ctx.cfg.cluster_domain)
        )
        resolv.chmod(0o644)
        self.start_time = self.start_time or now_iso()
        self.sandbox_ready = True
        self._mark()

    async def _setup_volumes(self) -> None:
        delay = Backoff(self.ctx.cfg.backoff_base, self.ctx.cfg.backoff_max, first_at_once=False)
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._sync_volumes(refetch=True, initial=True)
                break
            except volumes.VolumeError as e:
                self.ctx.events.emit(self.pod, "Warning", "FailedMount", str(e))
                await asyncio.sleep(delay.next(loop.time()))
        self._refresher = asyncio.create_task(self._refresh_volumes())

    async def _sync_volumes(self, *, refetch: bool, initial: bool = False) -> None:
        """Set up every volume (``initial``) or refresh the API-backed ones; raises VolumeError
        with the kubelet's FailedMount message."""
        pod = self.pod
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        try:
            if refetch:
                await self._fetch_objects(volumes.referenced_objects(pod), volume=True)
            await self._fetch_tokens()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise volumes.VolumeError(f"cannot reach the API server: {e}") from None
        tokens = {k: v[0] for k, v in self._tokens.items()}
        for vol in pod["spec"].get("volumes") or []:
            kind = volumes.volume_kind(vol)
            prefix = f'MountVolume.SetUp failed for volume "{vol["name"]}" : '
            target = volumes.volume_dir(self.pod_dir, vol)
            try:
                if kind not in volumes.SUPPORTED:
                    raise volumes.VolumeError(
                        f"volume type {kind} is not supported by the test kubelet"
                    )
                if kind in ("emptyDir", "hostPath"):
                    if not initial:
                        continue
                    if kind == "hostPath":
                        volumes.check_host_path(vol)
                    else:  # content survives a kubelet restart, a tmpfs is mounted again
                        src = vol.get("emptyDir") or {}
                        volumes.make_empty_dir(
                            target,
                            medium=src.get("medium") or "",
                            size_limit=src.get("sizeLimit"),
                            fs_group=fs_group,
                        )
                else:
                    files = volumes.volume_files(
                        pod,
                        vol,
                        objects=self._objects,
                        tokens=tokens,
                        pod_ip=self.pod_ip or "",
                        host_ip=self.ctx.cfg.host_ip,
                        allocatable=self.ctx.allocatable,
                    )
                    if files != self._volume_files.get(vol["name"]):
                        volumes.write_atomic(target, files, fs_group=fs_group)
                        self._volume_files[vol["name"]] = files
            except volumes.VolumeError as e:
                raise volumes.VolumeError(prefix + str(e)) from None
            except OSError as e:
                raise volumes.VolumeError(prefix + str(e)) from None

    async def _refresh_volumes(self) -> None:
        loop = asyncio.get_running_loop()
        last_fetch = loop.time()
        while True:
            await asyncio.sleep(min(10.0, self.ctx.cfg.volume_refresh))
            refetch = loop.time() - last_fetch >= self.ctx.cfg.volume_refresh
            try:
                await self._sync_volumes(refetch=refetch)
            except (volumes.VolumeError, ApiError, aiohttp.ClientError, OSError) as e:
                log.info("pod %s/%s: volume refresh: %s", self.ns, self.name, e)
            if refetch:
                last_fetch = loop.time()

    async def _fetch_objects(self, refs: set[tuple[str, str]], *, volume: bool) -> None:
        for kind, name in sorted(refs):
            path = f"/api/v1/namespaces/{self.ns}/{kind}/{name}"
            for attempt in range(OBJECT_RETRIES):
                try:
                    self._objects[(kind, name)] = await self.ctx.api.get(path)
                    break
                except ApiError as e:
                    if e.status == 404:
                        self._objects[(kind, name)] = None
                        break
                    if e.status == 403 and attempt < OBJECT_RETRIES - 1:
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    err = volumes.VolumeError if volume else env.ConfigError
                    raise err(e.message or str(e)) from None

    async def _fetch_tokens(self) -> None:
        loop = asyncio.get_running_loop()
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        for key in volumes.token_requests(self.pod):
            audience, seconds = key
            have = self._tokens.get(key)
            if have and loop.time() < have[1]:
                continue
            body: dict[str, Any] = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "expirationSeconds": seconds,
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": self.name,
                        "uid": self.uid,
                    },
                },
            }
            if audience:
                body["spec"]["audiences"] = [audience]
            try:
                tr = await self.ctx.api.post(
                    f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body
                )
            except ApiError as e:
                raise volumes.VolumeError(f"failed to fetch token: {e.message or e}") from None
            # refresh at 80% of the requested lifetime (the kubelet's token manager rule)
            self._tokens[key] = (tr["status"]["token"], loop.time() + 0.8 * seconds)

    # --- containers ----------------------------------------------------------------------------

    def _container_dir(self, name: str) -> Path:
        return self.pod_dir / name

    async def _supervise(
        self, spec: dict[str, Any], rec: ContainerRecord, *, started: asyncio.Event | None = None
    ) -> int:
        """Run a container until it is done for good; return its last exit code."""
        loop = asyncio.get_running_loop()
        crash = Backoff(self.ctx.cfg.backoff_base, self.ctx.cfg.backoff_max)
        is_init = rec in self.init and not _is_sidecar(spec)
        while True:
            inst = await self._start(spec, rec)
            code = await self._watch(spec, rec, inst, started=started)
            if is_init:
                restart = code != 0 and self.policy != "Never"
            elif _is_sidecar(spec) or self.policy == "Always":
                restart = True
            else:
                restart = self.policy == "OnFailure" and code != 0
            if not restart:
                return code
            delay = crash.next(loop.time())
            if delay:
                rec.last_state = rec.state
                msg = (
                    f"back-off {delay:g}s restarting failed container={rec.name} "
                    f"pod={pod_ref(self.pod)}"
                )
                rec.state = {"waiting": {"reason": "CrashLoopBackOff", "message": msg}}
                self._mark()
                self.ctx.events.emit(
                    self.pod,
                    "Warning",
                    "BackOff",
                    f"Back-off restarting failed container {rec.name} in pod {pod_ref(self.pod)}",
                    container=rec.name,
                )
                await asyncio.sleep(delay)

    async def _start(self, spec: dict[str, Any], rec: ContainerRecord) -> runtime.Instance:
        """Resolve the image, configure, start; retries image pulls and config errors like the
        kubelet's sync loop would."""
        loop = asyncio.get_running_loop()
        pulls = Backoff(self.ctx.cfg.backoff_base, self.ctx.cfg.backoff_max, first_at_once=False)
        image_ref = spec["image"]
        while True:
            image = self.ctx.images.lookup(image_ref)
            if image is None:
                await self._pull_failed(rec, image_ref, pulls.next(loop.time()))
                continue
            if spec.get("imagePullPolicy") == "Always":
                self.ctx.events.emit(
                    self.pod,
                    "Normal",
                    "Pulling",
                    f'Pulling image "{image_ref}"',
                    container=rec.name,
                )
                self.ctx.events.emit(
                    self.pod,
                    "Normal",
                    "Pulled",
                    f'Successfully pulled image "{image_ref}" in 0s (0s including '
                    "waiting). Image size: 0 bytes.",
                    container=rec.name,
                )
            else:
                self.ctx.events.emit(
                    self.pod,
                    "Normal",
                    "Pulled",
                    f'Container image "{image_ref}" already present on machine '
                    "and can be accessed by the pod",
                    container=rec.name,
                )
            try:
                shim_spec = await self._shim_spec(spec, image)
            except env.ConfigError as e:
                rec.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
                self._mark()
                self.ctx.events.emit(
                    self.pod, "Warning", "Failed", f"Error: {e}", container=rec.name
                )
                await asyncio.sleep(self.ctx.cfg.backoff_base)
                continue
            if rec.container_id is not None:  # an earlier instance ran: this is a restart
                rec.restart_count += 1
                if "terminated" in rec.state:
                    rec.last_state = rec.state
            cdir = self._container_dir(rec.name)
            cdir.mkdir(parents=True, exist_ok=True)
            n = rec.restart_count
            spec_path = cdir / f"{n}.json"
            (cdir / f"{n}.termination-log").write_bytes(b"")
            (cdir / f"{n}.termination-log").chmod(0o666)
            shim_spec = self._with_mounts(shim_spec, spec, cdir / f"{n}.termination-log")
            inst = await runtime.start(shim_spec, spec_path=spec_path, log_path=cdir / f"{n}.log")
            self.instances[rec.name] = inst
            rec.container_id = inst.container_id
            rec.image_id = image.image_id()
            self.ctx.events.emit(
                self.pod, "Normal", "Created", f"Created container: {rec.name}", container=rec.name
            )
            if inst.start_error:
                self.ctx.events.emit(
                    self.pod, "Warning", "Failed", f"Error: {inst.start_error}", container=rec.name
                )
            else:
                self.ctx.events.emit(
                    self.pod,
                    "Normal",
                    "Started",
                    f"Started container {rec.name}",
                    container=rec.name,
                )
            return inst

    async def _pull_failed(self, rec: ContainerRecord, image_ref: str, delay: float) -> None:
        """ErrImagePull for half the back-off, then ImagePullBackOff for the rest."""
        msg = pull_error(image_ref)
        ev = self.ctx.events
        ev.emit(self.pod, "Normal", "Pulling", f'Pulling image "{image_ref}"', container=rec.name)
        ev.emit(
            self.pod,
            "Warning",
            "Failed",
            f'Failed to pull image "{image_ref}": {msg}',
            container=rec.name,
        )
        ev.emit(self.pod, "Warning", "Failed", "Error: ErrImagePull", container=rec.name)
        rec.state = {"waiting": {"reason": "ErrImagePull", "message": msg}}
        self._mark()
        await asyncio.sleep(delay / 2)
        rec.state = {
            "waiting": {
                "reason": "ImagePullBackOff",
                "message": f'Back-off pulling image "{image_ref}": ErrImagePull: {msg}',
            }
        }
        self._mark()
        ev.emit(
            self.pod,
            "Normal",
            "BackOff",
            f'Back-off pulling image "{image_ref}"',
            container=rec.name,
        )
        ev.emit(self.pod, "Warning", "Failed", "Error: ImagePullBackOff", container=rec.name)
        await asyncio.sleep(delay / 2)

    def _identity(self, spec: dict[str, Any], image: Image) -> tuple[int, int, list[int]]:
        psc = self.pod["spec"].get("securityContext") or {}
        csc = spec.get("securityContext") or {}
        uid = csc.get("runAsUser", psc.get("runAsUser", image.uid))
        default_gid = image.gid if uid == image.uid else 0
        gid = csc.get("runAsGroup", psc.get("runAsGroup", default_gid))
        groups = list(psc.get("supplementalGroups") or [])
        if psc.get("fsGroup") is not None:
            groups.append(psc["fsGroup"])
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) and uid == 0:
            raise env.ConfigError(
                "container has runAsNonRoot and image will run as root "
                f'(pod: "{pod_ref(self.pod)}", container: {spec["name"]})'
            )
        return int(uid), int(gid), sorted(set(groups))

    async def _shim_spec(self, spec: dict[str, Any], image: Image) -> dict[str, Any]:
        """Everything but the mounts: identity, env, argv, namespaces."""
        pod = self.pod
        uid, gid, groups = self._identity(spec, image)
        try:
            await self._fetch_objects(env.referenced_objects(spec), volume=False)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise env.ConfigError(f"cannot read the container's env sources: {e}") from None
        kubelet_env = env.container_env(
            pod,
            spec,
            services=env.service_env(
                self.ctx.proxy.services(), self.ns, pod["spec"].get("enableServiceLinks", True)
            ),
            objects=self._objects,
            pod_ip=self.pod_ip or "",
            host_ip=self.ctx.cfg.host_ip,
            allocatable=self.ctx.allocatable,
        )
        hostname = dns.pod_hostname(pod)
        csc = spec.get("securityContext") or {}
        return {
            "netns": self.netns,
            "hostname": None if self.host_network else hostname,  # host's UTS namespace
            "readonly_root": bool(csc.get("readOnlyRootFilesystem")),
            "no_new_privs": csc.get("allowPrivilegeEscalation") is False,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "cwd": spec.get("workingDir") or image.workdir,
            "argv": env.argv(spec, list(image.entrypoint), list(image.cmd), kubelet_env),
            "env": env.runtime_env(image.env, hostname, kubelet_env),
            "kubelet_env": kubelet_env,
        }

    def _with_mounts(
        self, shim_spec: dict[str, Any], spec: dict[str, Any], termination_log: Path
    ) -> dict[str, Any]:
        kubelet_env = shim_spec.pop("kubelet_env")
        try:
            mounts = volumes.plan_mounts(
                self.pod,
                spec,
                pod_dir=self.pod_dir,
                env=kubelet_env,
                hosts=self.pod_dir / "_hosts",
                resolv=self.pod_dir / "_resolv.conf",
                termination_log=termination_log,
                masks=self.ctx.cfg.masks,
                resolve=os.path.realpath,
            )
        except volumes.VolumeError as e:
            raise env.ConfigError(str(e)) from None
        for m in mounts:
            if m.kind == "bind" and (
                spec.get("volumeMounts") and m.source.startswith(str(self.pod_dir / "_volumes"))
            ):
                volumes.ensure_subpath(Path(m.source))
        for target in volumes.host_mountpoints(mounts):
            m = next(x for x in mounts if x.target == target)
            is_dir = m.kind != "bind" or os.path.isdir(m.source)
            self.ctx.mountpoints.ensure(self.uid, target, is_dir=is_dir)
        return {**shim_spec, "mounts": [m.to_json() for m in mounts]}

    async def _watch(
        self,
        spec: dict[str, Any],
        rec: ContainerRecord,
        inst: runtime.Instance,
        *,
        started: asyncio.Event | None,
    ) -> int:
        """From start to exit: running state, hooks, probes; returns the exit code."""
        if inst.start_error:  # never ran: terminated with StartError, 128
            code = await inst.wait()
            self._record_exit(spec, rec, inst, code)
            return code
        is_plain_init = rec in self.init and not _is_sidecar(spec)
        post_start = (spec.get("lifecycle") or {}).get("postStart")
        if post_start:  # the container counts as running only once its postStart hook is done
            ok, out = await self._run_hook(post_start, spec, inst, max(30.0, self._grace()))
            if not ok:
                self.ctx.events.emit(
                    self.pod, "Warning", "FailedPostStartHook", out, container=rec.name
                )
                self.ctx.events.emit(
                    self.pod,
                    "Normal",
                    "Killing",
                    f"FailedPostStartHook: stopping container {rec.name}",
                    container=rec.name,
                )
                await self._stop(spec, rec, inst, self._grace(), run_pre_stop=False)
                code = await inst.wait()
                self._record_exit(spec, rec, inst, code)
                return code
        rec.state = {"running": {"startedAt": inst.started_at}}
        rec.started = not spec.get("startupProbe")
        rec.ready = not is_plain_init and not spec.get("readinessProbe")
        self._mark()
        tasks: list[asyncio.Task[None]] = []
        if not is_plain_init:
            tasks.append(asyncio.create_task(self._probe_all(spec, rec, inst, started)))
        elif started is not None:
            started.set()
        try:
            code = await inst.wait()
        finally:
            for t in tasks:
                t.cancel()
        self._record_exit(spec, rec, inst, code)
        return code

    def _record_exit(
        self, spec: dict[str, Any], rec: ContainerRecord, inst: runtime.Instance, code: int
    ) -> None:
        self.instances.pop(rec.name, None)
        if inst.start_error:
            msg, reason = inst.start_error, "StartError"
        else:
            msg = runtime.termination_message(
                inst, policy=spec.get("terminationMessagePolicy") or "File", exit_code=code
            )
            reason = None
        rec.state = terminated_state(
            code,
            started_at=inst.started_at,
            finished_at=now_iso(),
            message=msg,
            container_id=inst.container_id,
            reason=reason,
        )
        rec.ready = rec.started = False
        self._mark()

    async def _run_hook(
        self, hook: dict[str, Any], spec: dict[str, Any], inst: runtime.Instance, limit: float
    ) -> tuple[bool, str]:
        if hook.get("sleep"):
            await asyncio.sleep(min(float(hook["sleep"].get("seconds", 0)), limit))
            return True, ""
        return await probes.check(
            {**hook, "timeoutSeconds": limit},
            spec,
            pod_ip=self.pod_ip or "",
            session=self.ctx.session,
            exec_fn=self._exec_fn(inst, spec),
        )

    def _exec_fn(self, inst: runtime.Instance, spec: dict[str, Any]) -> probes.ExecFn:
        """Run a command in ``inst``'s namespaces as its user, with its env and cwd."""

        async def run(argv: list[str], limit: float) -> tuple[int, str]:
            job = {k: inst.spec[k] for k in ("env", "uid", "gid", "groups", "cwd", "no_new_privs")}
            job.update(join_pid=inst.pid, argv=argv)
            path = inst.spec_path.with_name(f"exec-{secrets.token_hex(6)}.json")
            return await runtime.run_joined(job, spec_path=path, limit=limit)

        return run

    async def _probe_all(
        self,
        spec: dict[str, Any],
        rec: ContainerRecord,
        inst: runtime.Instance,
        started: asyncio.Event | None,
    ) -> None:
        startup = spec.get("startupProbe")
        if startup:
            ok = await self._probe_loop("Startup", startup, spec, rec, inst, until_success=True)
            if not ok:
                return
            rec.started = True
            self._mark()
        if started is not None:
            started.set()
        loops = []
        if spec.get("readinessProbe"):
            loops.append(self._probe_loop("Readiness", spec["readinessProbe"], spec, rec, inst))
        if spec.get("livenessProbe"):
            loops.append(self._probe_loop("Liveness", spec["livenessProbe"], spec, rec, inst))
        await asyncio.gather(*loops)

    async def _probe_loop(
        self,
        kind: str,
        probe: dict[str, Any],
        spec: dict[str, Any],
        rec: ContainerRecord,
        inst: runtime.Instance,
        *,
        until_success: bool = False,
    ) -> bool:
        timing = probes.Timing.of(probe)
        tracker = probes.Tracker(
            timing.success_threshold,
            timing.failure_threshold,
            state=True if kind == "Liveness" else None,
        )
        await asyncio.sleep(timing.initial_delay)
        exec_fn = self._exec_fn(inst, spec)
        while True:
            ok, out = await probes.check(
                probe, spec, pod_ip=self.pod_ip or "", session=self.ctx.session, exec_fn=exec_fn
            )
            if not ok:
                self.ctx.events.emit(
                    self.pod,
                    "Warning",
                    "Unhealthy",
                    f"{kind} probe failed: {out.strip()}",
                    container=rec.name,
                )
            changed = tracker.observe(ok)
            if kind == "Readiness" and changed is not None:
                rec.ready = changed
                self._mark()
            elif changed is False:  # liveness or startup failed: restart the container
                what = "liveness" if kind == "Liveness" else "startup"
                self.ctx.events.emit(
                    self.pod,
                    "Normal",
                    "Killing",
                    f"Container {rec.name} failed {what} probe, will be restarted",
                    container=rec.name,
                )
                grace = probe.get("terminationGracePeriodSeconds")
                await self._stop(
                    spec,
                    rec,
                    inst,
                    float(grace)
                    if grace is not None
                    else float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)),
                )
                return False
            elif until_success and changed is True:
                return True
            await asyncio.sleep(timing.period)

    # --- stopping ------------------------------------------------------------------------------

    async def _stop(
        self,
        spec: dict[str, Any],
        rec: ContainerRecord,
        inst: runtime.Instance,
        grace: float,
        *,
        run_pre_stop: bool = True,
    ) -> None:
        """preStop, SIGTERM, wait up to ``grace`` (at least 2 s), SIGKILL."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace, MIN_GRACE)
        pre_stop = (spec.get("lifecycle") or {}).get("preStop")
        if run_pre_stop and pre_stop and inst.proc.returncode is None:
            try:
                ok, out = await asyncio.wait_for(
                    self._run_hook(pre_stop, spec, inst, max(grace, MIN_GRACE)),
                    max(0.1, deadline - loop.time()),
                )
            except TimeoutError:
                ok, out = False, "PreStopHook timed out"
            if not ok:
                self.ctx.events.emit(
                    self.pod,
                    "Warning",
                    "FailedPreStopHook",
                    f"PreStopHook failed: {out}",
                    container=rec.name,
                )
        inst.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(
                asyncio.shield(inst.proc.wait()), max(0.0, deadline - loop.time())
            )
        except TimeoutError:
            inst.signal(signal.SIGKILL)

    async def _kill_all(self, grace: float, *, reason: str) -> None:
        """Stop every running container (in parallel) and record how each ended."""
        running = []
        for spec, rec in zip(self.init_specs + self.specs, self.init + self.regular, strict=True):
            inst = self.instances.get(rec.name)
            if inst is not None:
                running.append((spec, rec, inst))
        for _, rec, _ in running:
            self.ctx.events.emit(
                self.pod, "Normal", "Killing", f"{reason} {rec.name}", container=rec.name
            )

        async def stop(spec: dict[str, Any], rec: ContainerRecord, inst: runtime.Instance) -> None:
            await self._stop(spec, rec, inst, grace)
            code = await inst.wait()
            self._record_exit(spec, rec, inst, code)

        await asyncio.gather(*(stop(*r) for r in running))

    async def _teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        if self._refresher is not None:
            self._refresher.cancel()
        for inst in list(self.instances.values()):  # only left if something went wrong
            inst.signal(signal.SIGKILL)
        self.ctx.hosts.remove(self.uid)
        if self.netns is not None:
            await self.ctx.network.delete_sandbox(self.uid)
        self.ctx.pool.release(self.uid)
        self.sandbox_ready = False
        await asyncio.to_thread(self._remove_files)
        self.ctx.mountpoints.release(self.uid)
        self.ctx.events.forget(self.uid)

    def _remove_files(self) -> None:
        vols = self.pod_dir / "_volumes"
        if vols.exists():
            volumes.unmount_under(vols)
            shutil.rmtree(vols, ignore_errors=True)

    # --- status --------------------------------------------------------------------------------

    def _mark(self) -> None:
        self._dirty.set()

    async def _status_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await self._connected()  # a partitioned node writes nothing
            self._dirty.clear()
            try:
                await self._flush()
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
                log.warning("pod %s/%s: status update failed: %s", self.ns, self.name, e)
                await asyncio.sleep(1)
                self._mark()

    async def _flush(self, *, terminal: bool = False) -> None:
        if self._stopping or self._gone:
            return
        await self._connected()
        async with self._status_lock:
            self._final = terminal = terminal or self._final
            pod = {
                **self.pod,
                "status": {**(self.pod.get("status") or {}), "conditions": self._conditions},
            }
            status = pod_status(
                pod,
                self.init,
                self.regular,
                sandbox_ready=self.sandbox_ready,
                pod_ip=self.pod_ip,
                host_ip=self.ctx.cfg.host_ip,
                start_time=self.start_time,
                now=now_iso(),
                terminal=terminal,
            )
            if self._last_status is not None and without_times(status) == self._last_status:
                return
            try:
                resp = await self.ctx.api.patch(
                    f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status", {"status": status}
                )
            except ApiError as e:
                if e.status == 404:
                    self._gone = True
                    self._deleting.set()
                    return
                raise
            self._last_status = without_times(status)
            self._last_rv = (resp.get("metadata") or {}).get("resourceVersion", "")
            self._conditions = (resp.get("status") or {}).get("conditions") or status["conditions"]


class PodManager:
    """Watches the pods bound to one node and runs a worker per pod."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.informer = Informer(
            ctx.api,
            "/api/v1/pods",
            self._on_event,
            params={"fieldSelector": f"spec.nodeName={ctx.node}"},
            name=f"pods@{ctx.node}",
        )
        self.workers: dict[str, tuple[PodWorker, asyncio.Task[None]]] = {}
        self.finished: set[str] = set()
        self._deleting: dict[str, asyncio.Task[None]] = {}
        self._started = False

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED":
            self.finished.discard(uid)
            if uid in self.workers:
                self.workers[uid][0].removed()
            return
        if uid in self.workers:
            self.workers[uid][0].update(pod)
            return
        if uid in self.finished:
            if pod["metadata"].get("deletionTimestamp"):
                self._delete_finished(pod)
            return
        if not self._started:
            return
        self._spawn(pod)

    def _delete_finished(self, pod: dict[str, Any]) -> None:
        """A pod whose worker has ended (nothing of it runs) is to go: the final DELETE. A
        worker ends before its pod is deleted when it failed; without this the pod would stay
        Terminating for good."""
        meta = pod["metadata"]
        uid = meta["uid"]
        if uid in self._deleting:
            return

        async def delete() -> None:
            while self.ctx.paused():  # noqa: ASYNC110  (a partitioned node acts once back)
                await asyncio.sleep(0.5)
            await delete_pod_object(self.ctx.api, meta["namespace"], meta["name"], uid)

        task = asyncio.create_task(delete())
        self._deleting[uid] = task
        task.add_done_callback(lambda _: self._deleting.pop(uid, None))

    def _spawn(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        worker = PodWorker(self.ctx, pod)
        worker.update(pod)
        task = asyncio.create_task(worker.run())
        self.workers[uid] = (worker, task)

        def done(_: asyncio.Task[None]) -> None:
            self.workers.pop(uid, None)
            if f"{pod['metadata']['namespace']}/{pod['metadata']['name']}" in self.informer.objects:
                self.finished.add(uid)

        task.add_done_callback(done)

    async def run(self, ready: Callable[[], Awaitable[None]]) -> None:
        """Start pods once ``ready()`` returns (services known: their env vars are injected)."""
        watch = asyncio.create_task(self.informer.run())
        try:
            await ready()
            await self.informer.synced.wait()
            self._started = True
            pods = list(self.informer.objects.values())
            for pod in pods:  # a restarted kubelet: no new pod may take an IP a pod still has
                ip = (pod.get("status") or {}).get("podIP")
                if ip and not pod["spec"].get("hostNetwork"):
                    self.ctx.pool.reserve(pod["metadata"]["uid"], ip)
            for pod in pods:
                if pod["metadata"]["uid"] not in self.workers:
                    self._spawn(pod)
            await watch
        finally:
            watch.cancel()

    async def shutdown(self) -> None:
        for task in list(self._deleting.values()):
            task.cancel()
        for worker, _ in list(self.workers.values()):
            worker.shutdown()
        tasks = [t for _, t in self.workers.values()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
