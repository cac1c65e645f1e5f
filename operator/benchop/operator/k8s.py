"""Every Kubernetes API call the operator makes (besides kopf's own) and its error mapping.

The one place where HTTP answers become outcomes:

========================== =============================================================
answer                     outcome
========================== =============================================================
404 on get / patch         ``None`` (the parent is gone: the caller returns quietly)
409 on create              the object exists: it is read back and returned (idempotent) if
                           its controller is the body's; else ``kopf.TemporaryError``
                           (an older owner's child that GC has not removed yet)
409 on a status patch      :class:`Conflict` (the StatusWriter re-reads and retries)
5xx, 429, timeouts,        ``kopf.TemporaryError(delay=...)``: kopf retries the handler
connection errors          after a capped exponential backoff with full jitter, never sooner
                           than the answer's ``Retry-After`` (:mod:`benchop.core.backoff`)
other 4xx                  :class:`ApiError` (a bug, missing RBAC, or an object the API
                           server refuses); the caller decides: a child create error fails
                           the run (``handlers.runs``), elsewhere kopf retries the handler
========================== =============================================================

A body that is not JSON (an HTML 502 page from a proxy) is mapped by its status like any
other, with its text as the message. The backoff's attempt number is the client's streak of
such errors (reset by any other answer): the client is shared by every handler, so while the
API server is unwell every retry waits longer, each by its own random share.

The client is aiohttp, not the ``kubernetes`` package in threads: the operator is one asyncio
process that may hold a thousand runs, and a thread per concurrent call (plus the sync client's
own pool) costs more than a shared async connection pool; the API surface needed here (get,
list, create, merge-patch of /status) is five verbs of plain JSON. It talks to the same server
with the same identity as kopf: tests and callers pass the ``kopf.ConnectionInfo`` that kopf's
login handler returns (``memo.connection``); otherwise :func:`login` logs in exactly like kopf's
default login does with the ``kubernetes`` package installed (a dependency): in-cluster first
(``KUBERNETES_SERVICE_HOST``/``_PORT`` and the service-account token, as client-go), then the
kubeconfig (``KUBECONFIG`` or ``~/.kube/config``), via kopf's public helpers.

    client = await KubeApi.connect(kopf.ConnectionInfo(server="http://127.0.0.1:8001"))
    pods = await client.list(POD, "default", labels="benchop.io/run=r1")
    await client.close()
"""

from __future__ import annotations

import asyncio
import dataclasses
import json as json_lib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

import aiohttp
import kopf

from benchop.core import backoff
from benchop.core.names import BENCHMARKRUN_PLURAL, EXPERIMENT_PLURAL, GROUP, VERSION

log = logging.getLogger(__name__)

Body = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Resource:
    """An API resource: ``group`` ("" for core), ``version``, ``plural``."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        """``/apis/batch/v1/namespaces/ns/jobs/j`` (``/api/v1/...`` for the core group)."""
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [root]
        if namespace is not None:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name is not None:
            parts.append(quote(name, safe=""))
        if sub is not None:
            parts.append(sub)
        return "/".join(parts)


BENCHMARKRUN = Resource(GROUP, VERSION, BENCHMARKRUN_PLURAL)
EXPERIMENT = Resource(GROUP, VERSION, EXPERIMENT_PLURAL)
POD = Resource("", "v1", "pods")
CONFIGMAP = Resource("", "v1", "configmaps")
JOB = Resource("batch", "v1", "jobs")


class ApiError(Exception):
    """An API answer that is neither success nor mapped (see the module table)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Conflict(ApiError):
    """409 on an update: the object changed since it was read."""


class ObjectMeta(NamedTuple):
    """Who an object is: namespace, name, uid and generation (1 when the server set none)."""

    namespace: str
    name: str
    uid: str
    generation: int


