"""testkubelet.backoff: the kubelet's crash-loop and image-pull back-off."""

from __future__ import annotations

from testkubelet.backoff import Backoff


def test_crash_loop_restarts_at_once_then_doubles_up_to_the_cap():
    b = Backoff(10, 300)
    t, delays = 0.0, []
    for _ in range(8):
        d = b.next(t)
        delays.append(d)
        t += d + 1  # the container runs for a second, then crashes again
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]


def test_image_pull_backoff_always_waits():
    b = Backoff(10, 300, first_at_once=False)
    assert [b.next(t) for t in (0, 11, 32)] == [10, 20, 40]


def test_a_long_quiet_period_starts_over():
    b = Backoff(10, 300)
    assert b.next(0) == 0
    assert b.next(1) == 10
    assert b.next(11 + 601) == 0  # ran fine for more than 2 * cap
    assert b.next(700) == 10
