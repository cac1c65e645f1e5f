"""A minimal kube-proxy: Services and EndpointSlices watched, TCP proxied in userspace.

For every Service with a ClusterIP and every TCP port, a listener on ``<clusterIP>:<port>``
(network.py makes the service CIDR local) forwards each connection to one ready endpoint, round
robin, using the port number the EndpointSlice publishes for the Service port's name (so named
``targetPort``\\ s work). With no ready endpoint the connection is closed at once. UDP, SCTP,
NodePorts, session affinity and traffic policies are not implemented. Every byte is copied by
this process: fine for tests, but it adds latency a benchmark through a ClusterIP would measure.

The same caches feed the pods' service environment variables and hosts files (``on_change``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

from .api import Api, Informer
from .dns import ServiceRecord, service_records

log = logging.getLogger(__name__)

Listener = tuple[str, int]  # (cluster IP, port)


def ready_backends(port: dict[str, Any], slices: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """``[(ip, port)]`` of ready, non-terminating endpoints for one Service port."""
    name = port.get("name") or ""
    out = []
    for s in slices:
        numbers = [p.get("port") for p in s.get("ports") or [] if (p.get("name") or "") == name]
        if not numbers or numbers[0] is None:
            continue
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") is False or cond.get("terminating"):
                continue
            out.extend((ip, numbers[0]) for ip in ep.get("addresses") or [])
    return sorted(set(out))


class ServiceProxy:
    """``ServiceProxy(api).run()``; ``services()`` for env vars, ``records()`` for DNS."""

    def __init__(self, api: Api) -> None:
        self.services_informer = Informer(api, "/api/v1/services", self._changed, name="services")
        self.slices_informer = Informer(
            api, "/apis/discovery.k8s.io/v1/endpointslices", self._changed, name="endpointslices"
        )
        self.on_change: list[Callable[[], None]] = []
        self._listeners: dict[Listener, asyncio.Server] = {}
        self._targets: dict[Listener, tuple[str, str, dict[str, Any]]] = {}
        self._rr = itertools.count()
        self._dirty = asyncio.Event()

    async def synced(self) -> None:
        await self.services_informer.synced.wait()
        await self.slices_informer.synced.wait()

    def services(self) -> list[dict[str, Any]]:
        return list(self.services_informer.objects.values())

    def records(self) -> list[ServiceRecord]:
        return service_records(self.services(), self.slices_informer.objects.values())

    def _changed(self, _kind: str, _obj: dict[str, Any]) -> None:
        self._dirty.set()

    def _slices_of(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [
            s
            for s in self.slices_informer.objects.values()
            if s["metadata"]["namespace"] == namespace
            and (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == name
        ]

    def _wanted(self) -> dict[Listener, tuple[str, str, dict[str, Any]]]:
        out = {}
        for svc in self.services():
            spec = svc.get("spec") or {}
            ip = spec.get("clusterIP") or ""
            if ip in ("", "None") or ":" in ip:
                continue
            for p in spec.get("ports") or []:
                if (p.get("protocol") or "TCP") == "TCP":
                    out[(ip, p["port"])] = (
                        svc["metadata"]["namespace"],
                        svc["metadata"]["name"],
                        p,
                    )
        return out

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self.services_informer.run()),
            asyncio.create_task(self.slices_informer.run()),
        ]
        try:
            await self.synced()
            while True:
                await self._reconcile()
                for cb in self.on_change:
                    try:
                        cb()
                    except Exception:
                        log.exception("service change callback failed")
                self._dirty.clear()
                await self._dirty.wait()
                await asyncio.sleep(0.1)  # batch a burst of events into one pass
        finally:
            for t in tasks:
                t.cancel()
            for server in self._listeners.values():
                server.close()
            self._listeners.clear()

    async def _reconcile(self) -> None:
        wanted = self._targets = self._wanted()
        for key in [k for k in self._listeners if k not in wanted]:
            self._listeners.pop(key).close()
        for key in wanted:
            if key in self._listeners:
                continue
            ip, port = key
            try:
                self._listeners[key] = await asyncio.start_server(
                    lambda r, w, key=key: self._serve(key, r, w), ip, port, reuse_address=True
                )
            except OSError as e:
                log.warning("cannot listen on service %s:%s: %s", ip, port, e)

    async def _serve(
        self, key: Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        target = self._targets.get(key)
        backends = (
            ready_backends(target[2], self._slices_of(target[0], target[1])) if target else []
        )
        if not backends:
            writer.close()
            return
        ip, port = backends[next(self._rr) % len(backends)]
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 10)
        except (OSError, TimeoutError) as e:
            log.info("service %s:%s -> %s:%s: %s", *key, ip, port, e)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(ConnectionError, OSError):
                    w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side (both sides are closed by the caller)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()  # its reader (the other direction) then sees EOF too
