"""A worker against real servers on loopback: its preflight checks, the request it sends
(headers and TLS from Secrets, several URLs, streaming or not, usage or chunks) and how it
gives up (load.maxFailureRatio, the connect backoff).

The servers are benchop's mock server (``required_header`` plays a gateway that wants an
x-api-key; over TLS through aiohttp's site) and small aiohttp apps for what the mock does not
do (no model list, a server that refuses a body field).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from benchagent.codec import MsgpackCodec
from benchop.api.models import BenchmarkRunSpec
from benchop.core.results import RequestInfo, build_results, merge_snapshots
from benchop.loadgen import checkpoint
from benchop.loadgen.snapshots import FINAL
from benchop.loadgen.worker import FinalOutcome, WorkerConfig, run_worker
from benchop.metrics import names
from benchop.mockserver import MockConfig, MockServer, build_app, start_mock_server

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cret-value-7f2a"


def spec_for(target: dict[str, Any], requests: int = 10, **extra: Any) -> BenchmarkRunSpec:
    return BenchmarkRunSpec.model_validate(
        {
            "target": {"model": "benchop-mock", **target},
            "workload": {"promptTokens": 8, "outputTokens": 6, "seed": 3},
            "load": {"mode": "concurrency", "concurrency": 2},
            "phases": {"profiling": {"requests": requests}},
            **extra,
        }
    )


async def run(spec: BenchmarkRunSpec, tmp: Path, **config: Any) -> FinalOutcome:
    tmp.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a test's tmp dir
    return await run_worker(
        WorkerConfig(
            spec=spec, run="r", results_dir=tmp, termination_log=tmp / "termination-log", **config
        )
    )


def records(tmp: Path) -> list[Any]:
    return checkpoint.load(tmp).records


@pytest.fixture
async def mock() -> AsyncIterator[MockServer]:
    async with await start_mock_server(MockConfig(ttft=0.002, itl=0.001)) as server:
        yield server


# --------------------------------------------------------------------------- preflight


async def test_preflight_passes_with_one_request_that_is_not_recorded(
    mock: MockServer, tmp_path: Path
) -> None:
    out = await run(spec_for({"url": mock.url}), tmp_path)
    assert out.abort is None and out.snapshot.counters[names.REQUESTS_OK] == 10
    assert mock.stats["models"] == 1 and mock.stats["requests"] == 11  # + the test request
    assert len(records(tmp_path)) == 10 and out.snapshot.warnings == []


async def test_a_model_the_server_does_not_list_is_model_not_found(
    mock: MockServer, tmp_path: Path
) -> None:
    """Servers that answer any model name (llama-cpp-python) are caught by the list."""
    spec = spec_for({"url": mock.url, "model": "llama-3-70b"})
    out = await run(spec, tmp_path)
    assert out.abort is not None and out.abort.reason == "ModelNotFound"
    assert out.abort.message == (
        f"GET {mock.url}/models does not list model 'llama-3-70b' (spec.target.model); it "
        "lists 'benchop-mock'"
    )
    assert mock.stats["requests"] == 0 and out.snapshot.counters[names.REQUESTS] == 0
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert summary["abort"]["reason"] == "ModelNotFound"


async def serve_app(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> Any:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def strict_server(mock_app: web.Application) -> web.Application:
    """The mock's chat endpoint behind a server with no /v1/models that refuses requests with
    an ``ignore_eos`` field (as a strict gateway does)."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if "ignore_eos" in body:
            return web.json_response(
                {"error": {"message": "Unrecognized request argument: ignore_eos", "code": 400}},
                status=400,
            )
        return await mock_handler(request)

    routes = {r.resource.canonical: r.handler for r in mock_app.router.routes()}  # type: ignore[union-attr]
    mock_handler = routes["/v1/chat/completions"]
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def test_no_model_list_is_a_warning_and_a_refused_field_is_target_error(
    tmp_path: Path,
) -> None:
    runner, port = await serve_app(strict_server(build_app(MockConfig(ttft=0.0, itl=0.0))))
    url = f"http://127.0.0.1:{port}/v1"
    try:
        ok = await run(spec_for({"url": url}), tmp_path / "a")
        assert ok.abort is None and ok.snapshot.counters[names.REQUESTS_OK] == 10
        assert ok.snapshot.warnings == [
            f"GET {url}/models: HTTP 404: the server has no model list; the model name "
            "'benchop-mock' was not checked"
        ]
        refused = await run(
            spec_for({"url": url}, request={"extraBody": {"ignore_eos": True}}), tmp_path / "b"
        )
    finally:
        await runner.cleanup()
    assert refused.abort is not None and refused.abort.reason == "TargetError"
    assert refused.abort.message.startswith(
        f"POST {url}/chat/completions (a 1-token test request, max_tokens: 1): HTTP 400: "
        '{"error": {"message": "Unrecognized request argument: ignore_eos"'
    )