def object_meta(body: Mapping[str, Any]) -> ObjectMeta:
    """The :class:`ObjectMeta` of an object's body.

    >>> object_meta({"metadata": {"namespace": "ns", "name": "r", "uid": "u"}})
    ObjectMeta(namespace='ns', name='r', uid='u', generation=1)
    """
    m = body["metadata"]
    return ObjectMeta(
        m["namespace"], m["name"], str(m.get("uid") or ""), int(m.get("generation") or 1)
    )


def controller_uid(body: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller ownerReference, None without one."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _message(body: Any) -> str:
    return str(body.get("message") if isinstance(body, Mapping) else body)[:500]


def login() -> kopf.ConnectionInfo:
    """Credentials as kopf's default login finds them (so both clients reach one server the
    same way): with the ``kubernetes`` package, its in-cluster config (which honours
    ``KUBERNETES_SERVICE_HOST``/``_PORT``), else its kubeconfig; without it (never in the
    image), the service account at ``https://kubernetes.default.svc``, else the kubeconfig."""
    settings = kopf.OperatorSettings()
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
            settings=settings
        )
    else:
        info = kopf.login_via_client(logger=log, settings=settings)
    if info is None:
        raise kopf.LoginError("no in-cluster service account and no kubeconfig found")
    if info.token is not None and info.token != info.token.strip():  # a file's last newline
        info = dataclasses.replace(info, token=info.token.strip())
    return info


