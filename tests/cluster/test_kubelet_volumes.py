"""testkubelet.volumes: volume contents, the mount plan, the atomic-writer layout."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from testkubelet.volumes import (
    Mount,
    VolumeError,
    host_mountpoints,
    plan_mounts,
    referenced_objects,
    token_requests,
    volume_files,
    write_atomic,
)

POD_DIR = Path("/state/kubelet/pods/ns_p_u")


def pod(volumes=(), containers=()):
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"a": "1"}},
        "spec": {
            "volumes": list(volumes),
            "containers": list(containers) or [{"name": "c"}],
            "serviceAccountName": "sa",
        },
    }


OBJECTS = {
    ("configmaps", "cfg"): {
        "data": {"a.yaml": "x: 1", "b": "2"},
        "binaryData": {"bin": base64.b64encode(b"\x00\x01").decode()},
    },
    ("secrets", "sec"): {"data": {"token": base64.b64encode(b"s3cret").decode()}},
    ("configmaps", "gone"): None,
}


def files(vol, tokens=None):
    return volume_files(
        pod([vol]),
        vol,
        objects=OBJECTS,
        tokens=tokens or {},
        pod_ip="10.244.1.2",
        host_ip="10.244.0.1",
        allocatable={"cpu": "4"},
    )


def test_configmap_all_keys_or_items_with_modes():
    assert files({"name": "v", "configMap": {"name": "cfg"}}) == {
        "a.yaml": (b"x: 1", 0o644),
        "b": (b"2", 0o644),
        "bin": (b"\x00\x01", 0o644),
    }
    got = files(
        {
            "name": "v",
            "configMap": {
                "name": "cfg",
                "defaultMode": 0o440,
                "items": [
                    {"key": "a.yaml", "path": "conf/app.yaml"},
                    {"key": "b", "path": "b", "mode": 0o600},
                ],
            },
        }
    )
    assert got == {"conf/app.yaml": (b"x: 1", 0o440), "b": (b"2", 0o600)}


def test_missing_objects_and_keys_fail_like_the_kubelet_unless_optional():
    with pytest.raises(VolumeError, match='configmap "gone" not found'):
        files({"name": "v", "configMap": {"name": "gone"}})
    assert files({"name": "v", "configMap": {"name": "gone", "optional": True}}) == {}
    with pytest.raises(VolumeError, match="references non-existent config key: zz"):
        files({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "zz", "path": "z"}]}})
    with pytest.raises(VolumeError, match="references non-existent secret key: zz"):
        files({"name": "v", "secret": {"secretName": "sec", "items": [{"key": "zz", "path": "z"}]}})


def test_secret_and_projected_service_account_volume():
    assert files({"name": "v", "secret": {"secretName": "sec"}}) == {"token": (b"s3cret", 0o644)}
    vol = {
        "name": "kube-api-access-x",
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "cfg", "items": [{"key": "b", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }
    got = files(vol, tokens={("", 3607): "jwt"})
    assert got == {"token": (b"jwt", 420), "ca.crt": (b"2", 420), "namespace": (b"ns", 420)}
    p = pod(
        [
            vol,
            {
                "name": "aud",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": "vault",
                                "expirationSeconds": 600,
                                "path": "t",
                            }
                        }
                    ]
                },
            },
        ]
    )
    assert token_requests(p) == {("", 3607), ("vault", 600)}
    assert referenced_objects(p) == {("configmaps", "cfg")}


def test_downward_api_volume():
    vol = {
        "name": "v",
        "downwardAPI": {
            "items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {
                    "path": "cpu",
                    "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu"},
                },
            ]
        },
    }
    assert files(vol) == {"labels": (b'a="1"', 0o644), "cpu": (b"4", 0o644)}


def plan(container, volumes, masks=None):
    return plan_mounts(
        pod(volumes, [container]),
        container,
        pod_dir=POD_DIR,
        env={"SUB": "x"},
        hosts=POD_DIR / "_hosts",
        resolv=POD_DIR / "_resolv.conf",
        termination_log=POD_DIR / "c/0.termination-log",
        masks=masks or {"/root": ["/root/.pyenv"], "/tmp/state": []},
    )


def test_mount_plan_order_read_only_and_masks():
    container = {
        "name": "c",
        "volumeMounts": [
            {"name": "cfg", "mountPath": "/etc/app"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "tmp", "mountPath": "/tmp/work/cache", "subPathExpr": "$(SUB)"},
            {"name": "models", "mountPath": "/models", "readOnly": True},
        ],
        "terminationMessagePath": "/tmp/term",
    }
    volumes = [
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "models", "hostPath": {"path": "/srv/models"}},
    ]
    mounts = plan(container, volumes)
    targets = [m.target for m in mounts]
    assert targets.index("/tmp") < targets.index("/tmp/term") < targets.index("/tmp/work/cache")
    assert targets.index("/root") < targets.index("/root/.pyenv")
    assert "/tmp/state" not in targets  # under the /tmp volume: hidden anyway
    by = {m.target: m for m in mounts}
    assert by["/dev"] == Mount("dev", "/dev")
    assert by["/etc/app"] == Mount(
        "bind", "/etc/app", str(POD_DIR / "_volumes/configMap/cfg"), True
    )
    assert by["/tmp/work/cache"].source == str(POD_DIR / "_volumes/emptyDir/tmp/x")
    assert by["/models"] == Mount("bind", "/models", "/srv/models", True)
    assert not by["/tmp"].readonly
    assert by["/etc/hosts"].source == str(POD_DIR / "_hosts")
    assert by["/root"].kind == "tmpfs"
    # only mount points on the host's own filesystem must exist beforehand
    assert sorted(host_mountpoints(mounts)) == [
        "/etc/app",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/models",
        "/root",
        "/tmp",
    ]


def test_unknown_volume_is_an_error():
    with pytest.raises(VolumeError, match='volume "nope" not found'):
        plan({"name": "c", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, [])


def test_resolve_maps_targets_through_host_symlinks():
    container = {"name": "c", "volumeMounts": [{"name": "t", "mountPath": "/var/run/secrets/x"}]}
    mounts = plan_mounts(
        pod([{"name": "t", "emptyDir": {}}], [container]),
        container,
        pod_dir=POD_DIR,
        env={},
        hosts=POD_DIR / "h",
        resolv=POD_DIR / "r",
        termination_log=POD_DIR / "t",
        masks={"/run": []},
        resolve=lambda p: p.replace("/var/run/", "/run/"),
    )
    assert "/run/secrets/x" not in host_mountpoints(mounts)  # inside the container's own /run


def test_atomic_writer_layout_and_update(tmp_path):
    target = tmp_path / "vol"
    write_atomic(target, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)}, fs_group=None)
    assert os.readlink(target / "a") == "..data/a"
    assert (target / "a").read_bytes() == b"1"
    assert (target / "dir" / "b").read_bytes() == b"2"
    assert oct((target / "dir" / "b").stat().st_mode & 0o777) == oct(0o600)
    first = os.readlink(target / "..data")
    write_atomic(target, {"a": (b"new", 0o644)}, fs_group=None)
    assert (target / "a").read_bytes() == b"new"
    assert not (target / "dir").exists()
    assert os.readlink(target / "..data") != first
    assert not (target / first).exists()  # the old payload is gone
