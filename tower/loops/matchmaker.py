"""The broker loop: match defined jobs to sites and publish them to the sites' queues.

The database holds every job; a site's broker queue holds at most its
backlog limit, so no job waits at one site while another has free slots
(late binding). A job counts as queued only once the broker confirmed it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import and_, func, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from catalog.timeutil import ago, utcnow
from sites.config import Needs
from tower.brokers.broker import Message, queue_name
from tower.config import TowerConfig
from tower.errors import BackendError
from tower.loops import health, placement
from tower.management import chains
from tower.management.specs import needs_of
from tower.model import jobs as job_rows
from tower.model import tally
from tower.model.db import transaction
from tower.model.models import Job, Pilot, Production
from tower.model.states import (
    JOB_AT_SITE,
    PRODUCTION_RUNNABLE,
    JobState,
    PilotState,
    ProductionState,
    move_jobs,
)
from tower.runtime import Runtime

log = logging.getLogger(__name__)

SiteQueue = tuple[str, str]

#: What publishing a job needs: its message, and the queue it goes to. Read as plain
#: rows, not ORM objects: the loop moves thousands of jobs a second.
TO_PUBLISH: tuple[Any, ...] = (Job.id, Job.attempt, Job.walltime, Job.production_id, Job.site,
                               Job.queue)


@dataclass(frozen=True)
class Placed:
    """A job just matched to a site, ready to publish (the fields of TO_PUBLISH)."""

    id: int
    attempt: int
    walltime: int | None
    production_id: int
    site: str
    queue: str


def run_once(runtime: Runtime) -> int:
    """One cycle: republish stranded and vanished jobs, match new ones, publish; returns
    the jobs queued. While the broker is unreachable nothing is matched, so no job is
    stranded by the outage."""
    try:
        depths = broker_depths(runtime)
    except BackendError as exc:
        log.warning("nothing published this cycle: %s", exc)
        return 0
    queued = _publish(runtime, _stranded(runtime), JobState.ASSIGNED, "published")
    _publish(runtime, _vanished(runtime, depths), JobState.QUEUED,
             "republished (its message was lost)")
    with transaction(runtime.engine) as session:
        _recall(session, runtime)
    with transaction(runtime.engine) as session:
        # jobs of the input files cataloged since the last cycle, matched in this one
        chains.feed_all(session)
    _discard_stale(runtime, depths)
    assigned = _match(runtime)
    return queued + _publish(runtime, assigned, JobState.ASSIGNED, "published")


def broker_depths(runtime: Runtime) -> dict[SiteQueue, int | None]:
    """Messages waiting in the broker for each enabled site queue (None: not known)."""
    return {(name, queue): runtime.broker.depth(queue_name(name, queue))
            for name, queue in backlog_keys(runtime)}


def _stranded(runtime: Runtime) -> list[Any]:
    # left assigned by a crash or a broker outage between match and confirm
    with Session(runtime.engine) as session:
        return list(session.execute(sa_select(*TO_PUBLISH).where(
            col(Job.state) == JobState.ASSIGNED,
            col(Job.updated_at) < ago(runtime.config.loops.republish_after))
            .limit(runtime.config.loops.batch_size)).all())


def _vanished(runtime: Runtime, depths: dict[SiteQueue, int | None]) -> list[Any]:
    """Queued jobs whose messages are gone (a purged queue, a broker that lost it):
    their queue is empty, yet they have waited a while. A copy still in a pilot's
    hands is harmless: the claim decides."""
    empty = [key for key, depth in depths.items() if depth == 0]
    if not empty:
        return []
    with Session(runtime.engine) as session:
        return list(session.execute(sa_select(*TO_PUBLISH).where(
            col(Job.state) == JobState.QUEUED,
            col(Job.updated_at) < ago(runtime.config.loops.republish_after),
            or_(*(and_(col(Job.site) == site, col(Job.queue) == queue) for site, queue in empty)))
            .limit(runtime.config.loops.batch_size)).all())


def _recall(session: Session, runtime: Runtime) -> None:
    """Take back to matching the jobs waiting at a site that cannot have them: those its
    pilots cannot hold (cores, memory or walltime: sites.yaml changed, or a stale message;
    a pilot finding one too long drains at once), and those beyond its backlog bound for
    longer than `republish_after` (its pilots went away: the jobs are free for another
    site). Their messages go stale; `_discard_stale` removes them."""
    config = runtime.config
    held = backlog(session)
    needs = production_needs(session, PRODUCTION_CLAIMED)
    for (name, queue), bound in backlog_bounds(session, runtime).items():
        shape = config.sites[name].pilot
        misfits = _ids(session, Job.site == name, Job.queue == queue,
                       col(Job.state).in_(JOB_AT_SITE), job_rows.misfitting(shape, needs))
        misfits = move_jobs(session, misfits, JOB_AT_SITE, JobState.DEFINED,
                            f"it does not fit site {name}'s pilots ({shape.summary()})",
                            site=None)
        excess = held.get((name, queue), 0) - len(misfits) - bound
        extra = []
        if excess > 0:
            # the last to be matched go first: the lowest priority, the newest
            extra = _ids(session, Job.site == name, Job.queue == queue,
                         Job.state == JobState.QUEUED,
                         col(Job.updated_at) < ago(config.loops.republish_after),
                         order=(col(Job.priority), col(Job.id).desc()), limit=excess)
            extra = move_jobs(session, extra, JobState.QUEUED, JobState.DEFINED,
                              f"site {name}'s backlog over its bound of {bound} (fewer of "
                              "its pilots run now)", site=None)
        # taken back, not taken by pilots: no sign of demand
        runtime.demand.taken_back((name, queue), len(misfits) + len(extra))


def _ids(session: Session, *where: Any, order: tuple[Any, ...] = (),
         limit: int | None = None) -> list[int]:
    """The ids of the jobs that match `where`."""
    query = sa_select(col(Job.id)).where(*where).order_by(*order).limit(limit)
    return [job_id for (job_id,) in session.execute(query).all()]


def _discard_stale(runtime: Runtime, depths: dict[SiteQueue, int | None]) -> None:
    """Remove the messages of jobs no longer waiting at a site queue in that attempt
    (cancelled, taken back, claimed through another copy), where the broker holds more
    messages than jobs wait there: a pilot would skip them, but one too long for it
    would make it drain, and they hide the queue's true depth."""
    with Session(runtime.engine) as session:
        live = backlog(session)
    for (site, queue), depth in depths.items():
        if depth is None or depth <= live.get((site, queue), 0):
            continue
        try:
            gone = runtime.broker.discard(queue_name(site, queue),
                                          partial(_stale, runtime, site))
        except BackendError as exc:
            log.warning("site=%s queue=%s stale messages not removed: %s", site, queue, exc)
            continue
        if gone:
            log.info("site=%s queue=%s removed %d stale messages", site, queue, gone)


