"""The release's CurveZMQ keys (benchop.operator.curvekeys): what the Secret holds, how the
operator reads and writes it, and that the files are what the transport loads."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth

from benchop.operator.curvekeys import (
    FILES,
    certificate,
    decode,
    new_keys,
    own_service_account,
    secret_manifest,
    service_account_of,
    write_files,
)


def as_stored(data: dict[str, str], name: str = "benchop-curve") -> dict[str, object]:
    """The Secret as the API server returns it."""
    return secret_manifest(name, "benchop-system", data)


def test_the_secret_holds_two_key_pairs_as_certificate_files(tmp_path: Path) -> None:
    data = new_keys()
    assert sorted(data) == sorted(FILES)
    pairs = {}
    for who in ("operator", "agent"):
        (tmp_path / f"{who}.key").write_text(data[f"{who}.key"])
        (tmp_path / f"{who}.key_secret").write_text(data[f"{who}.key_secret"])
        public, none = zmq.auth.load_certificate(tmp_path / f"{who}.key")
        public2, secret = zmq.auth.load_certificate(tmp_path / f"{who}.key_secret")
        assert none is None and public == public2 and secret is not None
        assert zmq.curve_public(secret) == public
        pairs[who] = public
    assert pairs["operator"] != pairs["agent"]
    assert new_keys() != data  # fresh every time


def test_the_secret_manifest_whole() -> None:
    pub = b"P" * 40
    assert certificate(pub) == f'metadata\ncurve\n    public-key = "{"P" * 40}"\n'
    assert secret_manifest("c", "ns", {"operator.key": certificate(pub)}) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "c",
            "namespace": "ns",
            "labels": {"app.kubernetes.io/name": "benchop", "app.kubernetes.io/component": "curve"},
        },
        "type": "Opaque",
        "data": {"operator.key": base64.b64encode(certificate(pub).encode()).decode()},
    }


def test_decode_reads_what_the_api_server_stores_and_names_what_is_missing() -> None:
    data = new_keys()
    assert decode(as_stored(data)) == data
    broken = as_stored({k: v for k, v in data.items() if k != "agent.key"}, name="mine")
    with pytest.raises(ValueError, match=r"CurveZMQ Secret mine lacks agent\.key$"):
        decode(broken)


def test_write_files_keeps_the_secret_private(tmp_path: Path) -> None:
    data = new_keys()
    files = write_files(data, tmp_path / "curve")
    assert stat.S_IMODE(files.operator_secret.stat().st_mode) == 0o600
    assert files.operator_secret.read_text() == data["operator.key_secret"]
    assert files.agent_public.read_text() == data["agent.key"]
    public, _ = zmq.auth.load_certificate(files.operator_secret)
    assert files.operator_public_z85 == public.decode()
    assert sorted(p.name for p in (tmp_path / "curve").iterdir()) == [
        "agent.key",
        "operator.key_secret",
    ]  # the agent's secret key is not written where the operator runs


def test_the_secret_is_owned_by_the_operators_service_account(tmp_path: Path) -> None:
    claims = {
        "iss": "https://kubernetes.default.svc",
        "kubernetes.io": {"namespace": "ns", "serviceaccount": {"name": "op", "uid": "u-1"}},
    }
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    token = tmp_path / "token"
    token.write_text(f"e30.{body}.c2ln\n")
    assert own_service_account(token) == ("op", "u-1")
    assert own_service_account(tmp_path / "none") is None  # outside a pod
    assert service_account_of("not-a-jwt") is None
    meta = secret_manifest("c", "ns", {}, owner=("op", "u-1"))["metadata"]
    assert meta["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "ServiceAccount", "name": "op", "uid": "u-1"}
    ]
