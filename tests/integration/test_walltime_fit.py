"""A job no pilot can take does not storm its site (issue 18 item 6): refused at submit,
held when a retry grows it past every site, never brokered to a site it does not fit,
no pilot submitted for it, and what a cancelled production published is removed.

The test sites' pilots give a job at most 595 s (walltime 10m, drain margin 5 s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from tests.integration.conftest import end_the_one_job, submit, toy_production
from tower.brokers.broker import Message, queue_name
from tower.errors import SpecError
from tower.loops import factory, matchmaker
from tower.management import productions, why
from tower.model.db import transaction
from tower.model.models import Job, Pilot
from tower.model.states import JobState, move_jobs
from tower.retries.outcomes import Outcome
from tower.runtime import Runtime


def pilots(runtime: Runtime) -> list[Pilot]:
    with Session(runtime.engine) as session:
        return list(session.exec(select(Pilot)).all())


def test_a_walltime_no_site_gives_is_refused_naming_the_field(make_runtime: Any,
                                                              tmp_path: Path) -> None:
    runtime = make_runtime()
    with pytest.raises(SpecError) as caught:
        submit(runtime, toy_production(tmp_path, walltime="20m"))
    assert caught.value.field == "walltime"
    assert "at most 595s" in str(caught.value)
    with Session(runtime.engine) as session:
        assert session.exec(select(Job)).all() == []


def test_a_retry_that_grows_the_walltime_past_every_site_holds_the_job(
        make_runtime: Any, tmp_path: Path) -> None:
    # Given a job of 400 s whose attempt ran out of walltime (the policy doubles it)
    runtime = make_runtime()
    submit(runtime, toy_production(tmp_path, jobs=1, walltime=400))
    # When the policy decides
    end_the_one_job(runtime, "local", Outcome.WALLTIME, "ran out of walltime")
    # Then it is held, saying why, and keeps the walltime it had
    with Session(runtime.engine) as session:
        job = session.exec(select(Job)).one()
    assert job.state == JobState.HELD
    assert "800s" in (job.message or "") and "at most 595s" in (job.message or "")
    assert job.walltime is None


def force_queued(runtime: Runtime, walltime: int) -> int:
    """Write a job straight into the local site's queue with a walltime no pilot gives."""
    with transaction(runtime.engine) as session:
        job = session.exec(select(Job)).one()
        assert job.id is not None
        move_jobs(session, [job.id], JobState.DEFINED, JobState.ASSIGNED, "forced",
                  site="local", attempt=1, walltime=walltime)
        move_jobs(session, [job.id], JobState.ASSIGNED, JobState.QUEUED, "forced")
    runtime.broker.publish(queue_name("local", "default"),
                           [Message(job=job.id, attempt=1, walltime=walltime)])
    return job.id


def test_no_pilot_is_submitted_for_a_job_that_fits_no_pilot(make_runtime: Any,
                                                            tmp_path: Path) -> None:
    runtime = make_runtime()
    submit(runtime, toy_production(tmp_path, jobs=1))
    job_id = force_queued(runtime, 3600)
    # the factory, over several cycles, submits nothing for it
    for _ in range(4):
        assert factory.run_once(runtime) == 0
    assert pilots(runtime) == []
    # the matchmaker takes it back from the site it cannot run at, and its message goes
    matchmaker.run_once(runtime)
    with Session(runtime.engine) as session:
        job = session.get_one(Job, job_id)
        assert job.state == JobState.DEFINED and job.site is None
        told = why.explain(session, runtime.config, job_id)["why"]
    assert runtime.broker.depth(queue_name("local", "default")) == 0
    assert any("Site local does not fit it" in line and "3600s" in line for line in told), told
    for _ in range(3):
        matchmaker.run_once(runtime)
        assert factory.run_once(runtime) == 0
    assert pilots(runtime) == []


def test_a_job_goes_only_to_a_site_whose_pilots_fit_it(make_runtime: Any,
                                                       tmp_path: Path) -> None:
    runtime = make_runtime(more_sites={"big": {"pilot": {"slots": 2, "walltime": "2h"}}})
    submit(runtime, toy_production(tmp_path, jobs=6, walltime="30m"))
    matchmaker.run_once(runtime)
    with Session(runtime.engine) as session:
        sites = {job.site for job in session.exec(select(Job)).all() if job.site}
        assert sites == {"big"}
        assert factory.waiting(session, runtime.config.sites["local"], "default") == 0
    factory.run_once(runtime)
    assert {pilot.site for pilot in pilots(runtime)} == {"big"}


def cancel_empties_the_queue(runtime: Runtime, tmp_path: Path) -> None:
    submit(runtime, toy_production(tmp_path, jobs=6))
    matchmaker.run_once(runtime)
    queue = queue_name("local", "default")
    assert runtime.broker.depth(queue) == 2
    with transaction(runtime.engine) as session:
        productions.control(session, "toy", "cancel", "test")
    matchmaker.run_once(runtime)
    assert runtime.broker.depth(queue) == 0


def test_cancel_removes_what_it_published_from_the_database_queue(make_runtime: Any,
                                                                  tmp_path: Path) -> None:
    cancel_empties_the_queue(make_runtime(), tmp_path)


@pytest.mark.one_database
def test_cancel_removes_what_it_published_from_rabbitmq(make_runtime: Any, amqp_url: str,
                                                        tmp_path: Path) -> None:
    cancel_empties_the_queue(make_runtime(broker=amqp_url), tmp_path)
