"""Reading jobs back: filtered lists with keyset pagination, and one job with its attempts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from sites.config import GROWN, Needs, PilotShape
from tower.errors import NotFound
from tower.model.models import Attempt, Job, JobEvent, Production
from tower.model.states import JobState


def fitting(shape: PilotShape, needs: Mapping[int, Needs]) -> Any:
    """A condition on jobs: of the productions in `needs` (each production's needs), those
    a pilot of `shape` holds, by `PilotShape.holds` and `runs`, with their own memory and walltime
    where a retry grew them (`Needs.grown`: both the job's own and its production's must
    fit). `misfitting` is its complement (among those productions)."""
    def by_production(need: str) -> Any:
        return col(Job.production_id).in_(
            [pid for pid, asked in needs.items() if shape.holds(need, getattr(asked, need))])

    conditions = [by_production("cores"), _running(shape, needs, True)]
    for need in GROWN:
        offered, own = shape.offer(need), col(getattr(Job, need))
        if offered is not None:
            conditions += [or_(own.is_(None), own <= offered), by_production(need)]
    return and_(*conditions)


def _running(shape: PilotShape, needs: Mapping[int, Needs], runs: bool) -> Any:
    """The jobs of the productions in `needs` whose container runtime (or none) a pilot of
    `shape` runs, or (`runs` false) does not."""
    return col(Job.production_id).in_(
        [pid for pid, asked in needs.items() if shape.runs(asked.runtime) is runs])


def misfitting(shape: PilotShape, needs: Mapping[int, Needs]) -> Any:
    """The jobs of the productions in `needs` that `fitting` leaves out, and any job a retry
    grew past `shape` (its own memory or walltime): written so the partial indexes of the
    grown columns serve it, not a scan of every job of a production."""
    def by_production(need: str) -> Any:
        return col(Job.production_id).in_(
            [pid for pid, asked in needs.items() if not shape.holds(need, getattr(asked, need))])

    conditions = [by_production("cores"), _running(shape, needs, False)]
    for need in GROWN:
        offered, own = shape.offer(need), col(getattr(Job, need))
        if offered is not None:
            conditions += [own > offered, by_production(need)]
    return or_(*conditions)


def list_jobs(session: Session, production: str | None = None, state: str | None = None,
              site: str | None = None, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """Jobs in id order after id `after`; filters combine."""
    query = (select(Job, Production.name).join(Production, col(Production.id) == Job.production_id)
             .where(col(Job.id) > after).order_by(col(Job.id)).limit(limit))
    if production:
        query = query.where(Production.name == production)
    if state:
        query = query.where(Job.state == JobState(state))
    if site:
        query = query.where(Job.site == site)
    return [_job_dict(job, name) for job, name in session.exec(query).all()]


def page(session: Session, production: str | None = None, state: str | None = None,
         site: str | None = None, after: int = 0, limit: int = 100) -> dict[str, Any]:
    """One page of jobs, and the id to give as `after` for the next (None: no more)."""
    rows = list_jobs(session, production, state, site, after, limit)
    return {"jobs": rows, "next_after": rows[-1]["id"] if len(rows) == limit else None}


def show(session: Session, job_id: int) -> dict[str, Any]:
    row = session.exec(select(Job, Production.name).join(
        Production, col(Production.id) == Job.production_id).where(Job.id == job_id)).first()
    if row is None:
        raise NotFound(f"no job {job_id}", field="job")
    tries = session.exec(select(Attempt).where(Attempt.job_id == job_id)
                         .order_by(col(Attempt.number))).all()
    return {**_job_dict(*row), "attempts": [a.model_dump(mode="json") for a in tries],
            "history": history(session, job_id)}


#: How many of a job's latest moves `tower job`, `tower why` and the job page show.
HISTORY = 30


def history(session: Session, job_id: int) -> list[dict[str, Any]]:
    """The job's latest moves, oldest first: when, from which state to which, and why."""
    events = session.exec(select(JobEvent).where(JobEvent.job_id == job_id)
                          .order_by(col(JobEvent.id).desc()).limit(HISTORY)).all()
    return [{"at": event.at.isoformat(timespec="seconds"), "from": event.from_state,
             "to": event.to_state, "reason": event.reason} for event in reversed(events)]


def _job_dict(job: Job, production: str) -> dict[str, Any]:
    return {"id": job.id, "production": production, "index": job.index, "state": job.state.value,
            "site": job.site, "attempt": job.attempt, "seed": job.seed,
            "first_event": job.first_event, "events": job.events, "message": job.message,
            "updated_at": job.updated_at.isoformat(timespec="seconds")}


def ids_in(session: Session, production: Production, states: list[JobState]) -> list[int]:
    """The ids of a production's jobs in `states`."""
    return [job_id for job_id in session.exec(select(Job.id).where(
        Job.production_id == production.id, col(Job.state).in_(states))).all()
        if job_id is not None]
