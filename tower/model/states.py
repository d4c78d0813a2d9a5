"""The state machines of jobs, productions and pilots, and the functions that move them.

Every status change of a job goes through :func:`move_jobs`: it checks the
move against the table, applies it as a compare-and-set on the current state
(so two tower processes cannot both make it), and writes one event row per
job. An illegal move raises :class:`IllegalTransition`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlmodel import Session

from catalog.timeutil import utcnow
from tower.errors import IllegalTransition


class JobState(enum.StrEnum):
    DEFINED = "defined"      # waiting to be matched to a site
    ASSIGNED = "assigned"    # matched, message not yet confirmed by the broker
    QUEUED = "queued"        # message confirmed in the site's queue
    RUNNING = "running"      # claimed by a pilot
    STAGING = "staging"      # payload succeeded, outputs being copied and cataloged
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    HELD = "held"            # waits for a human


S = JobState

#: Legal moves: from-state -> the states it may move to.
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.DEFINED: frozenset({S.ASSIGNED, S.CANCELLED, S.HELD}),
    # back to defined: the site went away before the message was confirmed;
    # running: a pilot claimed it before the broker's confirm was recorded
    S.ASSIGNED: frozenset({S.QUEUED, S.RUNNING, S.DEFINED, S.CANCELLED, S.HELD}),
    # queued again: its message vanished from the broker and was published anew;
    # defined, held or failed: no pilot claimed it in time, and the policy decided
    S.QUEUED: frozenset({S.RUNNING, S.QUEUED, S.DEFINED, S.CANCELLED, S.HELD, S.FAILED}),
    # back to defined: the retry policy asked for another attempt; done: it succeeded
    # with no outputs to stage
    S.RUNNING: frozenset({S.STAGING, S.DONE, S.DEFINED, S.FAILED, S.CANCELLED, S.HELD}),
    S.STAGING: frozenset({S.DONE, S.DEFINED, S.FAILED, S.HELD}),
    S.HELD: frozenset({S.DEFINED, S.CANCELLED, S.FAILED}),
    # a production manager may retry what ended badly
    S.FAILED: frozenset({S.DEFINED}),
    S.CANCELLED: frozenset({S.DEFINED}),
    # held: a file it read was superseded after it made its outputs (a chain's step,
    # tower.management.chains)
    S.DONE: frozenset({S.HELD}),
}

JOB_TERMINAL: frozenset[JobState] = frozenset({S.DONE, S.FAILED, S.CANCELLED})
#: States in which a job holds a place in a site's backlog.
JOB_AT_SITE: frozenset[JobState] = frozenset({S.ASSIGNED, S.QUEUED})
#: States in which a job is placed at a site: the tally counts these per site and queue.
JOB_PLACED: frozenset[JobState] = frozenset({S.ASSIGNED, S.QUEUED, S.RUNNING, S.STAGING})


class ProductionState(enum.StrEnum):
    REQUESTED = "requested"  # filed by a collaborator, waiting for a manager
    REJECTED = "rejected"    # a manager said no
    TRIAL = "trial"          # its trial jobs run; the rest wait for approval
    APPROVAL = "approval"    # its trial ended: waits for `tower approve`
    ACTIVE = "active"
    PAUSED = "paused"        # no job of it is matched to a site
    CANCELLED = "cancelled"


R = ProductionState

PRODUCTION_TRANSITIONS: dict[ProductionState, frozenset[ProductionState]] = {
    R.REQUESTED: frozenset({R.TRIAL, R.ACTIVE, R.REJECTED, R.CANCELLED}),
    # active directly: a trial whose jobs all succeeded approves itself, if so configured
    R.TRIAL: frozenset({R.APPROVAL, R.ACTIVE, R.PAUSED, R.CANCELLED}),
    R.APPROVAL: frozenset({R.ACTIVE, R.CANCELLED}),
    R.ACTIVE: frozenset({R.PAUSED, R.CANCELLED}),
    # back to the trial when paused during it
    R.PAUSED: frozenset({R.ACTIVE, R.TRIAL, R.CANCELLED}),
    R.REJECTED: frozenset(),
    R.CANCELLED: frozenset(),
}

#: Productions whose defined jobs are matched to sites.
PRODUCTION_RUNNABLE: frozenset[ProductionState] = frozenset({R.ACTIVE, R.TRIAL})


class PilotState(enum.StrEnum):
    SUBMITTED = "submitted"  # handed to the batch system, not yet registered
    RUNNING = "running"      # registered with the tower
    DRAINING = "draining"    # takes no new work, finishing what it runs
    DONE = "done"            # ended and said goodbye
    LOST = "lost"            # ended without saying goodbye, or never started


P = PilotState

PILOT_TRANSITIONS: dict[PilotState, frozenset[PilotState]] = {
    P.SUBMITTED: frozenset({P.RUNNING, P.DONE, P.LOST}),
    P.RUNNING: frozenset({P.DRAINING, P.DONE, P.LOST}),
    P.DRAINING: frozenset({P.DONE, P.LOST}),
    P.DONE: frozenset(),
    P.LOST: frozenset(),
}

PILOT_ACTIVE: frozenset[PilotState] = frozenset({P.SUBMITTED, P.RUNNING, P.DRAINING})


def check(table: dict[Any, frozenset[Any]], current: Any, target: Any) -> None:
    """Raise IllegalTransition unless `table` allows `current` -> `target`."""
    if target not in table[current]:
        raise IllegalTransition(f"illegal transition {current} -> {target}")


def sources(table: dict[Any, frozenset[Any]], target: Any) -> list[Any]:
    """Every state from which `target` may be reached."""
    return [state for state, targets in table.items() if target in targets]


def move_jobs(
    session: Session,
    job_ids: Sequence[int],
    current: JobState | Iterable[JobState],
    target: JobState,
    reason: str,
    **fields: Any,
) -> list[int]:
    """Move the jobs among `job_ids` that are in `current` to `target`.

    `fields` are set on the same rows in the same statement. Returns the ids
    that moved: a job no longer in `current` (another process moved it first)
    is left alone. Raises IllegalTransition when a `current` state may not
    reach `target`.
    """
    from tower.model import tally
    from tower.model.db import bulk_insert
    from tower.model.models import Job, JobEvent  # the models import this module's enums

    currents = [current] if isinstance(current, JobState) else list(current)
    for state in currents:
        check(JOB_TRANSITIONS, state, target)
    now = utcnow()
    events: list[dict[str, Any]] = []
    for state in currents:
        ids, before = job_ids, None
        if "site" in fields and state in JOB_PLACED:  # the tally needs where they were
            before = _places(session, Job, job_ids, state)
            ids = list(before)
        rows = _compare_and_set(session, Job, ids, state, target,
                                dict(fields, updated_at=now),
                                returning=(Job.production_id, Job.events, Job.site, Job.queue))
        tally.jobs_moved(session, [(*row[1:], *(before[row[0]] if before else row[3:]))
                                   for row in rows], state, target, now)
        events.extend({"job_id": row[0], "production_id": row[1], "from_state": state,
                       "to_state": target, "at": now, "reason": reason[:500]}
                      for row in rows)
    bulk_insert(session, JobEvent, events)
    return [event["job_id"] for event in events]


def _places(session: Session, model: Any, ids: Sequence[int], state: JobState
            ) -> dict[int, tuple[str | None, str]]:
    """{id: (site, queue)} of the jobs among `ids` in `state`, locked until the transaction
    ends (on PostgreSQL; SQLite's writer holds the whole database), so a move that changes
    their site still knows where they were."""
    table = model.__table__
    places: dict[int, tuple[str | None, str]] = {}
    for start in range(0, len(ids), 5000):
        places.update((row[0], (row[1], row[2])) for row in session.execute(
            select(table.c.id, table.c.site, table.c.queue)
            .where(table.c.id.in_(ids[start:start + 5000]), table.c.state == state)
            .with_for_update()))
    return places


def move_jobs_from(
    session: Session, job_ids: Sequence[int], target: JobState, reason: str, **fields: Any
) -> list[int]:
    """Move the jobs among `job_ids` to `target` from whichever state may reach it."""
    return move_jobs(session, job_ids, sources(JOB_TRANSITIONS, target), target, reason, **fields)


def move_production(session: Session, production_id: int, current: ProductionState,
                    target: ProductionState, **fields: Any) -> bool:
    """Move a production from `current` to `target` (compare-and-set: False when another
    process moved it first); raises IllegalTransition when the table forbids the move."""
    from tower.model.models import Production

    check(PRODUCTION_TRANSITIONS, current, target)
    return bool(_compare_and_set(session, Production, [production_id], current, target,
                                 dict(fields, updated_at=utcnow())))


def move_pilots(
    session: Session,
    pilot_ids: Sequence[str],
    current: PilotState | Iterable[PilotState],
    target: PilotState,
    **fields: Any,
) -> list[str]:
    """Move the pilots among `pilot_ids` that are in `current` to `target`; returns those moved."""
    from tower.model.models import Pilot

    currents = [current] if isinstance(current, PilotState) else list(current)
    moved: list[str] = []
    for state in currents:
        check(PILOT_TRANSITIONS, state, target)
        rows = _compare_and_set(session, Pilot, pilot_ids, state, target,
                                dict(fields, updated_at=utcnow()))
        moved.extend(row[0] for row in rows)
    return moved


def _compare_and_set(
    session: Session, model: Any, ids: Sequence[Any], current: Any, target: Any,
    fields: dict[str, Any], returning: tuple[Any, ...] = (),
) -> list[Any]:
    """UPDATE model SET state=target WHERE id IN ids AND state=current, in chunks; returns
    each moved row's id and the `returning` columns.

    A Core statement on the table: the ORM's bulk-update path costs more than the
    update itself, and no object in the session is to be kept in step (the session is
    flushed first, so what it holds is written before the move)."""
    from tower.model.db import among

    table = model.__table__
    columns = [table.c.id, *(table.c[column.key] for column in returning)]
    session.flush()
    rows: list[Any] = []
    for start in range(0, len(ids), 5000):
        chunk = ids[start:start + 5000]
        rows.extend(session.execute(
            update(table)
            .where(among(session, table.c.id, chunk), table.c.state == current)
            .values(state=target, **fields)
            .returning(*columns)
        ).all())
    return rows
