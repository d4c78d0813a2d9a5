"""A site queue's backlog bound grows with what its pilots took between two matchmaker
cycles, within its cap, and falls back to its slots' share when they slow down."""

from __future__ import annotations

from tower.loops.demand import Demand

QUEUE = ("local", "default")


def test_a_queue_never_refilled_has_its_static_bound() -> None:
    assert Demand().bound(QUEUE, held=0, static=4, cap=2000) == 4


def test_a_queue_drained_between_two_cycles_gets_twice_what_was_taken() -> None:
    demand = Demand()
    demand.refilled(QUEUE, 4)
    # its pilots took all four before the next cycle: eight places in the next
    assert demand.bound(QUEUE, held=0, static=4, cap=2000) == 8
    demand.refilled(QUEUE, 8)
    assert demand.bound(QUEUE, held=1, static=4, cap=2000) == 14


def test_the_bound_stays_within_its_cap_and_falls_back_when_pilots_slow_down() -> None:
    demand = Demand()
    demand.refilled(QUEUE, 100)
    assert demand.bound(QUEUE, held=0, static=4, cap=50) == 50
    demand.refilled(QUEUE, 50)
    # one job taken since: the slots' share again
    assert demand.bound(QUEUE, held=49, static=4, cap=50) == 4
    # a static bound above the cap is kept (the cap bounds only the growth)
    assert demand.bound(QUEUE, held=49, static=60, cap=50) == 60


def test_another_tower_refilling_the_queue_counts_as_nothing_taken() -> None:
    demand = Demand()
    demand.refilled(QUEUE, 4)
    assert demand.bound(QUEUE, held=10, static=4, cap=2000) == 4
    assert demand.bound(("other", "default"), held=0, static=2, cap=2000) == 2


def test_jobs_the_tower_took_back_are_no_demand() -> None:
    demand = Demand()
    demand.refilled(QUEUE, 8)
    demand.taken_back(QUEUE, 6)  # its pilots vanished: the jobs beyond the bound went back
    assert demand.bound(QUEUE, held=2, static=2, cap=2000) == 2
    demand.taken_back(("other", "default"), 3)  # never refilled: nothing to correct
    assert demand.bound(("other", "default"), held=0, static=2, cap=2000) == 2