# --------------------------------------------------------------------------- headers


async def test_a_header_from_a_secret_reaches_the_server_and_no_log_or_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = tmp_path / "secrets"
    (secrets / "gateway").mkdir(parents=True)
    (secrets / "gateway" / "api-key").write_text(SECRET + "\n")  # `echo ... > file` style
    target = {
        "headers": [
            {
                "name": "x-api-key",
                "valueFrom": {"secretKeyRef": {"name": "gateway", "key": "api-key"}},
            }
        ]
    }
    config = MockConfig(ttft=0.0, itl=0.0, required_header=f"x-api-key: {SECRET}")
    caplog.set_level(logging.DEBUG)
    async with await start_mock_server(config) as gw:
        spec = spec_for({**target, "url": gw.url})
        out = await run(spec, tmp_path / "r", secrets_dir=secrets, env={})
        assert out.abort is None and out.snapshot.counters[names.REQUESTS_OK] == 10
        assert gw.stats["unauthorized"] == 0
        # no secrets dir: the worker names the field and what it needs; nothing is sent
        missing = await run(spec, tmp_path / "m", env={})
        assert missing.abort is not None and missing.abort.reason == "SecretError"
        assert missing.abort.message.startswith(
            "spec.target.headers[0] (x-api-key): Secret 'gateway' key 'api-key' is not available"
        )
        # in the env (the Job's secretKeyRef), but wrong: the gateway says 401 to the preflight
        wrong = await run(spec, tmp_path / "w", env={"BENCHOP_HEADER_0": "nope"})
        assert wrong.abort is not None and wrong.abort.reason == "TargetError"
        assert f"GET {gw.url}/models: HTTP 401" in wrong.abort.message
    seen = [caplog.text, (tmp_path / "r" / "records.jsonl").read_text()]
    for d in ("r", "m", "w"):
        seen.append((tmp_path / d / "termination-log").read_text())
        seen.append(repr(MsgpackCodec().decode((tmp_path / d / FINAL).read_bytes())))
    assert not [s for s in seen if SECRET in s]


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Self-signed certificates (openssl CLI): the server's for 127.0.0.1, and a client's."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed: cannot make test certificates")
    d = tmp_path_factory.mktemp("certs")
    out = {}
    for who, san in (("server", "IP:127.0.0.1"), ("client", "DNS:benchop-client")):
        cert, key = d / f"{who}.crt", d / f"{who}.key"
        subprocess.run(
            [
                *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt"),
                *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"),
                *("-subj", f"/CN=benchop-{who}", "-keyout", str(key), "-out", str(cert)),
                *("-addext", f"subjectAltName={san}"),
            ],
            check=True,
            capture_output=True,
            timeout=20,
        )
        out[f"{who}.crt"], out[f"{who}.key"] = cert, key
    return out


