"""The pilot factory: keep each site queue supplied with pilots while work waits for it.

The rule, per site queue and cycle:

    demand  = jobs waiting for this site queue: its backlog (assigned, queued)
              plus defined jobs of active productions that allow the site, counting
              only jobs its pilots can hold (cores, memory, walltime)
    wanted  = ceil(demand / payload slots per pilot) - pilots pending - pilots running
    submit  = min(wanted,
                  max_queued - pending,          # never more than max_queued waiting
                  max_running - alive,           # every pending pilot may start: never
                                                 # more than max_running at once
                  max_per_cycle)                 # ramp up gently

`alive` is pending + running + draining: draining pilots take no new work, so
they add no capacity, but they hold their batch slot until they end.

Before deciding, pending pilots are cancelled when no work waits for the site
queue, and those pending longer than `limits.max_queue_wait` are cancelled and
replaced. The decision is made under a lock on the site queue's row, and the
pilots it submits are recorded before they are handed to the batch system, so
two tower processes together never exceed the limits. Every decision is kept
with its numbers (`tower sites explain`).
"""

from __future__ import annotations

import logging
import math
import sys
import uuid

from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from catalog.timeutil import ago, utcnow
from sites.batch import PilotRequest
from sites.config import PilotShape, SiteConfig
from tower.auth import credentials
from tower.brokers.broker import queue_name
from tower.errors import BackendError
from tower.loops import health
from tower.loops.matchmaker import PRODUCTION_CLAIMED, production_needs
from tower.management.specs import needs_of
from tower.model import fleet, history, jobs, tally
from tower.model.db import insert_missing, transaction
from tower.model.models import FactoryDecision, Job, Pilot, Production, SiteQueue
from tower.model.states import JOB_AT_SITE, PRODUCTION_RUNNABLE, JobState, PilotState, move_pilots
from tower.runtime import Runtime

log = logging.getLogger(__name__)

#: Factory decisions kept per site queue, for `tower sites explain`.
DECISIONS_KEPT = 200


def pilots_to_submit(demand: int, slots: int, pending: int, running: int, draining: int,
                     site: SiteConfig) -> int:
    """How many pilots to submit now (the rule in this module's docstring)."""
    limits = site.limits
    wanted = math.ceil(demand / slots) - pending - running
    alive = pending + running + draining
    return max(0, min(wanted, limits.max_queued - pending, limits.max_running - alive,
                      limits.max_per_cycle))


def run_once(runtime: Runtime) -> int:
    """One cycle over every enabled site queue; returns the number of pilots submitted."""
    submitted = 0
    for site in runtime.config.sites.values():
        if not site.enabled:
            continue
        for queue in site.queues:
            try:
                submitted += _supply(runtime, site, queue)
            except BackendError as exc:
                # one site's trouble must not starve the others: record it, go on
                log.warning("site=%s queue=%s: %s", site.name, queue, exc)
                with transaction(runtime.engine) as session:
                    _note_error(session, site.name, queue, str(exc))
    return submitted


def _supply(runtime: Runtime, site: SiteConfig, queue: str) -> int:
    """Decide under the site queue's lock, reserving the pilots to submit; then submit
    them and cancel the ones no longer wanted, outside the lock."""
    batch = runtime.batch_system(site.name)
    with transaction(runtime.engine) as session:
        status = _lock(session, site.name, queue)
        _forget_unsubmitted(session, site, queue)
        if (status.last_error_at is not None
                and status.last_error_at > ago(site.limits.error_pause)):
            return 0  # the site failed us lately: its error shows, the next try waits
        demand = _demand(session, site, queue)
        cancel = _unwanted(session, site, queue, demand)
        counts = fleet.counts(session, site.name, queue)
        pending, running = counts[PilotState.SUBMITTED], counts[PilotState.RUNNING]
        draining = counts[PilotState.DRAINING]
        count = pilots_to_submit(demand, site.pilot.slots, pending, running, draining, site)
        reserved = [uuid.uuid4().hex for _ in range(count)]
        for pilot_id in reserved:
            session.add(Pilot(id=pilot_id, site=site.name, queue=queue, slots=site.pilot.slots,
                              cores=site.pilot.cores, memory=site.pilot.memory,
                              walltime=site.pilot.walltime, log_path=batch.log_path(pilot_id)))
        limits = site.limits
        note = (f"pending {pending}/{limits.max_queued}, running {running}/{limits.max_running}"
                f", draining {draining}, backlog {demand}: submit {count}"
                + (f", cancel {len(cancel)} ({cancel[0][1]})" if cancel else ""))
        _record(session, FactoryDecision(site=site.name, queue=queue, demand=demand,
                                         pending=pending, running=running, draining=draining,
                                         submit=count, cancel=len(cancel), note=note))
        history.record(session, site.name, queue, pending, running, draining, count,
                       len(cancel))
    if cancel:
        batch.cancel([batch_id for batch_id, _ in cancel])
    for index, pilot_id in enumerate(reserved):
        try:
            _submit(runtime, site, queue, pilot_id)
        except Exception:
            # the site refuses: the rest of this cycle's reservations are not tried
            with transaction(runtime.engine) as session:
                fleet.lose(session, reserved[index + 1:], "not submitted: an earlier "
                           "submission in the same cycle failed")
            raise
    if count or cancel:
        log.info("site=%s queue=%s %s", site.name, queue, note)
    return count


