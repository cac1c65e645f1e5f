"""testkubelet.env: a container's environment as the kubelet resolves it."""

from __future__ import annotations

import base64

import pytest
from testkubelet.env import (
    ConfigError,
    argv,
    container_env,
    expand,
    field_value,
    referenced_objects,
    resource_value,
    service_env,
)


def pod(**spec):
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "x", "tier": "web"},
            "annotations": {"note": 'say "hi"'},
        },
        "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": [], **spec},
    }


def svc(name, ns, ip, ports):
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": ip, "ports": ports}}


def resolve(container, *, objects=None, services=None, p=None):
    return container_env(
        p or pod(containers=[container]),
        container,
        services=services or {},
        objects=objects or {},
        pod_ip="10.244.1.2",
        host_ip="10.244.0.1",
        allocatable={"cpu": "16", "memory": "64Gi"},
    )


def test_expand_follows_the_kubelet_rules():
    env = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)", env) == "x-y"
    assert expand("$$(A)", env) == "$(A)"  # escaped
    assert expand("$(C) and $(A", env) == "$(C) and $(A"  # unknown and unclosed stay
    assert expand("$$", env) == "$"


def test_service_env_has_the_master_service_always_and_own_namespace_only_with_links():
    services = [
        svc("kubernetes", "default", "10.96.0.1", [{"name": "https", "port": 443}]),
        svc(
            "mock-llm", "ns", "10.96.0.7", [{"name": "http", "port": 80}, {"name": "m", "port": 9}]
        ),
        svc("other", "elsewhere", "10.96.0.8", [{"port": 1}]),
        svc("headless", "ns", "None", [{"port": 2}]),
    ]
    env = service_env(services, "ns", True)
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
    assert env["MOCK_LLM_SERVICE_HOST"] == "10.96.0.7"
    assert env["MOCK_LLM_SERVICE_PORT_M"] == "9"
    assert env["MOCK_LLM_PORT"] == "tcp://10.96.0.7:80"
    assert env["MOCK_LLM_PORT_9_TCP_ADDR"] == "10.96.0.7"
    assert not any(k.startswith(("OTHER_", "HEADLESS_")) for k in env)
    no_links = service_env(services, "ns", False)
    assert "KUBERNETES_SERVICE_HOST" in no_links
    assert not any(k.startswith("MOCK_LLM") for k in no_links)


def test_field_refs():
    p = pod()
    get = lambda path: field_value(p, path, pod_ip="10.244.1.2", host_ip="10.244.0.1")  # noqa: E731
    assert get("metadata.name") == "p"
    assert get("metadata.namespace") == "ns"
    assert get("metadata.uid") == "u-1"
    assert get("metadata.labels['tier']") == "web"
    assert get("metadata.annotations['note']") == 'say "hi"'
    assert get("metadata.labels['missing']") == ""
    assert get("spec.nodeName") == "n1"
    assert get("spec.serviceAccountName") == "sa"
    assert get("status.podIP") == "10.244.1.2"
    assert get("status.hostIP") == "10.244.0.1"
    assert get("metadata.labels") == 'app="x"\ntier="web"'
    with pytest.raises(ValueError):
        get("spec.nope")


def test_resource_field_refs_round_up_and_default_limits_to_allocatable():
    c = {
        "name": "c",
        "resources": {"requests": {"cpu": "250m", "memory": "100Mi"}, "limits": {"memory": "1Gi"}},
    }
    p = pod(containers=[c])
    alloc = {"cpu": "16", "memory": "64Gi"}
    assert resource_value(p, c, {"resource": "requests.cpu"}, alloc) == "1"
    assert resource_value(p, c, {"resource": "requests.cpu", "divisor": "1m"}, alloc) == "250"
    assert resource_value(p, c, {"resource": "limits.memory", "divisor": "1Mi"}, alloc) == "1024"
    assert resource_value(p, c, {"resource": "limits.cpu"}, alloc) == "16"
    assert resource_value(p, c, {"resource": "requests.memory"}, alloc) == str(100 * 2**20)


def test_env_order_envfrom_then_env_with_expansion_then_services():
    cm = {"data": {"A": "from-cm", "B": "b"}}
    secret = {"data": {"TOKEN": base64.b64encode(b"s3cret").decode()}}
    c = {
        "name": "c",
        "envFrom": [
            {"configMapRef": {"name": "cm"}},
            {"secretRef": {"name": "sec"}, "prefix": "S_"},
            {"configMapRef": {"name": "absent", "optional": True}},
        ],
        "env": [
            {"name": "A", "value": "override"},
            {"name": "C", "value": "$(A)-$(B)-$(SVC_SERVICE_HOST)-$(NOPE)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "K", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "TOKEN"}}},
            {
                "name": "OPT",
                "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "zz", "optional": True}},
            },
        ],
    }
    env = resolve(
        c,
        objects={
            ("configmaps", "cm"): cm,
            ("secrets", "sec"): secret,
            ("configmaps", "absent"): None,
        },
        services={"SVC_SERVICE_HOST": "10.96.0.9", "A": "service-loses"},
    )
    assert env["A"] == "override"
    assert env["B"] == "b"
    assert env["S_TOKEN"] == "s3cret"
    assert env["C"] == "override-b-10.96.0.9-$(NOPE)"
    assert env["POD"] == "p"
    assert env["K"] == "s3cret"
    assert "OPT" not in env
    assert env["SVC_SERVICE_HOST"] == "10.96.0.9"
    assert referenced_objects(c) == {
        ("configmaps", "cm"),
        ("secrets", "sec"),
        ("configmaps", "absent"),
    }


@pytest.mark.parametrize(
    ("var", "objects", "message"),
    [
        (
            {"secretKeyRef": {"name": "s", "key": "k"}},
            {("secrets", "s"): None},
            'secret "s" not found',
        ),
        (
            {"secretKeyRef": {"name": "s", "key": "k"}},
            {("secrets", "s"): {"data": {}}},
            "couldn't find key k in Secret ns/s",
        ),
        (
            {"configMapKeyRef": {"name": "c", "key": "k"}},
            {("configmaps", "c"): {"data": {}}},
            "couldn't find key k in ConfigMap ns/c",
        ),
        (
            {"configMapKeyRef": {"name": "c", "key": "k"}},
            {("configmaps", "c"): None},
            'configmap "c" not found',
        ),
    ],
)
def test_missing_sources_are_create_container_config_errors(var, objects, message):
    c = {"name": "c", "env": [{"name": "X", "valueFrom": var}]}
    with pytest.raises(ConfigError) as e:
        resolve(c, objects=objects)
    assert str(e.value) == message


def test_argv_docker_semantics():
    ep, cmd = ["/bin/benchop"], ["--help"]
    env = {"PORT": "8000"}
    assert argv({}, ep, cmd, env) == ["/bin/benchop", "--help"]
    assert argv({"args": ["mock-server", "--port=$(PORT)"]}, ep, cmd, env) == [
        "/bin/benchop",
        "mock-server",
        "--port=8000",
    ]
    assert argv({"command": ["python", "-c"], "args": ["x"]}, ep, cmd, env) == ["python", "-c", "x"]
    assert argv({"command": ["python"]}, ep, cmd, env) == ["python"]  # CMD dropped
