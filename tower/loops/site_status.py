"""What each site queue holds right now: pilots (active, and ended in the last day),
jobs waiting in the database, the backlog at the site and its bound, the broker's own
count of messages, the last error the factory met there, a cool-down if the site is
out of brokering, and the credential the tower shows its batch system (arc: the robot
and the proxy delegated to the CE, with their lifetimes).

The credential is the monitor's last read (`read_credentials`, a `siteread` row a site):
a listing asks no site, and answers at once while a CE is down. `live` reads it anew."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from catalog.timeutil import ago, utcnow
from tower.errors import BackendError
from tower.loops import factory, health
from tower.loops.matchmaker import backlog, backlog_bounds, broker_depths
from tower.model import fleet
from tower.model.db import transaction
from tower.model.models import SiteQueue, SiteRead
from tower.model.states import PilotState
from tower.runtime import Runtime

#: Pilots that ended within this many seconds are counted (done, lost).
RECENT = 24 * 3600


def site_queues(runtime: Runtime, live: bool = False
                ) -> tuple[list[dict[str, Any]], str | None]:
    """One row per site queue, and why the broker could not be read (None if it could);
    the credential as the monitor last read it, or read now when `live`."""
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
            credential = (_credential(runtime, name) if live
                          else _last_read(session.get(SiteRead, name)))
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


def read_credentials(runtime: Runtime) -> None:
    """Record each site's credential as its batch system shows it now (the monitor's
    cycle): kept when a read fails, with the error beside it; after a failure, the site
    is read again once its `error_pause` has passed, not every cycle. The sites are read
    outside the transaction that records them."""
    sites = runtime.config.sites
    with Session(runtime.engine) as session:
        paused = {site for site, error_at in session.exec(select(SiteRead.site, SiteRead.error_at))
                  if site in sites and error_at is not None
                  and error_at > ago(sites[site].limits.error_pause)}
    read: dict[str, tuple[str | None, str | None]] = {}
    for name in sites:
        if name not in paused:
            try:
                read[name] = (runtime.batch_system(name).credential(), None)
            except BackendError as exc:
                read[name] = (None, str(exc)[:1000])
    now = utcnow()
    with transaction(runtime.engine) as session:
        for name, (credential, error) in read.items():
            row = session.get(SiteRead, name) or SiteRead(site=name)
            if error is None:
                row.credential, row.read_at, row.error, row.error_at = credential, now, None, None
            else:
                row.error, row.error_at = error, now
            session.add(row)


def _last_read(row: SiteRead | None) -> str | None:
    """The credential as last read, with when, and the last read's error if it failed."""
    if row is None:
        return None
    text = (f"{row.credential} (read {row.read_at:%Y-%m-%d %H:%M:%S} UTC)"
            if row.credential and row.read_at else "")
    if row.error and row.error_at:
        failed = f"refused at {row.error_at:%Y-%m-%d %H:%M:%S} UTC: {row.error}"
        text = f"{text}; {failed}" if text else failed
    return text or None


def _credential(runtime: Runtime, site: str) -> str | None:
    """What the tower shows a batch system to be (a robot, a proxy and their lifetimes), or
    why the batch system refuses it."""
    try:
        return runtime.batch_system(site).credential()
    except BackendError as exc:
        return f"refused: {exc}"
