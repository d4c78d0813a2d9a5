from __future__ import annotations

import pytest

from tower.config import RetrySettings
from tower.policy import Outcome, decide

SETTINGS = RetrySettings(max_attempts=3, backoff=30, backoff_max=100)


@pytest.mark.parametrize(("outcome", "used", "retry", "delay"), [
    (Outcome.EXIT_CODE, 1, True, 30),
    (Outcome.LOST_HEARTBEAT, 2, True, 60),
    (Outcome.SIGNAL, 3, False, 0),
    (Outcome.CANCELLED, 1, False, 0),
])
def test_retry_while_attempts_remain_with_backoff(outcome: Outcome, used: int, retry: bool,
                                                  delay: int) -> None:
    decision = decide(outcome, used, 3, SETTINGS)
    assert (decision.retry, decision.delay) == (retry, delay)
    assert str(outcome) in decision.reason or outcome is Outcome.CANCELLED


def test_backoff_is_capped() -> None:
    assert decide(Outcome.EXIT_CODE, 9, 20, SETTINGS).delay == 100
