"""Atomic file writes: readers see the old content or the new, never a torn file.

A temporary file in the same directory is written and fsynced, renamed over
the target with ``os.replace`` and the directory is fsynced so the rename
itself survives a crash. If anything fails the temporary file is removed and
the old content is untouched.

    write_atomic(results_dir / "final.msgpack", codec.encode(snapshot))
    write_atomic(path, lambda f: f.write(payload))   # stream into the open file

Blocking I/O: from async code call it via ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o644  # mkstemp creates 0600; results are meant to be read by others


def write_atomic(path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` with ``data`` (bytes, or a callable writing into the open file)."""
    target = Path(path)
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with open(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(directory)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename or create inside it is durable."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
