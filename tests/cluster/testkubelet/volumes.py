"""Volumes: what each holds (pure), where it lives on the host, how it is mounted in a container.

Host layout: ``<pod dir>/_volumes/<kind>/<name>``. ConfigMap, Secret, downwardAPI and projected
volumes are written in the kubelet's atomic-writer layout (``..data`` -> ``..<timestamp>``, each
top-level name a symlink through ``..data``) so updates (token refresh, edited ConfigMaps) reach
running containers; they are mounted read-only, as the kubelet mounts them. ``emptyDir`` is a
directory (``medium: Memory``: a tmpfs on the host with ``sizeLimit`` as its size; a disk
emptyDir's ``sizeLimit`` is not enforced). ``hostPath`` binds the host path (types checked,
``*OrCreate`` created). Anything else (PVCs, CSI, ...) fails to mount like a kubelet without
the driver.

:func:`plan_mounts` lists a container's mounts in the order the shim performs them (parents
first); :func:`host_mountpoints` says which mount points must be created on the host first
(they are removed again when no pod needs them).
"""

from __future__ import annotations

import base64
import os
import secrets as _secrets
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .env import ConfigError, expand, field_value, object_data, resource_value

ATOMIC_KINDS = ("configMap", "secret", "downwardAPI", "projected")
SUPPORTED = (*ATOMIC_KINDS, "emptyDir", "hostPath")
DEFAULT_MODE = 0o644

Objects = Mapping[tuple[str, str], dict[str, Any] | None]
TokenKey = tuple[str, int]  # (audience, expirationSeconds)


class VolumeError(Exception):
    """A volume cannot be set up (the kubelet's FailedMount); the message follows the
    ``MountVolume.SetUp failed for volume "x" :`` prefix."""


def volume_kind(volume: dict[str, Any]) -> str:
    """The source type of a pod volume: ``configMap``, ``emptyDir``, ... (first non-name key)."""
    for k in volume:
        if k != "name":
            return k
    return "emptyDir"  # the API defaults an empty source to emptyDir


def volume_dir(pod_dir: Path, volume: dict[str, Any]) -> Path:
    """Where the volume's content lives on the host (hostPath: the host path itself)."""
    kind = volume_kind(volume)
    if kind == "hostPath":
        return Path(volume["hostPath"]["path"])
    return pod_dir / "_volumes" / kind / volume["name"]


# --- content of atomic-writer volumes (pure) ----------------------------------------------------

Files = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)


