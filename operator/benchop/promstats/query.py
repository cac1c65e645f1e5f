"""The Prometheus query layer (prometheus-api-client), one batched query per metric.

:class:`PromClient` wraps ``PrometheusConnect`` and counts queries
(``client.queries``) so tests can check batching. Every query selects all the
run's GPUs at once (:class:`~benchop.promstats.selector.GpuSelector`):
``DCGM_FI_DEV_GPU_UTIL{Hostname=~"node-a|node-b"}[30s]`` — N GPUs, one query.

Range data is read as raw samples (an instant query of a range vector,
``metric{...}[<ms>ms] @ <end>``), not ``query_range`` steps: the shape layer
sees what was scraped, with the scrape timestamps.

Any failure to talk to Prometheus (refused, timeout, not a Prometheus, HTTP
error, bad JSON) raises :class:`PrometheusUnavailable` with a message naming
the URL; nothing else escapes.

    client = PromClient("http://prometheus.monitoring:9090")
    by_metric = client.window(["DCGM_FI_DEV_GPU_UTIL"], selector, start, end)
    client.queries   # 1
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from benchop.promstats.kinds import kinds_for
from benchop.promstats.selector import GpuSelector, attribution, keep
from benchop.promstats.shape import Series, parse_result


class PrometheusUnavailable(RuntimeError):
    """Prometheus could not answer; ``str(err)`` says which URL and why."""


class PromClient:
    """A counting, error-mapping client of one Prometheus server.

    ``timeout_s`` bounds every HTTP request; there are no retries (the live
    loop's next tick is the retry), so a dead server costs one timeout at most.
    """

    def __init__(self, url: str, *, timeout_s: float = 3.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.queries = 0
        self._prom = PrometheusConnect(
            self.url, retry=Retry(total=0, read=False, raise_on_status=False), timeout=timeout_s
        )

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Run one instant query; the API's ``result`` list."""
        self.queries += 1
        try:
            result = self._prom.custom_query(promql)
        except requests.Timeout:
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} did not answer within {self.timeout_s:g} s"
            ) from None
        except requests.ConnectionError as e:
            raise PrometheusUnavailable(
                f"cannot connect to Prometheus at {self.url}: {_reason(e)}"
            ) from None
        except PrometheusApiClientException as e:
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} refused the query {promql!r}: {_short(str(e))}"
            ) from None
        except (requests.RequestException, ValueError, KeyError, TypeError) as e:
            raise PrometheusUnavailable(
                f"{self.url} did not answer like a Prometheus server "
                f"({type(e).__name__}: {_short(str(e))})"
            ) from None
        if not isinstance(result, list):
            raise PrometheusUnavailable(f"{self.url}: unexpected result {_short(repr(result))}")
        return result

    def instant(
        self, metric: str, selector: GpuSelector, *, at: float | None = None
    ) -> list[Series]:
        """Latest sample of ``metric`` for the selected GPUs at ``at`` (default now)."""
        kinds_for([metric])  # unknown kind: raise before any I/O
        promql = metric + selector.matchers() + (f" @ {at:.3f}" if at is not None else "")
        return parse_result(self.query(promql))

    def window(
        self,
        metrics: Sequence[str],
        selector: GpuSelector,
        start: float,
        end: float | None = None,
    ) -> dict[str, list[Series]]:
        """Raw samples in ``[start, end]`` (unix s; end None = now) of ``metrics`` and of the
        metrics their capacities need: one query per metric, all GPUs at once, narrowed by
        :func:`~benchop.promstats.selector.keep`. Unknown metric kinds raise before any query.
        """
        kinds = kinds_for(list(metrics))
        matchers = selector.matchers()
        stop = time.time() if end is None else end
        range_ms = max(1, round((stop - start) * 1000))
        at = "" if end is None else f" @ {end:.3f}"
        raw = {
            k.name: parse_result(self.query(f"{k.name}{matchers}[{range_ms}ms]{at}")) for k in kinds
        }
        modes = attribution(s.labels for series in raw.values() for s in series)
        return {
            name: [s for s in series if keep(s.labels, selector, modes)]
            for name, series in raw.items()
        }

    def current(
        self, metrics: Sequence[str], selector: GpuSelector, *, lookback_s: float = 30.0
    ) -> dict[str, list[Series]]:
        """:meth:`window` over the last ``lookback_s`` seconds (Prometheus' own now)."""
        return self.window(metrics, selector, time.time() - lookback_s)

    def close(self) -> None:
        self._prom._session.close()


def _reason(err: BaseException) -> str:
    """Why a connection failed, shortly."""
    text = str(err)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return _short(f"{type(err).__name__}: {text}")


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
