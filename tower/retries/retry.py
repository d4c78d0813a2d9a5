"""Applying retry decisions: after an attempt ended badly, by the policy; and by people.

Everything that ends an attempt without success comes here: a pilot's report,
the monitor (silent heartbeats, pilots whose batch job ended, jobs no pilot
claimed) and the stager (outputs that cannot be staged out). The job's
production names its policy; :func:`tower.retries.policy.decide` decides; this module
moves the job, changes what the next attempt gets (walltime, memory, where it
may run) and records the decision, passive rules' included, so `tower why`
and `tower policy simulate` can read it back.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy import select as sa_select
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from catalog.timeutil import utcnow
from tower.config import TowerConfig
from tower.errors import Conflict, NotFound
from tower.logs import about
from tower.management import productions
from tower.management.specs import ProductionSpec, needs_of, no_fit, offers
from tower.model import jobs, tally
from tower.model.db import among, bulk_insert
from tower.model.models import Attempt, Job, Production, RetryDecision
from tower.model.states import JobState, move_jobs
from tower.retries.outcomes import NOT_FAILURES, Outcome
from tower.retries.policy import Action, Decision, Ended, Policy, decide

log = logging.getLogger(__name__)

#: States in which a job may be held by a person: not yet running.
HOLDABLE = [JobState.DEFINED, JobState.ASSIGNED, JobState.QUEUED]
#: States from which a job's ended attempt is settled.
SETTLED_FROM = (JobState.RUNNING, JobState.STAGING, JobState.QUEUED)


def ended(attempt: Attempt) -> Ended:
    assert attempt.outcome is not None, "only an ended attempt has facts"
    return Ended(Outcome(attempt.outcome), attempt.exit_code, attempt.signal, attempt.site)


#: What a job's history needs of each of its attempts.
FACTS: tuple[Any, ...] = (Attempt.job_id, Attempt.number, Attempt.outcome, Attempt.exit_code,
                          Attempt.signal, Attempt.site)


def histories(session: Session, jobs: Sequence[Job]) -> dict[int, list[Ended]]:
    """Each job's failed attempts that count against its policy's limits, oldest first: one
    query per 5,000 jobs, not one per job."""
    budget = {job.id: job.budget_from for job in jobs if job.id is not None}
    found: dict[int, list[Ended]] = {job_id: [] for job_id in budget}
    ids = list(budget)
    for start in range(0, len(ids), 5000):
        for job_id, number, outcome, exit_code, sig, site in session.execute(
                sa_select(*FACTS)
                .where(among(session, col(Attempt.job_id), ids[start:start + 5000]),
                       col(Attempt.ended_at).is_not(None),
                       col(Attempt.outcome).not_in([str(outcome) for outcome in NOT_FAILURES]))
                .order_by(col(Attempt.job_id), col(Attempt.number))).all():
            if number > budget[job_id]:
                found[job_id].append(Ended(Outcome(outcome), exit_code, sig, site))
    return found


def counted(history: list[Ended], attempt: Attempt) -> list[Ended]:
    """`history` for deciding what follows the ended `attempt`, which it always holds: an
    attempt numbered at the budget mark (attempt 0, which releases before migrations
    published, with `budget_from` 0) counts for the decision it ends in."""
    return history or [ended(attempt)]


def policy_of(config: TowerConfig, spec: ProductionSpec) -> tuple[str, Policy]:
    """The production's policy; the tower's default when it names none (or one since
    removed from tower.yaml)."""
    name = spec.retry.policy if spec.retry.policy in config.policies else config.retry.policy
    return name, config.policies[name]


@dataclass(frozen=True)
class _Move:
    """What applying a decision does to its job; jobs with equal moves move in one statement."""

    current: JobState
    target: JobState
    reason: str
    #: The job's fields set with the move, as sorted (name, value) pairs (lists as tuples).
    fields: tuple[tuple[str, Any], ...]

    def apply(self, session: Session, job_ids: list[int]) -> list[int]:
        fields = {name: list(value) if isinstance(value, tuple) else value
                  for name, value in self.fields}
        return move_jobs(session, job_ids, self.current, self.target, self.reason, **fields)


def settle(session: Session, config: TowerConfig, job: Job, spec: ProductionSpec,
           attempt: Attempt) -> Decision | None:
    """Decide and apply what follows the ended `attempt` of `job`; None when nothing is
    to be decided (the job was cancelled, or moved on meanwhile)."""
    assert job.id is not None
    return settle_all(session, config, [(job, spec, attempt)]).get(job.id)


def settle_all(session: Session, config: TowerConfig,
               ended_attempts: Sequence[tuple[Job, ProductionSpec, Attempt]]
               ) -> dict[int, Decision]:
    """`settle` for many ended attempts (one each of distinct jobs) in a fixed number of
    statements: the histories read at once, the jobs with equal moves moved together,
    the decisions recorded in one insert. Returns the decision of each job moved."""
    due = [(job, spec, attempt) for job, spec, attempt in ended_attempts
           if attempt.outcome is not None and Outcome(attempt.outcome) not in NOT_FAILURES
           and job.attempt == attempt.number and job.state in SETTLED_FROM]
    pasts = histories(session, [job for job, _, _ in due])
    now = utcnow()
    plans: dict[_Move, list[tuple[Job, ProductionSpec, Attempt, str, Decision]]] = {}
    for job, spec, attempt in due:
        assert job.id is not None
        name, policy = policy_of(config, spec)
        decision = decide(policy, counted(pasts[job.id], attempt), spec.retry.max_attempts)
        plans.setdefault(_plan(job, spec, attempt, decision, config, now), []).append(
            (job, spec, attempt, name, decision))
    settled: dict[int, Decision] = {}
    rows: list[dict[str, Any]] = []
    for move, members in plans.items():
        moved = set(move.apply(session, [job.id for job, *_ in members if job.id is not None]))
        for job, spec, attempt, name, decision in members:
            if job.id not in moved:
                continue
            outcome = Outcome(attempt.outcome or "")
            rows += _record(job, attempt.number, name, outcome, decision, spec.name, now)
            log.info("attempt ended %s (%r): %s", outcome, attempt.reason, decision.reason,
                     extra=about(spec.name, job.id, attempt.number))
            settled[job.id] = decision
    bulk_insert(session, RetryDecision, rows)
    return settled


def _plan(job: Job, spec: ProductionSpec, attempt: Attempt, decision: Decision,
          config: TowerConfig, now: datetime) -> _Move:
    """How to apply `decision`; a retry grown past what every allowed site's pilots can
    hold (its memory or walltime) is held instead, with why: no pilot would ever take it."""
    reason = decision.reason
    if decision.action is Action.FAIL:
        return _Move(job.state, JobState.FAILED, reason, (("message", reason),))
    if decision.action is Action.HOLD:
        return _Move(job.state, JobState.HELD, reason, (("message", reason),))
    fields: dict[str, Any] = {"site": None,
                              "not_before": now + timedelta(seconds=decision.delay),
                              "message": reason, "only_site": None}
    if decision.action is Action.RETRY_HERE:
        fields["only_site"] = attempt.site
    if decision.action is Action.RETRY_ELSEWHERE:
        fields["avoid_sites"] = tuple(sorted({*(job.avoid_sites or []), attempt.site}))
    current = needs_of(spec).grown(job.memory, job.walltime)
    if decision.walltime_factor:
        grown = int(current.walltime * decision.walltime_factor)
        fields["walltime"] = min(grown, decision.max_walltime or grown)
    if decision.memory_factor and current.memory:
        grown = int(current.memory * decision.memory_factor)
        fields["memory"] = min(grown, decision.max_memory or grown)
    if "walltime" in fields or "memory" in fields:
        needs = needs_of(spec).grown(fields.get("memory", job.memory),
                                     fields.get("walltime", job.walltime))
        stuck = no_fit(needs, offers(spec, config.sites, only_site=fields["only_site"]))
        if stuck is not None:
            field, why = stuck
            reason = (f"{reason}, but grown so it fits no allowed site ({why}): held; "
                      f"`tower release` retries it with its {field} as it was")[:500]
            return _Move(job.state, JobState.HELD, reason, (("message", reason),))
    return _Move(job.state, JobState.DEFINED, reason, tuple(sorted(fields.items())))


def _record(job: Job, number: int, policy: str, outcome: Outcome, decision: Decision,
            production: str, now: datetime) -> list[dict[str, Any]]:
    """The RetryDecision rows of `decision`, passive rules' before it."""
    rows = []
    for taken in (*decision.passive, decision):
        passive = taken is not decision
        if passive:
            log.info("passive rule %r would have decided: %s", taken.rule, taken.reason,
                     extra=about(production, job.id, number))
        rows.append({"job_id": job.id, "production_id": job.production_id, "attempt": number,
                     "policy": policy, "rule": taken.rule, "outcome": str(outcome),
                     "action": str(taken.action), "passive": passive, "delay": taken.delay,
                     "reason": taken.reason[:500], "at": now})
    return rows


