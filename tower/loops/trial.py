"""Trials: a production's first few events run before the rest, to learn what its jobs
need. When every trial job has ended, the trial's successful attempts give the payload's
wall and CPU seconds per event and peak memory (tower.model.usage), and from them a
proposal for the full run: events per job and a walltime that fit the allowed sites'
pilots, and the memory to ask for (no more than their pilots have).
The production then waits for `tower approve` (or approves itself, if its request says
so and every trial job succeeded).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from sqlmodel import Session, col, select

from tower.config import TowerConfig
from tower.loops import tune
from tower.management import approval, productions
from tower.management.progress import FINISHED
from tower.management.specs import ProductionSpec, longest_walltime
from tower.model import tally, usage
from tower.model.db import transaction
from tower.model.models import Job, Production
from tower.model.states import JobState, ProductionState
from tower.runtime import Runtime

log = logging.getLogger(__name__)

#: The full run's walltime per event is the trial's slowest, times this.
WALLTIME_MARGIN = 1.5
#: The memory asked for is the trial's peak, times this.
MEMORY_MARGIN = 1.25


def run_once(runtime: Runtime) -> int:
    """End the trials whose jobs have all ended; returns how many ended."""
    ended = 0
    with transaction(runtime.engine) as session:
        trials = session.exec(select(Production).where(
            Production.state == ProductionState.TRIAL,
            col(Production.full_run).is_(False)).with_for_update(skip_locked=True)).all()
        counts = tally.counts(session) if trials else {}
        for production in trials:
            states = counts.get(production.id or 0, {})
            if not states or any(state not in FINISHED for state in states):
                continue
            conclude(session, runtime.config, production)
            ended += 1
    return ended


def conclude(session: Session, config: TowerConfig, production: Production) -> None:
    """Measure the ended trial, propose, and wait for approval or approve it."""
    spec = ProductionSpec.model_validate(production.spec)
    assert spec.trial is not None
    report = measure(session, production)
    report["proposal"] = propose(spec, report, config)
    production.trial_report = report
    session.add(production)
    session.flush()
    log.info("production=%s trial ended: %s", production.name, report["proposal"]["why"])
    if spec.trial.approve == "auto" and report["succeeded"] == report["jobs"]:
        approval.approve_trial(session, config, production, "trial (every job succeeded)",
                               spec.trial.tune == "set")
    else:
        productions.move(session, production, ProductionState.APPROVAL, "end its trial")


def measure(session: Session, production: Production) -> dict[str, Any]:
    """What the trial's jobs took: their successful attempts' usage as the pilots measured
    it (peak memory, and CPU and wall seconds per event), and how many jobs succeeded."""
    jobs = session.exec(select(Job.id, Job.state, Job.events).where(
        Job.production_id == production.id, col(Job.index) < production.trial_jobs)).all()
    ids = {job_id for job_id, _, _ in jobs}
    # a trial's jobs are its production's first: the latest sample holds them all
    figures = usage.describe([row for row in usage.latest(session, production.id or 0)
                              if row.job_id in ids])
    succeeded = sum(1 for _, state, _ in jobs if state == JobState.DONE)
    memory = figures["memory_mb"] if figures else None
    return {
        "jobs": len(jobs), "succeeded": succeeded, "failed": len(jobs) - succeeded,
        "events": sum(events for _, _, events in jobs),
        "seconds_per_event": figures["wall_seconds_per_event"] if figures else None,
        "cpu_seconds_per_event": figures["cpu_seconds_per_event"] if figures else None,
        "peak_memory_mb": round(memory["max"]) if memory else None,
        "usage": figures,
    }


def propose(spec: ProductionSpec, measured: dict[str, Any], config: TowerConfig
            ) -> dict[str, Any]:
    """Events per job, walltime and memory for the full run, and why."""
    target = spec.trial.target_walltime if spec.trial else None
    fits = pilot_room(spec, config)
    if target is None:
        target = fits
    elif fits:
        target = min(target, fits)
    rate = measured["seconds_per_event"]
    if not rate or not target:
        return {"events_per_job": spec.events_per_job, "walltime": spec.walltime,
                "memory": spec.memory, "why": "the trial gave no successful attempt to "
                                              "measure (or no site takes the production): "
                                              "keeping the request's values"}
    per_event = max(rate["max"], 1e-3) * WALLTIME_MARGIN
    events = max(1, min(math.floor(target / per_event), spec.events_total))
    walltime = min(max(math.ceil(events * per_event), 60), target)
    peak = measured["peak_memory_mb"]
    memory = math.ceil(peak * MEMORY_MARGIN) if peak else spec.memory
    largest, _ = tune.pilot_bounds(spec, config.sites, memory)
    if memory is not None and largest is not None:
        memory = min(memory, largest)  # never more than a pilot of an allowed site has
    cpu = measured.get("cpu_seconds_per_event")
    return {
        "events_per_job": events, "walltime": walltime, "memory": memory,
        "jobs": math.ceil((spec.events_total - (spec.trial.events if spec.trial else 0))
                          / events),
        "why": f"{rate['max']:.3g}s per event at most in the trial (wall time, as the "
               f"pilots measured it), {WALLTIME_MARGIN}x for "
               f"safety: {events} events fill {walltime}s of the {target}s a job may take"
               + (f" ({cpu['median']:.3g}s of CPU per event, median)" if cpu else "")
               + (f"; peak memory {peak} MB, asking {memory} MB" if peak else ""),
    }


def pilot_room(spec: ProductionSpec, config: TowerConfig) -> int | None:
    """The longest walltime a job of `spec` can get from the pilots of the sites it allows
    (a pilot keeps its drain margin), or None if no enabled site serves its queue."""
    return longest_walltime(spec, config.sites)
