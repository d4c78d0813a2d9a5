"""`tune: auto`: a running production's later jobs ask for the memory and walltime its
successful attempts used — the p95 of the latest (tower.model.usage.SAMPLE) times the
request's safety factor — never more than one pilot of the allowed sites offers
(`pilot_bounds`), and only once `min_sample` attempts succeeded.

The loop changes the production's `memory` and `walltime` (their origin becomes
`NAME (tune: auto)`), so every job not yet claimed runs with them: the matchmaker, the factory and
the claim read the production's values. A job that runs keeps what its claim gave it, and
a job whose own walltime or memory grew by a retry keeps that when it is the larger
(`Needs.grown`). Each change is a TuneDecision with the old and new value and the
evidence (attempts measured, p95, factor, the sites' bound).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, or_, select

from catalog.timeutil import utcnow
from tower.config import TowerConfig
from tower.management.specs import ProductionSpec, TuneSpec, offers
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
    tuning = spec.tune
    # a pilot that does not measure memory leaves it as requested
    memory = _wanted([float(row.max_rss_mb) for row in rows if row.max_rss_mb is not None],
                     1, MIN_MEMORY, tuning)
    walltime = _wanted([row.wall_seconds / row.events for row in rows], spec.events_per_job,
                       MIN_WALLTIME, tuning)
    most_memory, longest = pilot_bounds(spec, config.sites, memory.value if memory else None)
    decisions = [decision for decision in (
        _decide(production, "memory", spec.memory, memory, most_memory),
        _decide(production, "walltime", spec.walltime, walltime, longest),
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


def pilot_bounds(spec: ProductionSpec, sites: Mapping[str, Any], memory: int | None
                 ) -> tuple[int | None, int | None]:
    """The most memory (MB) and walltime (s) one pilot can give a job of `spec` that wants
    `memory`, among the allowed site queues' pilots that hold its cores (all of them, if
    none does): one that holds `memory` (of those, the longest walltime), else the one with
    the most memory. Both bounds come from one pilot, so a job tuned within them fits it.
    None for memory when that pilot declares none (it takes any); (None, None) when no
    site serves the production."""
    shapes = list(offers(spec, sites).values())
    shapes = [shape for shape in shapes if shape.holds("cores", spec.cores)] or shapes
    if not shapes:
        return None, None
    holding = [shape for shape in shapes if shape.holds("memory", memory)]
    best = (max(holding, key=lambda shape: shape.longest_job) if holding
            else max(shapes, key=lambda shape: shape.memory or 0))
    return best.memory, best.longest_job


@dataclass(frozen=True)
class Wanted:
    """What the measurements of one setting ask for, and the evidence."""

    samples: int
    #: The p95 of the measurements (MB, or seconds per event).
    p95: float
    #: Measurements per job (events per job for the walltime, else 1).
    scale: int
    factor: float
    value: int


def _wanted(measured: list[float], scale: int, least: int, tuning: TuneSpec
            ) -> Wanted | None:
    """The value the p95 of `measured` (`scale` of them per job) asks for, at least `least`;
    None below the minimum sample."""
    if len(measured) < tuning.min_sample:
        return None
    p95 = usage.percentile(sorted(measured), 0.95)
    return Wanted(len(measured), p95, scale, tuning.factor,
                  max(least, math.ceil(p95 * scale * tuning.factor)))


def _decide(production: Production, setting: str, old: int | None, wanted: Wanted | None,
            bound: int | None) -> TuneDecision | None:
    """The change of one setting, within `bound`; None when nothing is wanted or the change
    would be too small to make."""
    if wanted is None:
        return None
    new = min(wanted.value, bound) if bound is not None else wanted.value
    if old is not None and abs(new - old) <= STEP * old:
        return None
    unit = "MB" if setting == "memory" else "s per event"
    reason = (f"p95 {wanted.p95:.4g} {unit} of the latest {wanted.samples} successful "
              f"attempts x {wanted.factor}"
              + (f" x {wanted.scale} events" if wanted.scale != 1 else "")
              + (f" = {wanted.value}, bounded by a pilot's {bound}" if new < wanted.value
                 else ""))
    log.info("production=%s tune %s %s -> %s: %s", production.name, setting, old, new, reason)
    return TuneDecision(production_id=production.id or 0, setting=setting, old=old, new=new,
                        samples=wanted.samples, p95=wanted.p95, factor=wanted.factor,
                        bound=bound, reason=reason[:500])