def _stale(runtime: Runtime, site: str, messages: list[Message]) -> set[tuple[int, int]]:
    """The (job, attempt) of `messages` whose job is not waiting at `site` in that attempt."""
    keys = {(message["job"], message["attempt"]) for message in messages}
    with Session(runtime.engine) as session:
        current = {(job_id, attempt) for job_id, attempt in session.execute(
            sa_select(col(Job.id), col(Job.attempt)).where(
                col(Job.id).in_({job for job, _ in keys}), col(Job.site) == site,
                col(Job.state).in_(JOB_AT_SITE))).all()}
    return keys - current


def _match(runtime: Runtime) -> list[Placed]:
    """Assign defined jobs to sites with room, highest priority first."""
    with transaction(runtime.engine) as session:
        held = backlog(session)
        room = backlog_room(session, runtime, held)
        if not any(room.values()):
            _refilled(runtime, held, {})
            return []
        needs = production_needs(session)
        eligible = _eligible_sites(session, runtime, needs)
        candidates = _candidates(session, runtime, room, eligible, needs)
        # a job of a production split by inputs goes where its own files are
        own = chains.job_lfns(session, [job.id for job in candidates])
        by_site: dict[str, list[Any]] = defaultdict(list)
        for job in candidates:
            sites = fitting(runtime.config, placed(job, eligible.get(job.production_id, [])),
                            needs[job.production_id].grown(job.memory, job.walltime))
            if job.id in own:
                sites = _holding(session, runtime, own[job.id], sites)
            site = _choose(room, sites, job.queue)
            if site is not None:
                by_site[site].append(job)
                room[(site, job.queue)] -= 1
        moved: set[int] = set()
        for site, jobs in by_site.items():
            moved.update(move_jobs(session, [job.id for job in jobs], JobState.DEFINED,
                                   JobState.ASSIGNED, f"matched to site {site}", site=site,
                                   attempt=Job.attempt + 1, message=None))
        filled: dict[SiteQueue, int] = defaultdict(int)
        for site, jobs in by_site.items():
            for job in jobs:
                filled[(site, job.queue)] += job.id in moved
        _refilled(runtime, held, filled)
        # in the order they were chosen, so sites' queues hand them out in that order
        return [Placed(job.id, job.attempt + 1, job.walltime, job.production_id, site,
                       job.queue)
                for site, jobs in by_site.items() for job in jobs if job.id in moved]


