"""The retry delays after API errors (benchop.core.backoff): capped, exponential, fully
jittered, never sooner than Retry-After."""

from __future__ import annotations

import pytest

from benchop.core.backoff import CAP_S, RETRY_AFTER_MAX_S, Backoffs, delay, retry_after_s


def test_the_ceiling_doubles_per_attempt_up_to_the_cap() -> None:
    top = [delay(n, rand=lambda: 1.0) for n in range(8)]
    assert top == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert delay(10_000, rand=lambda: 1.0) == CAP_S  # no overflow for a long streak


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    assert delay(3, rand=lambda: 0.0) == 0.0
    assert delay(3, rand=lambda: 0.25) == 2.0
    assert delay(2, base=0.5, cap=1.5, rand=lambda: 1.0) == 1.5


def test_retry_after_is_a_floor_and_is_capped() -> None:
    assert delay(0, retry_after=3.0, rand=lambda: 0.5) == 3.0
    assert delay(5, retry_after=3.0, rand=lambda: 0.5) == 15.0  # the backoff is longer
    assert delay(0, retry_after=3600.0, rand=lambda: 0.0) == RETRY_AFTER_MAX_S
    assert delay(0, retry_after=0.0, rand=lambda: 0.5) == 0.5


def test_retry_after_header() -> None:
    assert retry_after_s("1") == 1.0
    assert retry_after_s("2.5") == 2.5
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_s("") is None and retry_after_s(None) is None


def test_backoffs_draw_fresh_jitter_per_iteration() -> None:
    draws = iter([0.5, 0.5, 0.5, 0.1, 0.1, 0.1])
    b = Backoffs(3, rand=lambda: next(draws))
    assert len(b) == 3
    assert list(b) == [0.5, 1.0, 2.0]
    assert list(b) == pytest.approx([0.1, 0.2, 0.4])  # a second request, its own jitter


def test_kopf_takes_backoffs_as_its_error_backoffs() -> None:
    """kopf iterates error_backoffs once per request and counts attempts by ``len``."""
    import kopf

    settings = kopf.OperatorSettings()
    settings.networking.error_backoffs = Backoffs(8)
    delays = list(settings.networking.error_backoffs)  # type: ignore[arg-type]
    assert len(delays) == 8 and all(0 <= d <= CAP_S for d in delays)
