"""`tune: auto`: a running production's later jobs ask for the memory and walltime its
successful attempts used — the p95 of the latest (tower.model.usage.SAMPLE) times the
request's safety factor — never more than the allowed sites' pilots offer, and only once
`min_sample` attempts succeeded.

The loop changes the production's `memory` and `walltime` (their origin becomes
`NAME (tune: auto)`), so every job not yet claimed runs with them: the matchmaker, the factory and
the claim read the production's values. A job that runs keeps what its claim gave it, and
a job whose own walltime or memory grew by a retry keeps that when it is the larger
(`specs.job_need`). Each change is a TuneDecision with the old and new value and the
evidence (attempts measured, p95, factor, the sites' bound).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import timedelta

from sqlmodel import Session, col, or_, select

from catalog.timeutil import utcnow
from tower.config import TowerConfig
from tower.management.specs import ProductionSpec, largest_memory, longest_walltime
from tower.model import usage
from tower.model.db import transaction
from tower.model.models import Production, TuneDecision
from tower.model.states import ProductionState
from tower.runtime import Runtime

log = logging.getLogger(__name__)

#: How often a production's figures are looked at again once it has its minimum sample:
#: each look reads up to usage.SAMPLE rows.
EVERY = timedelta(seconds=60)
#: A change of less than this part of the current value is not made: the p95 moves a
#: little with every attempt, and each change is a decision someone may read.
STEP = 0.1
#: The least tuning asks for: room for a payload's start and the measuring's jitter.
MIN_MEMORY = 64
MIN_WALLTIME = 60
#: The origin `tower show` gives a tuned setting, after the production's name (a clone
#: inherits it so, and `own_document` never takes it for the author's own).
ORIGIN = "tune: auto"


def run_once(runtime: Runtime) -> int:
    """Tune the active `tune: auto` productions that are due; returns the changes made."""
    with Session(runtime.engine) as session:
        active = session.exec(select(Production.id, Production.spec).where(
            Production.state == ProductionState.ACTIVE)).all()
    due = [production_id for production_id, spec in active
           if (spec.get("tune") or {}).get("mode") == "auto" and production_id is not None]
    changes = 0
    for production_id in due:
        with transaction(runtime.engine) as session:
            # locked and re-checked: two towers never tune one production at once
            production = session.exec(select(Production).where(
                Production.id == production_id, Production.state == ProductionState.ACTIVE,
                or_(col(Production.tuned_at).is_(None),
                    col(Production.tuned_at) < utcnow() - EVERY))
                .with_for_update(skip_locked=True)).first()
            if production is not None:
                changes += len(tune(session, runtime.config, production))
    return changes


def tune(session: Session, config: TowerConfig, production: Production
         ) -> list[TuneDecision]:
    """Look at a production's latest successful attempts and change its memory and walltime
    where the p95 says so; returns the decisions made."""
    spec = ProductionSpec.model_validate(production.spec)
    assert spec.tune is not None and production.id is not None
    rows = usage.latest(session, production.id)
    if len(rows) < spec.tune.min_sample:
        return []  # looked at again next cycle: the sample grows with each success
    production.tuned_at = utcnow()
    memory = sorted(float(row.max_rss_mb) for row in rows if row.max_rss_mb is not None)
    per_event = sorted(row.wall_seconds / row.events for row in rows)
    decisions = [decision for decision in (
        _decide(production, spec, "memory", spec.memory, memory, 1, MIN_MEMORY,
                largest_memory(spec, config.sites)),
        _decide(production, spec, "walltime", spec.walltime, per_event, spec.events_per_job,
                MIN_WALLTIME, longest_walltime(spec, config.sites)),
    ) if decision is not None]
    if decisions:
        production.spec = {**production.spec,
                           **{decision.setting: decision.new for decision in decisions}}
        production.origins = {**production.origins,
                               **{decision.setting: f"{production.name} ({ORIGIN})"
                                  for decision in decisions}}
        production.updated_at = utcnow()
        session.add_all(decisions)
    session.add(production)
    return decisions


def _decide(production: Production, spec: ProductionSpec, setting: str, old: int | None,
            measured: Sequence[float], scale: int, least: int, bound: int | None
            ) -> TuneDecision | None:
    """The change of one setting the measurements ask for (`scale` of them per job), or
    None: too few measured, or too small a change to make."""
    assert spec.tune is not None
    factor = spec.tune.factor
    if len(measured) < spec.tune.min_sample:
        return None  # a pilot that does not measure memory leaves it as requested
    p95 = usage.percentile(measured, 0.95)
    wanted = max(least, math.ceil(p95 * scale * factor))
    new = min(wanted, bound) if bound is not None else wanted
    if old is not None and abs(new - old) <= STEP * old:
        return None
    unit = "MB" if setting == "memory" else "s per event"
    reason = (f"p95 {p95:.4g} {unit} of the latest {len(measured)} successful attempts x {factor}"
              + (f" x {scale} events" if scale != 1 else "")
              + (f" = {wanted}, bounded by the sites' largest {bound}" if new < wanted else ""))
    log.info("production=%s tune %s %s -> %s: %s", production.name, setting, old, new, reason)
    return TuneDecision(production_id=production.id or 0, setting=setting, old=old, new=new,
                        samples=len(measured), p95=p95, factor=factor, bound=bound,
                        reason=reason[:500])