def secrets_dir(tmp: Path, certs: dict[str, Path]) -> Path:
    """The certificates as mounted Secrets: DIR/<secret>/<key>."""
    for secret, key, src in (
        ("server-ca", "ca.crt", "server.crt"),
        ("client-tls", "tls.crt", "client.crt"),
        ("client-tls", "tls.key", "client.key"),
    ):
        (tmp / "secrets" / secret).mkdir(parents=True, exist_ok=True)
        shutil.copy(certs[src], tmp / "secrets" / secret / key)
    return tmp / "secrets"


CA = {"caSecretRef": {"name": "server-ca", "key": "ca.crt"}}
CLIENT = {
    "clientCertSecretRef": {"name": "client-tls", "key": "tls.crt"},
    "clientKeySecretRef": {"name": "client-tls", "key": "tls.key"},
}


async def test_tls_ca_from_a_secret_mtls_and_insecure_skip_verify(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs["server.crt"], certs["server.key"])
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the client must show its certificate
    ctx.load_verify_locations(certs["client.crt"])
    runner, port = await serve_app(build_app(MockConfig(ttft=0.0, itl=0.0)), ssl_context=ctx)
    url = f"https://127.0.0.1:{port}/v1"
    sd = secrets_dir(tmp_path, certs)

    async def attempt(name: str, tls: dict[str, Any]) -> FinalOutcome:
        spec = spec_for({"url": url, "tls": tls} if tls else {"url": url})
        return await run(spec, tmp_path / name, secrets_dir=sd)

    try:
        system_cas = await attempt("system", {})
        no_client_cert = await attempt("ca", CA)
        mtls = await attempt("mtls", {**CA, **CLIENT})
        insecure = await attempt("insecure", {"insecureSkipVerify": True, **CLIENT})
    finally:
        await runner.cleanup()
    assert system_cas.abort is not None and system_cas.abort.reason == "TargetError"
    assert "TLS handshake failed" in system_cas.abort.message
    assert "certificate verify failed" in system_cas.abort.message
    assert no_client_cert.abort is not None  # the server closes the handshake: no client cert
    assert mtls.abort is None and mtls.snapshot.counters[names.REQUESTS_OK] == 10
    assert insecure.abort is None and insecure.snapshot.counters[names.REQUESTS_OK] == 10
    spec = spec_for({"url": url, "tls": {"insecureSkipVerify": True}})
    res = build_results(
        merge_snapshots([insecure.snapshot]), slo=None, source="local", request=RequestInfo.of(spec)
    )
    assert res.request is not None and res.request.insecure_skip_verify


async def test_a_tls_file_that_is_missing_is_a_secret_error(tmp_path: Path) -> None:
    spec = spec_for({"url": "https://127.0.0.1:9/v1", "tls": CA})
    out = await run(spec, tmp_path / "r", secrets_dir=tmp_path / "empty")
    assert out.abort is not None and out.abort.reason == "SecretError"
    assert out.abort.message == (
        "spec.target.tls.caSecretRef: cannot read Secret 'server-ca' key 'ca.crt' at "
        f"{tmp_path / 'empty' / 'server-ca' / 'ca.crt'} (No such file or directory): does the "
        "Secret have that key?"
    )


# --------------------------------------------------------------------------- the request


async def test_several_urls_share_the_requests_round_robin(tmp_path: Path) -> None:
    async with (
        await start_mock_server(MockConfig(ttft=0.0, itl=0.0)) as a,
        await start_mock_server(MockConfig(ttft=0.0, itl=0.0)) as b,
    ):
        out = await run(spec_for({"urls": [a.url, b.url]}, requests=20), tmp_path)
        assert out.abort is None
        assert a.stats["requests"] == b.stats["requests"] == 10 + 1  # + its test request
        assert a.stats["models"] == b.stats["models"] == 1
    assert sorted(r.endpoint for r in records(tmp_path)) == [0] * 10 + [1] * 10


