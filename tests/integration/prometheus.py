"""A real Prometheus server for tests, once per session, scraping agents the tests start.

Import the fixture into a test module (``from prometheus import prometheus``).
The server runs Debian's ``prometheus`` binary (``hack/setup.sh`` installs it;
``BENCHOP_PROMETHEUS_BIN`` overrides the path) on a free loopback port with
storage in a session tmp dir, ``scrape_interval: 1s`` and ``--web.enable-lifecycle``.
Targets come from a ``file_sd`` JSON file that :meth:`PrometheusServer.set_targets`
rewrites atomically; Prometheus' scrape manager applies target changes at most
every 5 s, so a test that changes targets should expect that delay once.
The session is skipped (with the reason) only when the binary is missing.

:class:`LoopThread` runs asyncio things (agents, a fake kubelet) on a thread of
their own, so a test may make blocking calls while Prometheus scrapes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kube.harness import free_port

T = TypeVar("T")

SCRAPE_INTERVAL_S = 1.0
READY_DEADLINE_S = 20.0


def prometheus_binary() -> str | None:
    return os.environ.get("BENCHOP_PROMETHEUS_BIN") or shutil.which("prometheus")


def wait_until(check: Callable[[], T | None], what: str, deadline_s: float) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    end = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s} s: {what}")
        time.sleep(0.05)


class PrometheusServer:
    """One running ``prometheus`` process; its HTTP API through plain urllib."""

    def __init__(self, binary: str, root: Path) -> None:
        self.root = root
        self.sd_file = root / "targets.json"
        self.sd_file.write_text("[]")
        config = root / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL_S:g}s\n"
            "  scrape_timeout: 900ms\n"
            f"  evaluation_interval: {SCRAPE_INTERVAL_S:g}s\n"
            "scrape_configs:\n"
            "  - job_name: benchop-agents\n"
            "    file_sd_configs:\n"
            f"      - files: [{json.dumps(str(self.sd_file))}]\n"
            "        refresh_interval: 1s\n"
        )
        self.log_path = root / "prometheus.log"
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={root / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--web.enable-lifecycle",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready():
                return
            self.stop()
            if "address already in use" not in self.log():
                break
        raise AssertionError(f"prometheus did not become ready:\n{self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self) -> bool:
        end = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < end:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        return False

    def set_targets(self, targets: Mapping[str, Mapping[str, str]]) -> None:
        """Scrape exactly these ``host:port`` targets (with extra target labels)."""
        groups = [{"targets": [t], "labels": dict(labels)} for t, labels in targets.items()]
        tmp = self.sd_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.sd_file)  # atomic: Prometheus never reads half a file

    def reload(self) -> None:
        """POST /-/reload (the lifecycle API): re-read the config and the sd files."""
        req = urllib.request.Request(self.url + "/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through urllib (independent of the code under test)."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_series(self, promql: str, count: int, deadline_s: float = 15.0) -> None:
        """Wait until ``promql`` returns ``count`` series."""
        wait_until(
            lambda: len(self.query(promql)) == count,
            f"{promql} returns {count} series",
            deadline_s,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus on loopback for the whole session (skipped without the binary)."""
    binary = prometheus_binary()
    if os.environ.get("BENCHOP_PROMETHEUS_BIN") and not os.access(str(binary), os.X_OK):
        pytest.fail(f"BENCHOP_PROMETHEUS_BIN={binary} is not an executable file")
    if binary is None:
        pytest.skip(
            "prometheus binary not found: `apt-get install prometheus` "
            "(hack/setup.sh does) or set BENCHOP_PROMETHEUS_BIN"
        )
    server = PrometheusServer(binary, tmp_path_factory.mktemp("prometheus"))
    try:
        yield server
    finally:
        server.stop()


class LoopThread:
    """An asyncio loop on a daemon thread; :meth:`run` a coroutine there and wait for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
