"""Incremental checkpoint of the profiling phase, and resuming from it.

Two files in the results directory:

- ``records.jsonl``: one :class:`~benchop.loadgen.records.RequestRecord` per
  line (JSON), appended as each profiling request completes. The line is
  encoded on the event loop and written by one writer thread, which wakes on
  the first queued line, waits 5 ms for more, drains its queue, writes the
  batch and flushes it to the OS (``fsync`` once, at close). A failed write
  is logged and counted (``write_errors``), never fatal; the next write
  starts on a fresh line so one bad batch never corrupts the lines after it.
- ``checkpoint.json``: a :class:`CheckpointState` (atomic writes): which run,
  worker and spec the records belong to, the attempt number and how long
  profiling has been running, so a duration bound counts the time of earlier
  attempts (not the downtime between them).
- ``base.msgpack`` (only in a pod that replaced an earlier one of its index): the earlier
  pods' last COMPLETE snapshot the coordinator handed over (:mod:`benchop.core.resume`),
  kept so a container restart in this pod resumes from it without asking again. The
  records, the state's attempt and elapsed time continue after it.

Resume (:func:`load`): a torn last line (a crash mid-write) is dropped and cut
off the file; a ``cancelled`` record of an earlier attempt is dropped (the
request was cut short by the worker, not answered by the server, and the
resumed worker sends a new one); every other record counts exactly once. The
final metrics are ``registry_from(load(dir).records)`` exactly.

    ck = Checkpoint(results_dir)
    ck.append(record)          # on the event loop, cheap
    await ck.close()
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from benchagent.codec import MsgpackCodec
from benchagent.wire import MetricsSnapshot
from benchop.atomicio import write_atomic
from benchop.loadgen.records import RequestRecord

__all__ = [
    "BASE",
    "RECORDS",
    "STATE",
    "Checkpoint",
    "CheckpointState",
    "Loaded",
    "iter_lines",
    "iter_records",
    "load",
    "load_base",
    "save_base",
    "save_state",
]

log = logging.getLogger(__name__)

RECORDS = "records.jsonl"
STATE = "checkpoint.json"
BASE = "base.msgpack"
_COALESCE_S = 0.005  # the writer thread wakes at most ~200 times a second


class CheckpointState(msgspec.Struct, kw_only=True):
    """``checkpoint.json``: whose records these are and how far profiling got."""

    version: int = 1
    run: str
    worker: int
    workers: int
    spec_hash: str  # sha256 of the canonical spec JSON
    attempt: int  # 1 for the first start, +1 per resume
    attempt_started_ns: int  # wall clock when this attempt started profiling
    elapsed_before_s: float = 0.0  # profiling time of the earlier attempts
    elapsed_s: float = 0.0  # profiling time so far, including earlier attempts
    profiling_done: bool = False  # the profiling bound was reached


class Loaded(msgspec.Struct, kw_only=True):
    """What a results directory holds: its state and the records that count."""

    state: CheckpointState | None
    records: list[RequestRecord]
    dropped_cancelled: int = 0
    torn_bytes: int = 0  # bytes of a torn last line (cut off when ``resume``)
    bad_lines: int = 0  # undecodable complete lines (skipped)

    @property
    def elapsed_s(self) -> float:
        """Profiling time of the earlier attempts, from the state and the last record."""
        st = self.state
        if st is None:
            return 0.0
        last_end = max(
            (r.sent_ns + r.e2e_ns for r in self.records if r.attempt == st.attempt), default=0
        )
        from_records = st.elapsed_before_s + max(last_end - st.attempt_started_ns, 0) / 1e9
        return max(st.elapsed_s, from_records)


_decode_record = msgspec.json.Decoder(RequestRecord).decode
_decode_state = msgspec.json.Decoder(CheckpointState).decode


def load(results_dir: str | os.PathLike[str], *, resume: bool = False) -> Loaded:
    """Read ``checkpoint.json`` and ``records.jsonl`` (both optional).

    Without ``resume`` this is the reader's view: the records the last
    attempt's final snapshot covers. With ``resume`` it is the view of the next
    attempt: every cancelled record is dropped too (they were cut short by the
    worker, the next attempt sends new requests instead) and a torn last line
    is truncated away so appends start on a clean line.

    Raises ValueError when ``checkpoint.json`` exists but is not a state.
    """
    d = Path(results_dir)
    state = _read_state(d)
    path = d / RECORDS
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    end = data.rfind(b"\n") + 1  # everything after the last newline is a torn line
    torn = len(data) - end
    if torn and resume:
        log.warning("%s: cutting off a torn last line (%d bytes)", path, torn)
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    attempt = state.attempt if state is not None else 0
    if resume:
        attempt += 1
    counts = _Counts()
    records = [rec for rec, _ in _counted(data[:end].splitlines(), attempt, counts)]
    if counts.bad:
        log.warning("%s: skipped %d undecodable lines", path, counts.bad)
    bad, dropped = counts.bad, counts.dropped
    return Loaded(
        state=state, records=records, dropped_cancelled=dropped, torn_bytes=torn, bad_lines=bad
    )


class _Counts:
    __slots__ = ("bad", "dropped")

    def __init__(self) -> None:
        self.bad = 0
        self.dropped = 0


def _counted(
    lines: Iterable[bytes], attempt: int, counts: _Counts
) -> Iterator[tuple[RequestRecord, bytes]]:
    """The records of complete ``lines`` that count, with their line: each id once,
    undecodable lines skipped, ``cancelled`` records of attempts before ``attempt`` dropped."""
    seen: set[str] = set()
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = _decode_record(line)
        except msgspec.DecodeError:
            counts.bad += 1
            continue
        if rec.id in seen:
            continue
        seen.add(rec.id)
        if rec.outcome == "cancelled" and rec.attempt < attempt:
            counts.dropped += 1
            continue
        yield rec, line


def _complete_lines(path: Path) -> Iterator[bytes]:
    """The lines of ``path`` that end in a newline (a torn last line is not), one at a time."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, also when the reader stops early
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if line.endswith(b"\n"):
                yield line


