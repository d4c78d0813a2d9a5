"""The tower's own absence, told apart from its pilots' silence.

A pilot's heartbeat can only arrive while the tower's API serves. A tower
stopped for longer than `monitor.heartbeat_timeout` would otherwise come back
to find every pilot "silent" and write off healthy work. So each serving tower
process refreshes one row every few seconds; a refresh that finds the last one
older than the gap tolerance starts a new unbroken stretch (`since`, pushed on by
the time a pilot's retry delay may take to notice the tower is back). Time
counts towards a deadline (heartbeat, claim) only from the later of the event
and `since`: a gap in the record, whoever's tower it was, extends everyone's
deadline, and a tower just started gives its pilots a full timeout to be heard.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from catalog.timeutil import utcnow
from pilots.backoff import Backoff
from tower.config import TowerConfig
from tower.model.db import insert_missing, transaction
from tower.model.models import Presence
from tower.runtime import Runtime

log = logging.getLogger(__name__)

#: The row of the API's presence.
API = "api"
#: Seconds between two refreshes by one serving process.
REFRESH = 1.0


def tolerance(config: TowerConfig) -> float:
    """The longest gap between refreshes that is not an absence: a few refreshes late is a
    busy database, but never as long as half the heartbeat timeout."""
    monitor = config.monitor
    return min(monitor.heartbeat_timeout / 2, max(5 * REFRESH, monitor.heartbeat_interval))


def refresh(session: Session, config: TowerConfig) -> datetime:
    """Record that the API serves now; returns the start of its unbroken stretch."""
    now = utcnow()
    record = locked(session, API, now)
    gap = now - aware(record.seen)
    if gap > timedelta(seconds=tolerance(config)):
        # a pilot that kept trying waits out its retry delay (doubling up to a ceiling)
        # before it tries again: its first heartbeat may come that much after the return
        record.since = now + min(gap, timedelta(seconds=Backoff().maximum))
        log.warning("the tower's API was not serving from %s to %s UTC: heartbeats and "
                    "claims are counted from %s", f"{record.seen:%H:%M:%S}",
                    f"{now:%H:%M:%S}", f"{record.since:%H:%M:%S}")
    record.seen = now
    session.add(record)
    return aware(record.since)


def locked(session: Session, name: str, when: datetime) -> Presence:
    """Presence row `name`, made (seen and since `when`) if missing, locked till commit."""
    insert_missing(session, Presence, name=name, since=when, seen=when)
    record = session.get(Presence, name, with_for_update=True)
    assert record is not None
    return record


def deadline(session: Session, config: TowerConfig, seconds: float) -> datetime | None:
    """The cut-off for an event to be `seconds` overdue of listening time: events before it
    are overdue; None when the API has not served `seconds` without a break, or is not
    serving now (nothing is overdue then). A tower whose API never recorded its presence
    (one served by other means) counts plain time."""
    record = session.get(Presence, API)
    now = utcnow()
    cutoff = now - timedelta(seconds=seconds)
    if record is None:
        return cutoff
    serving = now - aware(record.seen) <= timedelta(seconds=tolerance(config))
    return cutoff if serving and aware(record.since) <= cutoff else None


def keep(runtime: Runtime, stop: threading.Event) -> threading.Thread:
    """Refresh the API's presence every REFRESH seconds until `stop` is set."""
    def spin() -> None:
        while not stop.is_set():
            try:
                with transaction(runtime.engine) as session:
                    refresh(session, runtime.config)
            except Exception:  # the thread's boundary: log, try again
                log.exception("presence not recorded")
            stop.wait(REFRESH)

    thread = threading.Thread(target=spin, name="presence", daemon=True)
    thread.start()
    return thread


def aware(moment: datetime) -> datetime:
    """`moment` with its time zone, UTC when the database left it out."""
    # SQLite hands back naive datetimes (stored as UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
