"""The operator client's login order (benchop.operator.k8s.login): the same as kopf's default
login with the kubernetes package, so kopf's watches and the client reach one server:
in-cluster (KUBERNETES_SERVICE_HOST/_PORT + the service-account token) before the kubeconfig."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kopf
import kubernetes
import pytest
import yaml
from kubernetes.config import kube_config

from benchop.operator.k8s import login


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No in-cluster files, no kubeconfig; the kubernetes client's global config restored."""
    from kubernetes.config import incluster_config

    sa = tmp_path / "sa"
    sa.mkdir()
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(sa / "ca.crt"))
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    saved = kubernetes.client.Configuration.get_default_copy()
    yield sa
    kubernetes.client.Configuration.set_default(saved)


def in_cluster(sa: Path, monkeypatch: pytest.MonkeyPatch, host: str, port: str) -> None:
    (sa / "token").write_text("sa-token\n")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)


def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "kc-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    # the kubernetes client reads $KUBECONFIG once, at import
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


def test_in_cluster_honours_the_service_env_and_comes_first(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig(tmp_path, monkeypatch, "https://from-kubeconfig:6443")
    in_cluster(env, monkeypatch, "10.247.0.1", "6744")
    info = login()
    assert info.server == "https://10.247.0.1:6744"
    assert info.token == "sa-token"  # without the file's newline (not a valid header)


def test_the_kubeconfig_without_in_cluster_env(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig(tmp_path, monkeypatch, "https://from-kubeconfig:6443")
    (env / "token").write_text("sa-token\n")  # a token but no service env: not in a pod
    info = login()
    assert info.server == "https://from-kubeconfig:6443"
    assert info.token == "kc-token"


def test_neither_is_a_login_error(env: Path) -> None:
    with pytest.raises(kopf.LoginError):
        login()
