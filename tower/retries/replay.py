"""`tower policy simulate`: replay a production's recorded attempts through another policy.

Each job's failed attempts are taken in order and decided afresh, with the
same history the recorded decision had (a manager's retry or release resets
it, as it did then). A job is followed up to its first different decision
only: what would have happened after that was never recorded.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from sqlmodel import Session, col, select

from tower.management.specs import ProductionSpec
from tower.model.models import Attempt, Job, Production, RetryDecision
from tower.retries.outcomes import NOT_FAILURES
from tower.retries.policy import Policy, decide
from tower.retries.retry import counted, ended

#: Differences listed one by one; the rest are only counted.
EXAMPLES = 20


def simulate(session: Session, production: Production, name: str,
             policy: Policy) -> dict[str, Any]:
    spec = ProductionSpec.model_validate(production.spec)
    attempts: dict[int, list[Attempt]] = defaultdict(list)
    for attempt in session.exec(
            select(Attempt).join(Job, col(Job.id) == Attempt.job_id)
            .where(Job.production_id == production.id, col(Attempt.ended_at).is_not(None))
            .order_by(col(Attempt.job_id), col(Attempt.number))).all():
        attempts[attempt.job_id].append(attempt)
    recorded: dict[tuple[int, int], RetryDecision] = {}
    resets: dict[int, list[int]] = defaultdict(list)
    for row in session.exec(select(RetryDecision).where(
            RetryDecision.production_id == production.id,
            col(RetryDecision.passive).is_(False)).order_by(col(RetryDecision.id))).all():
        if row.actor == "policy":
            recorded[(row.job_id, row.attempt)] = row
        elif row.action in ("retry", "release"):
            resets[row.job_id].append(row.attempt)
    compared = 0
    changes: Counter[tuple[str, str, str]] = Counter()
    examples: list[dict[str, Any]] = []
    for job_id, tries in attempts.items():
        for index, attempt in enumerate(tries):
            decision = recorded.get((job_id, attempt.number))
            if decision is None or attempt.outcome in NOT_FAILURES:
                continue
            start = max((n for n in resets[job_id] if n < attempt.number), default=0)
            history = counted([ended(past) for past in tries[:index + 1] if past.number > start
                               and past.outcome not in NOT_FAILURES], attempt)
            simulated = decide(policy, history, spec.retry.max_attempts)
            compared += 1
            if str(simulated.action) == decision.action:
                continue
            changes[(str(attempt.outcome), decision.action, str(simulated.action))] += 1
            if len(examples) < EXAMPLES:
                examples.append({"job": job_id, "attempt": attempt.number,
                                 "recorded": f"{decision.action} ({decision.reason})",
                                 "simulated": f"{simulated.action} ({simulated.reason})"})
            break  # what followed a different decision was never recorded
    return {
        "production": production.name, "policy": name, "decisions": compared,
        "different": sum(changes.values()),
        "changes": [{"class": outcome, "recorded": before, "simulated": after, "count": count}
                    for (outcome, before, after), count in changes.most_common()],
        "examples": examples,
    }
