"""Checks of the target before a worker's warmup: can it be reached, does it serve the model,
does it answer the run's request? A failure ends the run at once with its reason.

For every base URL of the target, in order, with the run's headers and TLS:

1. **TCP connect** (TLS handshake included for https), retried with the pool's backoff until
   ``spec.preflight.timeout`` (a server still starting): failing, ``TargetUnreachable`` with
   host, port, the errno of the last attempt and how many attempts were made; a TLS handshake
   that fails is ``TargetError``.
2. **GET <base>/models** must list ``spec.target.model`` (``ModelNotFound`` with the names it
   lists: some servers answer any model name, llama-cpp-python among them). A server without
   the route (404, 405, an answer that is not a model list) is a warning; 401/403 or another
   error status is ``TargetError`` with the status and the start of the body.
3. **One request** in the run's format (headers, extra body fields, streaming or not) with a
   one-word prompt and every output-length field set to 1: it must succeed (an answer that
   ended properly with no content counts: the model may stop at once). Else ``TargetError``
   with the status or the outcome and the start of the server's message; a 404 that names the
   model is ``ModelNotFound``.

Each HTTP check may take ``http_timeout_s`` (the run's request timeout: a busy server may
queue the test request). Nothing here is recorded as a request of the run.

    result = await preflight(client, model="m", connect_s=2.0, http_timeout_s=300.0)
    if not result.ok: ...  # result.reason, result.message
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from benchop.core.results import MODEL_NOT_FOUND, TARGET_ERROR, TARGET_UNREACHABLE
from benchop.loadgen.client import NO_CONTENT, Ident, StreamClient
from benchop.loadgen.http import BadResponse, ConnectError, Disconnected, Pool
from benchop.loadgen.records import OK, RequestRecord

__all__ = ["PREFLIGHT_ATTEMPT", "PreflightResult", "preflight"]

PREFLIGHT_ATTEMPT = -1
"""``Ident.attempt`` of the test request (never in the records)."""
_EXCERPT = 300


@dataclass(frozen=True, slots=True)
class PreflightResult:
    """The checks' verdict: ok, or the run's failure reason and a message naming the target."""

    ok: bool
    reason: str = ""
    message: str = ""
    warnings: tuple[str, ...] = field(default=())
    seconds: float = 0.0


class _Failed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _excerpt(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "")


async def preflight(
    client: StreamClient,
    *,
    model: str,
    connect_s: float,
    http_timeout_s: float,
    worker: int = 0,
) -> PreflightResult:
    """Run the checks against every base URL of ``client`` (opened); never raises."""
    t0 = time.monotonic()
    warnings: list[str] = []
    try:
        for i, (base, pool) in enumerate(zip(client.target.bases, client.pools, strict=True)):
            await _connect(pool, base, connect_s)
            await _models(pool, base, model, http_timeout_s, warnings)
            await _request(client, i, base, model, http_timeout_s, worker)
    except _Failed as f:
        return PreflightResult(False, f.reason, f.message, tuple(warnings), time.monotonic() - t0)
    return PreflightResult(True, warnings=tuple(warnings), seconds=time.monotonic() - t0)


async def _connect(pool: Pool, base: str, timeout_s: float) -> None:
    """Connect (the pool keeps the connection for the next check), retrying until the time is
    up; the pool's backoff spaces the attempts."""
    t0 = time.monotonic()
    before = pool.attempts
    last: ConnectError | None = None
    while True:
        left = t0 + timeout_s - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):
                await pool.connect_idle()
            return
        except ConnectError as exc:
            if exc.tls:
                raise _Failed(TARGET_ERROR, f"{base}: TLS handshake failed: {exc}") from None
            last = exc
        except TimeoutError:
            tries = pool.attempts - before
            why = str(last) if last is not None else f"no connection to {pool.where}"
            raise _Failed(
                TARGET_UNREACHABLE,
                f"{base}: {why} ({tries} attempt{'s' if tries != 1 else ''} in "
                f"{time.monotonic() - t0:.1f}s; spec.preflight.timeout is {timeout_s:g}s)",
            ) from None


async def _models(pool: Pool, base: str, model: str, timeout_s: float, warnings: list[str]) -> None:
    path = (urlsplit(base).path.rstrip("/") or "") + "/models"
    what = f"GET {base.rstrip('/')}/models"
    try:
        async with asyncio.timeout(timeout_s):
            status, ctype, body = await pool.fetch("GET", path)
    except TimeoutError:
        raise _Failed(TARGET_ERROR, f"{what}: no answer within {timeout_s:g}s") from None
    except ConnectError as exc:
        raise _Failed(TARGET_UNREACHABLE, f"{what}: {exc}") from None
    except (Disconnected, BadResponse) as exc:
        raise _Failed(TARGET_ERROR, f"{what}: {exc}") from None
    if status in (401, 403):
        raise _Failed(
            TARGET_ERROR,
            f"{what}: HTTP {status} (check spec.target.apiKeySecretRef and headers): "
            f"{_excerpt(body)}",
        )
    if status in (404, 405, 501):
        warnings.append(f"{what}: HTTP {status}: the server has no model list; the model "
                        f"name {model!r} was not checked")  # fmt: skip
        return
    if status != 200:
        raise _Failed(TARGET_ERROR, f"{what}: HTTP {status}: {_excerpt(body)}")
    try:
        doc = json.loads(body)
        ids = [str(m["id"]) for m in doc["data"]]
    except (ValueError, KeyError, TypeError):
        warnings.append(f"{what}: not an OpenAI model list ({ctype or 'no content type'}: "
                        f"{_excerpt(body)[:100]}); the model name was not checked")  # fmt: skip
        return
    if model not in ids:
        shown = ", ".join(repr(x) for x in ids[:10]) + (" ..." if len(ids) > 10 else "")
        raise _Failed(
            MODEL_NOT_FOUND,
            f"{what} does not list model {model!r} (spec.target.model); it lists "
            f"{shown or 'no model'}",
        )


async def _request(
    client: StreamClient, index: int, base: str, model: str, timeout_s: float, worker: int
) -> None:
    records: list[RequestRecord] = []
    fields = client.request.output_fields
    body = client.body("Hi", 1)
    what = f"POST {client.target.endpoint_of(base)}"
    try:
        async with asyncio.timeout(timeout_s):
            await client.send(
                body,
                ident=Ident(worker, PREFLIGHT_ATTEMPT, index),
                input_words=1,
                sink=records.append,
                endpoint=index,
            )
    except TimeoutError:
        raise _Failed(
            TARGET_ERROR,
            f"{what} (a 1-token test request): no complete answer within {timeout_s:g}s",
        ) from None
    (rec,) = records
    if rec.outcome == OK or (rec.error == NO_CONTENT and rec.finish_reason is not None):
        return
    detail = _excerpt(rec.error or "")
    if rec.outcome == "connection":
        raise _Failed(TARGET_UNREACHABLE, f"{what}: {detail}")
    if rec.status == 404 and model in (rec.error or ""):
        raise _Failed(MODEL_NOT_FOUND, f"{what}: HTTP 404: {detail}")
    status = f"HTTP {rec.status}" if rec.status and rec.status != 200 else rec.outcome
    raise _Failed(
        TARGET_ERROR,
        f"{what} (a 1-token test request, {' and '.join(fields)}: 1): {status}: {detail}",
    )
