"""The pilot factory: keep each site queue supplied with pilots while work waits for it.

The rule, per site queue and cycle:

    demand  = jobs waiting for this site queue: its backlog (assigned, queued)
              plus defined jobs of active productions that allow the site
    wanted  = ceil(demand / payload slots per pilot) - pilots pending - pilots running
    submit  = min(wanted,
                  max_queued - pending,                 # never more than max_queued waiting
                  max_running + max_queued - active,    # never more alive than both together
                  max_per_cycle)                        # ramp up gently

Draining pilots take no new work, so they do not count toward capacity, but
they still count as alive.
"""

from __future__ import annotations

import logging
import math
import sys
import uuid
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, col, select

from sites.batch import PilotRequest
from sites.config import SiteConfig
from tower import fleet
from tower.broker import queue_name
from tower.db import transaction
from tower.models import Job, Pilot, Production
from tower.runtime import Runtime
from tower.states import JOB_AT_SITE, JobState, PilotState

log = logging.getLogger(__name__)


def pilots_to_submit(demand: int, slots: int, pending: int, running: int, draining: int,
                     site: SiteConfig) -> int:
    """How many pilots to submit now (the rule in this module's docstring)."""
    limits = site.limits
    wanted = math.ceil(demand / slots) - pending - running
    active = pending + running + draining
    return max(0, min(wanted, limits.max_queued - pending,
                      limits.max_running + limits.max_queued - active, limits.max_per_cycle))


def run_once(runtime: Runtime) -> int:
    """One cycle over every enabled site queue; returns the number of pilots submitted."""
    submitted = 0
    for site in runtime.config.sites.values():
        if not site.enabled:
            continue
        for queue in site.queues:
            submitted += _supply(runtime, site, queue)
    return submitted


def _supply(runtime: Runtime, site: SiteConfig, queue: str) -> int:
    with Session(runtime.engine) as session:
        demand = _demand(session, site, queue)
        counts = fleet.counts(session, site.name, queue)
    count = pilots_to_submit(demand, site.pilot.slots, counts[PilotState.SUBMITTED],
                             counts[PilotState.RUNNING], counts[PilotState.DRAINING], site)
    for _ in range(count):
        _submit(runtime, site, queue)
    if count:
        log.info("site=%s queue=%s demand=%d submitted=%d pilots", site.name, queue, demand, count)
    return count


def _demand(session: Session, site: SiteConfig, queue: str) -> int:
    at_site = session.exec(select(func.count()).select_from(Job).where(
        Job.site == site.name, Job.queue == queue, col(Job.state).in_(JOB_AT_SITE))).one()
    return at_site + waiting(session, site, queue)


def waiting(session: Session, site: SiteConfig, queue: str) -> int:
    """Defined jobs of active productions that this site queue could take."""
    allowing = [pid for pid, spec in session.exec(
        select(Production.id, Production.spec).where(Production.state == "active")).all()
        if not spec.get("sites") or site.name in spec["sites"]]
    if not allowing:
        return 0
    return session.exec(select(func.count()).select_from(Job).where(
        Job.state == JobState.DEFINED, Job.queue == queue,
        col(Job.production_id).in_(allowing))).one()


def _submit(runtime: Runtime, site: SiteConfig, queue: str) -> None:
    """Record a pilot, then hand it to the batch system; a refusal leaves it lost with why."""
    pilot_id = uuid.uuid4().hex
    log_path = runtime.config.work_dir / "pilots" / site.name / f"{pilot_id}.log"
    with transaction(runtime.engine) as session:
        session.add(Pilot(id=pilot_id, site=site.name, queue=queue, slots=site.pilot.slots,
                          walltime=site.pilot.walltime, log_path=str(log_path)))
    request = pilot_request(runtime, site, queue, pilot_id, log_path)
    try:
        batch_id = runtime.batch_system(site.name).submit(request)
    except Exception as exc:
        with transaction(runtime.engine) as session:
            fleet.lose(session, [pilot_id], f"submission failed: {exc}")
        raise
    with transaction(runtime.engine) as session:
        pilot = fleet.get(session, pilot_id)
        pilot.batch_id = batch_id
        session.add(pilot)


def pilot_request(runtime: Runtime, site: SiteConfig, queue: str, pilot_id: str,
                  log_path: Path) -> PilotRequest:
    """The pilot's command line at the site, and the environment that carries its secrets."""
    config = runtime.config
    source = runtime.broker.pilot_source(queue_name(site.name, queue), site.broker_url)
    command = list(site.pilot_command)
    if command == ["pilot"] and site.batch == "local":
        # a local pilot runs with the tower's own interpreter, found or not on PATH
        command = [sys.executable, "-m", "pilots.main"]
    options = [part for key, value in source.options.items()
               for part in ("--source-option", f"{key}={value}")]
    argv = [
        *command,
        "--tower", config.api_url, "--site", site.name, "--queue", queue,
        "--pilot-id", pilot_id, "--source", source.kind, "--broker-queue", source.queue,
        *options,
        "--slots", str(site.pilot.slots), "--cores", str(site.pilot.cores),
        "--walltime", str(site.pilot.walltime), "--drain-margin", str(site.pilot.drain_margin),
        "--idle-timeout", str(site.pilot.idle_timeout),
        "--heartbeat", str(config.monitor.heartbeat_interval),
        "--scratch", site.scratch, "--storage", site.storage,
    ]
    return PilotRequest(pilot_id, argv, log_path, source.environment)