def _lock(session: Session, site: str, queue: str) -> SiteQueue:
    """Hold the site queue's row until the transaction ends (created on first use)."""
    insert_missing(session, SiteQueue, site=site, queue=queue)
    return session.exec(select(SiteQueue).where(SiteQueue.site == site,
                                                SiteQueue.queue == queue)
                        .with_for_update()).one()


def _forget_unsubmitted(session: Session, site: SiteConfig, queue: str) -> None:
    """Pilots reserved by a tower that died before submitting them (`unsubmitted_after`
    ago) count no more."""
    stale = session.exec(select(Pilot.id).where(
        Pilot.site == site.name, Pilot.queue == queue, Pilot.state == PilotState.SUBMITTED,
        col(Pilot.batch_id).is_(None),
        col(Pilot.submitted_at) < ago(site.limits.unsubmitted_after))).all()
    if stale:
        fleet.lose(session, list(stale), "reserved but never handed to the batch system")


def _unwanted(session: Session, site: SiteConfig, queue: str,
              demand: int) -> list[tuple[str, str]]:
    """Pending pilots to cancel, ended here: all of them when no work waits, else those
    pending longer than max_queue_wait (they are replaced in this same cycle)."""
    query = select(Pilot).where(Pilot.site == site.name, Pilot.queue == queue,
                                Pilot.state == PilotState.SUBMITTED,
                                col(Pilot.batch_id).is_not(None))
    if demand == 0:
        reason = "no backlog left"
    elif site.limits.max_queue_wait:
        reason = f"pending longer than {site.limits.max_queue_wait:.0f}s"
        query = query.where(col(Pilot.submitted_at) < ago(site.limits.max_queue_wait))
    else:
        return []
    pilots = {pilot.id: pilot.batch_id for pilot in session.exec(query).all()}
    ended = move_pilots(session, list(pilots), PilotState.SUBMITTED, PilotState.DONE,
                        ended_at=utcnow(), message=f"cancelled while pending: {reason}")
    return [(pilots[pilot_id] or "", reason) for pilot_id in ended]


def _record(session: Session, decision: FactoryDecision) -> None:
    """Keep the last DECISIONS_KEPT decisions of each site queue."""
    session.add(decision)
    session.flush()
    assert decision.id is not None
    session.execute(delete(FactoryDecision).where(
        col(FactoryDecision.site) == decision.site, col(FactoryDecision.queue) == decision.queue,
        col(FactoryDecision.id) <= decision.id - DECISIONS_KEPT))


def recent_decisions(session: Session, site: str, limit: int) -> list[FactoryDecision]:
    """The last `limit` decisions for `site` (all its queues), newest first."""
    return list(session.exec(select(FactoryDecision).where(FactoryDecision.site == site)
                             .order_by(col(FactoryDecision.id).desc()).limit(limit)).all())


def _note_error(session: Session, site: str, queue: str, error: str) -> None:
    """Remember the last error of a site queue, for `tower sites`."""
    insert_missing(session, SiteQueue, site=site, queue=queue)
    session.execute(update(SiteQueue).where(col(SiteQueue.site) == site,
                                            col(SiteQueue.queue) == queue)
                    .values(last_error=error[:1000], last_error_at=utcnow()))


