"""What successful attempts used: peak memory, CPU time and wall time as the pilots measured
them, with the job's events; and their distributions (median, p95, max) per production.

A distribution is read from the latest `SAMPLE` successful attempts of a production (one
range of the index on (production, id)), never from all of them: a page view costs the same
for a production of ten jobs or of a million, and the figures follow what the payload does
now (after a tuning, a new software build). Percentiles are nearest-rank over that sample.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import select as sa_select
from sqlmodel import Session, col

from tower.model.db import bulk_insert
from tower.model.models import Usage

#: Successful attempts a distribution reads at most, the latest first.
SAMPLE = 5000
#: The figures of a distribution and their labels, in the order `tower show` and the
#: production page show them.
FIGURES = (("memory_mb", "peak memory (MB)"), ("cpu_seconds", "CPU time (s)"),
           ("wall_seconds", "wall time (s)"), ("cpu_seconds_per_event", "CPU per event (s)"),
           ("wall_seconds_per_event", "wall per event (s)"),
           ("efficiency", "efficiency: CPU / (wall x cores)"))


def record(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Record successful attempts' usage: dicts of Usage's columns (production_id, job_id,
    attempt, site, events, cores, max_rss_mb, cpu_seconds, wall_seconds)."""
    bulk_insert(session, Usage, rows)


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ascending `ordered` (not empty): the smallest value
    with at least `fraction` of the values at or below it."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """Median, p95 and max of `values` (None if there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    return {"median": _round(statistics.median(ordered)),
            "p95": _round(percentile(ordered, 0.95)), "max": _round(ordered[-1])}


def _round(value: float) -> float:
    return float(f"{value:.4g}")


class Used(NamedTuple):
    """One successful attempt's usage, as a distribution reads it."""

    job_id: int
    events: int
    cores: int
    max_rss_mb: int | None
    cpu_seconds: float | None
    wall_seconds: float


def latest(session: Session, production_id: int, limit: int = SAMPLE) -> list[Used]:
    """The production's latest `limit` successful attempts' usage, newest first (plain
    rows: building ORM objects would cost more than the query)."""
    rows = session.execute(sa_select(
        col(Usage.job_id), col(Usage.events), col(Usage.cores), col(Usage.max_rss_mb),
        col(Usage.cpu_seconds), col(Usage.wall_seconds))
        # a range of one, in the index's order: for `production_id = P ORDER BY id` the
        # planner may walk the primary key back instead, past every row other productions
        # wrote since (1M of them: 200 ms against 1 ms on PostgreSQL, bench/usage.py)
        .where(col(Usage.production_id) >= production_id,
               col(Usage.production_id) < production_id + 1)
        .order_by(col(Usage.production_id).desc(), col(Usage.id).desc()).limit(limit)).all()
    return [Used(*row) for row in rows]


def distribution(session: Session, production_id: int, limit: int = SAMPLE
                 ) -> dict[str, Any] | None:
    """Each figure's median, p95 and max over the latest `limit` successful attempts, and the
    efficiency CPU / (wall x cores) of them all together; None before the first success."""
    return describe(latest(session, production_id, limit))


def describe(rows: Sequence[Used]) -> dict[str, Any] | None:
    """The distributions of `rows` (see `distribution`)."""
    if not rows:
        return None
    # (cpu, wall, cores, events) of the attempts whose CPU time was measured
    timed = [(row.cpu_seconds, row.wall_seconds, row.cores, row.events) for row in rows
             if row.cpu_seconds is not None]
    # a payload that took no measurable wall time has no efficiency to speak of
    busy = [(cpu, wall * cores) for cpu, wall, cores, _ in timed if wall > 0]
    capacity = sum(offered for _, offered in busy)
    return {
        "attempts": len(rows), "sample": SAMPLE,
        "memory_mb": spread([row.max_rss_mb for row in rows if row.max_rss_mb is not None]),
        "cpu_seconds": spread([cpu for cpu, _, _, _ in timed]),
        "wall_seconds": spread([row.wall_seconds for row in rows]),
        "cpu_seconds_per_event": spread([cpu / events for cpu, _, _, events in timed]),
        "wall_seconds_per_event": spread([row.wall_seconds / row.events for row in rows]),
        "efficiency": spread([cpu / offered for cpu, offered in busy]),
        "overall_efficiency": (_round(sum(cpu for cpu, _ in busy) / capacity)
                               if capacity else None),
    }