async def test_not_streaming_times_the_whole_answer_and_counts_usage(
    mock: MockServer, tmp_path: Path
) -> None:
    spec = spec_for({"url": mock.url, "api": "completions"}, request={"stream": False})
    out = await run(spec, tmp_path)
    assert out.abort is None
    recs = records(tmp_path)
    assert all(r.outcome == "ok" and not r.stream for r in recs)
    assert all(r.ttft_ns == r.e2e_ns and r.itl_ns == [] and r.tokens_from_usage for r in recs)
    assert {(r.output_tokens, r.input_tokens, r.finish_reason) for r in recs} == {(6, 8, "length")}
    res = build_results(
        merge_snapshots([out.snapshot]), slo=None, source="local", request=RequestInfo.of(spec)
    )
    assert res.tpot_ms is None and res.itl_ms is None and res.ttft_ms is not None
    assert res.request is not None and res.tokens is not None
    assert (res.request.stream, res.tokens.source) == (False, "usage")
    assert res.tokens.tokens_per_chunk is None  # no chunks: one JSON answer
    assert res.request.finish_reasons == {"length": 10}


@pytest.mark.parametrize(("include_usage", "counting"), [(True, "usage"), (False, "estimate")])
async def test_token_counting_says_where_the_counts_came_from(
    mock: MockServer, tmp_path: Path, include_usage: bool, counting: str
) -> None:
    spec = spec_for({"url": mock.url}, request={"includeUsage": include_usage})
    out = await run(spec, tmp_path)
    res = build_results(
        merge_snapshots([out.snapshot]), slo=None, source="local", request=RequestInfo.of(spec)
    )
    assert res.tokens is not None and res.tokens.source == counting
    assert res.tokens.from_usage == (10 if include_usage else 0)
    assert res.tokens.tokens_per_chunk == (1.0 if include_usage else None)
    assert out.snapshot.counters[names.OUTPUT_TOKENS_TOTAL] == 60


# --------------------------------------------------------------------------- giving up


async def test_a_target_that_dies_mid_run_ends_it_with_few_connect_attempts(
    tmp_path: Path,
) -> None:
    """The mock stops after 40 requests of a 60 s run at concurrency 8: the connects back off
    (one per backoff step, not one per request) and the failure window ends the run."""
    server = await start_mock_server(MockConfig(ttft=0.002, itl=0.001))
    spec = BenchmarkRunSpec.model_validate(
        {
            "target": {"model": "benchop-mock", "url": server.url},
            "workload": {"promptTokens": 8, "outputTokens": 4},
            "load": {"mode": "concurrency", "concurrency": 8, "failureWindow": 20},
            "phases": {"profiling": {"duration": "60s"}},
        }
    )
    task = asyncio.create_task(run(spec, tmp_path))
    deadline = asyncio.get_running_loop().time() + 20
    while server.stats["requests"] < 40:
        assert asyncio.get_running_loop().time() < deadline and not task.done()
        await asyncio.sleep(0.005)
    await server.close()
    out = await task
    assert out.abort is not None and out.abort.reason == "FailureRatioExceeded"
    assert out.abort.message.startswith("11 of the last 20 requests failed (")
    assert "load.maxFailureRatio is 0.5 over load.failureWindow 20" in out.abort.message
    c = out.snapshot.counters
    failed = c[names.REQUESTS_FAILED]
    assert failed >= 11 and c[names.REQUESTS_OK] >= 30
    # 8 connections at the start (+1 for the preflight), then the failing ones: a first wave
    # of at most 8, then one per backoff step (50 ms doubling) while failures pile up
    assert c[names.CONNECT_ATTEMPTS] <= 9 + 8 + 6, c
    assert c[names.CONNECT_FAILURES] <= 8 + 6, c
    assert not out.interrupted and out.exit_code == 0
    assert msgspec.json.decode((tmp_path / "termination-log").read_bytes())["abort"]
