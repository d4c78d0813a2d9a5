"""The job state table: every legal move works through move_jobs, every illegal one raises."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from tower.errors import IllegalTransition
from tower.model.db import create_schema, make_engine, transaction
from tower.model.models import Job, JobEvent, Production
from tower.model.states import JOB_TRANSITIONS, JobState, check, move_jobs, move_jobs_from

LEGAL = [(a, b) for a, targets in JOB_TRANSITIONS.items() for b in sorted(targets)]
ILLEGAL = [(a, b) for a, b in itertools.product(JobState, JobState)
           if b not in JOB_TRANSITIONS[a]]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'states.db'}")
    create_schema(engine)
    yield engine
    engine.dispose()


def make_job(engine: Engine, state: JobState) -> int:
    with transaction(engine) as session:
        production = session.exec(select(Production)).first()
        if production is None:
            production = Production(name="p", events_total=1, events_per_job=1, dataset="p",
                                    template_hash="0" * 64)
            session.add(production)
            session.flush()
        index = len(session.exec(select(Job)).all())
        job = Job(production_id=production.id, index=index, seed=1, first_event=0, events=1,
                  state=state)
        session.add(job)
        session.flush()
        return job.id  # type: ignore[return-value]


def test_the_table_covers_every_state() -> None:
    assert set(JOB_TRANSITIONS) == set(JobState)
    # a done job only goes on hold: a chain's input it read was superseded afterwards
    assert JOB_TRANSITIONS[JobState.DONE] == frozenset({JobState.HELD})


@pytest.mark.parametrize(("current", "target"), LEGAL, ids=lambda s: str(s))
def test_every_legal_move_happens_and_is_recorded(engine: Engine, current: JobState,
                                                   target: JobState) -> None:
    job_id = make_job(engine, current)
    with transaction(engine) as session:
        assert move_jobs(session, [job_id], current, target, "test") == [job_id]
    with Session(engine) as session:
        assert session.get(Job, job_id).state is target  # type: ignore[union-attr]
        [event] = session.exec(select(JobEvent).where(JobEvent.job_id == job_id)).all()
        assert (event.from_state, event.to_state, event.reason) == (current, target, "test")


@pytest.mark.parametrize(("current", "target"), ILLEGAL, ids=lambda s: str(s))
def test_every_illegal_move_raises(current: JobState, target: JobState) -> None:
    with pytest.raises(IllegalTransition, match=f"{current} -> {target}"):
        check(JOB_TRANSITIONS, current, target)


def test_an_illegal_move_through_move_jobs_raises_and_changes_nothing(engine: Engine) -> None:
    job_id = make_job(engine, JobState.DONE)
    with pytest.raises(IllegalTransition), transaction(engine) as session:
        move_jobs(session, [job_id], JobState.DONE, JobState.RUNNING, "test")
    with Session(engine) as session:
        assert session.get(Job, job_id).state is JobState.DONE  # type: ignore[union-attr]
        assert session.exec(select(JobEvent)).all() == []


def test_a_job_no_longer_in_the_expected_state_is_left_alone(engine: Engine) -> None:
    # two towers race: the second finds the job moved already and does nothing
    job_id = make_job(engine, JobState.QUEUED)
    with transaction(engine) as session:
        assert move_jobs(session, [job_id], JobState.QUEUED, JobState.RUNNING, "first") == [job_id]
    with transaction(engine) as session:
        assert move_jobs(session, [job_id], JobState.QUEUED, JobState.RUNNING, "second") == []
    with Session(engine) as session:
        assert len(session.exec(select(JobEvent)).all()) == 1


def test_move_from_any_state_that_may_reach_the_target(engine: Engine) -> None:
    ids = [make_job(engine, state) for state in (JobState.DEFINED, JobState.RUNNING,
                                                 JobState.DONE)]
    with transaction(engine) as session:
        moved = move_jobs_from(session, ids, JobState.CANCELLED, "cancel all")
    assert sorted(moved) == ids[:2]