class KubeApi:
    """A small async Kubernetes client; see the module doc for the error mapping."""

    def __init__(self, info: kopf.ConnectionInfo, session: aiohttp.ClientSession) -> None:
        self.info = info
        self.server = info.server.rstrip("/")
        self._session = session
        self.requests = 0
        self.errors_in_a_row = 0
        """Retryable answers since the last other one: the backoff's attempt number."""

    @classmethod
    async def connect(
        cls, info: kopf.ConnectionInfo | None = None, *, timeout_s: float = 30.0
    ) -> KubeApi:
        """A client for ``info`` (default: :func:`login`)."""
        info = info if info is not None else await asyncio.to_thread(login)
        headers = {"User-Agent": "benchop-operator", **info.as_http_headers()}
        ssl = info.as_ssl_context() if info.server.startswith("https") else False
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl, limit=64),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )
        return cls(info, session)

    async def close(self) -> None:
        await self._session.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> tuple[int, Any]:
        headers = {"Content-Type": content_type} if content_type else None
        self.requests += 1
        try:
            async with self._session.request(
                method, self.server + path, json=json, params=params, headers=headers
            ) as resp:
                text = await resp.text()
                status = resp.status
                retry_after = backoff.retry_after_s(resp.headers.get("Retry-After"))
            try:
                body = json_lib.loads(text) if text else None
            except ValueError:
                body = text
        except (aiohttp.ClientError, TimeoutError) as e:
            raise kopf.TemporaryError(
                f"{method} {path}: {type(e).__name__}: {e}", delay=self._retry_delay(None)
            ) from e
        if status >= 500 or status == 429:
            raise kopf.TemporaryError(
                f"{method} {path}: HTTP {status}: {_message(body)}",
                delay=self._retry_delay(retry_after),
            )
        self.errors_in_a_row = 0
        return status, body

    def _retry_delay(self, retry_after: float | None) -> float:
        attempt = self.errors_in_a_row
        self.errors_in_a_row += 1
        return backoff.delay(attempt, retry_after=retry_after)

    def _check(self, method: str, path: str, status: int, body: Any) -> Body:
        if status == 409:
            raise Conflict(status, f"{method} {path}: {_message(body)}")
        if status >= 400:
            raise ApiError(status, f"{method} {path}: {_message(body)}")
        return body  # type: ignore[no-any-return]

    async def get(self, res: Resource, namespace: str | None, name: str) -> Body | None:
        """The object, or None when it does not exist."""
        path = res.path(namespace, name)
        status, body = await self._call("GET", path)
        if status == 404:
            return None
        return self._check("GET", path, status, body)

    async def pages(
        self, res: Resource, namespace: str | None, *, labels: str | None = None, limit: int = 500
    ) -> AsyncIterator[list[Body]]:
        """Items of ``res`` in pages of at most ``limit`` (``continue`` tokens): a LIST of
        10,000 Jobs is 50 MB of JSON, a page of 500 a twentieth of it, parsed and dropped in
        turn. An expired token (410, the list outlived etcd's revision) is an ``ApiError``."""
        path = res.path(namespace)
        params = {"limit": str(limit), **_selectors(labels)}
        while True:
            status, body = await self._call("GET", path, params=params)
            page = self._check("GET", path, status, body)
            yield list(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            params = {**params, "continue": token}

    async def list(
        self,
        res: Resource,
        namespace: str | None,
        *,
        labels: str | None = None,
        fields: str | None = None,
    ) -> list[Body]:
        """Items of ``res`` in ``namespace`` (None: every namespace) matching ``labels`` and
        ``fields`` (a label and a field selector)."""
        path = res.path(namespace)
        params = _selectors(labels, fields)
        status, body = await self._call("GET", path, params=params)
        return list(self._check("GET", path, status, body).get("items") or [])

    async def create(self, res: Resource, namespace: str, body: Body) -> Body:
        """Create; if it already exists (409), return the existing object (idempotent).

        An existing object controlled by another owner than ``body``'s controller
        ownerReference (a deleted and re-created parent whose old child GC has not removed
        yet) is not adopted: ``kopf.TemporaryError(delay=2)`` until it is gone.
        """
        path = res.path(namespace)
        status, answer = await self._call("POST", path, json=body)
        if status == 409:
            name = body["metadata"]["name"]
            existing = await self.get(res, namespace, name)
            if existing is None:
                raise kopf.TemporaryError(f"POST {path}: 409 but then gone", delay=1.0)
            want = controller_uid(body)
            have = controller_uid(existing)
            if want is not None and have != want:
                raise kopf.TemporaryError(
                    f"POST {path}: {name} exists, owned by {have} not {want} "
                    "(waiting for garbage collection)",
                    delay=2.0,
                )
            return existing
        return self._check("POST", path, status, answer)

    async def create_only(self, res: Resource, namespace: str, body: Body) -> Body:
        """Create; :class:`Conflict` when it already exists (no read of the existing one)."""
        path = res.path(namespace)
        status, answer = await self._call("POST", path, json=body)
        return self._check("POST", path, status, answer)

    async def patch(
        self,
        res: Resource,
        namespace: str,
        name: str,
        patch: Body,
        resource_version: str | None,
    ) -> Body | None:
        """Merge-patch the object (not its status), conditional on ``resource_version``
        (None: unconditional).

        Returns the new object; None when it is gone; :class:`Conflict` when it changed.
        """
        payload = dict(patch)
        if resource_version is not None:
            payload["metadata"] = {**patch.get("metadata", {}), "resourceVersion": resource_version}
        return await self._merge_patch(res.path(namespace, name), payload)

    async def patch_status(
        self, res: Resource, namespace: str, name: str, status_patch: Body, resource_version: str
    ) -> Body | None:
        """Merge-patch ``.status`` via /status, conditional on ``resource_version``.

        Returns the new object; None when it is gone; :class:`Conflict` when it changed.
        """
        payload = {"metadata": {"resourceVersion": resource_version}, "status": status_patch}
        return await self._merge_patch(res.path(namespace, name, "status"), payload)

    async def _merge_patch(self, path: str, payload: Body) -> Body | None:
        status, body = await self._call(
            "PATCH", path, json=payload, content_type="application/merge-patch+json"
        )
        if status == 404:
            return None
        return self._check("PATCH", path, status, body)


def _selectors(labels: str | None, fields: str | None = None) -> dict[str, str]:
    """A LIST's query parameters for a label and a field selector (each only when given)."""
    return {
        **({"labelSelector": labels} if labels else {}),
        **({"fieldSelector": fields} if fields else {}),
    }