def _candidates(session: Session, runtime: Runtime, room: dict[SiteQueue, int],
                eligible: dict[int, list[str]], needs: dict[int, Needs]) -> list[Any]:
    """Defined jobs of runnable productions to match, in the order they get places: by
    fair share between production groups, then by priority within a group. Each site
    queue with room gets its own candidates, as many as its room, among the jobs it may
    take: jobs pinned to a full site do not keep another site empty."""
    batch = runtime.config.loops.batch_size
    groups = _waiting_groups(session)
    chosen: dict[int, Any] = {}
    for (site, queue), free in room.items():
        allowing = [pid for pid, sites in eligible.items() if site in sites]
        if free <= 0 or not allowing:
            continue
        fits = job_rows.fitting(runtime.config.sites[site].pilot,
                                {pid: needs[pid] for pid in allowing})
        # no more candidates than there are places, each a row read and locked: its room,
        # beyond those another site queue took already (they may be among its own)
        limit = min(batch, free + len(chosen))
        for group in groups if len(groups) > 1 else [None]:
            for job in _defined(session, group, limit,
                                _allowed_at(site, queue, allowing, fits)):
                chosen.setdefault(job.id, job)
    per_group: dict[str, list[Any]] = defaultdict(list)
    for job in sorted(chosen.values(), key=lambda job: (-job.priority, job.id)):
        per_group[job.group].append(job)
    usage = _group_usage(session) if len(per_group) > 1 else {}
    return fair_order(per_group, usage, runtime.config.shares, min(batch, len(chosen)))


def _allowed_at(site: str, queue: str, productions: list[int], fits: Any) -> Any:
    """The defined jobs a site queue may take: of productions allowing it, in its queue,
    not pinned elsewhere, that its pilots hold (`fits`, of `jobs.fitting`)."""
    return and_(col(Job.queue) == queue, col(Job.production_id).in_(productions),
                or_(col(Job.only_site).is_(None), col(Job.only_site) == site), fits)


#: What matching a job needs to know of it.
TO_MATCH: tuple[Any, ...] = (Job.id, Job.attempt, Job.walltime, Job.memory, Job.production_id,
                             Job.queue, Job.only_site, Job.avoid_sites, Job.priority,
                             Production.group)


def _defined(session: Session, group: str | None, limit: int, allowed: Any) -> list[Any]:
    query = (sa_select(*TO_MATCH).join(Production, col(Production.id) == Job.production_id)
             .where(col(Job.state) == JobState.DEFINED, allowed,
                    col(Production.state).in_(PRODUCTION_RUNNABLE),
                    or_(col(Job.not_before).is_(None), col(Job.not_before) <= utcnow())))
    if group is not None:
        query = query.where(col(Production.group) == group)
    return list(session.execute(query.order_by(col(Job.priority).desc(), col(Job.id))
                             .limit(limit)
                             .with_for_update(skip_locked=True, of=Job)).all())


def _waiting_groups(session: Session) -> list[str]:
    """Groups of runnable productions that have defined jobs (from the tally)."""
    counts = tally.counts(session)
    return sorted({group for pid, group in session.exec(
        select(Production.id, Production.group).where(
            col(Production.state).in_(PRODUCTION_RUNNABLE))).all()
        if JobState.DEFINED in counts.get(pid or 0, {})})


def _group_usage(session: Session) -> dict[str, int]:
    """Jobs each group holds at sites or running now."""
    rows = session.exec(
        select(Production.group, func.count()).join(Job, col(Job.production_id) == Production.id)
        .where(col(Job.state).in_([*JOB_AT_SITE, JobState.RUNNING]))
        .group_by(col(Production.group))).all()
    return dict(rows)


