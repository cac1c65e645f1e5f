"""The test kubelet process: shared host setup, then per node a NodeAgent and a PodManager.

Start-up after a crash: processes a previous run left are killed (runtime.reap_stale), its
network namespaces deleted, its tmpfs volumes unmounted and its host mount points removed; the
pods still bound to the nodes are then run again by fresh workers (see PodWorker._restore).
SIGTERM/SIGINT: every pod's containers are stopped (grace capped by ``shutdown_grace``), sandboxes
and volumes torn down; pod objects are left as they are, as when a real kubelet stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import aiohttp

from . import runtime, volumes
from .api import Api, load_kubeconfig
from .config import Config
from .events import EventRecorder
from .images import Images
from .mountpoints import HOST_STATE, Mountpoints
from .network import IpPool, Network
from .node import NodeAgent, resources
from .pods import HostsFiles, NodeContext, PodManager
from .proxy import ServiceProxy
from .server import LogServer

log = logging.getLogger(__name__)


async def run(cfg: Config) -> None:
    pods_dir = cfg.kubelet_dir / "pods"
    pods_dir.mkdir(parents=True, exist_ok=True)
    cfg.kubelet_dir.chmod(0o755)
    killed = runtime.reap_stale(pods_dir)
    if killed:
        log.info("killed %d container process groups left by a previous run", killed)
    volumes.unmount_under(pods_dir)
    mountpoints = Mountpoints(HOST_STATE, str(cfg.kubelet_dir))  # shared by all test kubelets
    mountpoints.cleanup_stale()
    network = Network(
        bridge=cfg.bridge, host_ip=cfg.host_ip, pod_cidr=cfg.pod_cidr, service_cidr=cfg.service_cidr
    )
    await network.setup_host()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    proxy_api = Api(load_kubeconfig(cfg.proxy_kubeconfig), user_agent="testkubelet/proxy")
    apis = [proxy_api]
    session = aiohttp.ClientSession()
    tasks: list[asyncio.Task[None]] = []
    managers: list[PodManager] = []
    servers: list[LogServer] = []
    try:
        version = (await proxy_api.get("/version"))["gitVersion"]
        proxy = ServiceProxy(proxy_api)
        hosts = HostsFiles(proxy, cfg.cluster_domain)
        tasks.append(asyncio.create_task(proxy.run(), name="proxy"))
        images = Images(cfg.images)
        for node in cfg.nodes:
            api = Api(
                load_kubeconfig(cfg.node_kubeconfig(node.name)),
                user_agent=f"testkubelet/{version} ({node.name})",
            )
            apis.append(api)
            capacity = resources(cpu=cfg.cpu, memory=cfg.memory, pods=cfg.max_pods, gpus=node.gpus)
            port = cfg.kubelet_port + node.index - 1 if cfg.kubelet_port else 0
            agent = NodeAgent(
                api,
                node.name,
                host_ip=cfg.host_ip,
                capacity=capacity,
                gpus=node.gpus,
                kubelet_version=version,
                port=port,
                control_dir=cfg.kubelet_dir / "nodes" / node.name,
                heartbeat=cfg.heartbeat,
                status_every=cfg.status_every,
            )
            await agent.register()
            ctx = NodeContext(
                cfg=cfg,
                node=node.name,
                api=api,
                events=EventRecorder(api, node.name),
                network=network,
                pool=IpPool(cfg.pod_cidr, node.index),
                proxy=proxy,
                hosts=hosts,
                images=images,
                allocatable=capacity,
                session=session,
                mountpoints=mountpoints,
                paused=lambda agent=agent: agent.paused,
            )
            manager = PodManager(ctx)
            managers.append(manager)
            tasks.append(asyncio.create_task(agent.run(), name=f"node {node.name}"))
            tasks.append(asyncio.create_task(manager.run(proxy.synced), name=f"pods {node.name}"))
            if port:
                server = LogServer(cfg, node.name, port)
                await server.start()
                servers.append(server)
        log.info("test kubelet running nodes %s", ", ".join(n.name for n in cfg.nodes))
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not waiter and t.exception() is not None:
                log.error("%s failed", t.get_name(), exc_info=t.exception())
        waiter.cancel()
    finally:
        log.info("stopping: killing containers and cleaning up")
        await asyncio.gather(*(m.shutdown() for m in managers), return_exceptions=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in servers:
            await server.stop()
        await network.teardown_host()
        volumes.unmount_under(pods_dir)
        mountpoints.cleanup_stale()
        await session.close()
        for api in apis:
            with contextlib.suppress(Exception):
                await api.close()
        log.info("stopped")
