"""Names of the series, counters and gauges a worker records (profiling phase only).

Series hold integer values: latencies in nanoseconds, token counts.
Counters are integers; gauges are floats.

>>> from benchop.metrics import names
>>> names.failed("timeout")
'failed_timeout'
"""

from __future__ import annotations

from typing import Final

# Series (integers: ns or tokens).
TTFT: Final = "ttft_ns"
ITL: Final = "itl_ns"
TPOT: Final = "tpot_ns"
E2E: Final = "e2e_ns"
INPUT_TOKENS: Final = "input_tokens"
OUTPUT_TOKENS: Final = "output_tokens"
SEND_LAG: Final = "send_lag_ns"
SERIES: Final = (TTFT, ITL, TPOT, E2E, INPUT_TOKENS, OUTPUT_TOKENS, SEND_LAG)

# Counters.
REQUESTS: Final = "requests_total"
REQUESTS_OK: Final = "requests_ok"
REQUESTS_FAILED: Final = "requests_failed"
GOOD: Final = "requests_good"  # succeeded and met every SLO
OUTPUT_TOKENS_TOTAL: Final = "output_tokens_total"
INPUT_TOKENS_TOTAL: Final = "input_tokens_total"
# Ok requests without the server's usage: benchop counted their tokens (tokenizer, or
# content chunks and prompt words). The common case (usage) is derived: ok minus these.
BENCHOP_COUNTED: Final = "requests_benchop_counted"
NOT_STREAMED: Final = "requests_not_streamed"  # ok requests answered as one JSON body
CONTENT_CHUNKS: Final = "content_chunks_total"  # chunks with content of the ok streamed ones
CONNECT_ATTEMPTS: Final = "connect_attempts"  # whole worker, every phase and the preflight
CONNECT_FAILURES: Final = "connect_failures"

# One counter per finish_reason of the ok requests: FINISH_PREFIX + reason (created when seen).
FINISH_PREFIX: Final = "finish_"
FINISH_REASONS: Final = ("stop", "length", "tool_calls", "content_filter", "function_call")
"""Any other finish_reason counts as ``finish_other``."""

# One counter per failure reason: FAILED_PREFIX + reason.
FAILED_PREFIX: Final = "failed_"
FAILURE_REASONS: Final = (
    "http_4xx",
    "http_429",
    "http_5xx",
    "timeout",
    "connection",
    "malformed_stream",
    "truncated",
    "disconnected",
    "cancelled",
    "other",
)

# Gauges (floats).
CLIENT_CPU: Final = "client_cpu_pct"
RECV_LAG_P99: Final = "recv_lag_p99_ms"


def finished(reason: str) -> str:
    """Counter name of one finish_reason (unknown ones are ``other``).

    >>> finished("length"), finished("eos_token")
    ('finish_length', 'finish_other')
    """
    return FINISH_PREFIX + (reason if reason in FINISH_REASONS else "other")


def failed(reason: str) -> str:
    """Counter name of one failure reason; raises ValueError for an unknown reason."""
    if reason not in FAILURE_REASONS:
        raise ValueError(f"unknown failure reason {reason!r}; expected one of {FAILURE_REASONS}")
    return FAILED_PREFIX + reason