def _demand(session: Session, site: SiteConfig, queue: str) -> int:
    """Jobs this site queue's pilots could run: those waiting there, and those it may take.
    A job its pilots cannot hold (cores, memory, walltime) counts nowhere: a pilot that
    found it would refuse it or drain at once, and another would be submitted for it,
    without end."""
    at_site = session.exec(select(func.count()).select_from(Job).where(
        Job.site == site.name, Job.queue == queue, col(Job.state).in_(JOB_AT_SITE),
        jobs.fitting(site.pilot, production_needs(session, PRODUCTION_CLAIMED)))).one()
    return at_site + waiting(session, site, queue)


def waiting(session: Session, site: SiteConfig, queue: str) -> int:
    """Defined jobs of active productions that this site queue could take, its pilots
    holding their needs (none while the site cools down)."""
    if site.name in health.cooling(session):
        return 0
    allowing = [pid or 0 for pid, spec in session.exec(
        select(Production.id, Production.spec).where(
            col(Production.state).in_(PRODUCTION_RUNNABLE), Production.queue == queue)).all()
        if (not spec.get("sites") or site.name in spec["sites"])
        and site.pilot.misfit(needs_of(spec)) is None]
    if not allowing:
        return 0
    # from the tally, not a count over a million defined jobs (a production's jobs all
    # share its queue); the few a retry grew past the pilots' shape (the misfits of
    # productions that fit) are taken off
    counts = tally.counts(session)
    defined = [counts.get(pid, {}).get(JobState.DEFINED) for pid in allowing]
    grown = session.exec(select(func.count()).select_from(Job).where(
        Job.state == JobState.DEFINED, col(Job.production_id).in_(allowing),
        jobs.misfitting(site.pilot, {}))).one()
    return max(sum(count.jobs for count in defined if count is not None) - grown, 0)


def _submit(runtime: Runtime, site: SiteConfig, queue: str, pilot_id: str) -> None:
    """Hand a reserved pilot to the batch system; a refusal leaves it lost, with why."""
    request = pilot_request(runtime, site, queue, pilot_id)
    try:
        batch_id = runtime.batch_system(site.name).submit(request)
    except Exception as exc:
        with transaction(runtime.engine) as session:
            fleet.lose(session, [pilot_id], f"submission failed: {exc}")
        raise
    with transaction(runtime.engine) as session:
        session.execute(update(Pilot).where(col(Pilot.id) == pilot_id)
                        .values(batch_id=batch_id, updated_at=utcnow()))


def pilot_command(site: SiteConfig) -> list[str]:
    """The pilot program at the site, as an argv prefix."""
    if site.pilot_command == ["pilot"] and site.batch == "local":
        # a local pilot runs with the tower's own interpreter, found or not on PATH
        return [sys.executable, "-m", "pilots.main"]
    return list(site.pilot_command)


def pilot_request(runtime: Runtime, site: SiteConfig, queue: str,
                  pilot_id: str) -> PilotRequest:
    """The pilot's command line at the site, and the environment that carries its secrets."""
    config = runtime.config
    source = runtime.broker.pilot_source(queue_name(site.name, queue), site.broker_url)
    command = pilot_command(site)
    options = [part for key, value in source.options.items()
               for part in ("--source-option", f"{key}={value}")]
    carried: dict[str, str] | None = (
        {} if runtime.batch_system(site.name).carries_inputs else None)
    argv = [
        *command,
        "--tower", config.api_url, "--site", site.name, "--queue", queue,
        "--pilot-id", pilot_id, "--source", source.kind, "--broker-queue", source.queue,
        *options,
        "--slots", str(site.pilot.slots), "--cores", str(site.pilot.cores),
        *_memory_options(site.pilot),
        "--walltime", str(site.pilot.walltime), "--drain-margin", str(site.pilot.drain_margin),
        "--idle-timeout", str(site.pilot.idle_timeout),
        "--heartbeat", str(config.monitor.heartbeat_interval),
        "--scratch", site.scratch, "--storage", site.storage,
        *credentials.deliver(runtime, site, pilot_id, carried),
    ]
    return PilotRequest(pilot_id, argv, source.environment, inputs=carried or {})


def _memory_options(shape: PilotShape) -> list[str]:
    """The pilot's memory options, each only when it is not the default: a pilot installed
    at a site before they existed still understands the command line of a site that
    does not use them."""
    options = []
    for key in ("memory", "memory_tolerance", "memory_watch"):
        value = getattr(shape, key)
        if value != PilotShape.model_fields[key].default:
            options += [f"--{key.replace('_', '-')}", str(value)]
    return options
