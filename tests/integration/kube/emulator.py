"""The fidelity layer: kmock's Kubernetes emulator with the API-server semantics kopf relies on.

Stock ``kmock.KubernetesEmulator`` stores plain dicts: no uid/resourceVersion/generation, no
``/status`` separation, no selectors, no ``generateName``, no JSON-patch ``test`` conflicts.
``Emulator`` keeps kmock's storage (``emulator.objects[...]`` with full history), its discovery
endpoints and its DSL (``emulator['get /path'] << 404``), and replaces the object-serving
fallbacks (list, watch, fetch, create, patch, replace, delete) with ones that behave like a
kube-apiserver for the parts listed in docs/testing.md. It also records every request
(``emulator.calls``) and can fail the next matching request (``emulator.fail_next``).

Every write goes through ``_commit`` under one lock: it bumps the global resourceVersion,
stores a new immutable version of the object and fans the watch event out to the watchers,
so watch streams and lists always agree on ordering.

    emulator = Emulator()
    emulator.register("benchop.io/v1alpha1/benchmarkruns", kind="BenchmarkRun", status=True)
    async with emulator:  # then serve it over HTTP, see harness.serve()
        ...
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import copy
import dataclasses
import datetime
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import apps, rendering
from typing_extensions import override

from .selectors import Selector, SelectorError, field_values, parse_field_selector
from .selectors import parse_label_selector as parse_labels

Body = dict[str, Any]
Key = tuple[kmock.resource, str | None, str]

# Metadata the server owns: a client cannot change these by patch or replace.
_SERVER_FIELDS = (
    "uid",
    "name",
    "namespace",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName alphabet
_NAMESPACES = "/api/v1/namespaces"
_NAMESPACES_ALIAS = "/api/v1/namespaces/-/namespaces"
_MERGE_TYPES = {
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",  # treated as a merge patch: lists are replaced
}


@dataclasses.dataclass
class Call:
    """One request as the emulator saw it; ``status`` is filled in when the response is ready."""

    method: str
    path: str
    params: dict[str, str]
    body: Any
    status: int | None = None


@dataclasses.dataclass
class Fault:
    """An injected failure: the next ``times`` matching requests get ``status`` unapplied."""

    method: str
    path_suffix: str
    status: int
    reason: str
    message: str
    times: int = 1

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and path.endswith(self.path_suffix)


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    rv: int
    resource: kmock.resource
    type: str  # ADDED | MODIFIED | DELETED
    obj: Body
    old: Body | None  # the previous version, to turn label changes into ADDED/DELETED


@dataclasses.dataclass(frozen=True)
class _Query:
    """What a list/watch request selects."""

    resource: kmock.resource
    namespace: str | None
    name: str | None
    labels: Selector
    fields: Selector

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        return (
            (self.namespace is None or meta.get("namespace") == self.namespace)
            and (self.name is None or meta.get("name") == self.name)
            and self.labels.matches(meta.get("labels") or {})
            and self.fields.matches(field_values(obj))
        )


_CALL: contextvars.ContextVar[Call] = contextvars.ContextVar("emulator_call")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``None`` deletes, the rest replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details)


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with uid/resourceVersion/generation, /status, selectors, conflicts."""

    history_limit: int = 100_000  # watch events kept for resourceVersion resumption (then 410)

    calls: list[Call] = attrs.field(factory=list, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _faults: list[Fault] = attrs.field(factory=list, init=False)
    _history: collections.deque[WatchEvent] = attrs.field(init=False)
    _watchers: set[asyncio.Queue[WatchEvent | None]] = attrs.field(factory=set, init=False)

    @_history.default
    def _history_default(self) -> collections.deque[WatchEvent]:
        return collections.deque(maxlen=self.history_limit)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # binds our overridden _serve_* as fallbacks
        self.fallback[kmock.method.PUT] << self._serve_replace

    # -- public test API -------------------------------------------------------------------

    def register(
        self,
        resource: str,
        *,
        kind: str,
        namespaced: bool = True,
        status: bool = False,
        shortnames: tuple[str, ...] = (),
        categories: tuple[str, ...] = (),
    ) -> None:
        """Declare a resource for discovery, e.g. ``register("v1/pods", kind="Pod", status=True)``.

        ``status=True`` means it has the status subresource (writes to /status are separate).
        """
        self.resources[resource] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=namespaced,
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
            shortnames=set(shortnames),
            categories=set(categories),
            subresources={"status"} if status else set(),
        )

    def fail_next(
        self,
        method: str,
        path_suffix: str,
        status: int = 409,
        *,
        times: int = 1,
        reason: str | None = None,
        message: str = "injected by the test",
    ) -> Fault:
        """Answer the next ``times`` requests whose path ends with ``path_suffix`` with ``status``.

        The failed request changes nothing, like a real conflict/outage::

            emulator.fail_next("PATCH", "/benchmarkruns/r1/status", 409)
        """
        reasons = {404: "NotFound", 409: "Conflict", 422: "Invalid", 429: "TooManyRequests"}
        fault = Fault(
            method.upper(),
            path_suffix,
            status,
            reason or reasons.get(status, "InternalError"),
            message,
            times,
        )
        self._faults.append(fault)
        return fault

    def count(self, method: str, path_suffix: str = "", *, status: int | None = None) -> int:
        """How many ``method`` requests had a path ending with ``path_suffix`` (and ``status``)."""
        return sum(
            1
            for c in self.calls
            if c.method == method.upper()
            and c.path.endswith(path_suffix)
            and (status is None or c.status == status)
        )

    def read(self, resource: str, name: str, namespace: str | None = "default") -> Body | None:
        """The current stored object (a deep copy), or None if absent or deleted.

        Same arguments as ``KubeClient.get``; ``namespace=None`` for cluster-scoped objects.
        (Not ``get``: kmock's handler already has ``get(url)``, an HTTP client shortcut.)
        """
        key = (kmock.resource(resource), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    @property
    def resource_version(self) -> int:
        """The latest resourceVersion handed out (the global write counter)."""
        return self._rv

    async def collect_garbage(self) -> list[Key]:
        """Delete objects whose every ownerReference points to a uid that no longer exists.

        The emulator has no garbage collector: call this where the real cluster's GC would
        have run. Cascades (owner → child → grandchild). Finalizers are honoured.
        """
        deleted: list[Key] = []
        while True:
            async with self._lock:
                live = {body["metadata"].get("uid") for body in self._live()}
                orphans = [
                    key
                    for key, obj in self.objects.items()
                    if not obj.deleted
                    and not obj.raw["metadata"].get("deletionTimestamp")
                    and (refs := obj.raw["metadata"].get("ownerReferences"))
                    and all(ref.get("uid") not in live for ref in refs)
                ]
                for key in orphans:
                    self._delete(key, self.objects[key].raw)
            if not orphans:
                return deleted
            deleted.extend(orphans)

    def close_watches(self) -> None:
        """End every open watch stream (before shutting the HTTP server down)."""
        for queue in self._watchers:
            queue.put_nowait(None)

    # -- request entry ---------------------------------------------------------------------

    @override
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's URL parser reads ``/api/v1/namespaces[/name]`` as a namespace prefix with no
        # resource (and fails on the bare list). Serve the Namespace resource under an alias
        # that it parses; the namespace segment is ignored for cluster-scoped resources.
        path = raw_request.rel_url.path
        rest = path.removeprefix(_NAMESPACES).strip("/").split("/")
        is_namespaces = path == _NAMESPACES or path.startswith(_NAMESPACES + "/")
        if is_namespaces and (len(rest) <= 1 or rest[1] in {"status", "finalize"}):
            alias = _NAMESPACES_ALIAS + path.removeprefix(_NAMESPACES)
            url = raw_request.rel_url.with_path(alias).with_query(raw_request.rel_url.query)
            raw_request = raw_request.clone(rel_url=url)
        return await super().__call__(raw_request)

    @override
    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        path = request.url.path.replace(_NAMESPACES_ALIAS, _NAMESPACES, 1)
        call = Call(request.method.value, path, dict(request.params), request.data)
        self.calls.append(call)
        _CALL.set(call)
        try:
            fault = next((f for f in self._faults if f.matches(call.method, call.path)), None)
            if fault is not None:
                fault.times -= 1
                raise _error(fault.status, fault.reason, fault.message)
            # Skip kmock's own state-changing _handle(): our fallbacks do the writes.
            response = await apps.RawHandler._handle(self, request)
        except kmock.KubernetesError as e:
            call.status = e.status
            raise
        except Exception:
            call.status = 500
            raise
        call.status = response.status
        return response

    # -- fallbacks (the API server) --------------------------------------------------------

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        key = self._key(request, subresources={None, "status"})
        async with self._lock:
            return self._current(key)

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        query = self._query(request)
        async with self._lock:
            items = [obj for obj in self._live(query.resource) if query.matches(obj)]
            return {
                "apiVersion": self._api_version(query.resource),
                "kind": f"{self._info(query.resource).kind}List",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        query = self._query(request)
        since = request.params.get("resourceVersion") or "0"
        initial = request.params.get("sendInitialEvents") == "true"
        raw_timeout = request.params.get("timeoutSeconds") or "1800"
        if not raw_timeout.isdigit():  # the apiserver parses an integer: "300.0" is a 400
            raise _error(
                400, "BadRequest", f'strconv.ParseInt: parsing "{raw_timeout}": invalid syntax'
            )
        timeout = float(raw_timeout)
        queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        backlog: list[dict[str, Any]] = []
        gone = False
        async with self._lock:  # snapshot and subscribe atomically: no event lost or doubled
            if since == "0" or initial:
                backlog = [
                    {"type": "ADDED", "object": obj}
                    for obj in self._live(query.resource)
                    if query.matches(obj)
                ]
            elif not since.isdigit():
                raise _error(400, "BadRequest", f"invalid resourceVersion: {since!r}")
            elif self._history and int(since) < self._history[0].rv - 1:
                gone = True  # the events since then are no longer kept: the client must relist
            else:
                events = [e for e in self._history if e.rv > int(since)]
                backlog = [e2 for e in events if (e2 := self._filtered(query, e)) is not None]
            self._watchers.add(queue)
        _CALL.get().status = 200  # a watch answers 200 at once; errors come as ERROR events
        try:
            yield b""  # send the headers now, even if nothing happens for a while
            if gone:
                yield self._gone(since)
                return
            for item in backlog:
                yield item
            if initial:
                yield self._initial_events_end()
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    return
                if event is None:
                    return
                if (visible := self._filtered(query, event)) is not None:
                    yield visible
        finally:
            self._watchers.discard(queue)

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        if request.subresource is not None:
            raise _error(404, "NotFound", f"subresource {request.subresource!r} is not emulated")
        resource = self._known(request)
        body = request.data
        if not isinstance(body, dict):
            raise _error(400, "BadRequest", "the body must be a JSON object")
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        namespace = self._namespace_for(resource, request.namespace or meta.get("namespace"))
        async with self._lock:
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise _error(422, "Invalid", "metadata.name or generateName is required")
                meta["name"] = self._generate_name(resource, namespace, meta["generateName"])
            key: Key = (resource, namespace, meta["name"])
            if key in self.objects and not self.objects[key].deleted:
                raise _error(409, "AlreadyExists", f"{meta['name']!r} already exists")
            for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
                meta.pop(field, None)
            meta.update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                generation=1,
                creationTimestamp=now_rfc3339(),
            )
            if namespace is None:
                del meta["namespace"]
            body.setdefault("apiVersion", self._api_version(resource))
            body.setdefault("kind", self._info(resource).kind)
            if self._has_status(resource):
                body.pop("status", None)  # the status subresource ignores status on create
                if resource == kmock.resource("v1/pods"):
                    body["status"] = {"phase": "Pending"}
                elif resource == kmock.resource("v1/namespaces"):
                    body["status"] = {"phase": "Active"}
            stored = self._commit(key, "ADDED", body)
        return rendering.Response(status=201, payload=stored)

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        key = self._key(request, subresources={None, "status"})
        ctype = request.headers.get("Content-Type", request.headers.get("content-type", ""))
        ctype = ctype.split(";")[0].strip()
        async with self._lock:
            old = self._current(key)
            if ctype == "application/json-patch+json":
                if not isinstance(request.data, list):
                    raise _error(400, "BadRequest", "a JSON patch must be a list of operations")
                try:
                    patched = jsonpatch.apply_patch(old, request.data, in_place=False)
                except jsonpatch.JsonPatchTestFailed as e:
                    raise _error(422, "Invalid", f"the JSON patch test failed: {e}") from e
                except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                    raise _error(422, "Invalid", f"the JSON patch cannot be applied: {e}") from e
            elif ctype in _MERGE_TYPES:
                if not isinstance(request.data, dict):
                    raise _error(400, "BadRequest", "a merge patch must be a JSON object")
                patched = merge_patch(old, request.data)
            else:
                raise _error(415, "UnsupportedMediaType", f"patch type {ctype!r} is not emulated")
            return self._update(key, old, patched, request.subresource)

    async def _serve_replace(self, request: rendering.Request) -> rendering.Payload:
        key = self._key(request, subresources={None, "status"})
        if not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "the body must be a JSON object")
        async with self._lock:
            old = self._current(key)
            return self._update(key, old, copy.deepcopy(request.data), request.subresource)

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        key = self._key(request, subresources={None})
        async with self._lock:
            old = self._current(key)
            preconditions = (request.data or {}).get("preconditions") or {}
            for field in ("uid", "resourceVersion"):
                if preconditions.get(field) not in (None, old["metadata"][field]):
                    raise _error(409, "Conflict", f"the delete precondition on {field} failed")
            return self._delete(key, old)

    # -- writes (call with the lock held) --------------------------------------------------

    def _commit(self, key: Key, type_: str, body: Body) -> Body:
        """Store a new version with a fresh resourceVersion and notify the watchers."""
        old = None if key not in self.objects or self.objects[key].deleted else self.objects[key]
        old_body = None if old is None else old.raw
        self._rv += 1
        body["metadata"]["resourceVersion"] = str(self._rv)
        if type_ == "ADDED":
            if key in self.objects:
                self.objects[key].create(body)
            else:
                self.objects[key] = body
        elif type_ == "MODIFIED":
            self.objects[key].history.append(body)
        else:
            self.objects[key].history.append(body)  # the final state, then the deletion marker
            self.objects[key].delete()
        event = WatchEvent(self._rv, key[0], type_, body, old_body)
        self._history.append(event)
        for queue in self._watchers:
            queue.put_nowait(event)
        return body

    def _update(self, key: Key, old: Body, new: Body, subresource: str | None) -> Body:
        resource = key[0]
        if subresource == "status" and not self._has_status(resource):
            raise _error(404, "NotFound", f"{resource.plural} has no status subresource")
        wanted = (new.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and str(wanted) != old["metadata"]["resourceVersion"]:
            raise _error(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version",
            )
        kept = {k: v for k, v in old.items() if k != "status"}
        if subresource == "status":  # /status changes only .status
            new = kept | ({"status": new["status"]} if "status" in new else {})
        elif self._has_status(resource):  # the main resource ignores .status
            new = {k: v for k, v in new.items() if k != "status"}
            new |= {"status": old["status"]} if "status" in old else {}
        meta = dict(new.get("metadata") or {})
        for field in _SERVER_FIELDS:
            meta.pop(field, None)
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        new["metadata"] = meta
        new.setdefault("apiVersion", old.get("apiVersion"))
        new.setdefault("kind", old.get("kind"))
        if new == old:
            return old  # a no-op write: no new resourceVersion, no watch event (as in k8s)
        ignored = {"metadata", "status"} if self._has_status(resource) else {"metadata"}
        if any(new.get(k) != old.get(k) for k in (set(new) | set(old)) - ignored):
            meta["generation"] = int(meta.get("generation", 1)) + 1
        new = copy.deepcopy(new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._commit(key, "DELETED", new)  # the last finalizer is gone: delete now
        return self._commit(key, "MODIFIED", new)

    def _delete(self, key: Key, old: Body) -> Body:
        meta = old["metadata"]
        if meta.get("deletionTimestamp"):
            return old  # already terminating: waiting for the finalizers
        new = copy.deepcopy(old)
        if meta.get("finalizers"):
            new["metadata"].update(deletionTimestamp=now_rfc3339(), deletionGracePeriodSeconds=0)
            return self._commit(key, "MODIFIED", new)
        return self._commit(key, "DELETED", new)

    # -- helpers ---------------------------------------------------------------------------

    def _known(self, request: rendering.Request) -> kmock.resource:
        resource = request.resource
        if resource is None or resource not in self.resources:
            raise _error(404, "NotFound", f"the server could not find the resource {resource}")
        return resource

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo:
        return self.resources[resource]

    def _has_status(self, resource: kmock.resource) -> bool:
        return "status" in self._info(resource).subresources

    def _api_version(self, resource: kmock.resource) -> str:
        return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)

    def _namespace_for(self, resource: kmock.resource, namespace: str | None) -> str | None:
        if not self._info(resource).namespaced:
            return None
        if not namespace:
            raise _error(400, "BadRequest", "a namespaced object needs a namespace")
        return namespace

    def _key(self, request: rendering.Request, *, subresources: set[str | None]) -> Key:
        resource = self._known(request)
        if request.subresource not in subresources or request.name is None:
            raise _error(404, "NotFound", f"{request.url.path} is not emulated")
        return resource, self._namespace_for(resource, request.namespace), request.name

    def _current(self, key: Key) -> Body:
        if key not in self.objects or self.objects[key].deleted:
            raise _error(404, "NotFound", f"{key[0].plural} {key[2]!r} not found", name=key[2])
        return self.objects[key].raw

    def _live(self, resource: kmock.resource | None = None) -> list[Body]:
        """The current bodies of one resource (or of all resources)."""
        return [
            obj.raw
            for (res, _, _), obj in self.objects.items()
            if not obj.deleted and (resource is None or res == resource)
        ]

    def _query(self, request: rendering.Request) -> _Query:
        resource = self._known(request)
        try:
            labels = parse_labels(request.params.get("labelSelector"))
            fields = parse_field_selector(request.params.get("fieldSelector"))
        except SelectorError as e:
            raise _error(400, "BadRequest", str(e)) from e
        namespace = request.namespace if self._info(resource).namespaced else None
        return _Query(resource, namespace, request.name, labels, fields)

    def _filtered(self, query: _Query, event: WatchEvent) -> dict[str, Any] | None:
        """The event as this watcher sees it: objects leaving the selection look DELETED."""
        if event.resource != query.resource:
            return None
        now = event.type != "DELETED" and query.matches(event.obj)
        before = event.old is not None and query.matches(event.old)
        if event.type == "DELETED":
            return {"type": "DELETED", "object": event.obj} if query.matches(event.obj) else None
        if now and before:
            return {"type": "MODIFIED", "object": event.obj}
        if now:
            return {"type": "ADDED", "object": event.obj}
        if before:
            return {"type": "DELETED", "object": event.obj}
        return None

    def _generate_name(self, resource: kmock.resource, namespace: str | None, prefix: str) -> str:
        while True:
            name = prefix + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
            key = (resource, namespace, name)
            if key not in self.objects or self.objects[key].deleted:
                return name

    @staticmethod
    def _gone(since: str) -> dict[str, Any]:
        return {
            "type": "ERROR",
            "object": {
                "apiVersion": "v1",
                "kind": "Status",
                "status": "Failure",
                "reason": "Expired",
                "code": 410,
                "message": f"too old resource version: {since}",
            },
        }

    def _initial_events_end(self) -> dict[str, Any]:
        annotations = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"metadata": {"resourceVersion": str(self._rv), "annotations": annotations}},
        }