def end_attempt(session: Session, attempt: Attempt, outcome: Outcome, reason: str,
                when: datetime | None = None) -> None:
    """End `attempt` as `outcome` (again, for a success whose outputs proved unusable),
    and count it in the activity tally."""
    job = session.get(Job, attempt.job_id)
    assert job is not None
    ended_at = when or utcnow()
    previous = ((attempt.outcome, _code(attempt.outcome, attempt), attempt.ended_at)
                if attempt.outcome is not None and attempt.ended_at is not None else None)
    tally.attempt_ended(session, job.production_id, attempt.site, outcome,
                        _code(outcome, attempt), job.events, ended_at, previous)
    attempt.outcome = outcome
    attempt.reason = reason[:500]
    attempt.ended_at = ended_at


def _code(outcome: str, attempt: Attempt) -> int:
    """The number that tells failures of one class apart: exit code or signal."""
    if outcome == Outcome.EXIT_CODE:
        return attempt.exit_code or 0
    if outcome == Outcome.SIGNAL:
        return attempt.signal or 0
    return 0


def _settle_ended(session: Session, config: TowerConfig, ended_attempts: Sequence[Attempt],
                  loaded: tuple[dict[int, Job], dict[int, Production]] | None = None
                  ) -> list[int]:
    """Settle attempts just ended by the tower itself (`loaded`: their jobs and productions,
    if read already); returns the ids of jobs moved."""
    jobs, productions_by_id = loaded or _load_jobs(session, ended_attempts)
    specs = {pid: ProductionSpec.model_validate(production.spec)
             for pid, production in productions_by_id.items()}
    batch = []
    for attempt in ended_attempts:
        session.add(attempt)
        job = jobs.get(attempt.job_id)
        if job is not None:
            batch.append((job, specs[job.production_id], attempt))
    settled = settle_all(session, config, batch)
    return [attempt.job_id for attempt in ended_attempts if attempt.job_id in settled]


