"""Mount points created on the host for containers, and removed when no pod needs them.

A container's volume may be mounted where the host has no directory (``/var/run/secrets/...``,
``/etc/benchop``); the mount needs an existing mount point, which a private mount namespace cannot
conjure. The kubelet creates the missing path components on the host, records each with the pods
using it (in ``mountpoints.json`` too, so a kubelet restarted after a crash removes what its
predecessor created), and removes them — deepest first, only if still empty — when the last of
those pods is torn down.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class Mountpoints:
    """``mp.ensure(owner, "/etc/app/conf", is_dir=True)``; ``mp.release(owner)``."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self._owners: dict[str, set[str]] = {}  # created path -> owners

    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self._owners)))
        tmp.replace(self.state_file)

    def ensure(self, owner: str, target: str, *, is_dir: bool) -> None:
        path = Path(target)
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
            self._owners[str(m)] = set()
            log.info("created mount point %s on the host", m)
        for m in [*missing, *(q for q in path.parents)]:
            if str(m) in self._owners:
                self._owners[str(m)].add(owner)
        if str(path) in self._owners:
            self._owners[str(path)].add(owner)
        if missing:
            self._save()

    def release(self, owner: str) -> None:
        changed = False
        for p in sorted(self._owners, key=len, reverse=True):
            owners = self._owners[p]
            if owner not in owners:
                continue
            owners.discard(owner)
            if not owners:
                _remove(Path(p))
                del self._owners[p]
                changed = True
        if changed:
            self._save()

    def cleanup_stale(self) -> None:
        """Remove what a previous run recorded (call before starting any pod)."""
        try:
            paths = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        for p in sorted(paths, key=len, reverse=True):
            _remove(Path(p))
        self.state_file.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif path.is_file() and path.stat().st_size == 0:
            path.unlink()
    except OSError as e:
        log.warning("cannot remove mount point %s: %s", path, e)
