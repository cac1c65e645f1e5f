"""Container processes: start through the shim, signal, reap, and clean up after a crash.

Each container instance is one process tree started in its own session (process group = its
pid), stdout and stderr appended to ``<container>/<restart>.log``. A ``.pid`` file next to it
records pid and kernel start time, so a kubelet started after a crash kills exactly the
processes its predecessor left behind (:func:`reap_stale`) and nothing that merely reused a pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .status import now_iso

log = logging.getLogger(__name__)

SHIM = str(Path(__file__).with_name("shim.py"))
MAX_MESSAGE = 4096  # kubelet MaxContainerTerminationMessageLength
MAX_LOG_MESSAGE = 2048  # MaxContainerTerminationMessageLogLength
MAX_LOG_LINES = 80  # MaxContainerTerminationMessageLogLines


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after "(comm)"


@dataclass
class Instance:
    """One run of a container."""

    proc: asyncio.subprocess.Process
    container_id: str
    started_at: str
    log_path: Path
    termination_path: Path
    start_error: str  # why the shim could not exec the command ("" when it could)
    spec_path: Path
    spec: dict[str, Any]  # what the shim was given (identity, env, cwd: exec probes reuse them)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        """Signal the whole process group (the container's processes)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def wait(self) -> int:
        """Wait for the main process; kill what is left of its group; return the exit code as
        the runtime reports it (128 + signal for a signalled process)."""
        rc = await self.proc.wait()
        self.signal(signal.SIGKILL)
        self.spec_path.with_suffix(".pid").unlink(missing_ok=True)
        self.spec_path.unlink(missing_ok=True)
        return 128 - rc if rc < 0 else rc


def new_container_id() -> str:
    return "testkubelet://" + secrets.token_hex(32)


def write_spec(path: Path, spec: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f)


def _read_to_eof(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read()


async def start(spec: dict[str, Any], *, spec_path: Path, log_path: Path) -> Instance:
    """Start the shim with ``spec`` (see shim.py) in a new session; return once the container's
    command has been exec'd (or the shim has failed: ``start_error``)."""
    termination_path = spec_path.with_suffix(".termination-log")
    write_spec(spec_path, spec)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sync_r, sync_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            SHIM,
            str(spec_path),
            str(sync_w),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            pass_fds=(sync_w,),
        )
    finally:
        os.close(log_fd)
        os.close(sync_w)
    stamp = _start_time(proc.pid)
    if stamp:
        spec_path.with_suffix(".pid").write_text(f"{proc.pid} {stamp}\n")
    error = (await asyncio.to_thread(_read_to_eof, sync_r)).decode("utf-8", "replace").strip()
    return Instance(
        proc, new_container_id(), now_iso(), log_path, termination_path, error, spec_path, spec
    )


async def run_joined(spec: dict[str, Any], *, spec_path: Path, limit: float) -> tuple[int, str]:
    """Run a command inside a running container (exec probe, preStop hook): ``(exit, output)``;
    exit -1 and a message on timeout (the process group is killed)."""
    write_spec(spec_path, spec)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        SHIM,
        str(spec_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
        return proc.returncode or 0, out.decode("utf-8", "replace")
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return -1, f"command timed out after {limit:g}s"
    finally:
        _unlink(spec_path)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def termination_message(instance: Instance, *, policy: str, exit_code: int) -> str:
    """The message the kubelet puts in ``state.terminated.message``: the last 4096 bytes of the
    termination-message file; with ``FallbackToLogsOnError`` and a failure, if that is empty, the
    last 80 log lines (at most 2048 bytes)."""
    try:
        with open(instance.termination_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - MAX_MESSAGE))
            data = f.read()
    except OSError:
        data = b""
    if data or policy != "FallbackToLogsOnError" or exit_code == 0:
        return data.decode("utf-8", "replace")
    return tail_log(instance.log_path, lines=MAX_LOG_LINES, limit=MAX_LOG_MESSAGE)


def tail_log(path: Path, *, lines: int, limit: int) -> str:
    try:
        data = path.read_bytes()[-(limit * 64) :]
    except OSError:
        return ""
    text = b"\n".join(data.split(b"\n")[-(lines + 1) :])
    return text[-limit:].decode("utf-8", "replace")


def reap_stale(pods_dir: Path) -> int:
    """Kill the process groups a previous kubelet left (recorded pid + start time match)."""
    killed = 0
    for pid_file in pods_dir.glob("*/*/*.pid"):
        try:
            pid_s, stamp = pid_file.read_text().split()
            pid = int(pid_s)
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            continue
        if _start_time(pid) == stamp:
            try:
                os.killpg(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        pid_file.unlink(missing_ok=True)
    return killed
