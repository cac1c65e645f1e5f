"""Records -> metrics (pure): TPOT, goodput, counters by reason, prompts."""

from __future__ import annotations

import pytest

from benchop.loadgen.prompts import WORDS, make_prompt
from benchop.loadgen.records import (
    DELAYED,
    RequestRecord,
    Slo,
    is_good,
    record_into,
    registry_from,
    tpot_ns,
)
from benchop.metrics import names


def rec(outcome: str = "ok", **kw: object) -> RequestRecord:
    base: dict[str, object] = dict(
        id="w0-a1-0",
        worker=0,
        attempt=1,
        index=0,
        sent_ns=1,
        outcome=outcome,
        ttft_ns=100,
        itl_ns=[10, 30],
        e2e_ns=140,
        input_tokens=5,
        output_tokens=3,
    )
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def test_tpot() -> None:
    assert tpot_ns(rec()) == 20  # (140 - 100) // (3 - 1)
    assert tpot_ns(rec(output_tokens=1)) is None
    assert tpot_ns(rec(ttft_ns=None)) is None


@pytest.mark.parametrize(
    ("slo", "good"),
    [
        (Slo(), True),
        (Slo(ttft_ms=0.0001), True),  # 100 ns
        (Slo(ttft_ms=0.00009), False),
        (Slo(itl_ms=0.00002), True),  # mean gap 20 ns
        (Slo(itl_ms=0.000019), False),
        (Slo(tpot_ms=0.00002), True),
        (Slo(tpot_ms=0.000019), False),
        (Slo(e2e_ms=0.00014), True),
        (Slo(e2e_ms=0.000139), False),
    ],
)
def test_goodput_checks_every_slo(slo: Slo, good: bool) -> None:
    assert is_good(rec(), slo) is good


def test_failed_request_is_never_good() -> None:
    assert not is_good(rec("http_5xx"), Slo())


def test_registry_from_records_counts_by_reason_and_series_ok_only() -> None:
    records = [
        rec(good=True),
        rec("http_429", ttft_ns=None, itl_ns=[]),
        rec("disconnected"),  # partial timings are not recorded
        rec("weird-reason"),
        rec(send_lag_ns=-5, delayed=True),
    ]
    reg = registry_from(records)
    counters, _, series = reg.snapshot()
    assert counters[names.REQUESTS] == 5
    assert counters[names.REQUESTS_OK] == 2 and counters[names.REQUESTS_FAILED] == 3
    assert counters[names.GOOD] == 1
    assert counters["failed_http_429"] == counters["failed_disconnected"] == 1
    assert counters["failed_other"] == 1
    assert counters[DELAYED] == 1
    assert counters[names.OUTPUT_TOKENS_TOTAL] == 6
    assert series[names.TTFT].count == 2 and series[names.ITL].count == 4
    assert reg.series(names.SEND_LAG).values().tolist() == [-5]


def test_record_into_matches_registry_from() -> None:
    from benchop.loadgen.records import new_registry

    reg = new_registry()
    for r in (rec(), rec("timeout")):
        record_into(reg, r)
    assert reg.snapshot(True) == registry_from([rec(), rec("timeout")]).snapshot(True)


@pytest.mark.parametrize("n", [1, 7, 512])
def test_prompt_word_count_is_exact_and_seeded(n: int) -> None:
    p = make_prompt(3, worker=1, attempt=1, index=9, n_tokens=n)
    assert len(p.split(" ")) == n and all(w in WORDS for w in p.split(" "))
    assert p == make_prompt(3, worker=1, attempt=1, index=9, n_tokens=n)
    assert p != make_prompt(3, worker=1, attempt=1, index=10, n_tokens=n) or n == 1


def test_prompt_is_pinned_across_hosts() -> None:
    """SHAKE-128 based: the same words everywhere (a changed generator shows up here)."""
    assert make_prompt(1, worker=0, attempt=1, index=5, n_tokens=6) == (
        "way people only first but bread"
    )
