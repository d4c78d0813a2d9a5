"""The broker loop: match defined jobs to sites and publish them to the sites' queues.

The database holds every job; a site's broker queue holds at most its
backlog limit, so no job waits at one site while another has free slots
(late binding). A job counts as queued only once the broker confirmed it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from tower.broker import Message, queue_name
from tower.db import transaction
from tower.models import Job, Production
from tower.runtime import Runtime
from tower.states import JOB_AT_SITE, JobState, move_jobs
from tower.timeutil import ago, utcnow

log = logging.getLogger(__name__)

#: A job assigned longer ago than this without confirmation is published again.
REPUBLISH_AFTER = 60


def run_once(runtime: Runtime) -> int:
    """One cycle: republish stranded jobs, match new ones, publish; returns jobs queued."""
    queued = _publish(runtime, _stranded(runtime))
    assigned = _match(runtime)
    return queued + _publish(runtime, assigned)


def _stranded(runtime: Runtime) -> list[Job]:
    # left assigned by a crash or a broker outage between match and confirm
    with Session(runtime.engine) as session:
        return list(session.exec(select(Job).where(
            Job.state == JobState.ASSIGNED, col(Job.updated_at) < ago(REPUBLISH_AFTER))).all())


def _match(runtime: Runtime) -> list[Job]:
    """Assign defined jobs to sites with room, highest priority first."""
    with transaction(runtime.engine) as session:
        room = _room(session, runtime)
        if not any(room.values()):
            return []
        eligible = _eligible_sites(session, runtime)
        candidates = session.exec(
            select(Job).join(Production, col(Production.id) == Job.production_id)
            .where(Job.state == JobState.DEFINED, Production.state == "active",
                   or_(col(Job.not_before).is_(None), col(Job.not_before) <= utcnow()))
            .order_by(col(Job.priority).desc(), col(Job.id))
            .limit(runtime.config.loops.batch_size)
            .with_for_update(skip_locked=True, of=Job)
        ).all()
        by_site: dict[str, list[int]] = defaultdict(list)
        for job in candidates:
            site = _choose(room, eligible.get(job.production_id, []), job.queue)
            if site is not None:
                by_site[site].append(job.id)  # type: ignore[arg-type]
                room[(site, job.queue)] -= 1
        moved: list[int] = []
        for site, job_ids in by_site.items():
            moved += move_jobs(session, job_ids, JobState.DEFINED, JobState.ASSIGNED,
                               f"matched to site {site}", site=site, attempt=Job.attempt + 1,
                               message=None)
        if not moved:
            return []
        # the bulk update bypassed the identity map: read the rows afresh
        return list(session.exec(select(Job).where(col(Job.id).in_(moved))
                                 .execution_options(populate_existing=True)).all())


def _room(session: Session, runtime: Runtime) -> dict[tuple[str, str], int]:
    """Free places in each enabled site queue's backlog."""
    rows = session.exec(
        select(Job.site, Job.queue, func.count()).where(col(Job.state).in_(JOB_AT_SITE))
        .group_by(col(Job.site), col(Job.queue))).all()
    waiting = {(site, queue): count for site, queue, count in rows}
    return {
        (name, queue): max(site.backlog_limit - waiting.get((name, queue), 0), 0)
        for name, site in runtime.config.sites.items() if site.enabled
        for queue in site.queues
    }


def _eligible_sites(session: Session, runtime: Runtime) -> dict[int, list[str]]:
    """For each active production, the enabled sites it allows."""
    enabled = [name for name, site in runtime.config.sites.items() if site.enabled]
    result: dict[int, list[str]] = {}
    for production_id, spec in session.exec(
            select(Production.id, Production.spec).where(Production.state == "active")).all():
        allowed = spec.get("sites") or enabled
        assert production_id is not None
        result[production_id] = [site for site in enabled if site in allowed]
    return result


def _choose(room: dict[tuple[str, str], int], sites: list[str], queue: str) -> str | None:
    """The allowed site with the most room for this queue (spreads work across sites)."""
    best = max(sites, key=lambda site: room.get((site, queue), 0), default=None)
    return best if best is not None and room.get((best, queue), 0) > 0 else None


def _publish(runtime: Runtime, jobs: list[Job]) -> int:
    """Publish each job's message, then record it as queued (after the confirm)."""
    by_queue: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_queue[queue_name(job.site or "", job.queue)].append(job)
    walltimes = _walltimes(runtime, {job.production_id for job in jobs})
    queued = 0
    for queue, members in by_queue.items():
        messages = [Message(job=job.id, attempt=job.attempt,  # type: ignore[typeddict-item]
                            walltime=walltimes[job.production_id]) for job in members]
        runtime.broker.publish(queue, messages)
        with transaction(runtime.engine) as session:
            queued += len(move_jobs(session, [job.id for job in members],  # type: ignore[misc]
                                    JobState.ASSIGNED, JobState.QUEUED, f"published to {queue}"))
        log.info("published queue=%s jobs=%d", queue, len(members))
    return queued


def _walltimes(runtime: Runtime, production_ids: set[int]) -> dict[int, Any]:
    if not production_ids:
        return {}
    with Session(runtime.engine) as session:
        rows = session.exec(select(Production.id, Production.spec).where(
            col(Production.id).in_(production_ids))).all()
    return {production_id: spec["walltime"] for production_id, spec in rows
            if production_id is not None}
