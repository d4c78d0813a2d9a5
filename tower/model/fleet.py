"""Pilots in the database: created by the factory, registered by themselves, ended by either."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from catalog.timeutil import utcnow
from sites.config import PilotShape, SiteConfig
from tower.errors import Conflict, NotFound
from tower.model.models import Pilot
from tower.model.states import PILOT_ACTIVE, PilotState, move_pilots


def get(session: Session, pilot_id: str) -> Pilot:
    pilot = session.get(Pilot, pilot_id)
    if pilot is None:
        raise NotFound(f"no pilot {pilot_id!r}", field="pilot")
    return pilot


def active(session: Session, site: str | None = None) -> list[Pilot]:
    query = select(Pilot).where(col(Pilot.state).in_(PILOT_ACTIVE))
    if site is not None:
        query = query.where(Pilot.site == site)
    return list(session.exec(query).all())


def silent(session: Session, since: datetime) -> list[Pilot]:
    """Registered pilots whose last heartbeat is older than `since`."""
    return list(session.exec(select(Pilot).where(
        col(Pilot.state).in_([PilotState.RUNNING, PilotState.DRAINING]),
        col(Pilot.heartbeat_at) < since)).all())


def counts(session: Session, site: str, queue: str,
           ended_since: datetime | None = None) -> Counter[PilotState]:
    """Pilots of one site queue by state: the active ones, and those ended since a time."""
    alive = col(Pilot.state).in_(PILOT_ACTIVE)
    which = alive if ended_since is None else or_(alive, col(Pilot.ended_at) >= ended_since)
    rows = session.exec(select(Pilot.state, func.count()).where(
        Pilot.site == site, Pilot.queue == queue, which).group_by(col(Pilot.state))).all()
    return Counter({PilotState(state): count for state, count in rows})


def listing(session: Session, site: str | None = None, state: str | None = None,
            limit: int = 50) -> list[dict[str, Any]]:
    """The newest pilots first, filtered, as plain rows."""
    query = select(Pilot).order_by(col(Pilot.submitted_at).desc()).limit(limit)
    if site is not None:
        query = query.where(Pilot.site == site)
    if state is not None:
        query = query.where(Pilot.state == state)
    return [pilot.model_dump(mode="json") for pilot in session.exec(query).all()]


def shape(pilot: Pilot, sites: Mapping[str, SiteConfig]) -> PilotShape | None:
    """The shape `pilot` was submitted with (its site's drain margin kept); None when its
    site is gone from sites.yaml."""
    site = sites.get(pilot.site)
    if site is None or pilot.cores is None:
        return site.pilot if site else None
    return site.pilot.model_copy(update={"cores": pilot.cores, "memory": pilot.memory,
                                         "walltime": pilot.walltime})


def register(session: Session, pilot_id: str, host: str | None) -> Pilot:
    """A pilot started at its site and said hello; a lost or ended pilot may not come back."""
    pilot = get(session, pilot_id)
    if pilot.state is PilotState.RUNNING:
        return pilot  # a repeated hello
    if not move_pilots(session, [pilot_id], PilotState.SUBMITTED, PilotState.RUNNING,
                       registered_at=utcnow(), heartbeat_at=utcnow(), host=host):
        raise Conflict(f"pilot {pilot_id} is {pilot.state}; it may not register", field="pilot")
    session.refresh(pilot)
    return pilot


def require_working(session: Session, pilot_id: str) -> Pilot:
    """The pilot, if it may still claim and report work."""
    pilot = get(session, pilot_id)
    if pilot.state not in (PilotState.RUNNING, PilotState.DRAINING):
        raise Conflict(f"pilot {pilot_id} is {pilot.state}", field="pilot")
    return pilot


def beat(session: Session, pilot_id: str) -> None:
    session.execute(update(Pilot).where(col(Pilot.id) == pilot_id)
                    .values(heartbeat_at=utcnow()).execution_options(synchronize_session=False))


def drain(session: Session, pilot_id: str) -> None:
    move_pilots(session, [pilot_id], PilotState.RUNNING, PilotState.DRAINING)


def end(session: Session, pilot_id: str, message: str) -> None:
    """The pilot said goodbye."""
    get(session, pilot_id)
    move_pilots(session, [pilot_id], PILOT_ACTIVE, PilotState.DONE, ended_at=utcnow(),
                message=message[:500])


def lose(session: Session, pilot_ids: list[str], message: str) -> list[str]:
    """The batch system says these ended without a goodbye."""
    return move_pilots(session, pilot_ids, PILOT_ACTIVE, PilotState.LOST, ended_at=utcnow(),
                       message=message[:500])

