"""The production summaries in plain SQL (tower.model.reads), on SQLite and PostgreSQL: the
same answer through the driver's own connection (a local `tower status`) as through an ORM
session (the API, the pages), with each driver's JSON and times read alike."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from catalog.timeutil import utcnow
from tower.errors import NotFound
from tower.management import productions
from tower.model import reads, tally
from tower.model.db import create_schema, make_engine, transaction
from tower.model.models import Job, Output, Production
from tower.model.states import JobState, ProductionState, move_jobs


def production(name: str, destinations: list[str], state: ProductionState) -> Production:
    return Production(name=name, state=state, priority=3, events_total=100, events_per_job=10,
                      dataset=f"{name}-data", template_hash="0" * 64,
                      spec={"name": name, "destinations": destinations}, origins={})


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """Three productions: one with jobs in four states and outputs waiting for two
    destinations, one whose jobs all failed (finished), one paused with no jobs."""
    made = make_engine(database_url)
    create_schema(made)
    with transaction(made) as session:
        waiting = production("decays_2", ["us", "uk"], ProductionState.ACTIVE)
        ended = production("decays_10", [], ProductionState.ACTIVE)
        session.add_all([waiting, ended,
                         production("empty", ["us"], ProductionState.PAUSED)])
        session.flush()
        states = [JobState.DONE, JobState.DONE, JobState.RUNNING, JobState.DEFINED]
        jobs = [Job(production_id=waiting.id or 0, index=i, seed=i, first_event=10 * i,
                    events=10, state=state) for i, state in enumerate(states)]
        jobs += [Job(production_id=ended.id or 0, index=i, seed=i, first_event=10 * i,
                     events=10, state=JobState.FAILED) for i in range(2)]
        session.add_all(jobs)
        session.flush()
        session.add_all([
            # at us already, the copy to uk failed
            Output(job_id=jobs[0].id or 0, attempt=1, name="a", source="/s/a", size=100,
                   adler32="00000001", copied=["us"], last_error="uk: connection refused"),
            # copied nowhere yet
            Output(job_id=jobs[1].id or 0, attempt=1, name="b", source="/s/b", size=50,
                   adler32="00000002"),
            # staged: no longer waiting
            Output(job_id=jobs[1].id or 0, attempt=1, name="c", source="/s/c", size=7,
                   adler32="00000003", staged=True, copied=["us", "uk"]),
        ])
        session.flush()
        tally.rebuild(session)
    yield made
    made.dispose()


def created(engine: Engine, name: str) -> str:
    with Session(engine) as session:
        return productions.get(session, name).created_at.isoformat(timespec="seconds")


def expected(engine: Engine) -> list[dict[str, Any]]:
    return [
        {"outputs_waiting": {"uk": {"outputs": 2, "bytes": 150,
                                    "last_error": "uk: connection refused"},
                             "us": {"outputs": 1, "bytes": 50, "last_error": None}},
         "name": "decays_2", "state": "active", "dataset": "decays_2-data", "phase": "active",
         "priority": 3, "jobs": 4, "states": {"defined": 1, "done": 2, "running": 1},
         "events_total": 100, "events_done": 20, "created_at": created(engine, "decays_2")},
        {"outputs_waiting": {}, "name": "decays_10", "state": "active",
         "dataset": "decays_10-data", "phase": "finished", "priority": 3, "jobs": 2,
         "states": {"failed": 2}, "events_total": 100, "events_done": 0,
         "created_at": created(engine, "decays_10")},
        {"outputs_waiting": {}, "name": "empty", "state": "paused", "dataset": "empty-data",
         "phase": "paused", "priority": 3, "jobs": 0, "states": {}, "events_total": 100,
         "events_done": 0, "created_at": created(engine, "empty")},
    ]


def test_the_driver_s_connection_and_a_session_read_the_same_summaries(
        engine: Engine, database_url: str) -> None:
    connection = reads.connect(database_url)
    try:
        direct = reads.summaries(connection)
        one = reads.summaries(connection, "decays_10")
        with pytest.raises(NotFound, match="no production named 'nothing'"):
            reads.summaries(connection, "nothing")
    finally:
        connection.close()
    with Session(engine) as session:
        through_orm = productions.summaries(session)
    assert direct == through_orm == expected(engine)
    # the keys in the order the API and `status --json` have always written them
    assert [list(row) for row in direct] == [list(row) for row in expected(engine)]
    assert one == [expected(engine)[1]]
    # states in the order of their names (PostgreSQL's hash aggregate had its own order)
    assert list(direct[0]["states"]) == ["defined", "done", "running"]
    # stored as UTC: SQLite keeps text without an offset, PostgreSQL a timestamptz
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", row["created_at"])
               for row in direct)
    assert direct[0]["created_at"] <= utcnow().isoformat()


def test_a_session_s_summaries_count_its_own_unflushed_moves(engine: Engine) -> None:
    with transaction(engine) as session:
        job = Job(production_id=productions.get(session, "empty").id or 0, index=0, seed=1,
                  first_event=0, events=5)
        session.add(job)  # not flushed yet: the read flushes it first, as a query would
        tally.jobs_added(session, job.production_id, 1, 5)
        [row] = productions.summaries(session, "empty")
        assert row["states"] == {"defined": 1}
        move_jobs(session, [job.id or 0], JobState.DEFINED, JobState.HELD, "test")
        [row] = productions.summaries(session, "empty")
        assert row["states"] == {"held": 1}
        session.rollback()
    with Session(engine) as session:
        [row] = productions.summaries(session, "empty")
    assert row["states"] == {}


def test_a_sqlite_file_not_made_yet_reads_empty_and_is_not_made(tmp_path: Path) -> None:
    missing = tmp_path / "tower.db"
    connection = reads.connect(f"sqlite:///{missing}")
    assert connection is None
    assert reads.summaries(connection) == [] and reads.counts(connection) == {}
    with pytest.raises(NotFound, match="no production named 'p'"):
        reads.summaries(connection, "p")
    assert not missing.exists()
