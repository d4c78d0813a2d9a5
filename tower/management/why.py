"""`tower why JOB|PRODUCTION`: why a job is where it is, or what a production waits for,
told from what was recorded.

The explanation reads the job's row, its attempts, the retry decisions about
it (passive rules' included), the factory's last decision for the site it
waits for, and the sites' health; then the history of its moves.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from catalog.timeutil import utcnow
from sites.config import Needs
from tower.config import TowerConfig
from tower.errors import NotFound
from tower.loops import health
from tower.loops.matchmaker import placed
from tower.management import chains, productions, progress
from tower.management.specs import needs_of
from tower.model import fleet, jobs, tally
from tower.model.models import Attempt, FactoryDecision, Job, Output, Production, RetryDecision
from tower.model.states import PRODUCTION_RUNNABLE, JobState, PilotState


def explain(session: Session, config: TowerConfig, job_id: int) -> dict[str, Any]:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}", field="job")
    production = session.get(Production, job.production_id)
    assert production is not None
    decisions = session.exec(select(RetryDecision).where(RetryDecision.job_id == job_id)
                             .order_by(col(RetryDecision.id))).all()
    acting = [row for row in decisions if not row.passive]
    summary = productions.summaries(session, production.name)[0]
    return {
        "job": job_id, "production": production.name, "state": job.state.value,
        "attempt": job.attempt, "site": job.site,
        "why": _now(session, config, job, production, acting[-1] if acting else None)
        + (_upstream(session, production) if summary["phase"] == progress.WAITING else []),
        "decisions": [_decision(row) for row in decisions],
        "history": jobs.history(session, job_id),
    }


def explain_production(session: Session, config: TowerConfig, name: str) -> dict[str, Any]:
    """`tower why PRODUCTION`: its phase, and for a step of a chain whose jobs ended,
    the upstream productions it waits for."""
    summary = productions.summaries(session, name)[0]
    production = productions.get(session, name)
    jobs = ", ".join(f"{count} {state}" for state, count in sorted(summary["states"].items()))
    lines = [f"{name} is {summary['phase']}: {summary['jobs']} jobs"
             + (f" ({jobs})." if jobs else ".")]
    if summary["phase"] == progress.WAITING:
        lines += _upstream(session, production)
    elif summary["phase"] == "active" and not summary["jobs"] and chains.is_split(
            production.spec):
        lines.append("No input file of it is cataloged good yet.")
    return {"production": name, "state": summary["state"], "phase": summary["phase"],
            "why": lines}


def _upstream(session: Session, production: Production) -> list[str]:
    """Why a step of a chain whose jobs all ended is not finished: each upstream
    production that may still catalog files it reads."""
    lines = []
    for name in progress.upstream_of(production.spec):
        if chains.ended(session, name):
            continue
        upstream = productions.get(session, name)
        states = tally.counts(session, upstream.id).get(upstream.id or 0, {})
        left = sum(count.jobs for state, count in states.items()
                   if state not in progress.FINISHED)
        total = sum(count.jobs for count in states.values())
        if upstream.state not in PRODUCTION_RUNNABLE or not upstream.full_run:
            doing = f"it is {upstream.state}{'' if upstream.full_run else ' (a trial)'}"
        elif left:
            doing = f"{left} of its {total} jobs have not ended"
        else:
            doing = "it waits for its own upstream"
        lines.append(f"{production.name} waits for files of {name} ({doing}): each of its "
                     "outputs cataloged good makes jobs of it.")
    return lines


def _decision(row: RetryDecision) -> dict[str, Any]:
    by = (f"rule {row.rule!r} of policy {row.policy}" if row.actor == "policy"
          else row.actor)
    return {"at": row.at.isoformat(timespec="seconds"), "attempt": row.attempt, "by": by,
            "action": row.action, "passive": row.passive, "outcome": row.outcome,
            "reason": row.reason}


def _now(session: Session, config: TowerConfig, job: Job, production: Production,
         last: RetryDecision | None) -> list[str]:
    """Sentences that explain the job's present state."""
    state = job.state
    if state is JobState.DEFINED:
        return _waiting(session, config, job, production, last)
    if state is JobState.ASSIGNED:
        return [f"Matched to site {job.site} at {job.updated_at:%H:%M:%S}; waiting for the "
                "broker to confirm its message."]
    if state is JobState.QUEUED:
        return [f"Queued at site {job.site} since {job.updated_at:%Y-%m-%d %H:%M:%S} UTC, "
                f"waiting for a free pilot slot there.",
                *_capacity(session, job.site or "", job.queue)]
    if state is JobState.RUNNING:
        attempt = _attempt(session, job)
        if attempt is None:
            return [f"Claimed at site {job.site}."]
        return [f"Attempt {attempt.number} runs on pilot {attempt.pilot_id} at site "
                f"{attempt.site} since {attempt.started_at:%Y-%m-%d %H:%M:%S} UTC; last "
                f"heartbeat {attempt.heartbeat_at:%H:%M:%S} UTC."]
    if state is JobState.STAGING:
        outputs = session.exec(select(Output).where(Output.job_id == job.id,
                                                    Output.attempt == job.attempt)).all()
        pending = [output for output in outputs if not output.staged]
        lines = [f"Attempt {job.attempt} succeeded; {len(outputs) - len(pending)} of "
                 f"{len(outputs)} outputs staged out."]
        lines += [f"{output.name}: try {output.tries + 1} at {output.next_try_at:%H:%M:%S} "
                  f"UTC after: {output.last_error}" for output in pending
                  if output.last_error and output.next_try_at]
        return lines
    if state is JobState.HELD:
        by = _by(last) if last else "someone"
        return [f"Held by {by}: {job.message or 'no reason recorded'}. "
                f"`tower release {job.id}` lets it run again."]
    if state is JobState.FAILED:
        by = _by(last) if last else "the tower"
        return [f"Failed, as decided by {by}: {job.message or ''}. `tower retry "
                f"{production.name}` gives failed jobs a fresh start."]
    if state is JobState.CANCELLED:
        return [f"Cancelled: {job.message or 'its production was cancelled'}."]
    return [f"Done: attempt {job.attempt} succeeded and its outputs are cataloged."]


