"""The kept job counters: exact as jobs move, folded without losing a delta (also while
another process writes), and recounted for a database made before they existed."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from alembic import command
from sqlalchemy import func, text
from sqlmodel import Session, col, select

from catalog.timeutil import utcnow
from tests.conftest import write_home
from tests.integration.conftest import assert_tally_matches, toy_production
from tower.config import load_config
from tower.management import productions, progress
from tower.model import migrate, tally
from tower.model.db import transaction
from tower.model.models import Job, JobTally
from tower.model.states import JobState, move_jobs
from tower.runtime import Runtime


def _runtime(tmp_path: Path, database_url: str, jobs: int = 300) -> Runtime:
    runtime = Runtime.open(load_config(write_home(tmp_path / "home", database_url)))
    with transaction(runtime.engine) as session:
        for item in productions.plan(session, toy_production(tmp_path, jobs=jobs, events=7),
                                     runtime.config):
            productions.create(session, item)
    return runtime


def _ids(session: Session, state: JobState, limit: int) -> list[int]:
    return [job_id for job_id in session.exec(select(Job.id).where(Job.state == state)
                                               .order_by(col(Job.id)).limit(limit)).all()
            if job_id is not None]


def test_counts_follow_every_move_and_survive_folding(tmp_path: Path, database_url: str) -> None:
    runtime = _runtime(tmp_path, database_url)
    path = [JobState.ASSIGNED, JobState.QUEUED, JobState.RUNNING, JobState.STAGING,
            JobState.DONE]
    with transaction(runtime.engine) as session:
        previous = JobState.DEFINED
        for size, state in zip((200, 150, 120, 90, 60), path, strict=True):
            move_jobs(session, _ids(session, previous, size), previous, state, "test")
            previous = state
        # a move of jobs that are not in the source state moves nothing and counts nothing
        move_jobs(session, _ids(session, JobState.DONE, 10), JobState.RUNNING,
                  JobState.STAGING, "stale")
    with Session(runtime.engine) as session:
        [counts] = productions.state_counts(session).values()
    assert counts == {"defined": 100, "assigned": 50, "queued": 30, "running": 30,
                      "staging": 30, "done": 60}
    assert_tally_matches(runtime.engine)
    with Session(runtime.engine) as session:
        [states] = tally.counts(session).values()
    assert states["done"] == tally.Count(60, 60 * 7)
    with transaction(runtime.engine) as session:
        removed = tally.compact(session)
    assert removed > 0
    with Session(runtime.engine) as session:
        rows = session.exec(select(func.count()).select_from(JobTally)).one()
        assert rows == 6  # one row per state with jobs
        [done] = [point for point in tally.activity(session) if point.kind == tally.DONE]
        assert (done.count, done.events) == (60, 420)
    assert_tally_matches(runtime.engine)
    with transaction(runtime.engine) as session:
        assert tally.compact(session) == 0  # nothing left to fold


def test_folding_while_jobs_move_loses_nothing(tmp_path: Path, postgres_url: str) -> None:
    """One thread moves jobs back and forth in many small transactions while another
    folds the deltas: the counts still match the jobs table exactly."""
    runtime = _runtime(tmp_path, postgres_url, jobs=400)
    stop = threading.Event()
    folded: list[int] = []

    def fold() -> None:
        while not stop.is_set():
            with transaction(runtime.engine) as session:
                folded.append(tally.compact(session))

    folder = threading.Thread(target=fold)
    folder.start()
    try:
        for round_ in range(30):
            with transaction(runtime.engine) as session:
                ids = _ids(session, JobState.DEFINED, 40 + round_)
                move_jobs(session, ids, JobState.DEFINED, JobState.HELD, "hold")
            with transaction(runtime.engine) as session:
                move_jobs(session, ids[::2], JobState.HELD, JobState.DEFINED, "release")
    finally:
        stop.set()
        folder.join(timeout=60)
    assert sum(folded) > 0
    assert_tally_matches(runtime.engine)


def test_a_database_from_before_the_tally_is_recounted(tmp_path: Path,
                                                        database_url: str) -> None:
    runtime = _runtime(tmp_path, database_url, jobs=50)
    with transaction(runtime.engine) as session:
        move_jobs(session, _ids(session, JobState.DEFINED, 20), JobState.DEFINED,
                  JobState.CANCELLED, "test")
    with runtime.engine.connect() as connection:
        if connection.dialect.name == "sqlite":  # batch ALTERs copy tables; outside a transaction
            connection.connection.driver_connection.execute(  # type: ignore[union-attr]
                "PRAGMA foreign_keys=OFF")
        with connection.begin():
            # the schema of the last release before migrations (0001), without its tally
            command.downgrade(migrate.config(connection), "0001")
            connection.execute(text("DROP TABLE jobtally"))
            connection.execute(text("DROP TABLE alembic_version"))
    migrate.upgrade(runtime.engine, "the test's")
    with Session(runtime.engine) as session:
        assert productions.state_counts(session) == {1: {"defined": 30, "cancelled": 20}}
    assert_tally_matches(runtime.engine)


def test_pace_is_the_last_hours_jobs_and_the_completion_follows_from_it(
        tmp_path: Path, database_url: str) -> None:
    runtime = _runtime(tmp_path, database_url, jobs=10)
    now = utcnow()
    with transaction(runtime.engine) as session:
        moved = [(1, 7, "local", "default", "local", "default")]
        tally.jobs_moved(session, moved * 30, JobState.STAGING, JobState.DONE,
                         now - timedelta(hours=2))
        tally.jobs_moved(session, moved * 20, JobState.STAGING, JobState.DONE,
                         now - timedelta(minutes=10))
        for hours in (3, 30):  # the second is older than a day
            tally.attempt_ended(session, 1, "local", "exit_code", 3, 7,
                                now - timedelta(hours=hours))
        tally.attempt_ended(session, 1, "local", "success", 0, 7, now)
    with Session(runtime.engine) as session:
        pace = progress.paces(session, {1: {"done": 50, "defined": 40, "running": 10}}, now)[1]
        idle = progress.paces(session, {2: {"defined": 5}}, now)[2]
    assert pace.done_last_hour == 20
    assert pace.failed_last_day == 1
    assert pace.eta == now + timedelta(hours=50 / 20)
    assert idle == progress.Pace(0, 0, None)
    assert progress.phase("active", {"done": 3, "failed": 1}) == "finished"
    assert progress.phase("active", {"done": 3, "held": 1}) == "active"
    assert progress.phase("paused", {"defined": 3}) == "paused"


def test_placed_jobs_are_counted_per_site_and_queue_through_every_move(
        tmp_path: Path, database_url: str) -> None:
    from tests.integration.conftest import placed_jobs
    from tower.loops.matchmaker import backlog

    runtime = _runtime(tmp_path, database_url, jobs=100)
    with transaction(runtime.engine) as session:
        # Given jobs matched to two sites, some queued and running there
        move_jobs(session, _ids(session, JobState.DEFINED, 60), JobState.DEFINED,
                  JobState.ASSIGNED, "test", site="a")
        move_jobs(session, _ids(session, JobState.DEFINED, 30), JobState.DEFINED,
                  JobState.ASSIGNED, "test", site="b")
        move_jobs(session, _ids(session, JobState.ASSIGNED, 50), JobState.ASSIGNED,
                  JobState.QUEUED, "test")
        move_jobs(session, _ids(session, JobState.QUEUED, 20), JobState.QUEUED,
                  JobState.RUNNING, "test")
        # When some are taken back from their site (their site cleared in the same move),
        # and some taken back to be matched again elsewhere
        move_jobs(session, _ids(session, JobState.QUEUED, 10), JobState.QUEUED,
                  JobState.DEFINED, "recalled", site=None)
        move_jobs(session, _ids(session, JobState.RUNNING, 5), JobState.RUNNING,
                  JobState.DEFINED, "lost", site=None)
        move_jobs(session, _ids(session, JobState.DEFINED, 12), JobState.DEFINED,
                  JobState.ASSIGNED, "again", site="b")
        # Then the tally says where they are, in the transaction and after it
        assert tally.placed(session) == placed_jobs(session)
    with Session(runtime.engine) as session:
        assert tally.placed(session) == placed_jobs(session)
        assert sum(tally.placed(session).values()) == sum(
            n for state, n in productions.state_counts(session)[1].items()
            if state in ("assigned", "queued", "running", "staging"))
        held = backlog(session)
        assert held == {key: n for key, n in {
            ("a", "default"): sum(n for (_, site, _, state), n in placed_jobs(session).items()
                                  if site == "a" and state in ("assigned", "queued")),
            ("b", "default"): sum(n for (_, site, _, state), n in placed_jobs(session).items()
                                  if site == "b" and state in ("assigned", "queued")),
        }.items() if n}
        tally.compact(session)
        assert tally.placed(session) == placed_jobs(session)
    runtime.close()