def iter_records(results_dir: str | os.PathLike[str]) -> Iterator[RequestRecord]:
    """The records :func:`load` would return (the reader's view), streamed from the file:
    memory stays flat however many there are.

    >>> sum(r.output_tokens for r in iter_records(d))  # doctest: +SKIP
    """
    for rec, _ in iter_lines(results_dir):
        yield rec


def iter_lines(results_dir: str | os.PathLike[str]) -> Iterator[tuple[RequestRecord, bytes]]:
    """:func:`iter_records` with each record's line as written (newline included)."""
    d = Path(results_dir)
    state = _read_state(d)
    attempt = state.attempt if state is not None else 0
    yield from _counted(_complete_lines(d / RECORDS), attempt, _Counts())


def _read_state(d: Path) -> CheckpointState | None:
    try:
        raw = (d / STATE).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return _decode_state(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{d / STATE} is not a benchop checkpoint state: {exc}") from None


def save_state(results_dir: str | os.PathLike[str], state: CheckpointState) -> None:
    """Write ``checkpoint.json`` atomically (blocking: call via ``asyncio.to_thread``)."""
    write_atomic(Path(results_dir) / STATE, msgspec.json.encode(state))


def load_base(results_dir: str | os.PathLike[str]) -> MetricsSnapshot | None:
    """``base.msgpack`` (None when there is none). Raises ValueError when it is not a snapshot."""
    path = Path(results_dir) / BASE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    snap = MsgpackCodec().decode(data)
    if not isinstance(snap, MetricsSnapshot):
        raise ValueError(f"{path} is not a benchop snapshot")
    return snap


def save_base(results_dir: str | os.PathLike[str], base: MetricsSnapshot) -> None:
    """Write ``base.msgpack`` atomically (blocking)."""
    write_atomic(Path(results_dir) / BASE, MsgpackCodec().encode(base))


class Checkpoint:
    """Appends records to ``records.jsonl`` from one writer thread; never raises."""

    def __init__(self, results_dir: str | os.PathLike[str]) -> None:
        self.path = Path(results_dir) / RECORDS
        self.written = 0
        self.write_errors = 0
        self._encode = msgspec.json.Encoder().encode
        self._q: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._file = None
        try:
            self._file = open(self.path, "ab")  # noqa: SIM115 - owned by the writer thread
        except OSError as exc:
            log.error("cannot open %s: %s; records will not be checkpointed", self.path, exc)
        self._thread = threading.Thread(target=self._run, name="benchop-checkpoint", daemon=True)
        self._thread.start()

    def append(self, rec: RequestRecord) -> None:
        """Queue one record (encoded here, written by the thread)."""
        self._q.put(self._encode(rec) + b"\n")

    async def close(self) -> None:
        """Write what is queued, fsync and close (waits off the event loop)."""
        self._q.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        q = self._q
        dirty = False  # the last write failed: the file may end mid-line
        stop = False
        while not stop:
            batch = [q.get()]
            if batch[0] is not None:
                time.sleep(_COALESCE_S)  # let records gather: one wake-up and write per batch
            while True:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is None or None in batch:
                stop = True
            lines = [b for b in batch if b is not None]
            if not lines:
                continue
            f = self._file
            try:
                if f is None:
                    raise OSError(f"{self.path} is not open")
                f.write((b"\n" if dirty else b"") + b"".join(lines))
                f.flush()
                dirty = False
                self.written += len(lines)
            except OSError as exc:
                dirty = True
                self.write_errors += len(lines)
                if self.write_errors == len(lines) or self.write_errors % 1000 < len(lines):
                    log.error(
                        "checkpoint write failed (%d records lost so far): %s",
                        self.write_errors,
                        exc,
                    )
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
            except OSError as exc:
                log.error("closing %s failed: %s", self.path, exc)