def _load_jobs(session: Session, attempts: Sequence[Attempt]
               ) -> tuple[dict[int, Job], dict[int, Production]]:
    """The jobs of `attempts` and their productions, read in a few queries (the session
    holds them only weakly: the caller keeps them while it works on them)."""
    ids = sorted({attempt.job_id for attempt in attempts})
    jobs: dict[int, Job] = {}
    for start in range(0, len(ids), 5000):
        jobs.update((job.id, job) for job in session.exec(
            select(Job).where(among(session, col(Job.id), ids[start:start + 5000]))).all()
            if job.id is not None)
    wanted = {job.production_id for job in jobs.values()}
    found = session.exec(select(Production).where(col(Production.id).in_(wanted))).all() \
        if wanted else []
    return jobs, {production.id: production for production in found
                  if production.id is not None}


def lose_silent(session: Session, config: TowerConfig, older_than: datetime) -> list[int]:
    """Attempts whose last heartbeat is older than `older_than` become lost; returns job ids."""
    silent = session.exec(select(Attempt).where(
        col(Attempt.ended_at).is_(None), col(Attempt.heartbeat_at) < older_than)
        .with_for_update(skip_locked=True)).all()
    return _lose(session, config, silent, Outcome.LOST_HEARTBEAT, [
        f"no heartbeat since {attempt.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC" for attempt in silent])


def lose_pilot_work(session: Session, config: TowerConfig, pilot_id: str, outcome: Outcome,
                    reason: str) -> list[int]:
    """The pilot ended without reporting its attempts: they end as `outcome`."""
    open_attempts = session.exec(select(Attempt).where(
        Attempt.pilot_id == pilot_id, col(Attempt.ended_at).is_(None))
        .with_for_update(skip_locked=True)).all()
    return _lose(session, config, open_attempts, outcome, [reason] * len(open_attempts))


