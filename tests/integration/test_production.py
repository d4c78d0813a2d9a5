"""A whole production with real local pilot processes, on SQLite and on PostgreSQL."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from catalog.models import CatalogFile, Replica
from pilots.checksums import adler32_file
from tests.integration.conftest import LiveTower, toy_production
from tower.model.models import Attempt, Job, JobEvent, Pilot
from tower.model.states import JobState
from tower.retries.outcomes import Outcome


def test_a_whole_production_ends_done_and_cataloged(live_tower: Callable[..., LiveTower],
                                                    tmp_path: Path) -> None:
    tower = live_tower()
    tower.submit(toy_production(tmp_path, jobs=8))
    tower.drive(tower.all_ended, timeout=120)

    with Session(tower.runtime.engine) as session:
        jobs = session.exec(select(Job)).all()
        assert {job.state for job in jobs} == {JobState.DONE}
        files = session.exec(select(CatalogFile)).all()
        assert sorted(f.job_id for f in files) == sorted(job.id for job in jobs)
        for entry in files:
            [replica] = session.exec(select(Replica).where(Replica.file_id == entry.id)).all()
            stored = Path(replica.url.removeprefix("file://"))
            assert stored.stat().st_size == entry.size
            assert adler32_file(stored) == entry.adler32
            assert entry.meta["seed"] == next(j.seed for j in jobs if j.id == entry.job_id)
        attempts = session.exec(select(Attempt)).all()
        assert len(attempts) == 8
        assert {a.outcome for a in attempts} == {Outcome.SUCCESS}
        assert all(a.exit_code == 0 and a.ended_at for a in attempts)
        # every job walked the table: defined, assigned, queued, running, staging, done
        path = [e.to_state for e in session.exec(select(JobEvent).where(
            JobEvent.job_id == jobs[0].id).order_by(col(JobEvent.id))).all()]
        assert path == [JobState.ASSIGNED, JobState.QUEUED, JobState.RUNNING,
                        JobState.STAGING, JobState.DONE]


def test_a_failing_payload_is_retried_then_failed(live_tower: Callable[..., LiveTower],
                                                  tmp_path: Path) -> None:
    tower = live_tower()
    path = toy_production(tmp_path, jobs=2, retry={"max_attempts": 2})
    path.write_text(path.read_text().replace('"output"', '"fail_probability": 1.0, "output"'))
    tower.submit(path)
    tower.drive(tower.all_ended, timeout=120)

    with Session(tower.runtime.engine) as session:
        assert {job.state for job in session.exec(select(Job)).all()} == {JobState.FAILED}
        attempts = session.exec(select(Attempt)).all()
        assert len(attempts) == 4
        assert {(a.outcome, a.exit_code) for a in attempts} == {(Outcome.EXIT_CODE, 3)}
        assert all("simulated failure" in (a.log_tail or "") for a in attempts)
        assert session.exec(select(CatalogFile)).all() == []


@pytest.mark.one_database
def test_a_pilot_killed_mid_job_is_recovered_once_its_batch_job_is_seen_gone(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    tower = live_tower(site={"pilot": {"slots": 1, "walltime": "10m", "idle_timeout": 3},
                             "limits": {"max_queued": 1, "max_running": 1, "max_per_cycle": 1}})
    tower.submit(toy_production(tmp_path, jobs=2, events=100, sleep=0.05))
    victim = tower.signal_running_pilot(signal.SIGKILL)

    tower.drive(tower.all_ended, timeout=120)
    with Session(tower.runtime.engine) as session:
        assert {job.state for job in session.exec(select(Job)).all()} == {JobState.DONE}
        tries = session.exec(select(Attempt).where(Attempt.job_id == victim.job_id)
                             .order_by(col(Attempt.number))).all()
        # the local batch system sees the process gone, long before the heartbeat timeout
        assert [t.outcome for t in tries] == [Outcome.PILOT_VANISHED, Outcome.SUCCESS]
        assert tries[1].pilot_id != victim.pilot_id
        files = session.exec(select(CatalogFile).where(
            CatalogFile.job_id == victim.job_id)).all()
        assert len(files) == 1 and files[0].attempt == tries[1].number
        assert session.get(Pilot, victim.pilot_id).state == "lost"  # type: ignore[union-attr]


def test_jobs_claimed_together_run_each_with_its_own_rendered_files(
        live_tower: Callable[..., LiveTower], tmp_path: Path) -> None:
    """A claim's answer carries the production's templates once for all its jobs: each
    still renders them with its own values."""
    from tower.model import provenance

    tower = live_tower(site={"pilot": {"slots": 4, "cores": 4, "walltime": "10m",
                                       "idle_timeout": 3}})
    tower.submit(toy_production(tmp_path, jobs=6))
    tower.drive(tower.all_ended, timeout=120)

    with Session(tower.runtime.engine) as session:
        jobs = session.exec(select(Job)).all()
        assert {job.state for job in jobs} == {JobState.DONE}
        for job in jobs:
            assert job.id is not None
            record = provenance.of_attempt(session, job.id, job.attempt)
            assert record is not None
            steering = record["steering"]["steering.json"]["text"]
            assert f'"seed": {job.seed},' in steering
            assert f'"output": "decays_{job.index}.csv"' in steering
            assert record["environment"]["GRIDTOWER_JOB"] == str(job.id)