def fair_order(per_group: dict[str, list[Any]], usage: dict[str, int],
               shares: dict[str, float], limit: int) -> list[Any]:
    """Interleave each group's jobs (already in priority order) so that each next place
    goes to the group furthest below its share: the least (jobs held + taken) / weight."""
    taken = dict.fromkeys(per_group, 0)
    position = dict.fromkeys(per_group, 0)
    order: list[Any] = []
    while len(order) < limit:
        open_groups = [g for g in per_group if position[g] < len(per_group[g])]
        if not open_groups:
            break
        group = min(open_groups, key=lambda g: ((usage.get(g, 0) + taken[g])
                                                / shares.get(g, 1.0), g))
        order.append(per_group[group][position[group]])
        position[group] += 1
        taken[group] += 1
    return order


def backlog(session: Session) -> dict[SiteQueue, int]:
    """Jobs held at each site queue: assigned or queued, not yet claimed; from the tally
    (a count over the jobs grows with the backlog)."""
    held: dict[SiteQueue, int] = defaultdict(int)
    for (_, site, queue, _), jobs in tally.placed(session, states=JOB_AT_SITE).items():
        if site:
            held[(site, queue)] += jobs
    return dict(held)


def backlog_bounds(session: Session, runtime: Runtime) -> dict[SiteQueue, int]:
    """The bound on each enabled site queue's backlog, from its running pilots' slots."""
    rows = session.exec(
        select(Pilot.site, Pilot.queue, func.sum(Pilot.slots))
        .where(Pilot.state == PilotState.RUNNING).group_by(col(Pilot.site), col(Pilot.queue))
    ).all()
    slots = {(site, queue): int(total or 0) for site, queue, total in rows}
    return {(name, queue): runtime.config.sites[name].backlog_limit(slots.get((name, queue), 0))
            for name, queue in backlog_keys(runtime)}


def backlog_room(session: Session, runtime: Runtime, held: dict[SiteQueue, int]
                 ) -> dict[SiteQueue, int]:
    """Free places in each enabled site queue's backlog (`held`: of `backlog`): below its
    bound, or below twice what its pilots took since the last cycle if that is more
    (tower.loops.demand), capped by the site's `backlog.max` or the loop's batch."""
    room = {}
    for key, static in backlog_bounds(session, runtime).items():
        cap = runtime.config.sites[key[0]].backlog.max or runtime.config.loops.batch_size
        bound = runtime.demand.bound(key, held.get(key, 0), static, cap)
        room[key] = max(bound - held.get(key, 0), 0)
    return room


def _refilled(runtime: Runtime, held: dict[SiteQueue, int],
              filled: dict[SiteQueue, int]) -> None:
    """Tell the demand what each enabled site queue holds after this cycle's matching."""
    for key in backlog_keys(runtime):
        runtime.demand.refilled(key, held.get(key, 0) + filled.get(key, 0))


def backlog_keys(runtime: Runtime) -> list[SiteQueue]:
    """The enabled site queues."""
    return [(name, queue) for name, site in runtime.config.sites.items() if site.enabled
            for queue in site.queues]


#: Productions whose jobs at sites pilots may claim: a paused one's go on.
PRODUCTION_CLAIMED = PRODUCTION_RUNNABLE | {ProductionState.PAUSED}


def production_needs(session: Session, states: Collection[ProductionState] = PRODUCTION_RUNNABLE
                     ) -> dict[int, Needs]:
    """What the jobs of each production in `states` need (before a retry grows them)."""
    return {pid: needs_of(spec) for pid, spec in session.exec(
        select(Production.id, Production.spec).where(
            col(Production.state).in_(states))).all() if pid is not None}


def _eligible_sites(session: Session, runtime: Runtime,
                    needs: dict[int, Needs]) -> dict[int, list[str]]:
    """For each active production, the enabled sites it allows that are not cooling down,
    whose pilots hold its jobs' needs, and, if it reads input data, hold all
    of it (else the data is asked to be staged in to one of them, and no site is eligible
    until it is there)."""
    cooling = health.cooling(session)
    enabled = [name for name, site in runtime.config.sites.items()
               if site.enabled and name not in cooling]
    result: dict[int, list[str]] = {}
    for production_id, spec, inputs in session.exec(
            select(Production.id, Production.spec, Production.inputs)
            .where(col(Production.state).in_(PRODUCTION_RUNNABLE))).all():
        if production_id is None or production_id not in needs:
            continue  # became runnable since `needs` was read: the next cycle has it
        allowed = spec.get("sites") or enabled
        sites = fitting(runtime.config, [site for site in enabled if site in allowed],
                        needs[production_id])
        if inputs:
            holding = placement.holding_sites(session, runtime.config, inputs, sites)
            if not holding and placement.request_stage_in(session, runtime.config, inputs,
                                                          sites) is None:
                log.warning("production=%s: no allowed site has a storage element for its "
                            "inputs (sites.yaml `data`)", spec.get("name"))
            sites = holding
        result[production_id] = sites
    return result


