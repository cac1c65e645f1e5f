"""A run's GPU stats from Prometheus in the operator: ``status.live.gpu`` and
``status.results.gpu.prometheus`` (only when ``spec.prometheus.url`` is set).

One :class:`RunGpuStats` per run (``RunContext.gpu``) holds the run's :class:`PromClient`
(one HTTP session for every live refresh) and the cached :class:`GpuSelector` (the target's
pods and their nodes, re-listed every ``SELECTOR_REFRESH_S``, every ``EMPTY_REFRESH_S`` while
no target pod is scheduled, and again when :meth:`invalidate` is called — the run loop does when
the workers are ready). ``benchop.promstats`` is synchronous (requests), so every query runs
in a thread of one bounded pool (:func:`prom_executor`, ``PROM_THREADS`` threads named
``prom_*``), not asyncio's default pool: a hung Prometheus at a burst of finalisations cannot
starve the operator's other ``to_thread`` users. The operator shuts the pool down at cleanup
(:func:`shutdown_prom_executor`):

- :meth:`RunGpuStats.live` is called by the run loop just before a ``status.live`` patch: it
  starts a refresh in a thread and waits for it at most ``wait_s``; a refresh that takes longer
  (Prometheus hung: the client's 3 s timeout) goes on in the background and its result goes into
  a later patch, so a slow Prometheus neither stalls the run loop nor adds a patch;
- :meth:`RunGpuStats.window` queries the window between the START and END gates with a client
  of its own (10 s timeout) and adds ``crossCheck`` against the baseline-ack numbers.

Prometheus trouble never raises here: the dicts carry ``error`` (``benchop.promstats``), and the
run loop turns a window error into ``TelemetryDegraded=True PrometheusUnavailable``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

import kopf

from benchop.api.models import BenchmarkRunSpec, GpuResults, LabelSelector
from benchop.core.selectors import label_selector
from benchop.operator.k8s import POD, ApiError, KubeApi
from benchop.promstats import GpuSelector, PromClient, cross_check, live_gpu, window_gpu

log = logging.getLogger(__name__)

SELECTOR_REFRESH_S = 60.0
"""The target's pods are re-listed this often (one API request)..."""
EMPTY_REFRESH_S = 10.0
"""... or this often while none is scheduled yet."""
LIVE_WAIT_S = 0.5
"""How long a live patch waits for a Prometheus refresh it started."""
ERROR_RETRY_S = 30.0
"""After a live refresh that failed, the next one waits this long (the error is shown
meanwhile): a dead Prometheus costs a thread for its timeout twice a minute, not every patch."""
WINDOW_TIMEOUT_S = 10.0
"""HTTP timeout of the window queries at finalisation."""
PROM_THREADS = 4
"""Threads of the Prometheus pool: at most this many queries at once, the rest queue."""

T = TypeVar("T")
_executor: ThreadPoolExecutor | None = None


