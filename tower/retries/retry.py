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
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from catalog.timeutil import later, utcnow
from tower.config import TowerConfig
from tower.errors import Conflict, NotFound
from tower.logs import about
from tower.management import productions
from tower.management.specs import ProductionSpec, needs_of, no_fit, offers
from tower.model import jobs, tally
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


def history(session: Session, job: Job) -> list[Ended]:
    """The job's failed attempts that count against its policy's limits, oldest first."""
    rows = session.exec(select(Attempt).where(
        Attempt.job_id == job.id, Attempt.number > job.budget_from,
        col(Attempt.ended_at).is_not(None),
        col(Attempt.outcome).not_in([str(outcome) for outcome in NOT_FAILURES]))
        .order_by(col(Attempt.number))).all()
    return [ended(attempt) for attempt in rows]


def policy_of(config: TowerConfig, spec: ProductionSpec) -> tuple[str, Policy]:
    """The production's policy; the tower's default when it names none (or one since
    removed from tower.yaml)."""
    name = spec.retry.policy if spec.retry.policy in config.policies else config.retry.policy
    return name, config.policies[name]


def settle(session: Session, config: TowerConfig, job: Job, spec: ProductionSpec,
           attempt: Attempt) -> Decision | None:
    """Decide and apply what follows the ended `attempt` of `job`; None when nothing is
    to be decided (the job was cancelled, or moved on meanwhile)."""
    assert job.id is not None and attempt.outcome is not None
    outcome = Outcome(attempt.outcome)
    if outcome in NOT_FAILURES or job.attempt != attempt.number or job.state not in SETTLED_FROM:
        return None
    name, policy = policy_of(config, spec)
    decision = decide(policy, history(session, job), spec.retry.max_attempts)
    if not _move(session, job, spec, attempt, decision, config):
        return None
    _record(session, job, attempt.number, name, outcome, decision, spec.name)
    log.info("attempt ended %s (%r): %s", outcome, attempt.reason, decision.reason,
             extra=about(spec.name, job.id, attempt.number))
    return decision


def _move(session: Session, job: Job, spec: ProductionSpec, attempt: Attempt,
          decision: Decision, config: TowerConfig) -> bool:
    """Apply `decision`; a retry grown past what every allowed site's pilots can hold (its
    memory or walltime) is held instead, with why: no pilot would ever take it."""
    assert job.id is not None
    reason = decision.reason
    if decision.action is Action.FAIL:
        return bool(move_jobs(session, [job.id], job.state, JobState.FAILED, reason,
                              message=reason))
    if decision.action is Action.HOLD:
        return bool(move_jobs(session, [job.id], job.state, JobState.HELD, reason,
                              message=reason))
    fields: dict[str, Any] = {"site": None, "not_before": later(decision.delay),
                              "message": reason, "only_site": None}
    if decision.action is Action.RETRY_HERE:
        fields["only_site"] = attempt.site
    if decision.action is Action.RETRY_ELSEWHERE:
        fields["avoid_sites"] = sorted({*(job.avoid_sites or []), attempt.site})
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
            return bool(move_jobs(session, [job.id], job.state, JobState.HELD, reason,
                                  message=reason))
    return bool(move_jobs(session, [job.id], job.state, JobState.DEFINED, reason, **fields))


def _record(session: Session, job: Job, number: int, policy: str, outcome: Outcome,
            decision: Decision, production: str) -> None:
    rows = []
    for taken in (*decision.passive, decision):
        passive = taken is not decision
        if passive:
            log.info("passive rule %r would have decided: %s", taken.rule, taken.reason,
                     extra=about(production, job.id, number))
        rows.append({"job_id": job.id, "production_id": job.production_id, "attempt": number,
                     "policy": policy, "rule": taken.rule, "outcome": str(outcome),
                     "action": str(taken.action), "passive": passive, "delay": taken.delay,
                     "reason": taken.reason[:500], "at": utcnow()})
    session.execute(insert(RetryDecision), rows)


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


def _settle_ended(session: Session, config: TowerConfig, ended_attempts: Iterable[Attempt]
                  ) -> list[int]:
    """Settle attempts just ended by the tower itself; returns the ids of jobs moved."""
    specs: dict[int, ProductionSpec] = {}
    moved = []
    for attempt in ended_attempts:
        session.add(attempt)
        job = session.get(Job, attempt.job_id)
        if job is None:
            continue
        if job.production_id not in specs:
            production = session.get(Production, job.production_id)
            assert production is not None
            specs[job.production_id] = ProductionSpec.model_validate(production.spec)
        if settle(session, config, job, specs[job.production_id], attempt) is not None:
            moved.append(attempt.job_id)
    return moved


def lose_silent(session: Session, config: TowerConfig, older_than: datetime) -> list[int]:
    """Attempts whose last heartbeat is older than `older_than` become lost; returns job ids."""
    silent = session.exec(select(Attempt).where(
        col(Attempt.ended_at).is_(None), col(Attempt.heartbeat_at) < older_than)
        .with_for_update(skip_locked=True)).all()
    for attempt in silent:
        end_attempt(session, attempt, Outcome.LOST_HEARTBEAT,
                    f"no heartbeat since {attempt.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC")
    return _settle_ended(session, config, silent)


def lose_pilot_work(session: Session, config: TowerConfig, pilot_id: str, outcome: Outcome,
                    reason: str) -> list[int]:
    """The pilot ended without reporting its attempts: they end as `outcome`."""
    open_attempts = session.exec(select(Attempt).where(
        Attempt.pilot_id == pilot_id, col(Attempt.ended_at).is_(None))
        .with_for_update(skip_locked=True)).all()
    for attempt in open_attempts:
        end_attempt(session, attempt, outcome, reason)
    return _settle_ended(session, config, open_attempts)


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
