"""Bounding what grows without bound: the history of finished productions, coarsened.

A job moves five or six times on its way to `done`, and each move is a job event; each
ended attempt adds to a five-minute activity row. Once a production has finished (no job
of it can move again) and stayed finished for `retention.finished_for` (tower.yaml),
`tower db prune` keeps only each job's last event (where it ended, when and why:
`tower why` still tells it) and folds its activity into one row per day (the totals the
pages and reports sum stay the same). Nothing else is touched: the jobs, attempts, retry
decisions, usage, tally, outputs and the catalog with its lineage stay whole, so
`tower show` and the catalog read the same before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, func, select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from catalog.timeutil import utcnow
from tower.model import tally
from tower.model.models import Activity, Job, JobEvent, Production
from tower.model.states import JOB_TERMINAL, ProductionState

#: Productions that may be finished: not waiting for a decision nor in their trial.
SETTLED = (ProductionState.ACTIVE, ProductionState.PAUSED, ProductionState.CANCELLED,
           ProductionState.REJECTED)


@dataclass(frozen=True)
class Pruned:
    """What a prune removed (or, in a dry run, would remove)."""

    before: datetime
    productions: list[str]
    job_events: int
    activity_rows: int


def finished(session: Session, before: datetime) -> list[tuple[int, str]]:
    """(id, name) of the productions none of whose jobs can move again, whose last job
    moved (or, without jobs, which itself changed) before `before`."""
    unfinished = {pid for pid, states in tally.counts(session).items()
                  if any(state not in JOB_TERMINAL and count.jobs > 0
                         for state, count in states.items())}
    last_moves = dict(session.execute(
        select(col(Job.production_id), func.max(Job.updated_at))
        .group_by(col(Job.production_id))).all())
    rows = session.execute(select(col(Production.id), col(Production.name),
                                  col(Production.updated_at))
                           .where(col(Production.state).in_(SETTLED))
                           .order_by(col(Production.id))).all()
    return [(pid, name) for pid, name, updated in rows
            if pid not in unfinished and last_moves.get(pid, updated) < before]


def prune(session: Session, finished_for: float, dry_run: bool = False) -> Pruned:
    """Coarsen the history of productions finished for longer than `finished_for` seconds."""
    before = utcnow() - timedelta(seconds=finished_for)
    chosen = finished(session, before)
    ids = [pid for pid, _ in chosen]
    events = _old_events(ids)
    if dry_run:
        removed_events = session.execute(
            select(func.count()).select_from(JobEvent).where(events)).scalar_one()
        removed_activity = _activity_rows(session, ids) - _activity_days(session, ids)
    else:
        removed_events = int(session.execute(  # type: ignore[attr-defined]
            delete(JobEvent).where(events)).rowcount)
        removed_activity = tally.coarsen(session, ids)
    return Pruned(before, [name for _, name in chosen], removed_events, removed_activity)


def _old_events(production_ids: list[int]) -> ColumnElement[bool]:
    """The job events of these productions' jobs but each job's last."""
    later = aliased(JobEvent)
    last = select(func.max(later.id)).where(
        col(later.job_id) == col(JobEvent.job_id)).scalar_subquery()
    jobs = select(col(Job.id)).where(col(Job.production_id).in_(production_ids))
    return and_(col(JobEvent.job_id).in_(jobs), col(JobEvent.id) < last)


def _activity_rows(session: Session, production_ids: list[int]) -> int:
    return session.execute(select(func.count()).select_from(Activity).where(
        col(Activity.production_id).in_(production_ids))).scalar_one()


def _activity_days(session: Session, production_ids: list[int]) -> int:
    """The rows `tally.coarsen` would leave of these productions' activity."""
    day = col(Activity.bucket) - col(Activity.bucket) % tally.COARSE
    groups = (select(col(Activity.production_id), col(Activity.site), day,
                     col(Activity.kind), col(Activity.code))
              .where(col(Activity.production_id).in_(production_ids))
              .group_by(col(Activity.production_id), col(Activity.site), day,
                        col(Activity.kind), col(Activity.code))
              .having((func.sum(Activity.count) != 0) | (func.sum(Activity.events) != 0))
              .subquery())
    return session.execute(select(func.count()).select_from(groups)).scalar_one()