def prom_executor() -> ThreadPoolExecutor:
    """The operator's Prometheus thread pool (created at first use, again after a shutdown)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=PROM_THREADS, thread_name_prefix="prom")
    return _executor


def shutdown_prom_executor() -> None:
    """Operator cleanup: release the pool's threads. Queries already submitted still finish in
    their threads (each is bounded by its HTTP timeout); nothing waits for them."""
    global _executor
    pool, _executor = _executor, None
    if pool is not None:
        pool.shutdown(wait=False)


class RunGpuStats:
    """Prometheus GPU stats of one run (see the module doc)."""

    def __init__(
        self,
        url: str,
        namespace: str,
        pod_selector: LabelSelector | None,
        *,
        wait_s: float = LIVE_WAIT_S,
        window_timeout_s: float = WINDOW_TIMEOUT_S,
        executor: Executor | None = None,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.pod_selector = pod_selector
        self.prom = PromClient(url)
        self.wait_s = wait_s
        self.window_timeout_s = window_timeout_s
        self.executor = executor  # None: the shared prom_executor()
        self.selector = GpuSelector(namespace)
        self.selector_lists = 0  # target-pod lists made (tests check the caching)
        self.latest: dict[str, Any] | None = None  # last live result, for status.live.gpu
        self._next_list = 0.0  # monotonic; 0: list at the first use
        self._next_live = 0.0  # monotonic; a live refresh is not started before
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self._closed = False

    @classmethod
    def for_spec(
        cls, namespace: str, spec: BenchmarkRunSpec, *, executor: Executor | None = None
    ) -> RunGpuStats | None:
        """One for a run whose spec sets ``prometheus.url``; None otherwise."""
        if spec.prometheus is None:
            return None
        return cls(str(spec.prometheus.url), namespace, spec.target.pod_selector, executor=executor)

    def invalidate(self) -> None:
        """List the target's pods again at the next use (they may have moved), and query at
        the next live patch even after an error."""
        self._next_list = 0.0
        self._next_live = 0.0

    async def refresh_selector(self, api: KubeApi) -> GpuSelector:
        """The cached selector, re-listed when due; an API error keeps the previous one."""
        now = time.monotonic()
        if now < self._next_list:
            return self.selector
        if self.pod_selector is None:
            self._next_list = float("inf")  # nothing to list: the selector stays empty
            return self.selector
        try:
            pods = await api.list(POD, self.namespace, labels=label_selector(self.pod_selector))
        except (kopf.TemporaryError, ApiError) as e:
            log.warning("listing the target pods of %s failed: %s", self.namespace, e)
            self._next_list = now + EMPTY_REFRESH_S
            return self.selector
        self.selector_lists += 1
        self.selector = GpuSelector.from_pods(self.namespace, pods)
        self._next_list = now + (EMPTY_REFRESH_S if self.selector.empty else SELECTOR_REFRESH_S)
        return self.selector

    async def live(self, api: KubeApi) -> dict[str, Any] | None:
        """The freshest live GPU view for the patch about to be written (None before the first).

        Starts a refresh unless one is running (or the last one failed less than
        ``ERROR_RETRY_S`` ago) and waits for it up to ``wait_s``.
        """
        if self._task is None and time.monotonic() >= self._next_live:
            selector = await self.refresh_selector(api)
            self._task = asyncio.create_task(self._in_pool(live_gpu, self.prom, selector))
            self._task.add_done_callback(self._live_done)
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=self.wait_s)
        return self.latest

    def _live_done(self, task: asyncio.Task[dict[str, Any]]) -> None:
        if self._task is task:
            self._task = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:  # only a programming error (an unknown metric kind) raises
            log.error("live GPU stats of %s failed: %r", self.url, error)
        elif not self._closed:
            self.latest = task.result()
            if "error" in self.latest:
                self._next_live = time.monotonic() + ERROR_RETRY_S
        if self._closed:
            self.prom.close()

    async def window(
        self, api: KubeApi, start: float, end: float, baseline: GpuResults | None
    ) -> dict[str, Any]:
        """``results.gpu.prometheus``: the window ``[start, end]`` (unix s) and ``crossCheck``."""
        selector = await self.refresh_selector(api)
        out = await self._in_pool(
            functools.partial(window_gpu, timeout_s=self.window_timeout_s),
            self.url,
            selector,
            start,
            end,
        )
        out["crossCheck"] = cross_check(baseline, out)
        return out

    async def _in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        pool = self.executor if self.executor is not None else prom_executor()
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def close(self) -> None:
        """Forget the run: close the HTTP session (after a refresh still in its thread)."""
        self._closed = True
        if self._task is None:
            self.prom.close()


def with_prometheus(gpu: GpuResults | None, prometheus: dict[str, Any]) -> GpuResults:
    """``results.gpu`` with ``prometheus`` set; a GpuResults of its own when no agent sampled."""
    if gpu is None:
        return GpuResults(prometheus=prometheus)
    return gpu.model_copy(update={"prometheus": prometheus})
