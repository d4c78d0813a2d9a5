"""A pilot's slot gaps: from a payload's end to the next start in the freed slot."""

from __future__ import annotations

import re
import time

from pilots.efficiency import SlotGaps


def test_a_start_in_a_freed_slot_counts_the_time_since_it_was_freed() -> None:
    gaps = SlotGaps()
    gaps.started()  # a slot never used: no gap
    assert gaps.summary() == "no slot was reused"
    gaps.ended()
    time.sleep(0.02)
    gaps.started()
    match = re.fullmatch(r"slot gaps: 1, median ([\d.]+) ms, p99 ([\d.]+) ms, "
                         r"mean ([\d.]+) ms, max ([\d.]+) ms", gaps.summary())
    assert match is not None
    assert 20 <= float(match[1]) < 1000 and match[1] == match[2] == match[3] == match[4]


def test_slots_freed_first_are_taken_first() -> None:
    gaps = SlotGaps()
    gaps.ended()
    time.sleep(0.05)
    gaps.ended()
    gaps.started()  # takes the slot freed 50 ms ago
    gaps.started()  # takes the one freed just now
    gaps.started()  # no freed slot left: counts nothing
    match = re.fullmatch(r"slot gaps: 2, median ([\d.]+) ms, p99 ([\d.]+) ms, "
                         r"mean ([\d.]+) ms, max ([\d.]+) ms", gaps.summary())
    assert match is not None
    median, p99, mean, most = (float(match[number]) for number in range(1, 5))
    assert p99 >= 50 and most == p99  # the slot freed 50 ms ago
    assert 25 <= median < p99  # the middle of ~50 ms and ~0 ms
    assert mean == median  # of two
