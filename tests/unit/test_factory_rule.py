"""The factory's documented rule for how many pilots to submit, as a table."""

from __future__ import annotations

import pytest

from sites.config import SiteConfig
from tower.loops.factory import pilots_to_submit

SITE = SiteConfig.model_validate({
    "name": "s", "scratch": "/s", "storage": "/t", "pilot": {"slots": 4},
    "limits": {"max_queued": 2, "max_running": 3, "max_per_cycle": 2}})


@pytest.mark.parametrize(("demand", "pending", "running", "draining", "expected"), [
    (0, 0, 0, 0, 0),      # no work, no pilots
    (1, 0, 0, 0, 1),      # one job needs one pilot
    (4, 0, 0, 0, 1),      # four jobs fit one pilot's four slots
    (5, 0, 0, 0, 2),      # five do not
    (100, 0, 0, 0, 2),    # capped by max_per_cycle and max_queued
    (100, 1, 0, 0, 1),    # one already waits: room for one more in the queue
    (100, 2, 0, 0, 0),    # max_queued reached
    (100, 0, 1, 0, 2),    # one runs: two more may wait, and all three may run at once
    (100, 0, 2, 0, 1),    # two run: a third may start, no more (max_running 3)
    (100, 0, 3, 0, 0),    # max_running reached: a pending pilot could start beyond it
    (100, 1, 1, 1, 0),    # a draining pilot still holds its batch slot
    (8, 0, 2, 0, 0),      # two running pilots already cover eight jobs
    (9, 0, 1, 1, 1),      # a draining pilot does not count toward capacity
])
def test_pilots_to_submit(demand: int, pending: int, running: int, draining: int,
                          expected: int) -> None:
    assert pilots_to_submit(demand, SITE.pilot.slots, pending, running, draining,
                            SITE) == expected