def _object_files(kind: str, source: dict[str, Any], objects: Objects, default_mode: int) -> Files:
    """Files of a configMap/secret volume (or projection) source."""
    plural = "configmaps" if kind == "configMap" else "secrets"
    name = source.get("name") or source.get("secretName", "")
    optional = bool(source.get("optional"))
    obj = objects.get((plural, name))
    if obj is None:
        if optional:
            return {}
        raise VolumeError(
            f'{"configmap" if plural == "configmaps" else "secret"} "{name}" not found'
        )
    if plural == "secrets":
        data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    else:
        data = {k: v.encode() for k, v in object_data("configmaps", obj).items()}
        for k, v in (obj.get("binaryData") or {}).items():
            data[k] = base64.b64decode(v)
    items = source.get("items")
    if not items:
        return {k: (v, default_mode) for k, v in data.items()}
    out: Files = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            what = "config" if plural == "configmaps" else "secret"
            raise VolumeError(
                f"{'configmap' if what == 'config' else 'secret'} references "
                f"non-existent {what} key: {item['key']}"
            )
        out[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
    return out


def _downward_files(
    pod: dict[str, Any],
    items: list[dict[str, Any]],
    default_mode: int,
    *,
    pod_ip: str,
    host_ip: str,
    allocatable: Mapping[str, str],
) -> Files:
    out: Files = {}
    for item in items:
        if item.get("fieldRef"):
            try:
                value = field_value(
                    pod, item["fieldRef"]["fieldPath"], pod_ip=pod_ip, host_ip=host_ip
                )
            except ValueError as e:
                raise VolumeError(str(e)) from None
        else:
            try:
                value = resource_value(
                    pod, pod["spec"]["containers"][0], item["resourceFieldRef"], allocatable
                )
            except ConfigError as e:
                raise VolumeError(str(e)) from None
        out[item["path"]] = (value.encode(), item.get("mode", default_mode))
    return out


def token_requests(pod: dict[str, Any]) -> set[TokenKey]:
    """The service-account tokens the pod's projected volumes need: ``{(audience, seconds)}``
    (audience "" means the apiserver's own)."""
    out = set()
    for vol in pod["spec"].get("volumes") or []:
        for src in (vol.get("projected") or {}).get("sources") or []:
            sat = src.get("serviceAccountToken")
            if sat:
                out.add((sat.get("audience") or "", int(sat.get("expirationSeconds") or 3600)))
    return out


def referenced_objects(pod: dict[str, Any]) -> set[tuple[str, str]]:
    """``{("configmaps"|"secrets", name)}`` the pod's volumes read."""
    out = set()
    for vol in pod["spec"].get("volumes") or []:
        sources = [vol]
        if vol.get("projected"):
            sources = vol["projected"].get("sources") or []
        for src in sources:
            if src.get("configMap"):
                out.add(("configmaps", src["configMap"]["name"]))
            if src.get("secret"):
                s = src["secret"]
                out.add(("secrets", s.get("secretName") or s.get("name", "")))
    return out


def volume_files(
    pod: dict[str, Any],
    volume: dict[str, Any],
    *,
    objects: Objects,
    tokens: Mapping[TokenKey, str],
    pod_ip: str,
    host_ip: str,
    allocatable: Mapping[str, str],
) -> Files:
    """The files of an atomic-writer volume. Raises VolumeError as the kubelet would fail."""
    kind = volume_kind(volume)
    src = volume[kind]
    mode = src.get("defaultMode", DEFAULT_MODE)
    if kind in ("configMap", "secret"):
        return _object_files(kind, src, objects, mode)
    if kind == "downwardAPI":
        return _downward_files(
            pod,
            src.get("items") or [],
            mode,
            pod_ip=pod_ip,
            host_ip=host_ip,
            allocatable=allocatable,
        )
    out: Files = {}
    for proj in src.get("sources") or []:
        if proj.get("configMap"):
            out.update(_object_files("configMap", proj["configMap"], objects, mode))
        elif proj.get("secret"):
            out.update(_object_files("secret", proj["secret"], objects, mode))
        elif proj.get("downwardAPI"):
            out.update(
                _downward_files(
                    pod,
                    proj["downwardAPI"].get("items") or [],
                    mode,
                    pod_ip=pod_ip,
                    host_ip=host_ip,
                    allocatable=allocatable,
                )
            )
        elif proj.get("serviceAccountToken"):
            sat = proj["serviceAccountToken"]
            key = (sat.get("audience") or "", int(sat.get("expirationSeconds") or 3600))
            out[sat["path"]] = (tokens[key].encode(), mode)
        else:
            raise VolumeError(f"unsupported projected source {sorted(proj)}")
    return out


# --- mounts (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """One mount in a container's namespace. ``kind``: ``bind`` (``source`` onto ``target``),
    ``tmpfs``, or ``dev`` (a minimal /dev: tmpfs with null, zero, random, ..., pts, shm)."""

    kind: str
    target: str
    source: str = ""
    readonly: bool = False
    options: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "source": self.source,
            "readonly": self.readonly,
            "options": self.options,
        }


def _depth(path: str) -> int:
    return len(PurePosixPath(path).parts)


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def plan_mounts(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    pod_dir: Path,
    env: Mapping[str, str],
    hosts: Path,
    resolv: Path,
    termination_log: Path,
    masks: Mapping[str, list[str]],
    resolve: Callable[[str], str] = lambda p: p,
) -> list[Mount]:
    """The container's mounts, parents before children. ``masks``: host paths hidden behind an
    empty tmpfs, each with the sub-paths bound back (``{"/root": ["/root/.pyenv"]}``); a mask
    under a volume mount is dropped (the volume hides it anyway). ``resolve`` maps a target to
    where it lands (``os.path.realpath``: ``/var/run/x`` is ``/run/x`` here)."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts: list[Mount] = [Mount("dev", "/dev")]
    volume_targets = []
    for vm in container.get("volumeMounts") or []:
        vol = volumes.get(vm["name"])
        if vol is None:
            raise VolumeError(f'volume "{vm["name"]}" not found in pod spec')
        source = volume_dir(pod_dir, vol)
        sub = vm.get("subPath") or expand(vm.get("subPathExpr") or "", env)
        if sub:
            source = source / sub
        ro = bool(vm.get("readOnly")) or volume_kind(vol) in ATOMIC_KINDS
        mounts.append(Mount("bind", resolve(vm["mountPath"]), str(source), ro))
        volume_targets.append(resolve(vm["mountPath"]))
    for path, keep in masks.items():
        if any(_under(path, t) for t in volume_targets):
            continue
        mounts.append(Mount("tmpfs", path, options="mode=755"))
        mounts.extend(Mount("bind", k, k, True) for k in keep)
    mounts.append(Mount("bind", "/etc/hosts", str(hosts)))
    mounts.append(Mount("bind", "/etc/resolv.conf", str(resolv)))
    term = container.get("terminationMessagePath") or "/dev/termination-log"
    mounts.append(Mount("bind", resolve(term), str(termination_log)))
    # stable sort: parents first, plan order among equals
    return sorted(mounts, key=lambda m: _depth(m.target))


def host_mountpoints(mounts: list[Mount]) -> list[str]:
    """Targets that sit on the host's root filesystem rather than inside another mount of the
    container: those must exist on the host before the container starts."""
    out = []
    for i, m in enumerate(mounts):
        if m.kind == "dev":
            continue
        covered = any(_under(m.target, p.target) and p.target != m.target for p in mounts[:i])
        if not covered:
            out.append(m.target)
    return out


# --- I/O: writing volumes -----------------------------------------------------------------------


def write_atomic(target: Path, files: Files, *, fs_group: int | None) -> None:
    """Publish ``files`` under ``target`` in the atomic-writer layout: a new ``..<timestamp>``
    directory, ``..data`` swapped to it with a rename, top-level symlinks through ``..data``.
    With ``fs_group``, files are group-owned by it and group-readable (kubelet
    ``SetVolumeOwnership`` on read-only volumes)."""
    target.mkdir(parents=True, exist_ok=True)
    _own(target, fs_group, is_dir=True)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + _secrets.token_hex(4)
    new = target / stamp
    new.mkdir(mode=0o755)
    _own(new, fs_group, is_dir=True)
    for rel, (content, mode) in files.items():
        path = new / rel
        for parent in reversed(path.relative_to(new).parents[:-1]):
            d = new / parent
            if not d.exists():
                d.mkdir(mode=0o755)
                _own(d, fs_group, is_dir=True)
        path.write_bytes(content)
        path.chmod(mode & 0o777)
        _own(path, fs_group, is_dir=False)
    old = os.readlink(target / "..data") if (target / "..data").is_symlink() else None
    tmp = target / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(stamp)
    tmp.rename(target / "..data")
    top = {PurePosixPath(rel).parts[0] for rel in files}
    for name in top:
        link = target / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for entry in target.iterdir():
        if not entry.name.startswith("..") and entry.name not in top:
            entry.unlink()
    if old and old != stamp:
        shutil.rmtree(target / old, ignore_errors=True)


def _own(path: Path, fs_group: int | None, *, is_dir: bool) -> None:
    if fs_group is None:
        return
    os.chown(path, -1, fs_group)
    mode = stat.S_IMODE(path.stat().st_mode)
    path.chmod(mode | (0o2550 if is_dir else 0o440))


def make_empty_dir(
    path: Path, *, medium: str, size_limit: str | None, fs_group: int | None
) -> None:
    """An emptyDir: mode 0777 (setgid + group ``fs_group`` when set); ``Memory``: a tmpfs."""
    path.mkdir(parents=True, exist_ok=True)
    if medium == "Memory" and not os.path.ismount(path):
        opts = "mode=0777" + (f",size={_tmpfs_size(size_limit)}" if size_limit else "")
        _mount_tmpfs(path, opts)
    path.chmod(0o777)
    if fs_group is not None:
        os.chown(path, -1, fs_group)
        path.chmod(0o2777)


def _tmpfs_size(limit: str) -> int:
    from .quantity import parse_quantity

    return max(int(parse_quantity(limit)), 4096)


def _mount_tmpfs(path: Path, options: str) -> None:
    import subprocess

    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True, capture_output=True
    )


