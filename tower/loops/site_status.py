"""What each site queue holds right now: pilots (active, and ended in the last day),
jobs waiting in the database, the backlog at the site and its bound, the broker's own
count of messages, the last error the factory met there, a cool-down if the site is
out of brokering, and the credential the tower shows its batch system (arc: the robot
and the proxy delegated to the CE, with their lifetimes)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from catalog.timeutil import ago
from tower.errors import BackendError
from tower.loops import factory, health
from tower.loops.matchmaker import backlog, backlog_bounds, broker_depths
from tower.model import fleet
from tower.model.models import SiteQueue
from tower.model.states import PilotState
from tower.runtime import Runtime

#: Pilots that ended within this many seconds are counted (done, lost).
RECENT = 24 * 3600


def site_queues(runtime: Runtime) -> tuple[list[dict[str, Any]], str | None]:
    """One row per site queue, and why the broker could not be read (None if it could)."""
    problem = None
    try:
        depths = broker_depths(runtime)
    except BackendError as exc:
        depths, problem = {}, str(exc)
    rows = []
    with Session(runtime.engine) as session:
        cooling = health.cooling(session)
        held = backlog(session)
        bounds = backlog_bounds(session, runtime)
        for name, site in runtime.config.sites.items():
            credential = _credential(runtime, name)
            for queue in site.queues:
                pilots = fleet.counts(session, name, queue, ended_since=ago(RECENT))
                status = session.get(SiteQueue, (name, queue))
                cool = cooling.get(name)
                rows.append({
                    "site": name, "queue": queue, "batch": site.batch, "enabled": site.enabled,
                    "pilots": {state.value: pilots[state] for state in PilotState},
                    "waiting": factory.waiting(session, site, queue),
                    "backlog": held.get((name, queue), 0),
                    "bound": bounds.get((name, queue)),
                    "broker": depths.get((name, queue)),
                    "last_error": status.last_error if status else None,
                    "last_error_at": status.last_error_at if status else None,
                    "cooling_until": cool.cooldown_until if cool else None,
                    "cooling_reason": cool.reason if cool else None,
                    "credential": credential,
                })
    return rows, problem


def _credential(runtime: Runtime, site: str) -> str | None:
    """What the tower shows a batch system to be (a robot, a proxy and their lifetimes), or
    why the batch system refuses it."""
    try:
        return runtime.batch_system(site).credential()
    except BackendError as exc:
        return f"refused: {exc}"
