"""Run the real kopf operator in-process against the emulator over real loopback HTTP.

    async with start_emulator() as kube:            # Emulator + URL + KubeClient
        task = run_operator(kube.url, registry=registry)
        await kube.client.create(BENCHMARKRUNS, {"metadata": {"name": "r1"}, "spec": {}})
        run = await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "r1"))
        await stop_operator(task)

Conventions: resources are addressed as ``group/version/plural`` strings (``v1/pods`` for the
core group); the namespace defaults to ``default``; no sleeps: ``wait_for`` polls a predicate
against a deadline.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import contextvars
import dataclasses
import inspect
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from typing import Any, TypeVar, cast

import aiohttp
import aiohttp.web
import kmock
import kopf

from .emulator import Body, Emulator

BENCHMARKRUNS = "benchop.io/v1alpha1/benchmarkruns"
EXPERIMENTS = "benchop.io/v1alpha1/experiments"
PODS = "v1/pods"
CONFIGMAPS = "v1/configmaps"
SECRETS = "v1/secrets"
EVENTS = "v1/events"
NAMESPACES = "v1/namespaces"
SERVICES = "v1/services"
JOBS = "batch/v1/jobs"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"

FINALIZER = "benchop.io/finalizer"
ANNOTATIONS_PREFIX = "benchop.io"
DEFAULT_NAMESPACE = "default"

T = TypeVar("T")
OperatorFactory = Callable[..., "asyncio.Task[None]"]  # the operator_task fixture


def register_resources(emulator: Emulator) -> None:
    """Declare our CRDs and the built-in resources the operator touches."""
    emulator.register(
        BENCHMARKRUNS,
        kind="BenchmarkRun",
        status=True,
        shortnames=("br",),
        categories=("benchop",),
    )
    emulator.register(
        EXPERIMENTS,
        kind="Experiment",
        status=True,
        shortnames=("bexp",),
        categories=("benchop",),
    )
    emulator.register(PODS, kind="Pod", status=True, shortnames=("po",))
    emulator.register(CONFIGMAPS, kind="ConfigMap", shortnames=("cm",))
    emulator.register(SECRETS, kind="Secret")
    emulator.register(EVENTS, kind="Event", shortnames=("ev",))
    emulator.register(NAMESPACES, kind="Namespace", namespaced=False, status=True)
    emulator.register(SERVICES, kind="Service", status=True, shortnames=("svc",))
    emulator.register(JOBS, kind="Job", status=True)
    emulator.register(CRDS, kind="CustomResourceDefinition", namespaced=False, status=True)


class ApiError(Exception):
    """A non-2xx answer from the API; ``status`` is the HTTP code, ``body`` the Status object."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


def resource_url(
    resource: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """``resource_url("v1/pods", "ns", "p")`` -> ``/api/v1/namespaces/ns/pods/p``."""
    ref = kmock.resource(resource)
    parts = ["api", ref.version] if not ref.group else ["apis", ref.group, ref.version]
    if namespace is not None:
        parts += ["namespaces", namespace]
    parts.append(ref.plural)
    parts += [p for p in (name, subresource) if p is not None]
    return "/" + "/".join(str(p) for p in parts)


class KubeClient:
    """A thin, watch-free aiohttp client for tests: one method per API verb.

    Namespaced calls default to ``default``; pass ``namespace=None`` for cluster-scoped
    resources (namespaces, CRDs). Non-2xx answers raise ``ApiError``.
    """

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self._session = session

    async def _request(self, method: str, path: str, **kwargs: Any) -> Body:
        async with self._session.request(method, self.url + path, **kwargs) as response:
            body = await response.json(content_type=None)
            if response.status >= 400:
                raise ApiError(response.status, body)
            return cast(Body, body)

    async def create(self, resource: str, body: Body, namespace: str | None = "default") -> Body:
        return await self._request("POST", resource_url(resource, namespace), json=body)

    async def get(self, resource: str, name: str, namespace: str | None = "default") -> Body:
        return await self._request("GET", resource_url(resource, namespace, name))

    async def get_or_none(
        self, resource: str, name: str, namespace: str | None = "default"
    ) -> Body | None:
        try:
            return await self.get(resource, name, namespace)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(
        self,
        resource: str,
        namespace: str | None = "default",
        *,
        labels: str | None = None,
        fields: str | None = None,
    ) -> builtins.list[Body]:
        """List items; ``namespace=None`` lists across namespaces (or cluster-scoped)."""
        params = {k: v for k, v in {"labelSelector": labels, "fieldSelector": fields}.items() if v}
        body = await self._request("GET", resource_url(resource, namespace), params=params)
        return list(body["items"])

    async def patch(
        self,
        resource: str,
        name: str,
        patch: Body | builtins.list[Body],
        namespace: str | None = "default",
        *,
        subresource: str | None = None,
    ) -> Body:
        """A merge patch for a dict, a JSON patch for a list of operations."""
        ctype = "application/json-patch+json" if isinstance(patch, list) else None
        ctype = ctype or "application/merge-patch+json"
        url = resource_url(resource, namespace, name, subresource)
        return await self._request("PATCH", url, json=patch, headers={"Content-Type": ctype})

    async def patch_status(
        self, resource: str, name: str, status: Body, namespace: str | None = "default"
    ) -> Body:
        """Merge-patch ``.status`` through the /status subresource (as the kubelet would)."""
        patch = {"status": status}
        return await self.patch(resource, name, patch, namespace, subresource="status")

    async def delete(self, resource: str, name: str, namespace: str | None = "default") -> Body:
        return await self._request("DELETE", resource_url(resource, namespace, name))


@dataclasses.dataclass
class Kube:
    """What the ``kube`` fixture yields: the emulator, its base URL and a client."""

    emulator: Emulator
    url: str
    client: KubeClient


@contextlib.asynccontextmanager
async def serve(emulator: Emulator) -> AsyncIterator[str]:
    """Serve the emulator over HTTP on 127.0.0.1 with an OS-assigned port; yield the base URL.

    Plain aiohttp, not ``kmock.Server``: that one also rewires aiohttp's DNS resolver globally.
    """
    async with emulator:  # kmock accumulates request errors (rendered as Status) only inside
        runner = aiohttp.web.ServerRunner(aiohttp.web.Server(emulator), shutdown_timeout=1)
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            yield f"http://{host}:{port}"
        finally:
            emulator.close_watches()
            await runner.cleanup()


@contextlib.asynccontextmanager
async def start_emulator() -> AsyncIterator[Kube]:
    """A fresh emulator with our resources registered, served and with a client attached."""
    emulator = Emulator()
    register_resources(emulator)
    async with serve(emulator) as url:
        # force_close: a stopped operator cancels server-side connection tasks (see
        # run_operator), so never reuse a pooled connection that may have been cut.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            client = KubeClient(url, session)
            await client.create(NAMESPACES, {"metadata": {"name": DEFAULT_NAMESPACE}}, None)
            yield Kube(emulator, url, client)


async def wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,  # noqa: ASYNC109 -- the deadline is the point of this helper
    *,
    interval: float = 0.02,
    message: str = "",
) -> T:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that.

    Raises ``TimeoutError`` with the last value seen after ``timeout`` seconds::

        run = await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "r1"))
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise TimeoutError(f"not true within {timeout}s: {message or predicate} -> {value!r}")
        await asyncio.sleep(interval)


