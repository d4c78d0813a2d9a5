"""Each site queue's history: pilots pending, running and draining, payload slots busy, and
the factory's submissions and cancellations, one row per minute (the last sample of the
minute; decisions summed), folded into one row per hour beyond FINE_DAYS (averages; sums),
dropped after `monitor.history_days`. Per site queue that is at most 7 x 1440 + 24 per
further day rows, whatever the factory's pace.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlmodel import Session, col

from catalog.timeutil import utcnow
from tower.model.db import insert_missing
from tower.model.models import Attempt, Pilot, SiteSample
from tower.model.states import PilotState

#: Seconds of a fine sample and of a folded one.
MINUTE, HOUR = 60, 3600
#: Days kept minute by minute.
FINE_DAYS = 7
#: The figures of a sample, in the order plots stack them.
LEVELS = ("pending", "running", "draining")


def record(session: Session, site: str, queue: str, pending: int, running: int,
           draining: int, submitted: int, cancelled: int, now: datetime | None = None) -> None:
    """The factory's view of a site queue this cycle (in its decision's transaction)."""
    moment = int((now or utcnow()).timestamp())
    at = moment - moment % MINUTE
    busy = session.execute(
        select(func.count()).select_from(Attempt)
        .join(Pilot, col(Pilot.id) == col(Attempt.pilot_id))
        .where(col(Pilot.site) == site, col(Pilot.queue) == queue,
               col(Pilot.state).in_([PilotState.RUNNING, PilotState.DRAINING]),
               col(Attempt.ended_at).is_(None))).scalar_one()
    insert_missing(session, SiteSample, site=site, queue=queue, at=at, span=MINUTE)
    session.execute(update(SiteSample).where(
        col(SiteSample.site) == site, col(SiteSample.queue) == queue,
        col(SiteSample.at) == at, col(SiteSample.span) == MINUTE).values(
        pending=pending, running=running, draining=draining, busy=busy,
        submitted=SiteSample.submitted + submitted,
        cancelled=SiteSample.cancelled + cancelled))


def coarsen(session: Session, history_days: int, now: datetime | None = None) -> int:
    """Fold minute rows older than FINE_DAYS into hour rows, drop rows older than
    `history_days`; returns the rows removed."""
    moment = int((now or utcnow()).timestamp())
    edge = moment - FINE_DAYS * 86400
    edge -= edge % HOUR  # whole hours only: an hour is folded once, all of it
    old = session.execute(delete(SiteSample).where(
        col(SiteSample.span) == MINUTE, col(SiteSample.at) < edge).returning(
        col(SiteSample.site), col(SiteSample.queue), col(SiteSample.at),
        col(SiteSample.pending), col(SiteSample.running), col(SiteSample.draining),
        col(SiteSample.busy), col(SiteSample.submitted), col(SiteSample.cancelled))).all()
    hours: dict[tuple[str, str, int], list[list[float]]] = defaultdict(list)
    for site, queue, at, *figures in old:
        hours[(site, queue, at - at % HOUR)].append(figures)
    for (site, queue, at), rows in hours.items():
        count = len(rows)
        insert_missing(session, SiteSample, site=site, queue=queue, at=at, span=HOUR,
                       pending=sum(r[0] for r in rows) / count,
                       running=sum(r[1] for r in rows) / count,
                       draining=sum(r[2] for r in rows) / count,
                       busy=sum(r[3] for r in rows) / count,
                       submitted=int(sum(r[4] for r in rows)),
                       cancelled=int(sum(r[5] for r in rows)))
    gone = session.execute(delete(SiteSample).where(
        col(SiteSample.at) < moment - history_days * 86400)).rowcount or 0  # type: ignore[attr-defined]
    return len(old) - len(hours) + gone


@dataclass(frozen=True)
class Sample:
    at: datetime
    span: int
    pending: float
    running: float
    draining: float
    busy: float
    submitted: int
    cancelled: int


def read(session: Session, site: str, since: datetime, until: datetime
         ) -> list[Sample]:
    """A site's samples in [since, until), its queues added up, oldest first."""
    rows = session.execute(
        select(col(SiteSample.at), col(SiteSample.span), func.sum(SiteSample.pending),
               func.sum(SiteSample.running), func.sum(SiteSample.draining),
               func.sum(SiteSample.busy), func.sum(SiteSample.submitted),
               func.sum(SiteSample.cancelled))
        .where(col(SiteSample.site) == site, col(SiteSample.at) >= int(since.timestamp()),
               col(SiteSample.at) < int(until.timestamp()))
        .group_by(col(SiteSample.at), col(SiteSample.span)).order_by(col(SiteSample.at))).all()
    return [Sample(datetime.fromtimestamp(at, since.tzinfo), span, float(pending),
                   float(running), float(draining), float(busy), int(submitted),
                   int(cancelled))
            for at, span, pending, running, draining, busy, submitted, cancelled in rows]

