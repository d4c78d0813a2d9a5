"""The database-queue broker: messages in a table of the tower's own database.

The embedded default. Pilots cannot reach the database, so they take messages
through the tower's HTTP API, which calls `lease` / `ack` / `release` here.
A lease expires: a message taken by a pilot that died returns to the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, delete, func, insert, or_, update
from sqlmodel import Session, col, select

from catalog.timeutil import later, utcnow
from tower.brokers.broker import Message, MessageKey, PilotSource
from tower.errors import ConfigError
from tower.model.db import transaction
from tower.model.models import QueueMessage


class DatabaseQueue:
    """Implements `Broker` over the QueueMessage table."""

    def __init__(self, url: str, engine: Engine, options: dict[str, Any], source: str) -> None:
        if options:
            raise ConfigError(f"{source}: broker_options.{sorted(options)[0]}: the database "
                              "queue takes no options", field="broker_options")
        self.engine = engine

    def publish(self, queue: str, messages: list[Message]) -> None:
        if not messages:
            return
        with transaction(self.engine) as session:
            session.execute(insert(QueueMessage),
                            [{"queue": queue, "body": dict(message)} for message in messages])

    def depth(self, queue: str) -> int | None:
        with Session(self.engine) as session:
            return session.exec(select(func.count()).select_from(QueueMessage).where(
                QueueMessage.queue == queue, _available())).one()

    def discard(self, queue: str, stale: Callable[[list[Message]], set[MessageKey]]) -> int:
        with Session(self.engine) as session:
            rows = session.exec(select(QueueMessage.id, QueueMessage.body).where(
                QueueMessage.queue == queue, _available())).all()
        # judged outside the write transaction (which `stale` may not wait for); a message
        # a pilot leased meanwhile is left to its claim
        doomed = stale([body for _, body in rows])  # type: ignore[misc]
        ids = [message_id for message_id, body in rows
               if (body.get("job"), body.get("attempt")) in doomed]
        if not ids:
            return 0
        with transaction(self.engine) as session:
            return session.execute(delete(QueueMessage).where(
                col(QueueMessage.id).in_(ids), _available())).rowcount  # type: ignore[attr-defined]

    def pilot_source(self, queue: str, url: str | None = None) -> PilotSource:
        return PilotSource("http", queue)

    def reach(self, timeout: float) -> None:
        pass  # the queue is a table: reachable when the database is

    def close(self) -> None:
        pass


def lease(session: Session, queue: str, owner: str, limit: int,
          seconds: float) -> list[tuple[int, dict[str, Any]]]:
    """Take up to `limit` available messages of `queue` for `seconds`: [(id, body)]."""
    if limit <= 0:
        return []
    ids = session.exec(
        select(QueueMessage.id).where(QueueMessage.queue == queue, _available())
        .order_by(col(QueueMessage.id)).limit(limit).with_for_update(skip_locked=True)
    ).all()
    if not ids:
        return []
    rows = session.execute(
        update(QueueMessage).where(col(QueueMessage.id).in_(ids))
        .values(leased_until=later(seconds), lease_owner=owner)
        .returning(col(QueueMessage.id), col(QueueMessage.body))
        .execution_options(synchronize_session=False)
    ).all()
    return sorted((row[0], row[1]) for row in rows)


def ack(session: Session, ids: list[int], owner: str) -> None:
    """Remove messages `owner` leased and is done with."""
    if ids:
        session.execute(delete(QueueMessage).where(
            col(QueueMessage.id).in_(ids), col(QueueMessage.lease_owner) == owner))


def release(session: Session, ids: list[int], owner: str) -> int:
    """Return messages `owner` leased but will not handle; returns how many it held (the
    others, another pilot's or no one's, are left as they are)."""
    if not ids:
        return 0
    result = session.execute(
        update(QueueMessage).where(col(QueueMessage.id).in_(ids),
                                   col(QueueMessage.lease_owner) == owner)
        .values(leased_until=None, lease_owner=None)
        .execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _available() -> Any:
    return or_(col(QueueMessage.leased_until).is_(None), col(QueueMessage.leased_until) < utcnow())
