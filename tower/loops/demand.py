"""How many jobs each site queue's pilots took between two matchmaker cycles.

A site queue's backlog bound follows its running slots (`Backlog.per_slot`), but the
matchmaker refills it at most once per `loops.busy_pause`: pilots that run short jobs
faster than one bound per cycle would find the queue empty and wait for the next cycle
(one pilot of one slot running `/bin/true` took 4 jobs per 0.1 s cycle: 40 jobs/s). So the
bound also covers twice what the queue's pilots took in the last cycle's period: a queue
drained between two cycles gets twice the places in the next, up to what its pilots take
in one period, and no more than that stays waiting at the site (late binding holds
within one cycle). When the pilots slow down, the bound falls back to its slots' share.
"""

from __future__ import annotations

import threading

SiteQueue = tuple[str, str]


class Demand:
    """Per site queue, the jobs held after the last refill; thread-safe, one per process
    (another tower on the same database refilling a queue only lowers the estimate; jobs
    cancelled while waiting at a site raise it for one cycle)."""

    def __init__(self) -> None:
        self._refilled: dict[SiteQueue, int] = {}
        self._lock = threading.Lock()

    def bound(self, key: SiteQueue, held: int, static: int, cap: int) -> int:
        """The bound on `key`'s backlog now: `static`, or twice the jobs its pilots took
        since the last refill (`held` is what waits there now), never above `cap` unless
        `static` is."""
        with self._lock:
            taken = max(0, self._refilled.get(key, held) - held)
        return max(static, min(cap, 2 * taken))

    def taken_back(self, key: SiteQueue, count: int) -> None:
        """The tower took `count` jobs back from `key` (not claimed by its pilots)."""
        with self._lock:
            if key in self._refilled:
                self._refilled[key] -= count

    def refilled(self, key: SiteQueue, held: int) -> None:
        """The matchmaker left `held` jobs waiting at `key` in this cycle."""
        with self._lock:
            self._refilled[key] = held
