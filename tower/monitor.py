"""The monitor loop: follow pilots in their batch systems, and find attempts gone silent.

A pilot that ended without saying goodbye is lost. An attempt whose
heartbeat is older than the timeout is lost, and goes to the retry policy.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from sqlmodel import Session

from sites.batch import BatchState
from tower import attempts, fleet
from tower.db import transaction
from tower.runtime import Runtime
from tower.timeutil import ago

log = logging.getLogger(__name__)


def run_once(runtime: Runtime) -> dict[str, int]:
    """One cycle; returns how many pilots and attempts it found lost."""
    return {"pilots_lost": _sync_pilots(runtime), "attempts_lost": _lose_silent(runtime)}


def _sync_pilots(runtime: Runtime) -> int:
    with Session(runtime.engine) as session:
        by_site: dict[str, dict[str, str]] = defaultdict(dict)
        for pilot in fleet.active(session):
            if pilot.batch_id and pilot.site in runtime.config.sites:
                by_site[pilot.site][pilot.batch_id] = pilot.id
    lost = 0
    for site, pilots in by_site.items():
        statuses = runtime.batch_system(site).statuses(list(pilots))
        ended = {batch_id: status for batch_id, status in statuses.items()
                 if status.state is BatchState.ENDED}
        if not ended:
            continue
        with transaction(runtime.engine) as session:
            for batch_id, status in ended.items():
                why = status.reason or (f"exit code {status.exit_code}"
                                        if status.exit_code is not None else "gone")
                if fleet.lose(session, [pilots[batch_id]], f"batch job ended ({why}) "
                              "without a goodbye"):
                    lost += 1
                    log.warning("site=%s pilot=%s lost: batch job %s ended (%s)",
                                site, pilots[batch_id], batch_id, why)
    return lost


def _lose_silent(runtime: Runtime) -> int:
    with transaction(runtime.engine) as session:
        jobs = attempts.lose_silent(session, runtime.config,
                                    ago(runtime.config.monitor.heartbeat_timeout))
    for job_id in jobs:
        log.warning("job=%s attempt lost: no heartbeat for %ss", job_id,
                    runtime.config.monitor.heartbeat_timeout)
    return len(jobs)
