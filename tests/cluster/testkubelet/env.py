"""A container's environment, resolved the way the kubelet does it (pure functions).

Order (kubelet ``makeEnvironmentVariables``): ``envFrom`` sources in order, then ``env`` entries
(``$(VAR)`` expanded against what is defined so far and the service variables), then the service
variables not already set. A missing non-optional object or key raises :class:`ConfigError` with
the kubelet's message; the caller reports it as ``CreateContainerConfigError``.

The caller fetches the referenced objects first (:func:`referenced_objects`) and passes them in
``objects``: ``{("configmaps", name): obj or None}`` (None = not found).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from .quantity import ceil_div, parse_quantity

Objects = Mapping[tuple[str, str], dict[str, Any] | None]


class ConfigError(Exception):
    """A container cannot be configured (the kubelet's CreateContainerConfigError)."""


# --- $(VAR) expansion (k8s.io/kubernetes/third_party/forked/golang/expansion) -------------------

_REF = re.compile(r"\$\$|\$\(([^)]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """``expand("$(A)-$$(A)-$(B)", {"A": "x"}) == "x-$(A)-$(B)"``: unknown refs stay verbatim."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, text)


# --- service links ------------------------------------------------------------------------------


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def _service_vars(svc: dict[str, Any]) -> dict[str, str]:
    spec = svc.get("spec") or {}
    ip = spec.get("clusterIP") or ""
    ports = spec.get("ports") or []
    if ip in ("", "None") or not ports:
        return {}
    prefix = _env_name(svc["metadata"]["name"])
    out = {f"{prefix}_SERVICE_HOST": ip, f"{prefix}_SERVICE_PORT": str(ports[0]["port"])}
    for p in ports:
        if p.get("name"):
            out[f"{prefix}_SERVICE_PORT_{_env_name(p['name'])}"] = str(p["port"])
    for i, p in enumerate(ports):
        proto = (p.get("protocol") or "TCP").lower()
        url = f"{proto}://{ip}:{p['port']}"
        if i == 0:
            out[f"{prefix}_PORT"] = url
        pp = f"{prefix}_PORT_{p['port']}_{proto.upper()}"
        out[pp] = url
        out[f"{pp}_PROTO"] = proto
        out[f"{pp}_PORT"] = str(p["port"])
        out[f"{pp}_ADDR"] = ip
    return out


def service_env(services: Iterable[dict[str, Any]], namespace: str, links: bool) -> dict[str, str]:
    """Service variables for a pod in ``namespace``: the ``kubernetes`` Service of ``default``
    always, the namespace's own Services when ``enableServiceLinks`` (``links``) is on."""
    chosen: dict[str, dict[str, Any]] = {}
    for svc in services:
        meta = svc["metadata"]
        if meta["namespace"] == "default" and meta["name"] == "kubernetes":
            chosen.setdefault(meta["name"], svc)
        elif meta["namespace"] == namespace and links:
            chosen[meta["name"]] = svc
    out: dict[str, str] = {}
    for svc in chosen.values():
        out.update(_service_vars(svc))
    return out


# --- downward API -------------------------------------------------------------------------------

_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


def _format_map(m: Mapping[str, str]) -> str:
    """The downward API's rendering of a whole labels/annotations map (volumes only)."""
    return "\n".join(f"{k}={_quote(v)}" for k, v in sorted(m.items()))


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def field_value(pod: dict[str, Any], path: str, *, pod_ip: str, host_ip: str) -> str:
    """The value of a ``fieldRef.fieldPath`` for ``pod``; ValueError for unsupported paths."""
    meta = pod["metadata"]
    spec = pod["spec"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return simple[path]
    if path in ("metadata.labels", "metadata.annotations"):
        return _format_map(meta.get(path.split(".")[1]) or {})
    m = _SUBSCRIPT.match(path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    raise ValueError(f"unsupported fieldPath {path!r}")


def resource_value(
    pod: dict[str, Any],
    container: dict[str, Any],
    ref: dict[str, Any],
    allocatable: Mapping[str, str],
) -> str:
    """The value of a ``resourceFieldRef``: ``ceil(quantity / divisor)``; unset limits default to
    the node's allocatable (kubelet ``defaultPodLimitsForDownwardAPI``)."""
    name = ref.get("containerName")
    if name:
        matches = [
            c
            for c in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", [])
            if c["name"] == name
        ]
        if not matches:
            raise ConfigError(f"container {name} not found")
        container = matches[0]
    kind, _, resource = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(resource)
    if raw is None and kind == "limits":
        raw = allocatable.get(resource)
    value = parse_quantity(raw) if raw is not None else Fraction(0)
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor == 0:
        divisor = Fraction(1)
    return str(ceil_div(value, divisor))


# --- env ----------------------------------------------------------------------------------------


def referenced_objects(container: dict[str, Any]) -> set[tuple[str, str]]:
    """``{("configmaps", name), ("secrets", name)}`` that ``container``'s env refers to."""
    out: set[tuple[str, str]] = set()
    for src in container.get("envFrom") or []:
        if src.get("configMapRef"):
            out.add(("configmaps", src["configMapRef"]["name"]))
        if src.get("secretRef"):
            out.add(("secrets", src["secretRef"]["name"]))
    for var in container.get("env") or []:
        vf = var.get("valueFrom") or {}
        if vf.get("configMapKeyRef"):
            out.add(("configmaps", vf["configMapKeyRef"]["name"]))
        if vf.get("secretKeyRef"):
            out.add(("secrets", vf["secretKeyRef"]["name"]))
    return out


def object_data(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's data (+ binaryData decoded) or a Secret's data, decoded to str."""
    if kind == "secrets":
        return {
            k: base64.b64decode(v).decode("utf-8", "replace")
            for k, v in (obj.get("data") or {}).items()
        }
    data = dict(obj.get("data") or {})
    for k, v in (obj.get("binaryData") or {}).items():
        data[k] = base64.b64decode(v).decode("utf-8", "replace")
    return data


_KIND_WORD = {"configmaps": ("configmap", "ConfigMap"), "secrets": ("secret", "Secret")}


def _lookup(objects: Objects, kind: str, name: str, optional: bool) -> dict[str, str] | None:
    obj = objects.get((kind, name))
    if obj is None:
        if optional:
            return None
        raise ConfigError(f'{_KIND_WORD[kind][0]} "{name}" not found')
    return object_data(kind, obj)


def container_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    services: Mapping[str, str],
    objects: Objects,
    pod_ip: str,
    host_ip: str,
    allocatable: Mapping[str, str],
) -> dict[str, str]:
    """The variables the kubelet hands the runtime for ``container`` (no image ENV)."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        ref = src.get("configMapRef") or src.get("secretRef")
        if not ref:
            continue
        kind = "configmaps" if src.get("configMapRef") else "secrets"
        data = _lookup(objects, kind, ref["name"], bool(ref.get("optional")))
        for k, v in (data or {}).items():
            env[src.get("prefix", "") + k] = v
    for var in container.get("env") or []:
        name = var["name"]
        vf = var.get("valueFrom")
        if not vf:
            env[name] = expand(var.get("value") or "", {**services, **env})
            continue
        if vf.get("fieldRef"):
            try:
                env[name] = field_value(
                    pod, vf["fieldRef"]["fieldPath"], pod_ip=pod_ip, host_ip=host_ip
                )
            except ValueError as e:
                raise ConfigError(str(e)) from None
        elif vf.get("resourceFieldRef"):
            env[name] = resource_value(pod, container, vf["resourceFieldRef"], allocatable)
        elif vf.get("configMapKeyRef") or vf.get("secretKeyRef"):
            kind = "configmaps" if vf.get("configMapKeyRef") else "secrets"
            ref = vf.get("configMapKeyRef") or vf["secretKeyRef"]
            optional = bool(ref.get("optional"))
            data = _lookup(objects, kind, ref["name"], optional)
            if data is None:
                continue
            if ref["key"] not in data:
                if optional:
                    continue
                word = _KIND_WORD[kind][1]
                raise ConfigError(f"couldn't find key {ref['key']} in {word} {ns}/{ref['name']}")
            env[name] = data[ref["key"]]
        else:
            raise ConfigError(f"unsupported valueFrom in env var {name}")
    for k, v in services.items():
        env.setdefault(k, v)
    return env


def runtime_env(
    image_env: Mapping[str, str], hostname: str, kubelet_env: Mapping[str, str]
) -> dict[str, str]:
    """What the process sees: image ENV, then HOSTNAME (as containerd sets it), then the
    kubelet's variables, each overriding the one before."""
    return {**image_env, "HOSTNAME": hostname, **kubelet_env}


def argv(
    container: dict[str, Any], entrypoint: list[str], cmd: list[str], env: Mapping[str, str]
) -> list[str]:
    """Docker semantics: ``command`` replaces ENTRYPOINT (and drops CMD), ``args`` replaces CMD;
    ``$(VAR)`` in both is expanded against the kubelet's variables."""
    command = container.get("command")
    args = container.get("args")
    if command:
        out = list(command) + list(args or [])
    else:
        out = list(entrypoint) + list(args if args is not None else cmd)
    return [expand(a, env) for a in out]
