"""A small async Kubernetes REST client (aiohttp) and a list+watch informer.

``Api(load_kubeconfig(path))`` speaks JSON to the apiserver with the kubeconfig's client
certificate (or token). :class:`Informer` keeps a collection in memory: it LISTs, then WATCHes from
the list's resourceVersion (bookmarks on), resumes from the last seen resourceVersion when a watch
ends, relists on ``410 Gone`` or errors, and reports changes to a callback — deletions missed while
disconnected are synthesized from the relist.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

log = logging.getLogger(__name__)

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer: ``status`` (HTTP code), ``reason`` (metav1.Status reason), message."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        if isinstance(body, dict):
            self.reason = body.get("reason", "")
            self.message = body.get("message", "")
        else:
            self.reason, self.message = "", str(body)[:500]
        super().__init__(f"{status} {self.reason}: {self.message}")


@dataclass(frozen=True)
class KubeConfig:
    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def load_kubeconfig(path: Path) -> KubeConfig:
    """The current context of a kubeconfig file (inline ``*-data`` fields are written to a
    private temp dir: ssl wants files)."""
    doc = yaml.safe_load(path.read_text())
    ctx_name = doc.get("current-context") or doc["contexts"][0]["name"]
    ctx = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in doc.get("users") or [] if u["name"] == ctx.get("user"))
    tmp: Path | None = None

    def file_of(section: dict[str, Any], key: str) -> str | None:
        nonlocal tmp
        if section.get(key):
            p = Path(section[key])
            return str(p if p.is_absolute() else path.parent / p)
        data = section.get(f"{key}-data")
        if not data:
            return None
        tmp = tmp or Path(tempfile.mkdtemp(prefix="testkubelet-kc-"))
        out = tmp / key
        out.write_bytes(base64.b64decode(data))
        out.chmod(0o600)
        return str(out)

    return KubeConfig(
        server=cluster["server"].rstrip("/"),
        ca_file=file_of(cluster, "certificate-authority"),
        cert_file=file_of(user, "client-certificate"),
        key_file=file_of(user, "client-key"),
        token=user.get("token"),
    )


class Api:
    """``async with Api(cfg) as api: await api.get("/api/v1/nodes")``."""

    def __init__(self, config: KubeConfig, *, user_agent: str = "testkubelet") -> None:
        self.config = config
        self._headers = {"User-Agent": user_agent, "Accept": JSON}
        if config.token:
            self._headers["Authorization"] = f"Bearer {config.token}"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.config.ssl_context(), limit=32),
                headers=self._headers,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = JSON,
        limit: float = 30,
    ) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else None
        async with self.session.request(
            method,
            self.config.server + path,
            params=_params(params),
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=limit),
        ) as resp:
            text = await resp.text()
            payload: Any
            try:
                payload = json.loads(text) if text else {}
            except ValueError:
                payload = text
            if resp.status >= 300:
                raise ApiError(resp.status, payload)
            return payload

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: Any, **params: Any) -> Any:
        return await self.request("POST", path, params=params, body=body)

    async def put(self, path: str, body: Any) -> Any:
        return await self.request("PUT", path, body=body)

    async def patch(self, path: str, body: Any, *, content_type: str = STRATEGIC_PATCH) -> Any:
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def delete(self, path: str, body: Any = None) -> Any:
        return await self.request("DELETE", path, body=body)

    async def watch(
        self, path: str, params: dict[str, Any], *, server_timeout: int = 300
    ) -> AsyncIterator[dict[str, Any]]:
        """Raw watch events (``{"type": ..., "object": ...}``) until the server ends the stream."""
        q = {
            **params,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": server_timeout,
        }
        async with self.session.get(
            self.config.server + path,
            params=_params(q),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=30, sock_read=server_timeout + 30
            ),
        ) as resp:
            if resp.status >= 300:
                text = await resp.text()
                try:
                    raise ApiError(resp.status, json.loads(text))
                except ValueError:
                    raise ApiError(resp.status, text) from None
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)


def _params(params: dict[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    return {
        k: str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in params.items()
        if v is not None
    }


def object_key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


class _Gone(Exception):
    pass


Handler = Callable[[str, dict[str, Any]], None]


def _uid(obj: dict[str, Any]) -> str | None:
    uid = (obj.get("metadata") or {}).get("uid")
    return str(uid) if uid is not None else None


class Informer:
    """Keeps ``objects`` (by ``namespace/name``) in sync with a collection and calls
    ``handler(type, obj)`` with ``ADDED``/``MODIFIED``/``DELETED``; ``synced`` is set after the
    first list."""

    def __init__(
        self,
        api: Api,
        path: str,
        handler: Handler | None = None,
        *,
        params: dict[str, Any] | None = None,
        name: str = "",
    ) -> None:
        self.api = api
        self.path = path
        self.params = params or {}
        self.handlers: list[Handler] = [handler] if handler else []
        self.objects: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.name = name or path

    def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        for h in self.handlers:
            try:
                h(kind, obj)
            except Exception:
                log.exception(
                    "informer %s: handler failed on %s %s", self.name, kind, object_key(obj)
                )

    def _replace(self, items: list[dict[str, Any]]) -> None:
        """A (re)list: what vanished while no watch ran is DELETED, including an object
        replaced by another of the same name (another uid), which is then ADDED."""
        fresh = {object_key(o): o for o in items}
        for key in list(self.objects):
            if key not in fresh or _uid(self.objects[key]) != _uid(fresh[key]):
                self._emit("DELETED", self.objects.pop(key))
        for key, obj in fresh.items():
            old = self.objects.get(key)
            self.objects[key] = obj
            if old is None:
                self._emit("ADDED", obj)
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._emit("MODIFIED", obj)

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                lst = await self.api.get(self.path, **self.params)
                rv = lst["metadata"]["resourceVersion"]
                self._replace(lst.get("items") or [])
                self.synced.set()
                delay = 0.5
                while True:
                    rv = await self._watch(rv)
            except _Gone:
                log.info("informer %s: resourceVersion too old, relisting", self.name)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, ApiError, TimeoutError, OSError, ValueError) as e:
                log.warning("informer %s: %s; relisting in %.1fs", self.name, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _watch(self, rv: str) -> str:
        async for ev in self.api.watch(self.path, {**self.params, "resourceVersion": rv}):
            kind, obj = ev["type"], ev["object"]
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Gone
                raise ApiError(obj.get("code", 500), obj)
            rv = obj["metadata"]["resourceVersion"]
            if kind == "BOOKMARK":
                continue
            key = object_key(obj)
            if kind == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = obj
            self._emit(kind, obj)
        return rv
