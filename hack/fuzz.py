#!/usr/bin/env python3
"""Fuzz benchop's input surfaces for longer than CI does.

    python hack/fuzz.py --seconds 300                  # every target, 300 s each
    python hack/fuzz.py --seconds 600 --target http    # one target (repeat --target for more)
    python hack/fuzz.py --seconds 60 --engine hypothesis

Targets and oracles: tests/fuzz/fuzztargets.py. ``codec``, ``sse`` and ``http`` run under
atheris (coverage guided, libFuzzer; one child process per target, started from the
committed corpus plus inputs drawn from the structured strategies); ``baseline``, ``gates``
and ``snapshots`` (and any target with ``--engine hypothesis``) under hypothesis with fresh
random seeds, round after round, until the time is up. A failing input is saved as
``tests/fuzz/corpus/<target>/crash-<sha1>``: fix the bug, keep the file, and
tests/fuzz/test_fuzz_corpus.py replays it on every run from then on. The last line is
``fuzz: targets T inputs N crashes C``; the exit code is 1 when anything crashed or hung.

libFuzzer's working corpus (new coverage, many small files) stays in ``--work`` (a temporary
directory by default), not in the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ_DIR = ROOT / "tests" / "fuzz"
ATHERIS_TARGETS = ("codec", "sse", "http")
HANG_S = 10  # libFuzzer -timeout: one input running longer is a hang


def _paths() -> None:
    for p in (ROOT / "operator", ROOT / "agent", FUZZ_DIR):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    # hostile inputs make the roles log warnings by the thousand (a failed baseline, an
    # unknown worker): expected, not printed (the targets' own handlers still see every record)
    logging.getLogger().addHandler(logging.NullHandler())


def _save(target: str, data: bytes, prefix: str = "crash") -> Path:
    folder = FUZZ_DIR / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- hypothesis


def run_hypothesis(target: str, seconds: float) -> tuple[int, int]:
    """Rounds of random hypothesis examples until ``seconds`` pass; (inputs, crashes)."""
    _paths()
    import fuzzstrategies as fs
    from fuzztargets import harness
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    strategies = {
        "codec": st.one_of(fs.frames(), st.binary(max_size=256)),
        "sse": st.one_of(fs.sse_inputs(), st.binary(max_size=256)),
        "http": st.one_of(fs.http_answers(), st.binary(max_size=128)),
        "baseline": st.one_of(fs.multipart("BaselineRequest"), fs.multipart()),
        "gates": st.one_of(fs.multipart("GateRequest"), fs.multipart()),
        "snapshots": st.one_of(fs.snapshot_frames(), fs.multipart(envelope=False)),
    }
    inputs = crashes = 0
    deadline = time.monotonic() + seconds
    with harness() as h:
        fn = h.target(target)
        failing: list[bytes] = []
        while time.monotonic() < deadline:
            failing.clear()

            @settings(
                max_examples=200,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.generate, Phase.shrink],
            )
            @given(strategies[target])
            def one(data: bytes) -> None:
                nonlocal inputs
                inputs += 1
                try:
                    fn(data)
                except BaseException:
                    failing.append(data)
                    raise

            try:
                one()
            except Exception as exc:  # the oracle failed: keep the smallest input
                crashes += 1
                print(f"fuzz: {target}: {type(exc).__name__}: {exc}"[:2000], file=sys.stderr)
                if failing:
                    path = _save(target, failing[-1])
                    print(
                        f"fuzz: {target}: input saved as {path.relative_to(ROOT)}", file=sys.stderr
                    )
                break
    return inputs, crashes


# --------------------------------------------------------------------------- atheris


def atheris_child(target: str, seconds: int, work: Path) -> None:
    """Runs in a child process: libFuzzer never returns (it exits on a crash or at the end)."""
    _paths()
    import atheris

    with atheris.instrument_imports(include=["benchop", "benchagent", "msgspec", "httptools"]):
        import fuzztargets
    from fuzztargets import Harness

    h = Harness()
    fn = h.target(target)
    crashes = work / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    args = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        f"-timeout={HANG_S}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        "-max_len=4096",
        str(corpus),
        str(fuzztargets.CORPUS / target),
    ]
    atheris.Setup(args, fn)
    atheris.Fuzz()


def _seed(target: str, corpus: Path, n: int = 300) -> None:
    """Start libFuzzer from inputs of the structured strategies, not only from nothing."""
    _paths()
    import warnings

    import fuzzstrategies as fs
    from hypothesis.errors import NonInteractiveExampleWarning

    strategy = {"codec": fs.frames(), "sse": fs.sse_inputs(), "http": fs.http_answers()}[target]
    corpus.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        for _ in range(n):
            data = strategy.example()
            (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)


def run_atheris(target: str, seconds: int, work: Path) -> tuple[int, int]:
    """One libFuzzer child for ``target``; (inputs, crashes)."""
    tdir = work / target
    _seed(target, tdir / "corpus")
    cmd = [sys.executable, __file__, "--atheris-child", target, "--seconds", str(seconds)]
    cmd += ["--work", str(tdir)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "agent")]),
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    log = proc.stderr
    runs = 0
    for line in log.splitlines():
        if line.startswith("stat::number_of_executed_units:"):
            runs = int(line.split(":")[-1])
    found = sorted((tdir / "crashes").glob("*"))
    for artifact in found:
        path = _save(target, artifact.read_bytes(), artifact.name.split("-")[0])
        print(
            f"fuzz: {target}: {artifact.name.split('-')[0]} saved as {path.relative_to(ROOT)}",
            file=sys.stderr,
        )
    if proc.returncode != 0 or found:
        tail = "\n".join(log.splitlines()[-40:])
        print(f"fuzz: {target}: libFuzzer exited {proc.returncode}:\n{tail}", file=sys.stderr)
        return runs, max(1, len(found))
    return runs, 0


def main(argv: list[str] | None = None) -> int:
    _paths()
    from fuzztargets import TARGETS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    ap.add_argument("--target", action="append", choices=TARGETS, help="default: all")
    ap.add_argument(
        "--engine",
        choices=["auto", "hypothesis"],
        default="auto",
        help="auto: atheris for codec, sse and http, hypothesis for the rest",
    )
    ap.add_argument("--work", type=Path, help="libFuzzer's working corpus (default: a temp dir)")
    ap.add_argument("--atheris-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.atheris_child:
        atheris_child(args.atheris_child, args.seconds, args.work)
        return 0
    targets = args.target or list(TARGETS)
    work = args.work or Path(tempfile.mkdtemp(prefix="benchop-fuzz-"))
    total_inputs = total_crashes = 0
    try:
        for target in targets:
            started = time.monotonic()
            if args.engine == "auto" and target in ATHERIS_TARGETS:
                engine = "atheris"
                inputs, crashes = run_atheris(target, args.seconds, work)
            else:
                engine = "hypothesis"
                inputs, crashes = run_hypothesis(target, args.seconds)
            took = time.monotonic() - started
            print(
                f"{target:<10} {engine:<10} {inputs:>9} inputs {crashes:>2} crashes {took:6.0f} s"
            )
            total_inputs += inputs
            total_crashes += crashes
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"fuzz: targets {len(targets)} inputs {total_inputs} crashes {total_crashes}")
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
