"""Retry delays: doubling, capped, and jittered so that processes never retry in lockstep."""

import random

from support.backoff import Backoff


def test_delays_double_up_to_the_cap_and_stay_within_half_to_full_bound() -> None:
    random.seed(7)
    backoff = Backoff(first=0.1, cap=1.0)
    bounds = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for bound in bounds:
        assert bound / 2 <= backoff.next_delay() <= bound
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_two_processes_restarting_together_do_not_retry_in_lockstep() -> None:
    a, b = Backoff(first=0.05, cap=2.0), Backoff(first=0.05, cap=2.0)
    assert [a.next_delay() for _ in range(8)] != [b.next_delay() for _ in range(8)]
