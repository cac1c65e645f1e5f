"""Mount points created on the host for containers, and removed when no pod needs them.

A container's volume may be mounted where the host has no directory (``/results``,
``/etc/benchop``); the mount needs an existing mount point, which a private mount namespace cannot
conjure. The kubelet creates the missing path components on the host, records each with the pods
using it, and removes them — deepest first, only if still empty — when the last of those pods is
torn down.

The host's root filesystem is shared by every test kubelet on the machine (one per
``BENCHOP_KUBE_SLOT``), so the record is too: one file for the host (:data:`HOST_STATE`), changed
under an exclusive ``flock``, owners named by kubelet (its ``kubelet_dir``) and pod uid. Removing
a directory another mount namespace has a mount on succeeds and silently detaches that mount:
with per-kubelet records, a kubelet whose last ``/results`` pod ended removed ``/results`` under
the running workers of another kubelet, which saw their emptyDir vanish (``[Errno 30] Read-only
file system: '/results'`` with ``readOnlyRootFilesystem``).

A kubelet drops its own owners when it starts and stops (:meth:`Mountpoints.cleanup_stale`: a
previous run's pods no longer hold their mounts), and the owners of kubelets whose directory is
gone (a purged slot).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

HOST_STATE = Path("/run/testkubelet/mountpoints.json")

Owners = dict[str, set[tuple[str, str]]]  # created path -> {(kubelet instance, pod uid)}


class Mountpoints:
    """``mp.ensure(uid, "/etc/app/conf", is_dir=True)``; ``mp.release(uid)``.

    ``instance`` names this kubelet among those sharing ``state_file`` (its kubelet dir)."""

    def __init__(self, state_file: Path, instance: str) -> None:
        self.state_file = state_file
        self.instance = instance

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Owners]:
        """The host's record, read and written back under an exclusive lock."""
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_file.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                raw = json.loads(self.state_file.read_text())
                owners = {p: {(i, o) for i, o in pairs} for p, pairs in raw.items()}
            except (OSError, ValueError, TypeError, AttributeError):
                owners = {}
            before = {p: set(o) for p, o in owners.items()}
            yield owners
            if owners != before:
                tmp = self.state_file.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({p: sorted(o) for p, o in sorted(owners.items())}))
                tmp.replace(self.state_file)
        finally:
            os.close(fd)  # releases the lock

    def ensure(self, owner: str, target: str, *, is_dir: bool) -> None:
        me = (self.instance, owner)
        path = Path(target)
        with self._locked() as owners:
            missing = []
            p = path
            while not os.path.lexists(p):
                missing.append(p)
                p = p.parent
            for m in reversed(missing):
                if m == path and not is_dir:
                    m.touch(mode=0o644)
                else:
                    m.mkdir(mode=0o755)
                owners[str(m)] = set()
                log.info("created mount point %s on the host", m)
            for m in (path, *path.parents):  # ours, or another kubelet's: held while we use it
                if str(m) in owners:
                    owners[str(m)].add(me)

    def release(self, owner: str) -> None:
        me = (self.instance, owner)
        with self._locked() as owners:
            for who in owners.values():
                who.discard(me)
            _remove_unowned(owners)

    def cleanup_stale(self) -> None:
        """Drop this kubelet's owners (a previous run's pods, or leftovers at shutdown) and those
        of kubelets whose directory is gone, and remove what nobody holds any more (call before
        starting any pod)."""
        with self._locked() as owners:
            for who in owners.values():
                who.difference_update(
                    {(i, o) for i, o in who if i == self.instance or not os.path.isdir(i)}
                )
            _remove_unowned(owners)


def _remove_unowned(owners: Owners) -> None:
    for p in sorted(owners, key=len, reverse=True):
        if not owners[p]:
            _remove(Path(p))
            del owners[p]


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif path.is_file() and path.stat().st_size == 0:
            path.unlink()
    except OSError as e:
        log.warning("cannot remove mount point %s: %s", path, e)
