"""A site queue's history stays bounded: one row per minute however often the factory
decides (its decisions summed), folded into one row per hour beyond a week (levels
averaged, decisions summed), gone after `history_days`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import Session, col, select

from tower.model import history
from tower.model.db import create_schema, make_engine, transaction
from tower.model.models import SiteSample

NOW = datetime(2026, 3, 20, 12, 0, 30, tzinfo=UTC)


def test_samples_are_per_minute_then_per_hour_then_gone(database_url: str) -> None:
    engine = make_engine(database_url)
    create_schema(engine)
    with transaction(engine) as session:
        # three decisions in one minute: one row, the last levels, the decisions summed
        for pending, submitted in ((1, 2), (2, 1), (3, 0)):
            history.record(session, "a", "q", pending, 4, 0, submitted, 0, NOW)
        # two minutes of one hour eight days ago, and one sample beyond 90 days
        old = NOW - timedelta(days=8)
        old = old.replace(minute=10)
        history.record(session, "a", "q", 2, 2, 0, 1, 0, old)
        history.record(session, "a", "q", 4, 6, 0, 2, 1, old + timedelta(minutes=1))
        history.record(session, "a", "q", 9, 9, 9, 9, 9, NOW - timedelta(days=91))
    with Session(engine) as session:
        [now] = history.read(session, "a", NOW - timedelta(minutes=5), NOW + timedelta(1))
        assert (now.pending, now.running, now.submitted, now.busy) == (3, 4, 3, 0)
    with transaction(engine) as session:
        assert history.coarsen(session, 90, NOW) == 2  # two minutes into one hour, 91 d
    with Session(engine) as session:
        rows = session.exec(select(SiteSample).order_by(col(SiteSample.at))).all()
        assert [(row.span, row.pending, row.running, row.submitted, row.cancelled)
                for row in rows] == [(3600, 3.0, 4.0, 3, 1), (60, 3.0, 4.0, 3, 0)]
    with transaction(engine) as session:
        assert history.coarsen(session, 90, NOW) == 0  # folded once
    engine.dispose()
