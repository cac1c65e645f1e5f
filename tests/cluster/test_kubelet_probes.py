"""testkubelet.probes: the prober's thresholds and one-shot checks against real sockets."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from testkubelet.probes import Tracker, check, resolve_port


def test_tracker_needs_consecutive_results_to_change_state():
    t = Tracker(success_threshold=2, failure_threshold=3)
    assert [t.observe(x) for x in (True, False, True, True)] == [None, None, None, True]
    assert [t.observe(x) for x in (False, False, True, False, False, False)] == [
        None,
        None,
        None,
        None,
        None,
        False,
    ]
    live = Tracker(failure_threshold=1, state=True)
    assert live.observe(True) is None
    assert live.observe(False) is False


def test_resolve_port():
    c = {"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}
    assert resolve_port("http", c) == 8000
    assert resolve_port(9000, c) == 9000
    assert resolve_port("9001", c) == 9001
    with pytest.raises(ValueError, match="port 'nope' not found"):
        resolve_port("nope", c)


async def no_exec(argv, limit):
    raise AssertionError("not an exec probe")


async def ok(_: web.Request) -> web.Response:
    return web.Response(text="fine")


async def bad(_: web.Request) -> web.Response:
    return web.Response(status=503)


@pytest.fixture
async def server():
    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/bad", bad)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield port
    await runner.cleanup()


async def test_http_and_tcp_checks(server):
    c = {"name": "c", "ports": [{"name": "web", "containerPort": server}]}
    async with aiohttp.ClientSession() as s:
        kw = {"pod_ip": "127.0.0.1", "session": s, "exec_fn": no_exec}
        assert await check({"httpGet": {"path": "/ok", "port": "web"}}, c, **kw) == (True, "fine")
        ok, msg = await check({"httpGet": {"path": "/bad", "port": server}}, c, **kw)
        assert (ok, msg) == (False, "HTTP probe failed with statuscode: 503")
        assert (await check({"tcpSocket": {"port": server}}, c, **kw))[0]
        ok, msg = await check({"tcpSocket": {"port": 1}}, c, **kw)
        assert not ok and msg == "dial tcp 127.0.0.1:1: connect: connection refused"
        ok, msg = await check({"grpc": {"port": 1}}, c, **kw)
        assert not ok and "not implemented" in msg


async def test_exec_check_uses_the_exit_code():
    async def fake(argv, limit):
        return (0, "fine") if argv == ["true"] else (1, "nope")

    c = {"name": "c"}
    kw = {"pod_ip": "127.0.0.1", "session": None, "exec_fn": fake}
    assert await check({"exec": {"command": ["true"]}}, c, **kw) == (True, "fine")
    ok, msg = await check({"exec": {"command": ["false"]}}, c, **kw)
    assert not ok and "exited with 1: nope" in msg
