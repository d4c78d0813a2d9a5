"""Counters kept as jobs move: jobs and events per production and state, and activity
(jobs done, attempts ended by outcome) per production, site and five minutes.

Counting a million jobs by state on every page view would scan the jobs table. Instead,
each state change (`tower.model.states.move_jobs`), each batch of new jobs and each attempt
that ends adds to deltas that the same transaction writes just before it commits (one
insert per tally, summed per key), so the counts are exactly what is committed, and two
tower processes never contend on one counter row. `compact` folds the deltas (the
monitor calls it every cycle), so a read sums a handful of rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, event, func, insert, select
from sqlmodel import Session, col

from catalog.timeutil import utcnow
from tower.model import reads
from tower.model.db import driver_connection
from tower.model.models import Activity, Job, JobTally
from tower.model.reads import Count
from tower.model.states import JOB_PLACED, JobState

#: Seconds per activity bucket.
BUCKET = 300
#: Activity rows of the last hour are folded each cycle; older buckets receive no new
#: deltas but the rare correction of an attempt that ended long ago.
RECENT = 3600

#: Kind of activity row counting jobs that reached `done`.
DONE = "done"


def bucket_of(when: datetime) -> int:
    """Start of the five minutes holding `when`, in seconds since the epoch."""
    seconds = int(when.replace(tzinfo=when.tzinfo or UTC).timestamp())
    return seconds - seconds % BUCKET


def bucket_time(bucket: int) -> datetime:
    return datetime.fromtimestamp(bucket, UTC)


#: Key columns of each tally, and the amounts summed under a key.
KEYS: dict[Any, tuple[str, ...]] = {JobTally: ("production_id", "state", "site", "queue"),
                                    Activity: ("production_id", "site", "bucket", "kind",
                                               "code")}
AMOUNTS: dict[Any, tuple[str, ...]] = {JobTally: ("jobs", "events"),
                                       Activity: ("count", "events")}


def _add(session: Session, model: Any, key: tuple[Any, ...], *amounts: int) -> None:
    """Add to the deltas this transaction will write (summed per key, so a transaction
    that moves jobs many times still writes a handful of rows, once, before it commits)."""
    pending = session.info.setdefault("tally", {JobTally: {}, Activity: {}})[model]
    total = pending.setdefault(key, [0] * len(amounts))
    for i, amount in enumerate(amounts):
        total[i] += amount


def write_pending(session: Session) -> None:
    """Write the deltas added in this transaction (before it commits, and before reading
    the tally in it)."""
    pending = session.info.pop("tally", None)
    for model, rows in (pending or {}).items():
        values = [dict(zip(KEYS[model] + AMOUNTS[model], (*key, *amounts), strict=True))
                  for key, amounts in rows.items() if any(amounts)]
        if values:
            session.execute(insert(model), values)


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    write_pending(session)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop("tally", None)


def jobs_added(session: Session, production_id: int, jobs: int, events: int) -> None:
    """New jobs of a production, all `defined`."""
    if jobs:
        _add(session, JobTally, (production_id, JobState.DEFINED, "", ""), jobs, events)


def jobs_moved(session: Session, moved: Iterable[tuple[int, int, str | None, str, str | None,
                                                     str]],
               source: JobState, target: JobState, when: datetime) -> None:
    """Jobs (production id, events, site and queue after the move, and before it) moved
    from `source` to `target`."""
    bucket = bucket_of(when)
    for production_id, events, site, queue, old_site, old_queue in moved:
        before = _place(source, old_site, old_queue)
        after = _place(target, site, queue)
        if (source, before) != (target, after):
            _add(session, JobTally, (production_id, source, *before), -1, -events)
            _add(session, JobTally, (production_id, target, *after), 1, events)
        if target is JobState.DONE:
            _add(session, Activity, (production_id, site or "", bucket, DONE, 0), 1, events)


def _place(state: JobState, site: str | None, queue: str) -> tuple[str, str]:
    """The site and queue a tally row of `state` keeps: only a placed job's."""
    return (site or "", queue) if state in JOB_PLACED else ("", "")


def attempt_ended(session: Session, production_id: int, site: str, outcome: str, code: int,
                  events: int, when: datetime, previous: tuple[str, int, datetime] | None = None
                  ) -> None:
    """An attempt ended as `outcome` (with its exit code or signal, else 0); `previous` is
    the outcome, code and time it had ended with before (a success whose outputs could
    not be staged ends again, as a failure)."""
    _add(session, Activity, (production_id, site, bucket_of(when), outcome, code), 1, events)
    if previous is not None:
        _add(session, Activity, (production_id, site, bucket_of(previous[2]), previous[0],
                                 previous[1]), -1, -events)


# -- reading ------------------------------------------------------------------------------------

def counts(session: Session, production_id: int | None = None
           ) -> dict[int, dict[str, Count]]:
    """{production id: {state: Count}} for one production or all, this transaction's moves
    included; states with no jobs left out."""
    write_pending(session)
    return reads.counts(driver_connection(session), production_id)


