"""records.jsonl + checkpoint.json: torn lines, dropped cancellations, write errors."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from benchop.loadgen import checkpoint as ckpt
from benchop.loadgen.records import RequestRecord


def rec(i: int, attempt: int = 1, outcome: str = "ok", end_ns: int = 0) -> RequestRecord:
    return RequestRecord(
        id=f"w0-a{attempt}-{i}", worker=0, attempt=attempt, index=i, sent_ns=end_ns - 10,
        outcome=outcome, e2e_ns=10,
    )  # fmt: skip


def state(attempt: int, **kw: object) -> ckpt.CheckpointState:
    return ckpt.CheckpointState(
        run="r", worker=0, workers=1, spec_hash="h", attempt=attempt,
        attempt_started_ns=kw.pop("started", 0), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def line(r: RequestRecord) -> bytes:
    return msgspec.json.encode(r) + b"\n"


def test_empty_directory(tmp_path: Path) -> None:
    loaded = ckpt.load(tmp_path)
    assert loaded.state is None and loaded.records == [] and loaded.elapsed_s == 0.0


def test_torn_last_line_is_dropped_and_cut_on_repair(tmp_path: Path) -> None:
    ckpt.save_state(tmp_path, state(1))
    good = line(rec(0)) + line(rec(1))
    (tmp_path / ckpt.RECORDS).write_bytes(good + line(rec(2))[:17])
    loaded = ckpt.load(tmp_path)
    assert [r.index for r in loaded.records] == [0, 1] and loaded.torn_bytes == 17
    assert (tmp_path / ckpt.RECORDS).stat().st_size == len(good) + 17  # readers do not cut
    ckpt.load(tmp_path, resume=True)
    assert (tmp_path / ckpt.RECORDS).read_bytes() == good


def test_cancelled_of_earlier_attempts_dropped_duplicates_and_garbage_skipped(
    tmp_path: Path,
) -> None:
    ckpt.save_state(tmp_path, state(2))
    data = (
        line(rec(0))
        + line(rec(1, outcome="cancelled"))  # attempt 1 < 2: dropped
        + b"not json\n"
        + line(rec(0))  # duplicate id
        + line(rec(0, attempt=2, outcome="cancelled"))  # current attempt: kept
    )
    (tmp_path / ckpt.RECORDS).write_bytes(data)
    loaded = ckpt.load(tmp_path)
    assert [r.id for r in loaded.records] == ["w0-a1-0", "w0-a2-0"]
    assert loaded.dropped_cancelled == 1 and loaded.bad_lines == 1
    resumed = ckpt.load(tmp_path, resume=True)  # the next attempt drops every cancellation
    assert [r.id for r in resumed.records] == ["w0-a1-0"] and resumed.dropped_cancelled == 2


def test_elapsed_counts_earlier_attempts_not_downtime(tmp_path: Path) -> None:
    # attempt 2 started at t=100 s after 30 s of attempt 1; its last record ended at t=112 s
    ckpt.save_state(tmp_path, state(2, started=100 * 10**9, elapsed_before_s=30.0, elapsed_s=41.0))
    (tmp_path / ckpt.RECORDS).write_bytes(line(rec(0, attempt=2, end_ns=112 * 10**9)))
    assert ckpt.load(tmp_path).elapsed_s == pytest.approx(42.0)


def test_corrupt_state_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ckpt.STATE).write_bytes(b"{")
    with pytest.raises(ValueError, match="checkpoint state"):
        ckpt.load(tmp_path)


async def test_writer_appends_every_record(tmp_path: Path) -> None:
    w = ckpt.Checkpoint(tmp_path)
    for i in range(500):
        w.append(rec(i))
    await w.close()
    assert w.written == 500 and w.write_errors == 0
    ckpt.save_state(tmp_path, state(1))
    assert [r.index for r in ckpt.load(tmp_path).records] == list(range(500))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_write_errors_are_counted_never_raised(tmp_path: Path) -> None:
    (tmp_path / ckpt.RECORDS).symlink_to("/dev/full")  # every write: ENOSPC
    w = ckpt.Checkpoint(tmp_path)
    for i in range(3):
        w.append(rec(i))
    await w.close()
    assert w.written == 0 and w.write_errors == 3


async def test_unopenable_file_counts_errors(tmp_path: Path) -> None:
    (tmp_path / ckpt.RECORDS).mkdir()  # a directory where the file should be
    w = ckpt.Checkpoint(tmp_path)
    w.append(rec(0))
    await w.close()
    assert w.write_errors == 1
