"""llama-cpp-python's default ``interrupt_requests: true``: a request that arrives while
another streams cuts that stream short with ``[DONE]`` and no ``finish_reason``. benchop used
to count such a stream as an ok request with fewer tokens; now it is a ``truncated`` failure.

A second server with the default (the session's server runs with it off, so requests queue).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from llamaserver import MODEL_ALIAS, Server, server_or_skip
from test_benchop_run import OUTPUT_TOKENS, benchop_run, manifest, records

pytestmark = pytest.mark.realserver


@pytest.fixture(scope="module")
def interrupting_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("llama-interrupt") / "server.log"
    with server_or_skip(log, extra_args=("--interrupt_requests", "true")) as server:
        yield server


def test_interrupted_streams_are_truncated_failures_not_short_oks(
    interrupting_server: Server, tmp_path: Path
) -> None:
    spec = {
        "target": {"url": interrupting_server.url, "model": MODEL_ALIAS, "api": "chat"},
        "workload": {"promptTokens": 24, "outputTokens": 4 * OUTPUT_TOKENS, "seed": 7},
        "load": {"mode": "concurrency", "concurrency": 2, "maxFailureRatio": 1},
        "phases": {"profiling": {"requests": 8}},
        "gates": {"baseline": False},
    }
    (res,), results_dir = benchop_run(tmp_path, manifest("interrupted", spec), code=None)
    recs = records(results_dir)
    truncated = [r for r in recs if r["outcome"] == "truncated"]
    assert truncated, [r["outcome"] for r in recs]
    assert all(r["finish_reason"] is None for r in truncated)
    assert all(r["error"].endswith("no finish_reason: the server cut the answer short")
               for r in truncated)  # fmt: skip
    assert all(r["outcome"] in ("ok", "truncated") for r in recs)
    by_reason = res["status"]["results"]["requests"]["byReason"]
    assert by_reason == {"truncated": len(truncated)}
