"""The failure report of a production: its failed attempts grouped by class, exit code or
signal, and site, with counts, what the policy did about them, and a sample log tail."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from tower.model.models import Attempt, Job, Production, RetryDecision
from tower.retries.outcomes import NOT_FAILURES, blame

#: Lines of the sample log tail shown per group.
TAIL_LINES = 10
#: What failed attempts are grouped by.
GROUP = (col(Attempt.outcome), col(Attempt.exit_code), col(Attempt.signal), col(Attempt.site))


def report(session: Session, production: Production) -> dict[str, Any]:
    """Groups of failed attempts, largest first, and the production's totals."""
    failed = col(Attempt.outcome).not_in([str(outcome) for outcome in NOT_FAILURES])
    ended = col(Attempt.ended_at).is_not(None)
    rows = session.execute(
        select(*GROUP, func.count(), func.max(col(Attempt.id)))
        .join(Job, col(Job.id) == Attempt.job_id)
        .where(col(Job.production_id) == production.id, failed, ended)
        .group_by(*GROUP)).all()
    actions = _actions(session, production)
    groups = []
    for outcome, exit_code, signal, site, count, newest in rows:
        sample = session.get(Attempt, newest)
        assert sample is not None and outcome is not None
        groups.append({
            "class": outcome, "blame": blame(outcome), "exit_code": exit_code,
            "signal": signal, "site": site, "attempts": count,
            "decisions": dict(actions.get((outcome, exit_code, signal, site), Counter())),
            "sample": {"job": sample.job_id, "attempt": sample.number, "reason": sample.reason,
                       "log_tail": _last_lines(sample.log_tail or "")},
        })
    groups.sort(key=lambda group: (-group["attempts"], group["class"], group["site"] or ""))
    totals = session.execute(
        select(func.count()).select_from(Attempt).join(Job, col(Job.id) == Attempt.job_id)
        .where(col(Job.production_id) == production.id, ended)).scalar_one()
    return {"production": production.name, "attempts": totals,
            "failed_attempts": sum(group["attempts"] for group in groups), "groups": groups}


def _actions(session: Session, production: Production
             ) -> dict[tuple[Any, ...], Counter[str]]:
    """What the policy decided after each group's attempts (passive rules left out)."""
    rows = session.execute(
        select(*GROUP, col(RetryDecision.action), func.count())
        .join(RetryDecision, (col(RetryDecision.job_id) == Attempt.job_id)
              & (col(RetryDecision.attempt) == Attempt.number))
        .where(col(RetryDecision.production_id) == production.id,
               col(RetryDecision.actor) == "policy", col(RetryDecision.passive).is_(False))
        .group_by(*GROUP, col(RetryDecision.action))).all()
    result: dict[tuple[Any, ...], Counter[str]] = {}
    for outcome, exit_code, signal, site, action, count in rows:
        result.setdefault((outcome, exit_code, signal, site), Counter())[action] += count
    return result


def _last_lines(text: str) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-TAIL_LINES:])