def placed(session: Session, production_id: int | None = None,
           states: Iterable[JobState] = JOB_PLACED) -> dict[tuple[int, str, str, str], int]:
    """{(production id, site, queue, state): jobs} of the jobs placed at sites (in
    `states`, some of JOB_PLACED), this transaction's moves included."""
    write_pending(session)
    query = (select(col(JobTally.production_id), col(JobTally.site), col(JobTally.queue),
                    col(JobTally.state), func.sum(JobTally.jobs))
             .where(col(JobTally.state).in_(list(states)))
             .group_by(col(JobTally.production_id), col(JobTally.site), col(JobTally.queue),
                       col(JobTally.state)))
    if production_id is not None:
        query = query.where(col(JobTally.production_id) == production_id)
    return {(pid, site, queue, str(state)): int(jobs)
            for pid, site, queue, state, jobs in session.execute(query).all() if jobs}


@dataclass(frozen=True)
class Point:
    bucket: datetime
    production_id: int
    site: str
    kind: str
    count: int
    events: int


def activity(session: Session, *, production_id: int | None = None, site: str | None = None,
             since: datetime | None = None) -> list[Point]:
    """Activity rows summed per bucket, production, site and kind, oldest first."""
    write_pending(session)
    query = (select(col(Activity.bucket), col(Activity.production_id), col(Activity.site),
                    col(Activity.kind), func.sum(Activity.count), func.sum(Activity.events))
             .group_by(col(Activity.bucket), col(Activity.production_id), col(Activity.site),
                       col(Activity.kind))
             .order_by(col(Activity.bucket)))
    if production_id is not None:
        query = query.where(col(Activity.production_id) == production_id)
    if site is not None:
        query = query.where(col(Activity.site) == site)
    if since is not None:
        query = query.where(col(Activity.bucket) >= bucket_of(since))
    return [Point(bucket_time(bucket), pid, name, kind, int(count), int(events))
            for bucket, pid, name, kind, count, events in session.execute(query).all()
            if count or events]


def totals(session: Session, *, production_id: int | None = None, site: str | None = None
           ) -> dict[tuple[int, str, str, int], int]:
    """{(production id, site, kind, code): count} over all time."""
    write_pending(session)
    query = (select(col(Activity.production_id), col(Activity.site), col(Activity.kind),
                    col(Activity.code), func.sum(Activity.count))
             .group_by(col(Activity.production_id), col(Activity.site), col(Activity.kind),
                       col(Activity.code)))
    if production_id is not None:
        query = query.where(col(Activity.production_id) == production_id)
    if site is not None:
        query = query.where(col(Activity.site) == site)
    return {(pid, name, kind, code): int(count)
            for pid, name, kind, code, count in session.execute(query).all() if count}


# -- upkeep -------------------------------------------------------------------------------------

def compact(session: Session, now: datetime | None = None) -> int:
    """Fold delta rows into one per key; returns the rows removed.

    Each fold deletes rows with RETURNING and inserts their sums in the same statement
    pair, so it counts exactly the rows it removed: a delta committed meanwhile by
    another process stays as it is, to be folded next time.
    """
    write_pending(session)
    crowded = [pid for (pid,) in session.execute(
        select(col(JobTally.production_id)).group_by(
            *(col(getattr(JobTally, name)) for name in KEYS[JobTally]))
        .having(func.count() > 1).distinct()).all()]
    removed = 0
    if crowded:
        removed += _fold(session, JobTally, col(JobTally.production_id).in_(crowded))
    recent = bucket_of((now or utcnow()) - timedelta(seconds=RECENT))
    removed += _fold(session, Activity, col(Activity.bucket) >= recent)
    return removed


#: Seconds in one bucket of activity folded by `coarsen` (a day).
COARSE = 86400


def coarsen(session: Session, production_ids: list[int]) -> int:
    """Fold the activity of these productions into one row per day (and production, site,
    kind and code): sums kept, detail within a day given up; returns the rows removed."""
    if not production_ids:
        return 0
    write_pending(session)
    return _fold(session, Activity, col(Activity.production_id).in_(production_ids),
                 lambda key: (*key[:2], key[2] - key[2] % COARSE, *key[3:]))


def _fold(session: Session, model: Any, where: Any,
          regroup: Callable[[tuple[Any, ...]], tuple[Any, ...]] = lambda key: key) -> int:
    """Fold rows of `model` matching `where` into one per key (as `regroup` maps keys)."""
    keys, amounts = KEYS[model], AMOUNTS[model]
    rows = session.execute(delete(model).where(where).returning(
        *(getattr(model, name) for name in keys + amounts))).all()
    sums: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(amounts))
    for row in rows:
        total = sums[regroup(tuple(row[:len(keys)]))]
        for i, value in enumerate(row[len(keys):]):
            total[i] += value
    folded = [dict(zip(keys + amounts, (*key, *values), strict=True))
              for key, values in sums.items() if any(values)]
    if folded:
        session.execute(insert(model), folded)
    return len(rows) - len(folded)


def rebuild(session: Session) -> None:
    """Recount the job tally from the jobs table (a database made before it existed, or
    before it kept where placed jobs are)."""
    session.execute(delete(JobTally))
    placed = col(Job.state).in_(list(JOB_PLACED))
    site = case((placed, func.coalesce(Job.site, "")), else_="")
    queue = case((placed, Job.queue), else_="")
    rows = session.execute(select(col(Job.production_id), col(Job.state), site, queue,
                                  func.count(), func.sum(Job.events))
                           .group_by(col(Job.production_id), col(Job.state), site, queue)
                           ).all()
    if rows:
        session.execute(insert(JobTally), [
            {"production_id": pid, "state": state, "site": where, "queue": line, "jobs": n,
             "events": int(e)} for pid, state, where, line, n, e in rows])
