"""A production's jobs are written in bulk (COPY on PostgreSQL, executemany on SQLite), the
same rows either way, and all of them or none."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func
from sqlmodel import Session, select

from catalog.models import Dataset
from tests.conftest import write_home
from tests.integration.conftest import toy_production
from tower.config import load_config
from tower.management import productions
from tower.model.db import insert_rows, transaction
from tower.model.models import Job, JobTally, Production
from tower.model.states import JobState
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


def _submit(url: str, directory: Path, jobs: int, **extra: Any) -> Runtime:
    runtime = Runtime.open(load_config(write_home(directory / "home", url)))
    with transaction(runtime.engine) as session:
        productions.submit(session, productions.plan(
            session, toy_production(directory, jobs=jobs, events=7, **extra),
            runtime.config), dry_run=False)
    return runtime


def _jobs(runtime: Runtime) -> list[tuple[Any, ...]]:
    """Every job's columns but its id and times."""
    table = Job.__table__
    kept = [column for column in table.columns
            if column.name not in ("id", "created_at", "updated_at")]
    with Session(runtime.engine) as session:
        return [tuple(row) for row in session.execute(select(*kept).order_by(table.c.index))]


def test_copy_makes_the_rows_executemany_makes(tmp_path: Path, postgres_url: str) -> None:
    # Given one request (its last job smaller, its queue and priority its own)
    extra = {"priority": 7, "queue": "long", "seed_base": 1000}
    # When it is submitted to PostgreSQL (COPY) and to SQLite (executemany)
    copied = _submit(postgres_url, tmp_path / "pg", 25_001, **extra)
    executed = _submit(f"sqlite:///{tmp_path / 'tower.db'}", tmp_path / "lite", 25_001,
                       **extra)
    # Then both hold the same jobs, column by column, and the same counts
    rows = _jobs(copied)
    assert rows == _jobs(executed) and len(rows) == 25_001
    assert [productions.state_counts(Session(runtime.engine))
            for runtime in (copied, executed)] == [{1: {"defined": 25_001}}] * 2
    copied.close()
    executed.close()


@pytest.mark.parametrize("value", ["tab\there", "new\nline\r", "back\\slash \\N", "", None])
def test_insert_rows_keeps_every_value_as_given(tmp_path: Path, database_url: str,
                                                value: str | None) -> None:
    runtime = _submit(database_url, tmp_path, 1)
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    with transaction(runtime.engine) as session:
        insert_rows(session, Job, ["production_id", "index", "seed", "first_event", "events",
                                   "state", "message", "avoid_sites", "not_before"],
                    [(1, 5, 2**40, 0, 1, JobState.HELD, value,
                      None if value is None else [value, {"k": value}], when)],
                    {"only_site": value})
    with Session(runtime.engine) as session:
        job = session.exec(select(Job).where(Job.index == 5)).one()
    assert (job.seed, job.state, job.message, job.only_site) == (2**40, "held", value, value)
    assert job.avoid_sites == (None if value is None else [value, {"k": value}])
    assert job.not_before is not None and job.not_before.replace(tzinfo=UTC) == when
    runtime.close()


#: A trigger that fails the insert of one job, as a full disk or a lost connection would.
FAIL_ON_INDEX = {
    "postgresql": ["""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                      BEGIN IF NEW.index = 25000 THEN RAISE EXCEPTION 'refused'; END IF;
                      RETURN NEW; END $$""",
                   "CREATE TRIGGER refuse BEFORE INSERT ON job FOR EACH ROW "
                   "EXECUTE FUNCTION refuse()"],
    "sqlite": ["CREATE TRIGGER refuse BEFORE INSERT ON job WHEN NEW.\"index\" = 25000 "
               "BEGIN SELECT RAISE(ABORT, 'refused'); END"],
}


def test_a_submit_failing_midway_leaves_nothing(tmp_path: Path, database_url: str) -> None:
    # Given a database that refuses the 25,001st job of a production (two chunks in)
    runtime = Runtime.open(load_config(write_home(tmp_path / "home", database_url)))
    with runtime.engine.begin() as connection:
        for statement in FAIL_ON_INDEX[runtime.engine.dialect.name]:
            connection.exec_driver_sql(statement)
    # When a production of 30,000 jobs is submitted
    # (the driver's error on PostgreSQL, whose COPY is the driver's own)
    with pytest.raises(Exception, match="refused"), transaction(runtime.engine) as session:
        productions.submit(session, productions.plan(
            session, toy_production(tmp_path, jobs=30_000, events=7), runtime.config),
            dry_run=False)
    # Then nothing of it was written: no production, dataset, job or count
    with Session(runtime.engine) as session:
        for model in (Production, Dataset, Job, JobTally):
            assert session.exec(select(func.count()).select_from(model)).one() == 0, model
    runtime.close()
