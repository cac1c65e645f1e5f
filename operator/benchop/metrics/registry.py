"""Registry: the counters, gauges and series of one worker, and their snapshot.

>>> from benchop.metrics import names
>>> reg = Registry()
>>> reg.series(names.TTFT).record(120_000_000)
>>> reg.counter(names.REQUESTS_OK).inc()
>>> reg.gauge(names.CLIENT_CPU).set(12.5)
>>> counters, gauges, series = reg.snapshot(include_values=False)
>>> counters, gauges, series[names.TTFT].count
({'requests_ok': 1}, {'client_cpu_pct': 12.5}, 1)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from benchagent.wire import SeriesSummary
from benchop.metrics.series import Series


class Counter:
    """A monotonically increasing integer."""

    __slots__ = ("name", "value")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.value = 0

    def inc(self, n: int = 1) -> None:
        """Add ``n`` (>= 0) to the counter."""
        if n < 0:
            raise ValueError(f"counter {self.name!r}: cannot decrease by {n}")
        self.value += n


class Gauge:
    """A float that is set, not accumulated (CPU %, lags)."""

    __slots__ = ("name", "value")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.value = 0.0

    def set(self, x: float) -> None:
        """Replace the value."""
        self.value = float(x)


class Registry:
    """Get-or-create store of named counters, gauges and series.

    A name belongs to one kind: asking for a counter named like an existing
    series raises ValueError.
    """

    def __init__(self) -> None:
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._series: dict[str, Series] = {}

    def _check_free(self, name: str, kind: Mapping[str, object]) -> None:
        for other in (self._counters, self._gauges, self._series):
            if other is not kind and name in other:
                raise ValueError(f"metric {name!r} already exists as another kind")

    def series(self, name: str) -> Series:
        """The series named ``name``, created empty on first use."""
        s = self._series.get(name)
        if s is None:
            self._check_free(name, self._series)
            s = self._series[name] = Series(name)
        return s

    def counter(self, name: str) -> Counter:
        """The counter named ``name``, created at 0 on first use."""
        c = self._counters.get(name)
        if c is None:
            self._check_free(name, self._counters)
            c = self._counters[name] = Counter(name)
        return c

    def gauge(self, name: str) -> Gauge:
        """The gauge named ``name``, created at 0.0 on first use."""
        g = self._gauges.get(name)
        if g is None:
            self._check_free(name, self._gauges)
            g = self._gauges[name] = Gauge(name)
        return g

    def fold(self) -> None:
        """Fold the buffered values of every series (call once per tick)."""
        for s in self._series.values():
            s.fold()

    def fold_steps(self, step_values: int = 2000) -> Iterator[None]:
        """Fold what is buffered now in steps of at most ``step_values`` values, yielding
        after each, so that an event loop can run between them (each step stalls it for
        ~0.1 ms, not for the fold of everything)."""
        for s in list(self._series.values()):
            pending = s.buffered
            while pending > 0 and (n := s.fold(min(pending, step_values))):
                pending -= n
                yield

    def series_items(self) -> list[tuple[str, Series]]:
        """(name, series) pairs, for callers that summarise them one at a time."""
        return list(self._series.items())

    def scalars(self) -> tuple[dict[str, int], dict[str, float]]:
        """Counter values and gauge values."""
        return (
            {name: c.value for name, c in self._counters.items()},
            {name: g.value for name, g in self._gauges.items()},
        )

    def snapshot(
        self, include_values: bool = False
    ) -> tuple[dict[str, int], dict[str, float], dict[str, SeriesSummary]]:
        """Counters, gauges and series summaries (raw values only if ``include_values``)."""
        series = {name: s.summary(include_values) for name, s in self._series.items()}
        return (*self.scalars(), series)
