"""The log store on SQLite and PostgreSQL: a small log in the database, a bigger one in the
store under the tower's own name, each read back whole; an attempt that ended long ago
refused (times from SQLite come back without their zone); logs past the retention gone."""

from __future__ import annotations

import gzip
import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import Session

from catalog.timeutil import utcnow
from tests.conftest import write_home
from tests.integration.test_reads import production
from tower.config import load_config
from tower.errors import Conflict
from tower.loops import attempt_logs
from tower.model.db import create_schema, make_engine, transaction
from tower.model.models import Attempt, AttemptLog, Job
from tower.model.states import ProductionState


def test_logs_are_kept_read_refused_and_pruned(database_url: str, tmp_path: Path) -> None:
    config = load_config(write_home(tmp_path / "home", database_url, {"pilot": {
        "slots": 1, "log_bytes": 50_000}}, monitor={"logs_in_database": 500}))
    engine = make_engine(database_url)
    create_schema(engine)
    with transaction(engine) as session:
        made = production("p", [], ProductionState.ACTIVE)
        session.add(made)
        session.flush()
        job = Job(production_id=made.id or 0, index=0, seed=1, first_event=0, events=10)
        session.add(job)
        session.flush()
        job_id = job.id or 0
        session.add_all([Attempt(job_id=job_id, number=n, pilot_id="p1", site="local")
                         for n in (1, 2)])
        session.add(Attempt(job_id=job_id, number=3, pilot_id="p1", site="local",
                            ended_at=utcnow() - timedelta(hours=3)))
    small, big = b"short log\n", os.urandom(20_000)  # gzip cannot shrink it
    with transaction(engine) as session:
        attempt_logs.accept(session, config, "p1", job_id, 1, gzip.compress(small), 0)
        attempt_logs.accept(session, config, "p1", job_id, 2, gzip.compress(big), 0)
    with transaction(engine) as session, pytest.raises(Conflict, match="too long ago"):
        attempt_logs.accept(session, config, "p1", job_id, 3, gzip.compress(small), 0)
    with Session(engine) as session:
        assert attempt_logs.read(session, config, job_id, 1) == small
        assert attempt_logs.read(session, config, job_id, 2) == big
        kept = attempt_logs.find(session, job_id)
    assert kept[1].data is not None and kept[1].stored is None
    assert kept[2].stored == f"{job_id}.2.log.gz"
    assert (attempt_logs.store(config) / kept[2].stored).exists()
    with transaction(engine) as session:
        assert attempt_logs.prune(session, config) == 0
        session.execute(update(AttemptLog).values(created_at=utcnow() - timedelta(days=31)))
    with transaction(engine) as session:
        assert attempt_logs.prune(session, config) == 2
    assert list(attempt_logs.store(config).iterdir()) == []
    engine.dispose()
