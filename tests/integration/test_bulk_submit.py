"""A 100,000-job production is written in bulk, not one round trip per row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, func
from sqlmodel import Session, select

from tests.conftest import write_home
from tests.integration.conftest import toy_production
from tower.config import load_config
from tower.management import productions
from tower.model.db import transaction
from tower.model.models import Job
from tower.runtime import Runtime


def test_a_100000_job_production_costs_few_statements(tmp_path: Path,
                                                      database_url: str) -> None:
    runtime = Runtime.open(load_config(write_home(tmp_path / "home", database_url)))
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        with transaction(runtime.engine) as session:
            [item] = productions.plan(session, toy_production(tmp_path, jobs=100_000, events=10),
                                      runtime.config)
            productions.create(session, item)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", count)
    job_inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO JOB ")]
    if runtime.engine.dialect.name == "postgresql":
        # the rows go as one COPY stream per batch, past SQLAlchemy's statements
        assert job_inserts == [] and len(statements) <= 50, statements[:60]
    else:
        # one statement per 1000-row batch at most, never one per row
        assert 0 < len(job_inserts) <= 100
    with Session(runtime.engine) as session:
        assert session.exec(select(func.count()).select_from(Job)).one() == 100_000
        assert session.exec(select(func.max(Job.index))).one() == 99_999
    runtime.close()