#: Ends open attempts, many in one statement (executemany).
_END = (update(Attempt.__table__)  # type: ignore[attr-defined]
        .where(Attempt.__table__.c.id == bindparam("b_id"))  # type: ignore[attr-defined]
        .values(outcome=bindparam("b_outcome"), reason=bindparam("b_reason"),
                ended_at=bindparam("b_ended_at")))


def _lose(session: Session, config: TowerConfig, attempts: Sequence[Attempt],
          outcome: Outcome, reasons: list[str]) -> list[int]:
    """End open attempts (read from the database, never ended) as `outcome`, as
    `end_attempt` would but in one statement, and settle them; returns the jobs moved."""
    loaded = _load_jobs(session, attempts)
    jobs = loaded[0]
    now = utcnow()
    rows = []
    for attempt, reason in zip(attempts, reasons, strict=True):
        job = jobs[attempt.job_id]
        tally.attempt_ended(session, job.production_id, attempt.site, outcome,
                            _code(outcome, attempt), job.events, now)
        values = {"outcome": outcome, "reason": reason[:500], "ended_at": now}
        rows.append({"b_id": attempt.id, **{f"b_{name}": value for name, value in values.items()}})
        for name, value in values.items():  # written by _END below, not by the session's flush
            set_committed_value(attempt, name, value)
    if rows:
        session.execute(_END, rows)
    return _settle_ended(session, config, attempts, loaded)


def time_out_claims(session: Session, config: TowerConfig, older_than: datetime) -> list[int]:
    """Jobs queued at a site since before `older_than`, never claimed: each gets an attempt
    ended as claim_timeout, for the policy to send elsewhere."""
    jobs = session.exec(select(Job).where(
        Job.state == JobState.QUEUED, col(Job.updated_at) < older_than)
        .limit(config.loops.batch_size).with_for_update(skip_locked=True)).all()
    if not jobs:
        return []
    now = utcnow()
    timed_out = [Attempt(job_id=job.id or 0, number=job.attempt, pilot_id=None, site=job.site or "",
                         started_at=job.updated_at, heartbeat_at=job.updated_at)
                 for job in jobs]
    for attempt, job in zip(timed_out, jobs, strict=True):
        end_attempt(session, attempt, Outcome.CLAIM_TIMEOUT,
                    f"queued at {job.site} since {job.updated_at:%Y-%m-%d %H:%M:%S} UTC, "
                    "no pilot claimed it", now)
    return _settle_ended(session, config, timed_out)


def fail_after_success(session: Session, config: TowerConfig, job_id: int, number: int,
                       outcome: Outcome, reason: str) -> bool:
    """The outputs of a successful attempt cannot be used (not staged out, or rejected by
    the post step): the attempt counts as failed after all, and goes to the policy."""
    attempt = session.exec(select(Attempt).where(
        Attempt.job_id == job_id, Attempt.number == number).with_for_update()).first()
    if attempt is None:
        return False
    end_attempt(session, attempt, outcome, reason)
    return bool(_settle_ended(session, config, [attempt]))


# -- people's actions --------------------------------------------------------------------------

