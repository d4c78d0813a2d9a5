"""The monitor loop: follow pilots in their batch systems, find lost work, watch site health.

Work is lost four ways, and each lost attempt goes to the retry policy:
a pilot whose batch job ended without a goodbye leaves its unfinished
attempts with the outcome the batch system gives (preempted, node failure,
out of memory, pilot killed, or pilot vanished); a registered pilot silent
for longer than the heartbeat timeout (hung, or killed under a wrapper that
keeps its batch job alive) is lost and cancelled, so it holds no slot, and
its attempts are lost_heartbeat, as is any attempt whose own heartbeat is
that old; a job queued at a site that no pilot claimed within
`monitor.claim_timeout` is claim_timeout. Silence and waiting count only while
the tower's API was serving (tower.loops.presence): a tower that was away does not
blame its pilots for it.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from sqlmodel import Session

from sites.batch import BatchState, BatchStatus
from tower.errors import BackendError
from tower.loops import attempt_logs, health, presence, site_status
from tower.model import fleet, history, tally
from tower.model.db import transaction
from tower.retries import retry
from tower.retries.outcomes import Outcome
from tower.runtime import Runtime

log = logging.getLogger(__name__)


def run_once(runtime: Runtime) -> dict[str, int]:
    """One cycle; returns how many pilots and attempts it found lost, and sites cooled."""
    pilots_lost, orphaned = _sync_pilots(runtime)
    silenced, abandoned = _lose_silent_pilots(runtime)
    pilots_lost += silenced
    orphaned += abandoned
    with transaction(runtime.engine) as session:
        monitor = runtime.config.monitor
        heard = presence.deadline(session, runtime.config, monitor.heartbeat_timeout)
        silent = retry.lose_silent(session, runtime.config, heard) if heard else []
        claimable = presence.deadline(session, runtime.config, monitor.claim_timeout)
        unclaimed = (retry.time_out_claims(session, runtime.config, claimable)
                     if claimable else [])
        cooled = health.evaluate(session, runtime.config)
    # what `tower sites` shows of each site's credential, so a listing asks no site
    site_status.read_credentials(runtime)
    with transaction(runtime.engine) as session:
        tally.compact(session)
        history.coarsen(session, runtime.config.monitor.history_days)
        attempt_logs.prune(session, runtime)
    # each attempt's line, with its production, job and attempt, is the policy's decision
    if silent:
        log.warning("%d attempts lost: no heartbeat for %ss", len(silent),
                    runtime.config.monitor.heartbeat_timeout)
    if unclaimed:
        log.warning("%d jobs not claimed within %ss", len(unclaimed),
                    runtime.config.monitor.claim_timeout)
    return {"pilots_lost": pilots_lost, "attempts_lost": orphaned + len(silent),
            "claims_timed_out": len(unclaimed), "sites_cooled": len(cooled)}


def lost_outcome(status: BatchStatus) -> Outcome:
    """The class of the attempts a pilot left unfinished, from how its batch job ended."""
    try:
        return Outcome(status.outcome or Outcome.PILOT_VANISHED)
    except ValueError:
        return Outcome.PILOT_VANISHED


def _sync_pilots(runtime: Runtime) -> tuple[int, int]:
    with Session(runtime.engine) as session:
        by_site: dict[str, dict[str, str]] = defaultdict(dict)
        for pilot in fleet.active(session):
            if pilot.batch_id and pilot.site in runtime.config.sites:
                by_site[pilot.site][pilot.batch_id] = pilot.id
    lost = orphaned = 0
    for site, pilots in by_site.items():
        try:
            statuses = runtime.batch_system(site).statuses(list(pilots))
        except BackendError as exc:
            # a site out of reach ends none of its pilots; the others are still read
            log.warning("site=%s: pilot states unknown: %s", site, exc)
            continue
        ended = {batch_id: status for batch_id, status in statuses.items()
                 if status.state is BatchState.ENDED}
        for batch_id, status in ended.items():
            why = status.reason or (f"exit code {status.exit_code}"
                                    if status.exit_code is not None else "gone")
            message = f"batch job {batch_id} ended ({why}) without a goodbye"
            with transaction(runtime.engine) as session:
                if not fleet.lose(session, [pilots[batch_id]], message):
                    continue
                jobs = retry.lose_pilot_work(session, runtime.config, pilots[batch_id],
                                             lost_outcome(status), message)
            lost += 1
            orphaned += len(jobs)
            log.warning("site=%s pilot=%s lost: %s; its jobs %s go to the retry policy",
                        site, pilots[batch_id], message, jobs or "(none)")
    return lost, orphaned


def _lose_silent_pilots(runtime: Runtime) -> tuple[int, int]:
    timeout = runtime.config.monitor.heartbeat_timeout
    message = f"no heartbeat for {timeout}s: written off and cancelled"
    with transaction(runtime.engine) as session:
        heard = presence.deadline(session, runtime.config, timeout)
        silent = fleet.silent(session, heard) if heard else []
        lost = set(fleet.lose(session, [pilot.id for pilot in silent], message))
        orphaned = sum(len(retry.lose_pilot_work(session, runtime.config, pilot_id,
                                                 Outcome.LOST_HEARTBEAT, message))
                       for pilot_id in lost)
    by_site: dict[str, list[str]] = defaultdict(list)
    for pilot in silent:
        if pilot.id in lost and pilot.batch_id and pilot.site in runtime.config.sites:
            by_site[pilot.site].append(pilot.batch_id)
            log.warning("site=%s pilot=%s lost: %s", pilot.site, pilot.id, message)
    for site, batch_ids in by_site.items():
        runtime.batch_system(site).cancel(batch_ids)
    return len(lost), orphaned