# -- the operator -------------------------------------------------------------------------

_SERVER_URL: contextvars.ContextVar[str] = contextvars.ContextVar("benchop_test_server_url")
_LOGIN_INSTALLED: weakref.WeakSet[kopf.OperatorRegistry] = weakref.WeakSet()


async def _login_to_emulator(**_: Any) -> kopf.ConnectionInfo:
    """Point kopf at the emulator of the operator task that is logging in."""
    return kopf.ConnectionInfo(server=_SERVER_URL.get(), default_namespace=DEFAULT_NAMESPACE)


class _NotOurs(Collection[asyncio.Task[Any]]):
    """For kopf's ``run_tasks(ignored=...)``: every task that kopf did not create is ignored.

    kopf's shutdown cancels *every* task created after the operator started ("hung tasks"),
    which would include the emulator's connection handlers and the test's own tasks (a local
    worker, a mock model server). kopf's own tasks run coroutines defined in the kopf package;
    only those are left for kopf to reap.
    """

    def __contains__(self, task: object) -> bool:
        if not isinstance(task, asyncio.Task):
            return True
        code = getattr(task.get_coro(), "cr_code", None)
        return code is None or "/kopf/" not in code.co_filename

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(())

    def __len__(self) -> int:
        return 0


def operator_settings() -> kopf.OperatorSettings:
    """Short timeouts so tests are quick; no peering.

    Deliberately *not* set here: progress/diffbase storage and the finalizer. The operator
    sets those in its own ``@kopf.on.startup`` handler, and a test must not mask a missing one.
    """
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True
    settings.watching.server_timeout = 5  # streams end often: resumption is exercised
    settings.watching.client_timeout = 10
    settings.watching.connect_timeout = 2
    settings.networking.request_timeout = 10
    settings.networking.connect_timeout = 2
    settings.batching.batch_window = 0.01
    return settings


def run_operator(
    url: str,
    *,
    registry: kopf.OperatorRegistry | None = None,
    settings: kopf.OperatorSettings | None = None,
    namespaces: Collection[str] = (DEFAULT_NAMESPACE,),
    clusterwide: bool = False,
    memo: object | None = None,
) -> asyncio.Task[None]:
    """Start a kopf operator as a task of the running loop, logged in to ``url``.

    ``registry`` defaults to kopf's default registry (where ``@kopf.on...`` decorators put
    handlers); a login handler pointing at the emulator is added to it once. With that registry
    (the operator's handlers) kopf keeps its per-object memory as ``benchop operator`` has it
    keep it (:class:`benchop.operator.main.Memories`). Stop it with ``await
    stop_operator(task)`` (``task.cancel()`` + await).
    """
    memories = None
    if registry is None:
        from benchop.operator.main import Memories

        registry, memories = kopf.get_default_registry(), Memories()
    if registry not in _LOGIN_INSTALLED:
        kopf.on.login(registry=registry, id="benchop-test-emulator")(_login_to_emulator)
        _LOGIN_INSTALLED.add(registry)
    settings = settings if settings is not None else operator_settings()

    async def operator() -> None:
        _SERVER_URL.set(url)
        root_tasks = await kopf.spawn_tasks(
            registry=registry,
            settings=settings,
            standalone=True,
            clusterwide=clusterwide,
            namespaces=() if clusterwide else namespaces,
            memo=memo,
            memories=memories,
        )
        await kopf.run_tasks(root_tasks, ignored=_NotOurs())

    return asyncio.create_task(operator(), name=f"kopf operator for {url}")


async def stop_operator(task: asyncio.Task[None]) -> None:
    """Cancel the operator task and wait until kopf has shut down (cleanup handlers ran)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def kopf_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of the running loop whose coroutine comes from kopf (leak check after a stop)."""
    ours = _NotOurs()
    return [t for t in asyncio.all_tasks() if not t.done() and t not in ours]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for servers that need a fixed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
