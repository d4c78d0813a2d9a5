"""A manager's decisions: approving a request filed by a collaborator (perhaps with
changes), rejecting one, and approving a production whose trial has ended (perhaps with
the trial's proposal for walltime, memory and events per job)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from catalog.timeutil import utcnow
from tower.config import TowerConfig
from tower.errors import Conflict
from tower.management import productions
from tower.model.models import Production
from tower.model.states import ProductionState

#: The settings a trial's proposal sets when it is taken.
TUNED = ("events_per_job", "walltime", "memory")


def approve(session: Session, config: TowerConfig, name: str, by: str,
            tune: bool | None = None, changes: dict[str, Any] | None = None,
            note: str | None = None) -> dict[str, Any]:
    """Approve a request (its trial, or all its jobs, start) or an ended trial (the rest of
    its jobs are made). `changes` are applied first; `tune` takes the trial's proposal
    (default: as its request says)."""
    production = productions.get(session, name)
    state = ProductionState(production.state)
    if state not in (ProductionState.REQUESTED, ProductionState.APPROVAL):
        raise Conflict(f"production {name} is {state}: there is nothing to approve "
                       "(requests and ended trials wait for approval)", field="state")
    if changes:
        productions.amend(session, production, changes, config)
    if state is ProductionState.REQUESTED:
        _decided(session, production, by, note)
        productions.start(session, production)
        made = productions.state_counts(session, production.id).get(production.id or 0, {})
        return _answer(production, sum(made.values()))
    spec_trial = production.spec.get("trial") or {}
    take = tune if tune is not None else spec_trial.get("tune") == "set"
    return _answer(production, approve_trial(session, config, production, by, take, note))


def approve_trial(session: Session, config: TowerConfig, production: Production, by: str,
                  tune: bool, note: str | None = None) -> int:
    """Make the rest of a production's jobs after its trial, with the trial's proposal
    when `tune`; returns the jobs made."""
    proposal = (production.trial_report or {}).get("proposal") or {}
    if tune and proposal:
        productions.amend(session, production, {key: proposal[key] for key in TUNED
                                                if proposal.get(key) is not None}, config)
    production.decision_note = note
    session.add(production)
    session.flush()
    return productions.run_in_full(session, production, by)


def reject(session: Session, name: str, by: str, reason: str) -> dict[str, Any]:
    production = productions.get(session, name)
    productions.move(session, production, ProductionState.REJECTED, "be rejected",
                     decided_by=by, decided_at=utcnow(), decision_note=reason[:1000])
    return _answer(production, 0)


def _decided(session: Session, production: Production, by: str, note: str | None) -> None:
    production.decided_by, production.decided_at = by, utcnow()
    production.decision_note = note
    session.add(production)
    session.flush()


def _answer(production: Production, jobs: int) -> dict[str, Any]:
    return {"production": production.name, "state": production.state, "jobs_made": jobs,
            "decided_by": production.decided_by, "note": production.decision_note}
