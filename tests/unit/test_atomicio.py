"""write_atomic: full new content or untouched old content, never a partial or stray file."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from benchop.atomicio import FILE_MODE, fsync_dir, write_atomic


def test_creates_file_with_content_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "final.bin"
    write_atomic(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert stat.S_IMODE(target.stat().st_mode) == FILE_MODE
    assert os.listdir(tmp_path) == ["final.bin"]


def test_replaces_existing_content(tmp_path: Path) -> None:
    target = tmp_path / "final.bin"
    target.write_bytes(b"old content that is longer than the new one")
    write_atomic(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["final.bin"]


def test_callable_streams_into_the_file(tmp_path: Path) -> None:
    target = tmp_path / "big.bin"
    chunk = bytes(range(256)) * 4096  # 1 MiB

    def writer(f: BinaryIO) -> None:
        for _ in range(3):
            f.write(chunk)

    write_atomic(target, writer)
    assert target.read_bytes() == chunk * 3


def test_failing_write_leaves_old_content_and_no_tmp(tmp_path: Path) -> None:
    target = tmp_path / "final.bin"
    target.write_bytes(b"old")

    def half_then_fail(f: BinaryIO) -> None:
        f.write(b"partial new content")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["final.bin"]


def test_failing_write_to_new_path_leaves_nothing(tmp_path: Path) -> None:
    def fail(f: BinaryIO) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "final.bin", fail)
    assert os.listdir(tmp_path) == []


def test_failing_rename_removes_tmp(tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "keep").write_bytes(b"x")
    with pytest.raises(OSError):
        write_atomic(target, b"data")  # os.replace cannot put a file over a non-empty dir
    assert sorted(os.listdir(tmp_path)) == ["occupied"]
    assert (target / "keep").read_bytes() == b"x"


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nope" / "final.bin", b"data")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "final.bin"
    target.write_bytes(b"old")
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            write_atomic(target, b"new")
    finally:
        tmp_path.chmod(0o755)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["final.bin"]


def test_fsync_dir_accepts_a_directory_and_rejects_a_missing_one(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")