def _by(decision: RetryDecision) -> str:
    if decision.actor == "policy":
        return f"rule {decision.rule!r} of policy {decision.policy} after attempt " \
               f"{decision.attempt}"
    return decision.actor


def _attempt(session: Session, job: Job) -> Attempt | None:
    return session.exec(select(Attempt).where(Attempt.job_id == job.id,
                                              Attempt.number == job.attempt)).first()


def _waiting(session: Session, config: TowerConfig, job: Job, production: Production,
             last: RetryDecision | None) -> list[str]:
    lines = []
    if production.state not in PRODUCTION_RUNNABLE:
        lines.append(f"Its production {production.name} is {production.state}: no job of it "
                     "is matched to a site.")
    if job.not_before and job.not_before > utcnow():
        lines.append(f"Waiting out its retry backoff until {job.not_before:%H:%M:%S} UTC"
                     + (f" ({_by(last)}: {last.reason})." if last else "."))
    if job.only_site:
        lines.append(f"Must run at site {job.only_site} (the retry policy keeps it there).")
    if job.avoid_sites:
        lines.append(f"Avoids {', '.join(job.avoid_sites)}, where it failed before, while "
                     "another site can take it.")
    allowed = production.spec.get("sites") or list(config.sites)
    candidates = placed(job, [site for site in config.sites if site in allowed])
    cooling = health.cooling(session)
    needs = needs_of(production.spec).grown(job.memory, job.walltime)
    for site in candidates:
        lines.append(_site_line(session, config, site, job.queue, cooling, needs))
    if not candidates:
        lines.append("No site may take it: its production allows "
                     f"{', '.join(allowed)}.")
    return lines


def _site_line(session: Session, config: TowerConfig, site: str, queue: str,
               cooling: dict[str, Any], needs: Needs) -> str:
    if not config.sites[site].enabled:
        return f"Site {site} is disabled in sites.yaml."
    lacking = config.sites[site].pilot.shortfall(needs)
    if lacking is not None:
        return f"Site {site} does not fit it: {lacking}."
    if site in cooling:
        record = cooling[site]
        return (f"Site {site} is out of brokering until {record.cooldown_until:%H:%M:%S} UTC: "
                f"{record.reason}.")
    if queue not in config.sites[site].queues:
        return f"Site {site} serves no queue {queue!r}."
    return f"Site {site}: " + " ".join(_capacity(session, site, queue))


def _capacity(session: Session, site: str, queue: str) -> list[str]:
    """The pilots of a site queue, and what the factory last decided for it."""
    pilots = fleet.counts(session, site, queue)
    lines = [f"{pilots[PilotState.RUNNING]} pilots running, {pilots[PilotState.SUBMITTED]} "
             f"pending in its batch system."]
    decision = session.exec(select(FactoryDecision).where(
        FactoryDecision.site == site, FactoryDecision.queue == queue)
        .order_by(col(FactoryDecision.id).desc())).first()
    if decision is not None:
        lines.append(f"The factory's last decision ({decision.at:%H:%M:%S} UTC): "
                     f"{decision.note}.")
    return lines
