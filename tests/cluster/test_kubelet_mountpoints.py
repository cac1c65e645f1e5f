"""testkubelet.mountpoints: mount points created on the host, shared by every test kubelet."""

from __future__ import annotations

import shutil
from pathlib import Path

from testkubelet.mountpoints import Mountpoints


def kubelets(tmp_path: Path, *names: str) -> list[Mountpoints]:
    """Test kubelets sharing the host's record, each with its own (existing) kubelet dir."""
    out = []
    for name in names:
        (tmp_path / name).mkdir()
        out.append(Mountpoints(tmp_path / "host" / "mountpoints.json", str(tmp_path / name)))
    return out


def test_a_mount_point_stays_while_a_pod_of_any_kubelet_uses_it(tmp_path):
    x, y = kubelets(tmp_path, "slot-x", "slot-y")
    target = tmp_path / "root" / "results"
    x.ensure("pod-x", str(target), is_dir=True)  # created for slot x's pod
    y.ensure("pod-y", str(target), is_dir=True)  # found by slot y
    x.release("pod-x")  # slot x's last pod is gone: slot y's pod still has a mount there
    assert target.is_dir()
    y.release("pod-y")
    assert not target.exists()
    assert not target.parent.exists()  # created for it too: gone with it


def test_a_file_mount_point_and_its_directories_go_with_the_last_pod(tmp_path):
    (x,) = kubelets(tmp_path, "slot-x")
    target = tmp_path / "etc" / "app" / "conf.yaml"
    x.ensure("a", str(target), is_dir=False)
    x.ensure("b", str(target.parent / "other"), is_dir=True)
    x.release("a")
    assert not target.exists()
    assert (target.parent / "other").is_dir()  # the shared parent is still needed by b
    x.release("b")
    assert not (tmp_path / "etc").exists()


def test_what_existed_before_is_never_removed(tmp_path):
    (x,) = kubelets(tmp_path, "slot-x")
    target = tmp_path / "existing"
    target.mkdir()
    x.ensure("a", str(target), is_dir=True)
    x.release("a")
    assert target.is_dir()


def test_cleanup_drops_the_owners_of_a_previous_run_and_of_purged_kubelets(tmp_path):
    x, y = kubelets(tmp_path, "slot-x", "slot-y")
    target = tmp_path / "results"
    x.ensure("pod-x", str(target), is_dir=True)
    y.ensure("pod-y", str(target), is_dir=True)
    restarted_x = Mountpoints(x.state_file, x.instance)
    restarted_x.cleanup_stale()  # pod-x's container died with the previous run
    assert target.is_dir()  # pod-y of slot y still holds it
    shutil.rmtree(y.instance)  # slot y purged without a clean stop
    restarted_x.cleanup_stale()
    assert not target.exists()
