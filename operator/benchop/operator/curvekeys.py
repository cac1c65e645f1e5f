"""The release's CurveZMQ keys: one Secret in the operator's namespace (``--curve-secret``),
made by the operator on its first start when it does not exist.

    operator key pair   gate ROUTER and snapshot SUB (server; any client key, see below),
                        and the client of the agents' baseline servers
    agent key pair      every agent's baseline server; it allows only the operator's key

Workers have no key of their own: the Job passes the operator's *public* key
(``BENCHOP_CURVE_SERVER_KEY``), each worker socket makes a fresh pair, so their traffic is
encrypted and reaches only the operator; which pods may connect at all is the NetworkPolicies'
business (docs/install.md). Why the operator and not the chart makes the keys: a chart can
render random bytes but not a Curve25519 public key, and random values in a template change
on every ``helm template`` (Argo CD would rotate the keys on every sync); ``lookup`` sees
nothing there either. Rendered manifests hold no key material, so they stay deterministic.

The Secret's keys are certificate files in ``zmq.auth``'s format (what the agent mounts and
:mod:`benchagent.transport` loads): ``operator.key``, ``operator.key_secret``, ``agent.key``,
``agent.key_secret``. A Secret made beforehand with these keys (e.g. by a sealed-secrets
controller) is used as it is.

    data = await load_or_create(api, "benchop-system", "benchop-curve")
    files = write_files(data, Path(tempfile.mkdtemp()))
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from benchop.operator.k8s import KubeApi, Resource

SECRET = Resource("", "v1", "secrets")
OPERATOR = "operator"
AGENT = "agent"
FILES = (f"{OPERATOR}.key", f"{OPERATOR}.key_secret", f"{AGENT}.key", f"{AGENT}.key_secret")
"""The keys of the Secret, each a certificate file."""


def certificate(public: bytes, secret: bytes | None = None) -> str:
    """A certificate file as ``zmq.auth.load_certificate`` reads it (Z85 keys)."""
    lines = ["metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def new_keys() -> dict[str, str]:
    """Fresh operator and agent key pairs as the Secret's data (plain text)."""
    out: dict[str, str] = {}
    for who in (OPERATOR, AGENT):
        public, secret = zmq.curve_keypair()
        out[f"{who}.key"] = certificate(public)
        out[f"{who}.key_secret"] = certificate(public, secret)
    return out


TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def service_account_of(token: str) -> tuple[str, str] | None:
    """``(name, uid)`` of the ServiceAccount a Kubernetes service-account token names in its
    claims (read, not verified: it is our own token), or None for another kind of token."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        account = claims["kubernetes.io"]["serviceaccount"]
        return str(account["name"]), str(account["uid"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def own_service_account(token_file: Path = TOKEN) -> tuple[str, str] | None:
    """The operator pod's ServiceAccount, from its mounted token; None outside a pod."""
    try:
        return service_account_of(token_file.read_text().strip())
    except OSError:
        return None


def secret_manifest(
    name: str, namespace: str, data: Mapping[str, str], owner: tuple[str, str] | None = None
) -> dict[str, Any]:
    """The Secret holding ``data`` (base64 in ``data``, as the API server stores it), owned by
    the operator's ServiceAccount ``owner`` (name, uid) when given, so that uninstalling the
    release, which deletes that ServiceAccount, lets the garbage collector delete the keys."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/name": "benchop", "app.kubernetes.io/component": "curve"},
    }
    if owner is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "name": owner[0], "uid": owner[1]}
        ]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def decode(secret: Mapping[str, Any]) -> dict[str, str]:
    """The Secret's data as text; ValueError naming what is missing or unreadable."""
    data = secret.get("data") or {}
    missing = [k for k in FILES if k not in data]
    name = (secret.get("metadata") or {}).get("name", "?")
    if missing:
        raise ValueError(f"CurveZMQ Secret {name} lacks {', '.join(missing)}")
    try:
        return {k: base64.b64decode(data[k], validate=True).decode() for k in FILES}
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"CurveZMQ Secret {name}: unreadable data ({e})") from None


async def load_or_create(
    api: KubeApi, namespace: str, name: str, owner: tuple[str, str] | None = None
) -> dict[str, str]:
    """The keys in Secret ``namespace/name``, made first when it does not exist (a concurrent
    maker's Secret wins: create returns the existing one on 409)."""
    found = await api.get(SECRET, namespace, name)
    if found is None:
        manifest = secret_manifest(name, namespace, new_keys(), owner)
        found = await api.create(SECRET, namespace, manifest)
    return decode(found)


@dataclass(frozen=True)
class KeyFiles:
    """Where :func:`write_files` put the operator's own certificate and the agents' public one."""

    operator_secret: Path
    agent_public: Path
    operator_public_z85: str


def write_files(data: Mapping[str, str], directory: Path) -> KeyFiles:
    """Write what the operator needs (mode 0600) and return the paths and its public key."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key in (f"{OPERATOR}.key_secret", f"{AGENT}.key"):
        path = directory / key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data[key])
        paths[key] = path
    public, _ = zmq.auth.load_certificate(paths[f"{OPERATOR}.key_secret"])
    return KeyFiles(paths[f"{OPERATOR}.key_secret"], paths[f"{AGENT}.key"], public.decode())
