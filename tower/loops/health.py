"""Site health: a site whose recent attempts fail for its own reasons is taken out of
brokering for a cool-down, and comes back by itself when the cool-down is over.

Counted are the attempts that ended at the site within `health.window` (and
after its last cool-down ended, so the failures that started one cannot start
the next). When at least `health.min_attempts` ended and the share of them
failed by the site itself (tower.retries.outcomes.SITE_FAULTS: node failures, lost
pilots, stage-out; not preemption, which is the batch system at work) reaches
`health.threshold`, the site cools down: the matchmaker gives it no jobs, the
factory no pilots, and the jobs waiting in its queue go back to be matched
elsewhere.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, col, select

from catalog.timeutil import utcnow
from tower.config import TowerConfig
from tower.model.db import insert_missing
from tower.model.models import Attempt, Job, SiteHealth
from tower.model.states import JOB_AT_SITE, JobState, move_jobs
from tower.retries.outcomes import SITE_FAULTS, Outcome

log = logging.getLogger(__name__)


def cooling(session: Session) -> dict[str, SiteHealth]:
    """Sites out of brokering now, with until when and why."""
    rows = session.exec(select(SiteHealth).where(col(SiteHealth.cooldown_until) > utcnow()))
    return {row.site: row for row in rows.all()}


def evaluate(session: Session, config: TowerConfig) -> list[str]:
    """Start a cool-down at each site that has earned one; returns those sites."""
    now = utcnow()
    settings = config.health
    window_start = now - timedelta(seconds=settings.window)
    records = {row.site: row for row in session.exec(select(SiteHealth)).all()}
    started = []
    for site in config.sites:
        record = records.get(site)
        if record is not None and record.cooldown_until > now:
            continue
        since = max(window_start, record.cooldown_until) if record else window_start
        outcomes = _outcomes(session, site, since)
        total = sum(outcomes.values())
        failed = {outcome: count for outcome, count in outcomes.items()
                  if outcome in SITE_FAULTS}
        if total < settings.min_attempts or sum(failed.values()) < settings.threshold * total:
            continue
        classes = ", ".join(f"{outcome} {count}" for outcome, count in
                            sorted(failed.items(), key=lambda item: -item[1]))
        reason = (f"{sum(failed.values())} of the {total} attempts ended since "
                  f"{since:%H:%M:%S} UTC failed at the site ({classes})")
        _cool(session, site, now + timedelta(seconds=settings.cooldown), reason)
        started.append(site)
        log.warning("site=%s out of brokering for %ss: %s", site, settings.cooldown, reason)
    return started


def _outcomes(session: Session, site: str, since: datetime) -> Counter[Outcome]:
    rows = session.exec(select(Attempt.outcome, func.count()).where(
        Attempt.site == site, col(Attempt.ended_at) >= since,
        Attempt.outcome != Outcome.CANCELLED).group_by(col(Attempt.outcome))).all()
    return Counter({Outcome(outcome): count for outcome, count in rows if outcome})


def _cool(session: Session, site: str, until: datetime, reason: str) -> None:
    insert_missing(session, SiteHealth, site=site, cooldown_until=until, reason=reason[:1000])
    record = session.get(SiteHealth, site)
    assert record is not None
    record.cooldown_until, record.reason, record.since = until, reason[:1000], utcnow()
    session.add(record)
    # jobs waiting at the site go back to be matched elsewhere; their messages are stale
    waiting = session.exec(select(Job.id).where(Job.site == site,
                                                col(Job.state).in_(JOB_AT_SITE))).all()
    move_jobs(session, [job_id for job_id in waiting if job_id is not None], JOB_AT_SITE,
              JobState.DEFINED, f"site {site} cooling down", site=None)

