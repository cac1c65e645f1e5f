"""Record the real llama.cpp server's HTTP responses, byte for byte, as test fixtures.

Starts llama-cpp-python's server (``tests/realserver/llamaserver.py``, the tests' own
settings), sends each request below over a raw socket (``Connection: close``, read to EOF)
and writes the status line, headers and body exactly as received to
``tests/fixtures/streams/llamacpp/NAME.http``, plus ``index.json`` (each case's request and
what it shows). Greedy sampling (``temperature: 0``) and a fixed seed keep a re-recording
close to the committed one; ``Date`` headers and ids change.

    python hack/record_llamacpp_streams.py              # needs: bash hack/install-llama.sh
    python hack/record_llamacpp_streams.py --only chat-stream-usage
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "realserver"))

from llamaserver import MODEL_ALIAS, model_file, start_server  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "streams" / "llamacpp"
PROMPT = "Name three colours."
CHAT = {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": PROMPT}]}
COMPLETION = {"model": MODEL_ALIAS, "prompt": "The three primary colours are"}
GREEDY = {"temperature": 0, "seed": 7}
# What benchop's load generator sends today (loadgen/client.py), with a small max_tokens.
BENCHOP = {"stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
LONG_PROMPT = " ".join(["word"] * 2100)  # over n_ctx 2048
PING_PRELUDE = "import sse_starlette.sse as s; s.EventSourceResponse.DEFAULT_PING_INTERVAL = 0.5"

CASES: list[tuple[str, str, str, dict[str, Any] | None, str]] = [
    ("models", "GET", "/v1/models", None, "the model list"),
    ("chat-stream", "POST", "/v1/chat/completions",
     {**CHAT, **GREEDY, "max_tokens": 8, "stream": True},
     "chat streaming, no stream_options"),
    ("chat-stream-usage", "POST", "/v1/chat/completions",
     {**CHAT, **GREEDY, "max_tokens": 8, **BENCHOP},
     "chat streaming with benchop's body: stream_options.include_usage and ignore_eos"),
    ("chat-stream-eos", "POST", "/v1/chat/completions",
     {**CHAT, **GREEDY, "max_tokens": 8, **BENCHOP, "logit_bias": {"1": 100.0}},
     "Gemma's end-of-sequence token (id 1) forced by logit_bias although ignore_eos was sent: "
     "the stream ends at once, finish_reason stop, no content"),
    ("completions-stream", "POST", "/v1/completions",
     {**COMPLETION, **GREEDY, "max_tokens": 8, "stream": True},
     "completions streaming, no stream_options"),
    ("completions-stream-usage", "POST", "/v1/completions",
     {**COMPLETION, **GREEDY, "max_tokens": 8, **BENCHOP},
     "completions streaming with benchop's body"),
    ("chat", "POST", "/v1/chat/completions",
     {**CHAT, **GREEDY, "max_tokens": 8},
     "chat, not streaming"),
    ("completions", "POST", "/v1/completions",
     {**COMPLETION, **GREEDY, "max_tokens": 8},
     "completions, not streaming"),
    ("error-unknown-model", "POST", "/v1/chat/completions",
     {**CHAT, **GREEDY, "model": "no-such-model", "max_tokens": 4, **BENCHOP},
     "a model name the server does not serve"),
    ("error-too-long-stream", "POST", "/v1/completions",
     {**COMPLETION, "prompt": LONG_PROMPT, "max_tokens": 4, **BENCHOP},
     "a prompt longer than the context, streaming"),
    ("error-too-long", "POST", "/v1/completions",
     {**COMPLETION, "prompt": LONG_PROMPT, "max_tokens": 4},
     "a prompt longer than the context, not streaming"),
    ("error-bad-field", "POST", "/v1/chat/completions",
     {**CHAT, "max_tokens": "eight", "stream": True},
     "a field of the wrong type"),
]  # fmt: skip


def _shown(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The body as index.json shows it (the over-long prompt abbreviated)."""
    if body is not None and body.get("prompt") == LONG_PROMPT:
        return {**body, "prompt": "'word' 2100 times, space-separated"}
    return body


def exchange(host: str, port: int, method: str, path: str, body: dict[str, Any] | None) -> bytes:
    """One request on a fresh connection; the response's bytes as received, to EOF."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Accept: application/json, text/event-stream\r\nConnection: close\r\n"
    )
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    with socket.create_connection((host, port), timeout=120) as s:
        s.sendall(head.encode() + b"\r\n" + payload)
        reads = []
        while data := s.recv(65536):
            reads.append(data)
    return b"".join(reads)


def interrupted(host: str, port: int) -> bytes:
    """A stream cut short by a second request (the server's default interrupt_requests)."""
    first: list[bytes] = []
    body = {**CHAT, **GREEDY, "max_tokens": 200, **BENCHOP}
    exchange(host, port, "POST", "/v1/chat/completions", {**body, "max_tokens": 2})  # warm up
    t = threading.Thread(
        target=lambda: first.append(exchange(host, port, "POST", "/v1/chat/completions", body))
    )
    t.start()
    time.sleep(1.0)  # the first stream is under way (a recording script, not a test)
    exchange(host, port, "POST", "/v1/chat/completions", {**body, "max_tokens": 4})
    t.join()
    return first[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", help="record only these cases")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    index_path = OUT / "index.json"
    index: dict[str, Any] = json.loads(index_path.read_text()) if index_path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        with start_server(model_file(), log_path=Path(tmp) / "server.log") as server:
            for name, method, path, body, what in CASES:
                if args.only and name not in args.only:
                    continue
                raw = exchange(server.host, server.port, method, path, body)
                (OUT / f"{name}.http").write_bytes(raw)
                index[name] = {"method": method, "path": path, "body": _shown(body), "what": what}
                status = raw.split(b"\r\n", 1)[0].decode()
                print(f"{name}: {len(raw)} bytes, {status}")
        name = "chat-stream-interrupted"
        if not args.only or name in args.only:
            with start_server(
                model_file(),
                log_path=Path(tmp) / "server2.log",
                extra_args=("--interrupt_requests", "true"),
            ) as server:
                raw = interrupted(server.host, server.port)
            (OUT / f"{name}.http").write_bytes(raw)
            index[name] = {
                "method": "POST",
                "path": "/v1/chat/completions",
                "body": {**CHAT, **GREEDY, "max_tokens": 200, **BENCHOP},
                "what": "with --interrupt_requests true (the server's default): a second "
                "request arriving 1 s later ends this stream early with [DONE] and no "
                "finish_reason",
            }
            print(f"{name}: {len(raw)} bytes")
        name = "completions-stream-ping"
        if not args.only or name in args.only:
            body = {**COMPLETION, **GREEDY, "prompt": " ".join(["word"] * 1500),
                    "max_tokens": 4, **BENCHOP}  # fmt: skip
            with start_server(
                model_file(), log_path=Path(tmp) / "server3.log", prelude=PING_PRELUDE
            ) as server:
                raw = exchange(server.host, server.port, "POST", "/v1/completions", body)
            (OUT / f"{name}.http").write_bytes(raw)
            index[name] = {
                "method": "POST",
                "path": "/v1/completions",
                "body": {**body, "prompt": "'word' 1500 times, space-separated"},
                "what": "sse-starlette's ': ping' comments while the long prompt is evaluated "
                "(the server started with the ping interval shortened from 15 s to 0.5 s)",
            }
            print(f"{name}: {len(raw)} bytes")
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