def _holding(session: Session, runtime: Runtime, lfns: list[str], sites: list[str]
             ) -> list[str]:
    """The sites among `sites` that hold every file of `lfns` (when none does, the files
    are asked to be staged in to one, and the job waits)."""
    holding = placement.holding_sites(session, runtime.config, lfns, sites)
    if not holding and sites and placement.request_stage_in(session, runtime.config, lfns,
                                                            sites) is None:
        log.warning("inputs %s: no allowed site has a storage element for them (sites.yaml "
                    "`data`)", lfns[0])
    return holding


def placed(job: Any, sites: list[str]) -> list[str]:
    """The sites the retry policy lets this job's next attempt go to: only the one it
    must stay at, or all but those it failed at (unless that leaves none)."""
    if job.only_site is not None:
        return [site for site in sites if site == job.only_site]
    others = [site for site in sites if site not in (job.avoid_sites or [])]
    return others or sites


def fitting(config: TowerConfig, sites: list[str], needs: Needs) -> list[str]:
    """The sites whose pilots hold a job of `needs`."""
    return [site for site in sites if config.sites[site].pilot.misfit(needs) is None]


def _choose(room: dict[SiteQueue, int], sites: list[str], queue: str) -> str | None:
    """The allowed site with the most room for this queue (spreads work across sites)."""
    best = max(sites, key=lambda site: room.get((site, queue), 0), default=None)
    return best if best is not None and room.get((best, queue), 0) > 0 else None


#: Messages published as one confirmed piece: the loop records one piece as queued while
#: the broker confirms the next, so the two waits overlap.
PIECE = 2500


def _publish(runtime: Runtime, jobs: Sequence[Any], current: JobState, reason: str) -> int:
    """Publish each job's message; once the broker confirmed a piece of a queue's jobs,
    record them as queued. One thread publishes the pieces in turn, in order, while this
    one records those confirmed. A piece the broker refuses is skipped: its jobs stay in
    `current` and wait for the next try (a crash between confirm and record leaves them
    so too: a message published twice is harmless, the claim decides)."""
    by_queue: dict[str, list[Any]] = defaultdict(list)
    for job in jobs:
        by_queue[queue_name(job.site or "", job.queue)].append(job)
    walltimes = _walltimes(runtime, {job.production_id for job in jobs})
    pieces = [(queue, members[start:start + PIECE]) for queue, members in by_queue.items()
              for start in range(0, len(members), PIECE)]
    queued = 0
    with ThreadPoolExecutor(1, thread_name_prefix="publish") as sender:
        sent = [(queue, piece, sender.submit(runtime.broker.publish, queue, [
            Message(job=job.id, attempt=job.attempt,  # type: ignore[typeddict-item]
                    walltime=job.walltime or walltimes[job.production_id]) for job in piece]))
                for queue, piece in pieces]
        for queue, piece, confirmed in sent:
            try:
                confirmed.result()
            except BackendError as exc:
                log.warning("queue=%s: %d jobs not published: %s", queue, len(piece), exc)
                continue
            with transaction(runtime.engine) as session:
                queued += len(move_jobs(session, [job.id for job in piece], current,
                                        JobState.QUEUED, f"{reason} to {queue}"))
            log.info("%s queue=%s jobs=%d", reason, queue, len(piece))
    return queued


def _walltimes(runtime: Runtime, production_ids: set[int]) -> dict[int, Any]:
    if not production_ids:
        return {}
    with Session(runtime.engine) as session:
        rows = session.exec(select(Production.id, Production.spec).where(
            col(Production.id).in_(production_ids))).all()
    return {production_id: spec["walltime"] for production_id, spec in rows
            if production_id is not None}
