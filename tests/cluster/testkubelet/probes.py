"""Probes: httpGet, tcpSocket and exec checks, and the kubelet's threshold logic.

:class:`Tracker` is the prober worker's rule (pure): a result only changes the probe's state after
``successThreshold`` / ``failureThreshold`` identical results in a row. :func:`check` runs one
probe against a container (pod IP from the host; exec through the shim inside the container).
gRPC probes are not implemented: they always fail, with a message saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

ExecFn = Callable[[list[str], float], Awaitable[tuple[int, str]]]


@dataclass
class Tracker:
    """``Tracker(success_threshold=1, failure_threshold=3, state=None).observe(ok)`` returns the
    new state when it changes, else None."""

    success_threshold: int = 1
    failure_threshold: int = 3
    state: bool | None = None
    _last: bool | None = None
    _run: int = 0

    def observe(self, ok: bool) -> bool | None:
        if ok == self._last:
            self._run += 1
        else:
            self._last, self._run = ok, 1
        need = self.success_threshold if ok else self.failure_threshold
        if self._run >= need and self.state != ok:
            self.state = ok
            return ok
        return None


@dataclass(frozen=True)
class Timing:
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def of(cls, probe: dict[str, Any]) -> Timing:
        return cls(
            initial_delay=float(probe.get("initialDelaySeconds") or 0),
            period=float(probe.get("periodSeconds") or 10),
            timeout=float(probe.get("timeoutSeconds") or 1),
            success_threshold=int(probe.get("successThreshold") or 1),
            failure_threshold=int(probe.get("failureThreshold") or 3),
        )


def resolve_port(port: int | str, container: dict[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"port {port!r} not found in container {container['name']}")


async def check(
    probe: dict[str, Any],
    container: dict[str, Any],
    *,
    pod_ip: str,
    session: aiohttp.ClientSession,
    exec_fn: ExecFn,
) -> tuple[bool, str]:
    """Run ``probe`` once: ``(success, output)``."""
    limit = float(probe.get("timeoutSeconds") or 1)
    try:
        if probe.get("httpGet"):
            return await _http(probe["httpGet"], container, pod_ip, session, limit)
        if probe.get("tcpSocket"):
            return await _tcp(probe["tcpSocket"], container, pod_ip, limit)
        if probe.get("exec"):
            code, out = await exec_fn(list(probe["exec"].get("command") or []), limit)
            if code == 0:
                return True, out
            if code < 0:
                return False, f"command timed out: {out}"
            return False, f"command {probe['exec'].get('command')} exited with {code}: {out}"
        if probe.get("grpc"):
            return False, "gRPC probes are not implemented by the test kubelet"
    except ValueError as e:
        return False, str(e)
    return False, "probe has no handler"


async def _http(
    spec: dict[str, Any],
    container: dict[str, Any],
    pod_ip: str,
    session: aiohttp.ClientSession,
    limit: float,
) -> tuple[bool, str]:
    port = resolve_port(spec["port"], container)
    host = spec.get("host") or pod_ip
    scheme = (spec.get("scheme") or "HTTP").lower()
    path = spec.get("path") or "/"
    if not path.startswith("/"):
        path = "/" + path
    url = f"{scheme}://{host}:{port}{path}"
    headers = {"User-Agent": "kube-probe/1.37", "Accept": "*/*"}
    for h in spec.get("httpHeaders") or []:
        headers[h["name"]] = h["value"]
    try:
        async with session.get(
            url, headers=headers, ssl=False, timeout=aiohttp.ClientTimeout(total=limit)
        ) as resp:
            body = (await resp.content.read(10 * 1024)).decode("utf-8", "replace")
            if 200 <= resp.status < 400:
                return True, body
            return False, f"HTTP probe failed with statuscode: {resp.status}"
    except TimeoutError:
        return False, (
            f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while '
            "awaiting headers)"
        )
    except (aiohttp.ClientError, OSError) as e:
        return False, f'Get "{url}": {_dial_error(host, port, e)}'


async def _tcp(
    spec: dict[str, Any], container: dict[str, Any], pod_ip: str, limit: float
) -> tuple[bool, str]:
    port = resolve_port(spec["port"], container)
    host = spec.get("host") or pod_ip
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit)
    except TimeoutError:
        return False, f"dial tcp {host}:{port}: i/o timeout"
    except OSError as e:
        return False, _dial_error(host, port, e)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


def _dial_error(host: str, port: int, e: BaseException) -> str:
    cause = e
    while cause.__cause__ is not None or cause.__context__ is not None:
        nxt = cause.__cause__ or cause.__context__
        assert nxt is not None
        cause = nxt
    if isinstance(cause, ConnectionRefusedError):
        return f"dial tcp {host}:{port}: connect: connection refused"
    return f"dial tcp {host}:{port}: {cause}"
