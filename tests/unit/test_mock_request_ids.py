"""The mock server's request-id counters and :func:`benchop.mockserver.tally`, the rule the
fault suite (hack/fault_suite.py) and the worker tests use for *lost*, *double* and *resent*."""

from __future__ import annotations

from benchop.mockserver import STATS_KEYS, MockConfig, RequestIds, Tally, config_args, tally


def test_each_id_counts_once_and_its_repeats_apart() -> None:
    stats = dict.fromkeys(STATS_KEYS, 0)
    ids = RequestIds(stats)
    for rid in ["r/0/warmup/0", "r/0/profiling/0", "r/1/profiling/0", "r/0/profiling/0"]:
        ids.completed(rid)
    ids.completed(None)  # no header (e.g. curl): not an id
    ids.completed("r/0/profiling/0")
    assert (stats["ok_ids"], stats["ok_repeats"]) == (3, 2)


def test_a_response_sent_again_is_resent_not_lost() -> None:
    # worker-killed: the server completed 261 responses, one of them twice (the request in
    # flight at SIGKILL, which the restarted worker sent again with its id); results: 260
    assert tally({"ok": 261, "ok_ids": 260, "ok_repeats": 1}, 260) == Tally(260, 260, 0, 0, 1)


def test_lost_and_double_are_the_positive_parts() -> None:
    assert tally({"ok": 261, "ok_ids": 261, "ok_repeats": 0}, 260) == Tally(261, 260, 1, 0, 0)
    assert tally({"ok": 261, "ok_ids": 260, "ok_repeats": 1}, 262) == Tally(260, 262, 0, 2, 1)
    # a resend does not hide a loss: 2 sent twice, one result missing
    assert tally({"ok": 262, "ok_ids": 260, "ok_repeats": 2}, 259).lost == 1


def test_received_compares_every_request_whatever_its_end() -> None:
    stats = {"requests": 240, "ok": 216, "errors": 24, "ok_repeats": 0}
    assert tally(stats, 240, received=True) == Tally(240, 240, 0, 0, 0)
    assert tally(stats, 239, received=True).lost == 1


def test_the_switch_is_a_flag_only_when_on() -> None:
    assert "--request-ids" in config_args(MockConfig(request_ids=True))
    assert "--request-ids" not in config_args(MockConfig())