def check_host_path(volume: dict[str, Any]) -> None:
    """hostPath ``type`` checks and creation (``DirectoryOrCreate``, ``FileOrCreate``)."""
    src = volume["hostPath"]
    path = Path(src["path"])
    kind = src.get("type") or ""
    if kind == "DirectoryOrCreate":
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    checks = {
        "Directory": (stat.S_ISDIR, "a directory"),
        "File": (stat.S_ISREG, "a file"),
        "Socket": (stat.S_ISSOCK, "a socket file"),
        "CharDevice": (stat.S_ISCHR, "a character device"),
        "BlockDevice": (stat.S_ISBLK, "a block device"),
    }
    if kind in checks:
        test, what = checks[kind]
        try:
            ok = test(path.stat().st_mode)
        except FileNotFoundError:
            ok = False
        if not ok:
            raise VolumeError(f"hostPath type check failed: {path} is not {what}")


def ensure_subpath(source: Path) -> None:
    """A subPath that does not exist yet is created as a directory (kubelet behaviour)."""
    if not source.exists() and not source.is_symlink():
        source.mkdir(mode=0o777, parents=True)
        source.chmod(0o777)


def unmount_under(root: Path) -> None:
    """Lazily unmount everything mounted at or below ``root`` (tmpfs emptyDirs)."""
    import subprocess

    prefix = str(root).rstrip("/") + "/"
    targets = [t for t in _mount_points() if t.startswith(prefix) or t == str(root)]
    for t in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", t], check=False, capture_output=True)


def _mount_points() -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            out.append(_unescape(line.split()[4]))
    return out


def _unescape(path: str) -> str:
    return path.encode().decode("unicode_escape") if "\\" in path else path
