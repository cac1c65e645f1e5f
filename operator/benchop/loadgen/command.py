"""``benchop loadgen``: run one load-generator worker (the program a Job's pod runs).

    benchop loadgen --spec run.yaml --run r --worker-index 0 --workers 2 \\
        --gate-endpoint tcp://op:5555 --snapshot-endpoint tcp://op:5556 \\
        --results-dir /results --termination-log /dev/termination-log

``--spec`` is a BenchmarkRun manifest (YAML or JSON; the run name defaults to
``metadata.name``) or a bare ``spec``. SIGTERM/SIGINT drain the requests in
flight (``--drain-timeout``), a second signal cancels them; the final snapshot
is produced either way. Exit codes: 0 done, 2 bad spec or arguments or a
results directory of another run, 128+signal when stopped by a signal, 1 on
an unexpected error. Runs on uvloop when it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from benchop.api.durations import parse_duration
from benchop.api.models import (
    BenchmarkRun,
    BenchmarkRunSpec,
    format_validation_error,
    load_manifest,
)
from benchop.core.workloadfiles import MOUNT_ROOT
from benchop.loadgen.worker import CheckpointMismatch, Worker, WorkerConfig

__all__ = ["add_arguments", "load_spec", "run"]

log = logging.getLogger("benchop.loadgen")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--spec",
        default=env("BENCHOP_SPEC_FILE"),
        help="BenchmarkRun manifest or spec, YAML/JSON (env BENCHOP_SPEC_FILE)",
    )
    parser.add_argument(
        "--run",
        default=env("BENCHOP_RUN"),
        help="run name (env BENCHOP_RUN; default: metadata.name)",
    )
    parser.add_argument(
        "--worker-index",
        type=int,
        default=_env_int("JOB_COMPLETION_INDEX") or 0,
        help="this worker's index, 0-based (env JOB_COMPLETION_INDEX)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="number of workers (default: spec.load.workers)"
    )
    parser.add_argument(
        "--gate-endpoint",
        default=env("BENCHOP_GATE_ENDPOINT"),
        help="ZMQ endpoint of the gate coordinator; none = ungated (env BENCHOP_GATE_ENDPOINT)",
    )
    parser.add_argument(
        "--snapshot-endpoint",
        default=env("BENCHOP_SNAPSHOT_ENDPOINT"),
        help="ZMQ endpoint snapshots are published to (env BENCHOP_SNAPSHOT_ENDPOINT)",
    )
    parser.add_argument(
        "--curve-server-key",
        default=env("BENCHOP_CURVE_SERVER_KEY"),
        metavar="Z85",
        help="the operator's CurveZMQ public key: gates and snapshots encrypted, the operator "
        "authenticated (env BENCHOP_CURVE_SERVER_KEY; none = plain ZMQ)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=Path("/results"),
        help="records.jsonl, checkpoint.json and final.msgpack go here (default /results)",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=Path("/dev/termination-log"),
        help="file for the compact final summary (default /dev/termination-log)",
    )
    parser.add_argument(
        "--workload-root",
        default=MOUNT_ROOT,
        help="where the dataset/tokenizer volumes are mounted (default %(default)s)",
    )
    parser.add_argument(
        "--incarnation",
        default=env("BENCHOP_POD_UID"),
        help="this pod's identity, the same across container restarts (env BENCHOP_POD_UID; "
        "default: a random one)",
    )
    parser.add_argument("--target-url", default=None, help="override spec.target.url (and urls)")
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        default=env("BENCHOP_SECRETS_DIR") or None,
        help="Secrets of the spec as DIR/<secret>/<key> files: the TLS files, and header "
        "values not in the environment (env BENCHOP_SECRETS_DIR)",
    )
    parser.add_argument(
        "--api-key-env",
        default="BENCHOP_API_KEY",
        help="name of the environment variable holding the API key (default BENCHOP_API_KEY)",
    )
    parser.add_argument(
        "--snapshot-interval", default="1s", help="live snapshot period (default 1s)"
    )
    parser.add_argument(
        "--drain-timeout",
        default="10s",
        help="how long a stop waits for requests in flight (default 10s)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def load_spec(path: str | os.PathLike[str]) -> tuple[BenchmarkRunSpec, str | None]:
    """The spec in a manifest or bare-spec file and the manifest's name (if any).

    Raises ValueError with a message naming the offending field.
    """
    try:
        data: Any = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read spec {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping (a BenchmarkRun or its spec)")
    try:
        if "kind" in data:
            manifest = load_manifest(data)
            if not isinstance(manifest, BenchmarkRun):
                raise ValueError(f"{path}: kind {data['kind']!r} is not a BenchmarkRun")
            return manifest.spec, manifest.metadata.name
        return BenchmarkRunSpec.model_validate(data), None
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid spec:\n{format_validation_error(exc)}") from None


def _config(args: argparse.Namespace) -> WorkerConfig:
    if not args.spec:
        raise ValueError("--spec (or env BENCHOP_SPEC_FILE) is required")
    spec, name = load_spec(args.spec)
    run_name = args.run or name
    if not run_name:
        raise ValueError("--run (or env BENCHOP_RUN) is required for a bare spec")
    return WorkerConfig(
        spec=spec,
        run=run_name,
        worker_index=args.worker_index,
        workers=args.workers,
        target_url=args.target_url,
        # a Secret made with `echo key | base64` ends in a newline: never part of a key
        api_key=(os.environ.get(args.api_key_env) or "").strip() or None,
        secrets_dir=args.secrets_dir,
        gate_endpoint=args.gate_endpoint or None,
        snapshot_endpoint=args.snapshot_endpoint or None,
        curve_server_key=args.curve_server_key or None,
        results_dir=args.results_dir,
        termination_log=args.termination_log,
        snapshot_interval_s=parse_duration(args.snapshot_interval),
        drain_timeout_s=parse_duration(args.drain_timeout),
        workload_root=args.workload_root,
        incarnation=args.incarnation or None,
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _main(config: WorkerConfig) -> int:
    worker = Worker(config)
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(sig: int) -> None:
        received.append(sig)
        log.warning(
            "%s: %s", signal.Signals(sig).name, "draining" if len(received) == 1 else "cancelling"
        )
        worker.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        outcome = await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    c = outcome.snapshot.counters
    log.info(
        "worker %d done: %s, %d requests (%d ok), %.1fs, attempt %d%s",
        config.worker_index,
        outcome.snapshot.state,
        c.get("requests_total", 0),
        c.get("requests_ok", 0),
        outcome.snapshot.elapsed_s,
        outcome.attempt,
        ", interrupted" if outcome.interrupted else "",
    )
    if received:
        return 128 + received[0]
    return outcome.exit_code


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = _config(args)
        if config.results_dir is not None:
            config.results_dir.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as exc:
        return _refuse(exc, args.termination_log)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_main(config))
    except (CheckpointMismatch, ValueError) as exc:  # e.g. a dataset that cannot be used
        return _refuse(exc, config.termination_log)


def _refuse(exc: BaseException, termination_log: Path | None) -> int:
    """Exit 2 with the reason on stderr and in the termination log (the operator shows a
    crash-looping pod's last termination message)."""
    print(f"benchop loadgen: {exc}", file=sys.stderr)
    if termination_log is not None:
        with contextlib.suppress(OSError):
            termination_log.write_text(f"benchop loadgen: {exc}"[:4000])
    return 2