def actor() -> str:
    """Who acts from this process: the local user (the API passes the certificate's DN)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def retry_failed(session: Session, production: Production, by: str,
                 classes: Sequence[str] = (), exit_code: int | None = None) -> list[int]:
    """Give failed jobs of `production` a fresh start (their earlier attempts count no more
    against the policy's limits); only those whose last attempt ended in `classes` or with
    `exit_code`, when given. Returns the job ids retried."""
    last: dict[int, Attempt] = {}
    for attempt in session.exec(select(Attempt).join(Job, col(Job.id) == Attempt.job_id).where(
            Job.production_id == production.id, Job.state == JobState.FAILED,
            Attempt.number == Job.attempt)).all():
        last[attempt.job_id] = attempt
    failed = session.exec(select(Job.id).where(Job.production_id == production.id,
                                               Job.state == JobState.FAILED)).all()
    chosen = [job_id for job_id in failed if job_id is not None and _chosen(
        last.get(job_id), classes, exit_code)]
    return _restart(session, chosen, JobState.FAILED, by, "retry", "retried by " + by)


def _chosen(attempt: Attempt | None, classes: Sequence[str], exit_code: int | None) -> bool:
    if classes and (attempt is None or attempt.outcome not in classes):
        return False
    return exit_code is None or (attempt is not None and attempt.exit_code == exit_code)


def act_on(session: Session, action: str, job_ids: Sequence[int], production: str | None,
           by: str) -> list[int]:
    """`hold` or `release` the given jobs, and those of `production` it applies to. A job
    named by id that does not exist, or that the action cannot move, is refused before
    anything moves (NotFound, Conflict): a silent `0 jobs held` hid typos."""
    movable = HOLDABLE if action == "hold" else [JobState.HELD]
    _check_named(session, action, job_ids, movable)
    chosen = list(job_ids)
    if production:
        chosen += jobs.ids_in(session, productions.get(session, production),
                              HOLDABLE if action == "hold" else [JobState.HELD])
    return hold(session, chosen, by) if action == "hold" else release(session, chosen, by)


def _check_named(session: Session, action: str, job_ids: Sequence[int],
                 movable: Sequence[JobState]) -> None:
    found: dict[int | None, str] = {}
    for start in range(0, len(job_ids), 5000):
        found.update((job_id, str(state)) for job_id, state in session.exec(
            select(Job.id, Job.state).where(col(Job.id).in_(list(job_ids[start:start + 5000]))))
        )
    missing = [job_id for job_id in job_ids if job_id not in found]
    if missing:
        raise NotFound(f"{action}: no job {', '.join(map(str, missing))}", field="jobs")
    stuck = [f"job {job_id} is {found[job_id]}" for job_id in job_ids
             if found[job_id] not in movable]
    if stuck:
        raise Conflict(f"{action}: {'; '.join(stuck)} (only jobs "
                       f"{', '.join(map(str, movable))} can be "
                       f"{'held' if action == 'hold' else 'released'})", field="jobs")


def release(session: Session, job_ids: Sequence[int], by: str) -> list[int]:
    """Held jobs go back to brokering, with a fresh budget."""
    return _restart(session, job_ids, JobState.HELD, by, "release", "released by " + by)


def hold(session: Session, job_ids: Sequence[int], by: str) -> list[int]:
    """Jobs not yet running wait for a human (`release`)."""
    reason = "held by " + by
    moved = move_jobs(session, job_ids, HOLDABLE, JobState.HELD, reason, message=reason)
    record_action(session, moved, by, "hold", reason)
    return moved


def _restart(session: Session, job_ids: Sequence[int], current: JobState, by: str,
             action: str, reason: str) -> list[int]:
    moved = []
    for start in range(0, len(job_ids), 5000):
        chunk = list(job_ids[start:start + 5000])
        # the budget counts from the job's current attempt on
        moved += move_jobs(session, chunk, current, JobState.DEFINED, reason, site=None,
                           not_before=None, message=reason, budget_from=Job.attempt)
    record_action(session, moved, by, action, reason)
    return moved


def record_action(session: Session, job_ids: list[int], by: str, action: str,
                  reason: str) -> None:
    """Record what a person (or the tower's own stager) did to these jobs, and why."""
    if not job_ids:
        return
    rows = session.exec(select(Job.id, Job.production_id, Job.attempt).where(
        col(Job.id).in_(job_ids))).all()
    now = utcnow()
    session.execute(insert(RetryDecision), [
        {"job_id": job_id, "production_id": production_id, "attempt": number, "actor": by,
         "action": action, "reason": reason, "at": now}
        for job_id, production_id, number in rows])


def held(session: Session, production: Production | None = None,
         limit: int = 100) -> list[dict[str, Any]]:
    """Held jobs, oldest first, each with who or which rule held it and why."""
    query = select(Job).where(Job.state == JobState.HELD).order_by(col(Job.id)).limit(limit)
    if production is not None:
        query = query.where(Job.production_id == production.id)
    jobs = session.exec(query).all()
    latest: dict[int, RetryDecision] = {}
    if jobs:
        for row in session.exec(select(RetryDecision).where(
                col(RetryDecision.job_id).in_([job.id for job in jobs]),
                col(RetryDecision.passive).is_(False)).order_by(col(RetryDecision.id))).all():
            latest[row.job_id] = row
    result = []
    for job in jobs:
        decision = latest.get(job.id or 0)
        by = (decision.actor if decision and decision.actor != "policy"
              else f"rule {decision.rule!r} of policy {decision.policy}" if decision else "?")
        result.append({"id": job.id, "production_id": job.production_id, "index": job.index,
                       "attempt": job.attempt, "held_by": by, "reason": job.message,
                       "since": job.updated_at.isoformat(timespec="seconds")})
    return result
